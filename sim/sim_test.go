package sim

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/xpress-ops/tower/protocol"
)

// runSim runs a simulation to its end and fails the test on an error.
func runSim(t *testing.T, ctx context.Context, cfg Config) Stats {
	t.Helper()
	stats, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return stats
}

// checkAccounting checks that every QoS 1 message ended acked or failed.
func checkAccounting(t *testing.T, st Stats) {
	t.Helper()
	if st.FixesSent != st.FixesAcked+st.FixesFailed {
		t.Errorf("fixes sent %d != acked %d + failed %d", st.FixesSent, st.FixesAcked, st.FixesFailed)
	}
	if st.SOSSent != st.SOSAcked+st.SOSFailed {
		t.Errorf("SOS sent %d != acked %d + failed %d", st.SOSSent, st.SOSAcked, st.SOSFailed)
	}
}

func TestRun_ReplaysMunichTraceToItsEnd(t *testing.T) {
	broker := startBroker(t)
	sub := subscribe(t, broker.url, "watcher")
	trace := mustLoadTrace(t, munichTrace)
	points := trace.Tracks[0].Points

	st := runSim(t, t.Context(), Config{
		Broker: broker.url, Vehicles: 3, Source: trace, Speedup: 1000, Seed: 1,
	})

	// Three vehicles share the one track, starting at points 0, 398 and 796.
	starts := map[string]int{"sim-0001": 0, "sim-0002": 398, "sim-0003": 796}
	want := uint64(1194 + 796 + 398)
	if st.FixesSent != want || st.FixesAcked != want || st.FixesFailed != 0 {
		t.Errorf("fixes sent %d acked %d failed %d, want %d, %d, 0", st.FixesSent, st.FixesAcked, st.FixesFailed, want, want)
	}
	if st.FixMessages != want {
		t.Errorf("fix messages %d, want %d (batch 1)", st.FixMessages, want)
	}
	if st.Vehicles != 3 || st.VehiclesConnected != 3 || st.ConnectFailures != 0 {
		t.Errorf("vehicles %d connected %d connect failures %d", st.Vehicles, st.VehiclesConnected, st.ConnectFailures)
	}
	if st.FixLatency.Count != want || st.FixLatency.Max <= 0 ||
		st.FixLatency.P50 > st.FixLatency.P99 || st.FixLatency.P99 > st.FixLatency.Max {
		t.Errorf("fix latency %+v, want %d ordered samples", st.FixLatency, want)
	}
	checkAccounting(t, st)

	eventually(t, 10*time.Second, "every fix at the subscriber", func() bool {
		return len(sub.of(protocol.TopicFix, "")) == int(want)
	})
	for vehicle, start := range starts {
		fixes := sub.fixes(t, vehicle)
		if len(fixes) != len(points)-start {
			t.Fatalf("%s: %d fixes, want %d", vehicle, len(fixes), len(points)-start)
		}
		for i, f := range fixes {
			p := points[start+i]
			if f.Lat != p.Lat || f.Lon != p.Lon {
				t.Fatalf("%s fix %d at %v,%v, want trace point %d at %v,%v", vehicle, i, f.Lat, f.Lon, start+i, p.Lat, p.Lon)
			}
			if f.SpeedKmh == nil || f.HeadingDeg == nil || f.AccuracyM == nil || f.BatteryPct == nil {
				t.Fatalf("%s fix %d lacks speed, heading, accuracy or battery", vehicle, i)
			}
			if i == 0 {
				continue
			}
			// Timestamps keep the trace's spacing divided by the speedup: 1 s becomes 1 ms.
			gap := f.Time.Sub(fixes[i-1].Time)
			if wantGap := (p.Offset - points[start+i-1].Offset) / 1000; gap != wantGap {
				t.Fatalf("%s fix %d is %s after the previous, want %s", vehicle, i, gap, wantGap)
			}
		}
		if age := time.Since(fixes[0].Time); age < 0 || age > time.Minute {
			t.Errorf("%s first fix stamped %s, want the present", vehicle, fixes[0].Time)
		}

		statuses := sub.statuses(t, vehicle)
		if len(statuses) != 2 || !statuses[0] || statuses[1] {
			t.Errorf("%s statuses %v, want online then offline", vehicle, statuses)
		}
	}
}

