package uplink_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/goleak"

	"github.com/xpress-ops/tower/agent/internal/hubtest"
	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const agentID = "agent-ncr"

func openSpool(t *testing.T) *spool.Spool {
	t.Helper()
	sp := spool.New(spool.Config{Path: filepath.Join(t.TempDir(), "spool.db")})
	if err := sp.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sp.Close(); err != nil {
			t.Errorf("close spool: %v", err)
		}
	})
	return sp
}

// startUplink starts an uplink from sp to hubURL with fast test timings;
// mutate may change the config first. It stops on cleanup.
func startUplink(t *testing.T, sp *spool.Spool, hubURL string, mutate func(*uplink.Config)) (*uplink.Uplink, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := uplink.Config{
		AgentID:        agentID,
		Region:         "ncr",
		HubURL:         hubURL,
		Spool:          sp,
		Registerer:     reg,
		Logger:         testLogger(t),
		AckTimeout:     5 * time.Second,
		ConnectTimeout: 2 * time.Second,
		MinBackoff:     10 * time.Millisecond,
		MaxBackoff:     100 * time.Millisecond,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	u := uplink.New(cfg)
	if err := u.Open(); err != nil {
		t.Fatalf("open uplink: %v", err)
	}
	t.Cleanup(func() {
		if err := u.Close(); err != nil {
			t.Errorf("close uplink: %v", err)
		}
	})
	return u, reg
}

func fix(vehicle string, n int) protocol.Record {
	ts := time.Now().UTC().Add(-time.Minute)
	return protocol.Record{
		Kind: protocol.KindFix, VehicleID: vehicle, ReceivedAt: time.Now().UTC(),
		Fix: &protocol.Fix{Time: ts, Lat: 14 + float64(n)/100, Lon: 121},
	}
}

func sos(vehicle, id string) protocol.Record {
	return protocol.Record{
		Kind: protocol.KindSOS, VehicleID: vehicle, ReceivedAt: time.Now().UTC(),
		SOS: &protocol.SOS{ID: id, Time: time.Now().UTC(), Kind: protocol.SOSPanic},
	}
}

func status(vehicle string) protocol.Record {
	return protocol.Record{
		Kind: protocol.KindStatus, VehicleID: vehicle, ReceivedAt: time.Now().UTC(),
		Status: &protocol.Status{Online: true},
	}
}

func appendRecords(t *testing.T, sp *spool.Spool, recs ...protocol.Record) {
	t.Helper()
	if err := sp.Append(context.Background(), recs); err != nil {
		t.Fatalf("append: %v", err)
	}
}

// eventually polls cond every 10 ms until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 10 s waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func spoolEmpty(sp *spool.Spool) bool {
	for _, st := range sp.Stats() {
		if st.Records != 0 {
			return false
		}
	}
	return true
}

// batchShape renders batches as "lane:first-last" for readable comparisons.
func batchShape(batches []protocol.Batch) string {
	parts := make([]string, len(batches))
	for i, b := range batches {
		parts[i] = fmt.Sprintf("%s:%d-%d", b.Lane, b.First(), b.Last())
	}
	return strings.Join(parts, " ")
}

// metricValue returns the value of the first sample of a counter, gauge
// or histogram (its sample count) whose labels include labels.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metric:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					continue metric
				}
			}
			return m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return 0
}

func TestUplink_SendsSOSFirstInSequenceOrder(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := openSpool(t)
	for i := range 5 {
		appendRecords(t, sp, fix("veh-001", i))
	}
	appendRecords(t, sp, sos("veh-002", "sos-a"), sos("veh-003", "sos-b"), status("veh-001"))

	// Every batch must still be in the spool when the hub receives it.
	hub.SetRespond(func(h *hubtest.Hub, b *protocol.Batch) []protocol.Ack {
		recs, err := sp.Read(b.Lane, b.First()-1, 0, 0)
		if err != nil || len(recs) == 0 || recs[0].Seq != b.First() || recs[len(recs)-1].Seq < b.Last() {
			t.Errorf("%s batch %d-%d is not in the spool when the hub receives it (read %d records, %v)",
				b.Lane, b.First(), b.Last(), len(recs), err)
		}
		return []protocol.Ack{h.Commit(b)}
	})
	u, _ := startUplink(t, sp, hub.URL(), func(c *uplink.Config) { c.MaxBatchRecords = 2 })

	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })

	// The SOS lane goes on the SOS link; the main link sends status
	// before GPS.
	if got, want := batchShape(hub.ReceivedOn(protocol.SOSLinkClientID(agentID))), "sos:1-2"; got != want {
		t.Errorf("batches on the SOS link = %s, want %s", got, want)
	}
	if got, want := batchShape(hub.ReceivedOn(agentID)), "status:1-1 gps:1-2 gps:3-4 gps:5-5"; got != want {
		t.Errorf("batches on the main link = %s, want %s", got, want)
	}
	// More is true when records wait behind a batch, not when it is merely full.
	var more []string
	for _, b := range append(hub.ReceivedOn(protocol.SOSLinkClientID(agentID)), hub.ReceivedOn(agentID)...) {
		more = append(more, fmt.Sprintf("%s:%d-%d:%v", b.Lane, b.First(), b.Last(), b.More))
	}
	if got, want := strings.Join(more, " "), "sos:1-2:false status:1-1:false gps:1-2:true gps:3-4:true gps:5-5:false"; got != want {
		t.Errorf("batches with More = %s, want %s", got, want)
	}
	if n := len(hub.Received()); n != 5 {
		t.Errorf("hub received %d batches, want 5: %s", n, batchShape(hub.Received()))
	}
	if got := len(hub.Committed(protocol.LaneGPS)); got != 5 {
		t.Errorf("hub committed %d gps records, want 5", got)
	}
	if sosRecs := hub.Committed(protocol.LaneSOS); len(sosRecs) != 2 || sosRecs[0].SOS.ID != "sos-a" {
		t.Errorf("hub committed sos records %+v, want sos-a then sos-b", sosRecs)
	}
	acked := u.Acked()
	if acked[protocol.LaneSOS] != 2 || acked[protocol.LaneStatus] != 1 || acked[protocol.LaneGPS] != 5 {
		t.Errorf("acked = %v, want sos 2, status 1, gps 5", acked)
	}
	if u.State() != uplink.StateConnected {
		t.Errorf("state = %s, want connected", u.State())
	}
	for _, b := range hub.Received() {
		if b.AgentID != agentID || b.Region != "ncr" || b.SpoolID != sp.SpoolID() {
			t.Errorf("batch envelope = agent %q region %q spool %q, want %q, ncr, %q", b.AgentID, b.Region, b.SpoolID, agentID, sp.SpoolID())
		}
	}
}

// An SOS that arrives while the hub holds a GPS batch uncommitted, as a
// busy hub does during an outage drain, travels on the SOS link and is
// committed and acknowledged while the GPS lane is still stalled.
func TestUplink_SOSJumpsGPSBacklog(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := openSpool(t)
	for i := range 6 {
		appendRecords(t, sp, fix("veh-001", i))
	}
	stalled, release := gate(t)
	hub.SetRespond(func(h *hubtest.Hub, b *protocol.Batch) []protocol.Ack {
		if b.Lane == protocol.LaneGPS && b.First() == 1 {
			appendRecords(t, sp, sos("veh-009", "sos-mid-backlog"))
			<-stalled
		}
		return []protocol.Ack{h.Commit(b)}
	})
	u, _ := startUplink(t, sp, hub.URL(), func(c *uplink.Config) { c.MaxBatchRecords = 2; c.MaxInflightBatches = 1 })

	eventually(t, "the SOS to be committed and acknowledged while the GPS lane is stalled", func() bool {
		return len(hub.Committed(protocol.LaneSOS)) == 1 && u.Acked()[protocol.LaneSOS] == 1
	})
	if got := u.Acked()[protocol.LaneGPS]; got != 0 {
		t.Errorf("gps acknowledged through %d while the hub held the first batch, want 0", got)
	}
	release()

	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })
	if got, want := batchShape(hub.ReceivedOn(agentID)), "gps:1-2 gps:3-4 gps:5-6"; got != want {
		t.Errorf("batches on the main link = %s, want %s", got, want)
	}
	if got, want := batchShape(hub.ReceivedOn(protocol.SOSLinkClientID(agentID))), "sos:1-1"; got != want {
		t.Errorf("batches on the SOS link = %s, want %s", got, want)
	}
}