func TestRun_StatusIsRetained(t *testing.T) {
	broker := startBroker(t)
	runSim(t, t.Context(), Config{
		Broker: broker.url, Vehicles: 2, Source: Synthetic(2), Rate: 100, Duration: 200 * time.Millisecond,
	})

	// A subscriber arriving later gets the last status of each vehicle.
	late := subscribe(t, broker.url, "late-watcher")
	eventually(t, 5*time.Second, "retained statuses", func() bool {
		return len(late.of(protocol.TopicStatus, "")) == 2
	})
	for _, m := range late.of(protocol.TopicStatus, "") {
		if !m.retained || string(m.payload) != `{"online":false}` {
			t.Errorf("%s: retained %v payload %s, want retained offline status", m.topic, m.retained, m.payload)
		}
	}
}

func TestRun_SOSEveryProducesSOSAlerts(t *testing.T) {
	broker := startBroker(t)
	sub := subscribe(t, broker.url, "watcher")

	st := runSim(t, t.Context(), Config{
		Broker: broker.url, Vehicles: 2, Rate: 20, SOSEvery: 20 * time.Millisecond,
		Duration: 700 * time.Millisecond, VehiclePrefix: "ph-", Seed: 7,
	})
	checkAccounting(t, st)
	if st.SOSSent == 0 || st.SOSAcked != st.SOSSent {
		t.Fatalf("SOS sent %d acked %d, want some, all acked", st.SOSSent, st.SOSAcked)
	}
	if st.SOSLatency.Count != st.SOSAcked {
		t.Errorf("SOS latency count %d, want %d", st.SOSLatency.Count, st.SOSAcked)
	}

	eventually(t, 10*time.Second, "every SOS and fix at the subscriber", func() bool {
		return len(sub.of(protocol.TopicSOS, "")) == int(st.SOSSent) &&
			len(sub.fixes(t, "")) == int(st.FixesSent)
	})
	ids := map[string]bool{}
	for _, m := range sub.of(protocol.TopicSOS, "") {
		sos, err := protocol.DecodeSOS(m.payload, protocol.Limits{}, func() string {
			t.Errorf("SOS on %s has no id: %s", m.topic, m.payload)
			return "missing"
		})
		if err != nil {
			t.Fatalf("invalid SOS on %s: %v", m.topic, err)
		}
		if !strings.HasPrefix(sos.ID, m.vehicle+"-") || ids[sos.ID] {
			t.Errorf("SOS id %q on %s: want unique and starting with %s-", sos.ID, m.topic, m.vehicle)
		}
		ids[sos.ID] = true
		if !sos.HasLocation || sos.LocationError != "" || sos.TimeError != "" {
			t.Errorf("SOS %s: location %v (%s), time error %q", sos.ID, sos.HasLocation, sos.LocationError, sos.TimeError)
		}
		// Synthetic route 0 loops around Manila, route 1 around Cebu.
		city := Cities[0]
		if m.vehicle == "ph-0002" {
			city = Cities[1]
		}
		if d := distanceM(city.Lat, city.Lon, sos.Lat, sos.Lon); d > 5000 {
			t.Errorf("SOS %s is %.0f m from %s", sos.ID, d, city.Name)
		}
	}

	// In rate mode, fixes are 1/Rate = 50 ms apart.
	for _, vehicle := range []string{"ph-0001", "ph-0002"} {
		fixes := sub.fixes(t, vehicle)
		if len(fixes) < 2 {
			t.Fatalf("%s sent %d fixes", vehicle, len(fixes))
		}
		for i := 1; i < len(fixes); i++ {
			if gap := fixes[i].Time.Sub(fixes[i-1].Time); gap != 50*time.Millisecond {
				t.Fatalf("%s fix %d is %s after the previous, want 50ms", vehicle, i, gap)
			}
		}
	}
}

func TestRun_BatchPublishesArrays(t *testing.T) {
	broker := startBroker(t)
	sub := subscribe(t, broker.url, "watcher")

	st := runSim(t, t.Context(), Config{
		Broker: broker.url, Vehicles: 1, Trace: munichTrace, Speedup: 2000, Batch: 7,
	})

	wantMessages := (1194 + 6) / 7
	if st.FixesSent != 1194 || st.FixesAcked != 1194 || st.FixMessages != uint64(wantMessages) {
		t.Errorf("fixes sent %d acked %d in %d messages, want 1194 in %d", st.FixesSent, st.FixesAcked, st.FixMessages, wantMessages)
	}
	eventually(t, 10*time.Second, "every batch at the subscriber", func() bool {
		return len(sub.of(protocol.TopicFix, "")) == wantMessages
	})
	for i, m := range sub.of(protocol.TopicFix, "") {
		if !strings.HasPrefix(string(m.payload), "[") {
			t.Fatalf("message %d is not a JSON array: %.60s", i, m.payload)
		}
		fixes, err := protocol.DecodeFixes(m.payload, protocol.Limits{})
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if want := min(7, 1194-7*i); len(fixes) != want {
			t.Errorf("message %d holds %d fixes, want %d", i, len(fixes), want)
		}
	}
	if n := len(sub.fixes(t, "")); n != 1194 {
		t.Errorf("subscriber decoded %d fixes, want 1194", n)
	}
}

func TestRun_QoS0IsNeverAcked(t *testing.T) {
	broker := startBroker(t)
	sub := subscribe(t, broker.url, "watcher")

	st := runSim(t, t.Context(), Config{
		Broker: broker.url, Vehicles: 1, Trace: portoTrace, Speedup: 10000, QoS: QoSAtMostOnce,
	})

	// Vehicle 1 replays trip T1, 11 points.
	if st.FixesSent != 11 || st.FixesAcked != 0 || st.FixesFailed != 0 || st.FixLatency.Count != 0 {
		t.Errorf("stats %+v, want 11 fixes sent, none acked or failed", st)
	}
	eventually(t, 10*time.Second, "11 fixes at the subscriber", func() bool {
		return len(sub.fixes(t, "")) == 11
	})
}

func TestRun_ReconnectsAfterConnectionDrops(t *testing.T) {
	broker := startBroker(t)
	sub := subscribe(t, broker.url, "watcher")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()

	type result struct {
		stats Stats
		err   error
	}
	done := make(chan result, 1)
	go func() {
		st, err := Run(ctx, Config{
			Broker: broker.url, Vehicles: 2, Rate: 50, Trace: ktmbTrace, Loop: true, PublishTimeout: time.Second,
		})
		done <- result{st, err}
	}()

	vehicles := []string{"sim-0001", "sim-0002"}
	for _, v := range vehicles {
		eventually(t, 10*time.Second, v+" online with fixes", func() bool {
			return len(sub.of(protocol.TopicFix, v)) >= 5
		})
	}
	for _, v := range vehicles {
		broker.dropClient(t, v)
	}

	// The broker publishes each will, and the vehicle reconnects, reports
	// online again and keeps sending fixes. The will and the new online
	// status come from different broker goroutines, so their order varies.
	for _, v := range vehicles {
		defer func() {
			if t.Failed() {
				t.Logf("%s statuses %v, %d fixes after the third status", v, sub.statuses(t, v), sub.fixesAfterStatus(v, 2))
			}
		}()
		eventually(t, 15*time.Second, v+" will, reconnection and new fixes", func() bool {
			online, offline := 0, 0
			for _, up := range sub.statuses(t, v) {
				if up {
					online++
				} else {
					offline++
				}
			}
			return online == 2 && offline == 1 && sub.fixesAfterStatus(v, 2) > 0
		})
	}

	cancel()
	res := <-done
	if res.err != nil {
		t.Fatalf("Run: %v", res.err)
	}
	if res.stats.ConnectionsLost != 2 {
		t.Errorf("connections lost %d, want 2", res.stats.ConnectionsLost)
	}
	checkAccounting(t, res.stats)
}