func TestUplink_ResendsAfterAckTimeout(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := openSpool(t)
	appendRecords(t, sp, fix("veh-001", 1), fix("veh-001", 2))

	// The hub's broker sends PUBACKs but the hub sends no Ack for the first two batches.
	hub.SetRespond(func(h *hubtest.Hub, b *protocol.Batch) []protocol.Ack {
		if len(h.Received()) <= 2 {
			if st := sp.Stats()[protocol.LaneGPS]; st.Records != 2 {
				t.Errorf("spool holds %d gps records before any Ack, want 2: records were deleted without an Ack", st.Records)
			}
			return nil
		}
		return []protocol.Ack{h.Commit(b)}
	})
	_, reg := startUplink(t, sp, hub.URL(), func(c *uplink.Config) { c.AckTimeout = uplink.MinAckTimeout })

	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })

	if got, want := batchShape(hub.Received()), "gps:1-2 gps:1-2 gps:1-2"; got != want {
		t.Errorf("batches = %s, want %s (two resends from the oldest record)", got, want)
	}
	if got := metricValue(t, reg, "xpress_agent_uplink_ack_timeouts_total", nil); got != 2 {
		t.Errorf("ack timeouts = %v, want 2", got)
	}
	if got := metricValue(t, reg, "xpress_agent_uplink_connect_attempts_total", nil); got < 3 {
		t.Errorf("connect attempts = %v, want at least 3 (a reconnect after each timeout)", got)
	}
	if got := len(hub.Committed(protocol.LaneGPS)); got != 2 {
		t.Errorf("hub committed %d records, want 2", got)
	}
}

func TestUplink_ReconnectsAfterHubRestart(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := openSpool(t)
	u, _ := startUplink(t, sp, hub.URL(), nil)
	eventually(t, "the uplink to connect", func() bool { return u.State() == uplink.StateConnected })
	appendRecords(t, sp, fix("veh-001", 1))
	eventually(t, "the first record to reach the hub", func() bool { return len(hub.Committed(protocol.LaneGPS)) == 1 })

	hub.Close()
	eventually(t, "the uplink to notice the outage", func() bool { return u.State() == uplink.StateDisconnected })
	appendRecords(t, sp, fix("veh-001", 2), fix("veh-001", 3))
	appendRecords(t, sp, sos("veh-002", "sos-during-outage"))
	restarted := hubtest.Start(t, hub.Addr)

	eventually(t, "the outage records to reach the restarted hub", func() bool {
		return len(restarted.Committed(protocol.LaneGPS)) == 2 && len(restarted.Committed(protocol.LaneSOS)) == 1
	})

	if got, want := batchShape(restarted.ReceivedOn(protocol.SOSLinkClientID(agentID))), "sos:1-1"; got != want {
		t.Errorf("batches on the SOS link after restart = %s, want %s", got, want)
	}
	if got, want := batchShape(restarted.ReceivedOn(agentID)), "gps:2-3"; got != want {
		t.Errorf("batches on the main link after restart = %s, want %s", got, want)
	}
	if first := hub.Committed(protocol.LaneGPS); first[0].Historical {
		t.Error("record sent while the link was up is marked historical")
	}
	for _, r := range restarted.Committed(protocol.LaneGPS) {
		if !r.Historical {
			t.Errorf("gps record %d queued during the outage is not marked historical", r.Seq)
		}
	}
	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })
}