func TestRun_PublishTimeoutIsCountedNotFatal(t *testing.T) {
	broker := startBroker(t, new(auth.AllowHook), &silentHook{client: "sim-0002"})
	sub := subscribe(t, broker.url, "watcher")

	st := runSim(t, t.Context(), Config{
		Broker: broker.url, Vehicles: 2, Source: Synthetic(2), Rate: 50,
		Duration: 300 * time.Millisecond, PublishTimeout: 200 * time.Millisecond,
	})
	checkAccounting(t, st)
	vehicle1 := len(sub.fixes(t, "sim-0001"))
	if st.FixesFailed == 0 || st.FixesAcked == 0 {
		t.Fatalf("fixes acked %d failed %d, want both above 0", st.FixesAcked, st.FixesFailed)
	}
	eventually(t, 10*time.Second, "sim-0001's acked fixes at the subscriber", func() bool {
		vehicle1 = len(sub.fixes(t, "sim-0001"))
		return uint64(vehicle1) == st.FixesAcked
	})
	if n := len(sub.of(protocol.TopicFix, "sim-0002")); n != 0 {
		t.Errorf("subscriber got %d fixes of the silenced vehicle", n)
	}
}

func TestRun_SendsPassword(t *testing.T) {
	broker := startBroker(t, &passwordHook{password: "s3cret"})

	st := runSim(t, t.Context(), Config{
		Broker: broker.url, Vehicles: 1, Password: "s3cret", Rate: 50, Duration: 100 * time.Millisecond,
	})
	if st.VehiclesConnected != 1 || st.ConnectFailures != 0 {
		t.Errorf("with the right password: connected %d, connect failures %d", st.VehiclesConnected, st.ConnectFailures)
	}

	st, err := Run(t.Context(), Config{
		Broker: broker.url, Vehicles: 1, Password: "wrong", Rate: 50, Duration: 300 * time.Millisecond,
	})
	if !errors.Is(err, ErrNoConnection) {
		t.Errorf("with a wrong password: error %v, want ErrNoConnection", err)
	}
	if st.ConnectFailures == 0 || st.VehiclesConnected != 0 || st.FixesSent != 0 {
		t.Errorf("with a wrong password: %+v, want connect failures and nothing sent", st)
	}
}

func TestRun_NoBrokerReturnsErrNoConnection(t *testing.T) {
	st, err := Run(t.Context(), Config{Broker: closedPortURL(t), Vehicles: 2, Duration: 300 * time.Millisecond})
	if !errors.Is(err, ErrNoConnection) {
		t.Fatalf("error %v, want ErrNoConnection", err)
	}
	if st.ConnectFailures < 2 || st.VehiclesConnected != 0 {
		t.Errorf("connect failures %d, connected %d; want at least one failure per vehicle, none connected", st.ConnectFailures, st.VehiclesConnected)
	}
}

func TestRun_RejectsInvalidConfigAndTrace(t *testing.T) {
	_, err := Run(t.Context(), Config{Broker: closedPortURL(t), Vehicles: -3})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("negative vehicles: error %v, want ErrInvalidConfig", err)
	}
	_, err = Run(t.Context(), Config{Broker: closedPortURL(t), Trace: "../testdata/traces/README.md"})
	if !errors.Is(err, ErrUnknownFormat) {
		t.Errorf("README as trace: error %v, want ErrUnknownFormat", err)
	}
}

func TestSim_RunOnlyOnce(t *testing.T) {
	s := New(Config{Broker: closedPortURL(t), Vehicles: 1, Duration: time.Millisecond})
	_, _ = s.Run(t.Context())
	if _, err := s.Run(t.Context()); !errors.Is(err, ErrAlreadyRun) {
		t.Errorf("second Run: error %v, want ErrAlreadyRun", err)
	}
}

func TestRun_MetricsMatchStatsAndLint(t *testing.T) {
	broker := startBroker(t)
	reg := prometheus.NewRegistry()

	st := runSim(t, t.Context(), Config{
		Broker: broker.url, Vehicles: 2, Source: Synthetic(2), Rate: 50, SOSEvery: 50 * time.Millisecond,
		Duration: 300 * time.Millisecond, Registerer: reg,
	})

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(families).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	s := New(Config{Registerer: reg}) // registering twice reuses the collectors
	for _, c := range []struct {
		name string
		got  float64
		want uint64
	}{
		{"fixes published", testutil.ToFloat64(s.metrics.fixesPublished), st.FixesSent},
		{"fix messages", testutil.ToFloat64(s.metrics.published.WithLabelValues(kindFix)), st.FixMessages},
		{"fix messages acked", testutil.ToFloat64(s.metrics.acked.WithLabelValues(kindFix)), st.FixMessages},
		{"SOS published", testutil.ToFloat64(s.metrics.published.WithLabelValues(kindSOS)), st.SOSSent},
		{"SOS acked", testutil.ToFloat64(s.metrics.acked.WithLabelValues(kindSOS)), st.SOSAcked},
		{"statuses published", testutil.ToFloat64(s.metrics.published.WithLabelValues(kindStatus)), 4},
		{"vehicles connected", testutil.ToFloat64(s.metrics.connected), 0},
	} {
		if c.got != float64(c.want) {
			t.Errorf("%s: metric %v, stats %d", c.name, c.got, c.want)
		}
	}
	if math.IsNaN(testutil.ToFloat64(s.metrics.connectFailures)) {
		t.Error("connect failures metric unreadable")
	}
}

func TestRun_LoopRepeatsTrackOnConfiguredClock(t *testing.T) {
	broker := startBroker(t)
	sub := subscribe(t, broker.url, "watcher")
	trace := &Trace{Name: "triangle", Format: FormatBarefootJSON, Tracks: []Track{{ID: "t", Points: []Point{
		{Lat: 14.60, Lon: 120.98, Offset: 0},
		{Lat: 14.61, Lon: 120.98, Offset: time.Second},
		{Lat: 14.61, Lon: 120.99, Offset: 2 * time.Second},
	}}}}
	deriveMotion(trace.Tracks[0].Points)
	clock := func() time.Time { return time.Now().Add(-2 * time.Hour) }

	st := runSim(t, t.Context(), Config{
		Broker: broker.url, Vehicles: 1, Source: trace, Loop: true, Speedup: 100,
		Duration: 300 * time.Millisecond, Now: clock,
	})
	if st.FixesSent <= 3 {
		t.Fatalf("%d fixes sent, want more than the track's 3 points", st.FixesSent)
	}

	eventually(t, 10*time.Second, "every fix at the subscriber", func() bool {
		return len(sub.of(protocol.TopicFix, "")) == int(st.FixesSent)
	})
	fixes := sub.fixes(t, "sim-0001")
	for i, f := range fixes {
		p := trace.Tracks[0].Points[i%3]
		if f.Lat != p.Lat || f.Lon != p.Lon {
			t.Fatalf("fix %d at %v,%v, want point %d at %v,%v", i, f.Lat, f.Lon, i%3, p.Lat, p.Lon)
		}
		// The loop back to the first point takes the track's mean interval, 1 s.
		if i > 0 {
			if gap := f.Time.Sub(fixes[i-1].Time); gap != 10*time.Millisecond {
				t.Fatalf("fix %d is %s after the previous, want 10ms", i, gap)
			}
		}
	}
	if age := time.Since(fixes[0].Time); age < 2*time.Hour || age > 2*time.Hour+time.Minute {
		t.Errorf("first fix is %s old, want about 2h from the configured clock", age)
	}
}