func TestUplink_PermanentErrorMovesBatchToRejected(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := openSpool(t)
	appendRecords(t, sp, fix("veh-001", 1), fix("veh-poison", 2), fix("veh-001", 3))
	hub.SetRespond(func(h *hubtest.Hub, b *protocol.Batch) []protocol.Ack {
		for _, r := range b.Records {
			if r.VehicleID == "veh-poison" {
				through := h.Cursor(b.Lane)
				return []protocol.Ack{{AgentID: b.AgentID, SpoolID: b.SpoolID, Lane: b.Lane, Through: through,
					Error: "vehicle veh-poison is unknown", Permanent: true}}
			}
		}
		return []protocol.Ack{h.Commit(b)}
	})
	u, reg := startUplink(t, sp, hub.URL(), func(c *uplink.Config) { c.MaxBatchRecords = 1 })

	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) && u.Acked()[protocol.LaneGPS] == 3 })

	committed := hub.Committed(protocol.LaneGPS)
	if len(committed) != 2 || committed[0].Seq != 1 || committed[1].Seq != 3 {
		t.Errorf("hub committed %s, want gps records 1 and 3", batchShape([]protocol.Batch{{Lane: protocol.LaneGPS, Records: committed}}))
	}
	rejected, err := sp.ReadRejected(protocol.LaneGPS, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rejected) != 1 || rejected[0].VehicleID != "veh-poison" {
		t.Errorf("rejected bucket = %+v, want the poison record", rejected)
	}
	if got := metricValue(t, reg, "xpress_agent_uplink_rejected_records_total", map[string]string{"lane": "gps"}); got != 1 {
		t.Errorf("rejected records metric = %v, want 1", got)
	}
	if got := u.Acked()[protocol.LaneGPS]; got != 3 {
		t.Errorf("acked gps = %d, want 3", got)
	}
}

func TestUplink_TransientErrorRetries(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := openSpool(t)
	appendRecords(t, sp, sos("veh-001", "sos-retry"))
	hub.SetRespond(func(h *hubtest.Hub, b *protocol.Batch) []protocol.Ack {
		if len(h.Received()) == 1 {
			return []protocol.Ack{{AgentID: b.AgentID, SpoolID: b.SpoolID, Lane: b.Lane, Error: "database unavailable"}}
		}
		return []protocol.Ack{h.Commit(b)}
	})
	_, reg := startUplink(t, sp, hub.URL(), nil)

	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })

	if got, want := batchShape(hub.Received()), "sos:1-1 sos:1-1"; got != want {
		t.Errorf("batches = %s, want %s (one retry)", got, want)
	}
	if got := metricValue(t, reg, "xpress_agent_uplink_batch_errors_total", map[string]string{"kind": "transient"}); got != 1 {
		t.Errorf("transient batch errors = %v, want 1", got)
	}
	if st := sp.Stats()[protocol.LaneSOS]; st.Rejected != 0 {
		t.Errorf("%d SOS records rejected after a transient error, want 0", st.Rejected)
	}
}

func TestUplink_PermanentErrorKeepsSOS(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := openSpool(t)
	appendRecords(t, sp, sos("veh-001", "sos-kept"))
	hub.SetRespond(func(h *hubtest.Hub, b *protocol.Batch) []protocol.Ack {
		if len(h.Received()) <= 2 {
			return []protocol.Ack{{AgentID: b.AgentID, SpoolID: b.SpoolID, Lane: b.Lane, Error: "hub cannot read this batch", Permanent: true}}
		}
		return []protocol.Ack{h.Commit(b)}
	})
	_, reg := startUplink(t, sp, hub.URL(), nil)

	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })

	if got, want := batchShape(hub.Received()), "sos:1-1 sos:1-1 sos:1-1"; got != want {
		t.Errorf("batches = %s, want %s (two retries)", got, want)
	}
	if committed := hub.Committed(protocol.LaneSOS); len(committed) != 1 {
		t.Errorf("hub committed %d SOS records, want 1", len(committed))
	}
	if st := sp.Stats()[protocol.LaneSOS]; st.Rejected != 0 {
		t.Errorf("%d SOS records set aside as rejected, want 0", st.Rejected)
	}
	if got := metricValue(t, reg, "xpress_agent_uplink_batch_errors_total", map[string]string{"kind": "permanent"}); got != 2 {
		t.Errorf("permanent batch errors = %v, want 2", got)
	}
}

func TestUplink_IgnoresForeignAndStaleAcks(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := openSpool(t)
	appendRecords(t, sp, fix("veh-001", 1), fix("veh-001", 2), fix("veh-001", 3))
	hub.SetRespond(func(h *hubtest.Hub, b *protocol.Batch) []protocol.Ack {
		if len(h.Received()) == 1 {
			return []protocol.Ack{
				{AgentID: b.AgentID, SpoolID: "another-spool", Lane: b.Lane, Through: 3},
				{AgentID: b.AgentID, SpoolID: b.SpoolID, Lane: b.Lane, Through: 1},
				{AgentID: b.AgentID, SpoolID: b.SpoolID, Lane: b.Lane, Through: 0},
			}
		}
		return []protocol.Ack{h.Commit(b)}
	})
	_, reg := startUplink(t, sp, hub.URL(), func(c *uplink.Config) { c.AckTimeout = uplink.MinAckTimeout })

	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })

	// Only the Ack through 1 counted, so the resend after the timeout starts at 2.
	if got, want := batchShape(hub.Received()), "gps:1-3 gps:2-3"; got != want {
		t.Errorf("batches = %s, want %s", got, want)
	}
	if got := metricValue(t, reg, "xpress_agent_uplink_acks_ignored_total", map[string]string{"reason": "other_spool"}); got != 1 {
		t.Errorf("acks ignored for another spool = %v, want 1", got)
	}
	if got := metricValue(t, reg, "xpress_agent_uplink_acks_ignored_total", map[string]string{"reason": "stale"}); got != 1 {
		t.Errorf("stale acks ignored = %v, want 1", got)
	}
}

func TestUplink_CloseWhileHubUnreachable(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	hub.Close()
	sp := openSpool(t)
	appendRecords(t, sp, sos("veh-001", "sos-waiting"))
	u, reg := startUplink(t, sp, hub.URL(), nil)

	eventually(t, "a few failed connection attempts", func() bool {
		return metricValue(t, reg, "xpress_agent_uplink_connect_failures_total", nil) >= 3
	})

	if u.State() != uplink.StateDisconnected {
		t.Errorf("state = %s, want disconnected", u.State())
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	if st := sp.Stats()[protocol.LaneSOS]; st.Records != 1 {
		t.Errorf("spool holds %d SOS records after an outage, want 1", st.Records)
	}
}

func TestUplink_MetricsLintClean(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := openSpool(t)
	appendRecords(t, sp, fix("veh-001", 1))
	_, reg := startUplink(t, sp, hub.URL(), nil)
	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })

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
	if got := metricValue(t, reg, "xpress_agent_uplink_acked_seq", map[string]string{"lane": "gps"}); got != 1 {
		t.Errorf("acked seq gauge for gps = %v, want 1", got)
	}
	registered := make(map[string]bool)
	for _, f := range families {
		registered[f.GetName()] = true
	}
	for _, name := range []string{
		"xpress_agent_uplink_inflight_batches", "xpress_agent_uplink_batch_records", "xpress_agent_uplink_batch_bytes",
		"xpress_agent_uplink_gps_batch_target_records", "xpress_agent_uplink_reconnects_total",
		"xpress_agent_uplink_link_dead_total", "xpress_agent_uplink_hub_skipped_records_total",
		"xpress_agent_uplink_batch_round_trip_seconds",
	} {
		if !registered[name] {
			t.Errorf("metric %s is not registered", name)
		}
	}
}

func TestConfig_Validate(t *testing.T) {
	sp := openSpool(t)
	valid := uplink.Config{AgentID: agentID, Region: "ncr", Spool: sp}
	if err := valid.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mutate := range map[string]func(*uplink.Config){
		"bad agent id":      func(c *uplink.Config) { c.AgentID = "agent ncr" },
		"no region":         func(c *uplink.Config) { c.Region = "" },
		"no spool":          func(c *uplink.Config) { c.Spool = nil },
		"hub url no host":   func(c *uplink.Config) { c.HubURL = "localhost" },
		"batch too large":   func(c *uplink.Config) { c.MaxBatchRecords = protocol.MaxBatchRecords + 1 },
		"backoff inverted":  func(c *uplink.Config) { c.MinBackoff, c.MaxBackoff = time.Second, time.Millisecond },
		"batch bytes large": func(c *uplink.Config) { c.MaxBatchBytes = protocol.MaxBatchBytes },
		"window too large":  func(c *uplink.Config) { c.MaxInflightBatches = uplink.MaxInflightBatchesLimit + 1 },
		"negative window":   func(c *uplink.Config) { c.MaxInflightBatches = -1 },
		"negative timeout":  func(c *uplink.Config) { c.AckTimeout = -time.Second },
		"negative ping":     func(c *uplink.Config) { c.PingTimeout = -time.Second },
		"negative keep":     func(c *uplink.Config) { c.KeepAlive = -time.Second },
	} {
		c := valid
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
