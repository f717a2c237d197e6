package events_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/xpress-ops/tower/hub/events"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for an event; tests never sleep.
const waitTimeout = 5 * time.Second

func newBus(t *testing.T, cfg events.Config) (*events.Bus, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	b := events.NewBus(cfg)
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close bus: %v", err)
		}
	})
	return b, reg
}

func mustPublish(t *testing.T, b *events.Bus, typ string, data any) events.Event {
	t.Helper()
	ev, err := b.Publish(typ, data)
	if err != nil {
		t.Fatalf("publish %s: %v", typ, err)
	}
	return ev
}

func mustSubscribe(t *testing.T, b *events.Bus, after uint64) *events.Subscription {
	t.Helper()
	s, err := b.Subscribe(after)
	if err != nil {
		t.Fatalf("subscribe after %d: %v", after, err)
	}
	t.Cleanup(s.Close)
	return s
}

// receive returns the next n events of s, failing the test if C closes or
// nothing arrives within waitTimeout.
func receive(t *testing.T, s *events.Subscription, n int) []events.Event {
	t.Helper()
	got := make([]events.Event, 0, n)
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for len(got) < n {
		select {
		case ev, ok := <-s.C():
			if !ok {
				t.Fatalf("subscription closed after %d of %d events: %v", len(got), n, s.Err())
			}
			got = append(got, ev)
		case <-timer.C:
			t.Fatalf("received %d of %d events before timeout", len(got), n)
		}
	}
	return got
}

// drain returns every event left in a closed subscription.
func drain(t *testing.T, s *events.Subscription) []events.Event {
	t.Helper()
	var got []events.Event
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-s.C():
			if !ok {
				return got
			}
			got = append(got, ev)
		case <-timer.C:
			t.Fatalf("subscription still open after %d events", len(got))
		}
	}
}

func seqs(evs []events.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, ev := range evs {
		out[i] = ev.Seq
	}
	return out
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func equalSeqs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBus_DeliversInSeqOrder(t *testing.T) {
	clock := time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)
	b, _ := newBus(t, events.Config{Now: func() time.Time { return clock }})
	s := mustSubscribe(t, b, 0)

	for i := range 100 {
		typ := events.TypeFix
		if i%10 == 0 {
			typ = events.TypeIncidentOpened
		}
		ev := mustPublish(t, b, typ, map[string]int{"n": i})
		if ev.Seq != uint64(i+1) {
			t.Fatalf("publish %d returned seq %d, want %d", i, ev.Seq, i+1)
		}
	}

	got := receive(t, s, 100)
	if want := seqRange(1, 100); !equalSeqs(seqs(got), want) {
		t.Fatalf("seqs = %v, want 1..100", seqs(got))
	}
	for i, ev := range got {
		if want := fmt.Sprintf(`{"n":%d}`, i); string(ev.Data) != want {
			t.Errorf("event %d data = %s, want %s", ev.Seq, ev.Data, want)
		}
		if !ev.Time.Equal(clock) {
			t.Errorf("event %d time = %v, want %v", ev.Seq, ev.Time, clock)
		}
	}
	if got[0].Type != events.TypeIncidentOpened || got[1].Type != events.TypeFix {
		t.Errorf("types = %q, %q, want %q, %q", got[0].Type, got[1].Type, events.TypeIncidentOpened, events.TypeFix)
	}
	if b.Latest() != 100 {
		t.Errorf("Latest() = %d, want 100", b.Latest())
	}
}

func TestEvent_JSONShape(t *testing.T) {
	b, _ := newBus(t, events.Config{Now: func() time.Time {
		return time.Date(2026, 12, 4, 10, 0, 0, 0, time.FixedZone("PHT", 8*3600))
	}})
	ev := mustPublish(t, b, events.TypeVehicleStatus, json.RawMessage(`{"vehicle_id": "v1", "online": true}`))

	out, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"type":"vehicle.status","seq":1,"time":"2026-12-04T02:00:00Z","data":{"vehicle_id":"v1","online":true}}`
	if string(out) != want {
		t.Errorf("event JSON = %s, want %s", out, want)
	}
}

func TestBus_ResumeReplaysAfterSeq(t *testing.T) {
	b, _ := newBus(t, events.Config{})
	for i := range 10 {
		mustPublish(t, b, events.TypeFix, i)
	}

	s := mustSubscribe(t, b, 4)
	replayed := receive(t, s, 6)
	if want := seqRange(5, 10); !equalSeqs(seqs(replayed), want) {
		t.Errorf("replayed seqs = %v, want %v", seqs(replayed), want)
	}

	mustPublish(t, b, events.TypeIncidentUpdated, "live")
	live := receive(t, s, 1)
	if live[0].Seq != 11 || live[0].Type != events.TypeIncidentUpdated {
		t.Errorf("live event = %d %s, want 11 %s", live[0].Seq, live[0].Type, events.TypeIncidentUpdated)
	}
}

func TestBus_SubscribeAtLatestGetsOnlyLiveEvents(t *testing.T) {
	b, _ := newBus(t, events.Config{})
	for i := range 5 {
		mustPublish(t, b, events.TypeFix, i)
	}

	s := mustSubscribe(t, b, b.Latest())
	select {
	case ev := <-s.C():
		t.Fatalf("received replayed event %d before any live one", ev.Seq)
	default:
	}
	mustPublish(t, b, events.TypeFix, "live")
	if got := receive(t, s, 1); got[0].Seq != 6 {
		t.Errorf("first event seq = %d, want 6", got[0].Seq)
	}
}

func TestBus_ResumeOlderThanHistoryIsGap(t *testing.T) {
	b, reg := newBus(t, events.Config{History: 5})
	for i := range 12 {
		mustPublish(t, b, events.TypeFix, i)
	}

	// Seqs 8..12 are kept, so resuming after 7 works and after 6 does not.
	s := mustSubscribe(t, b, 7)
	if got := receive(t, s, 5); !equalSeqs(seqs(got), seqRange(8, 12)) {
		t.Errorf("replay after 7 = %v, want 8..12", seqs(got))
	}

	_, err := b.Subscribe(6)
	if !errors.Is(err, events.ErrGap) {
		t.Fatalf("Subscribe(6) error = %v, want ErrGap", err)
	}
	var gap *events.GapError
	if !errors.As(err, &gap) {
		t.Fatalf("Subscribe(6) error %T is not a *GapError", err)
	}
	if gap.Oldest != 8 || gap.Latest != 12 || gap.After != 6 {
		t.Errorf("gap = %+v, want After 6, Oldest 8, Latest 12", *gap)
	}
	if !strings.Contains(err.Error(), "oldest kept event is seq 8") {
		t.Errorf("error message %q does not name the oldest seq", err)
	}
	if got := metricValue(t, reg, "xpress_events_resume_gaps_total", ""); got != 1 {
		t.Errorf("gaps counter = %v, want 1", got)
	}
}

func TestBus_ResumeAheadOfLatestIsGap(t *testing.T) {
	b, _ := newBus(t, events.Config{})
	mustPublish(t, b, events.TypeFix, 1)

	_, err := b.Subscribe(500)
	var gap *events.GapError
	if !errors.As(err, &gap) {
		t.Fatalf("Subscribe(500) error = %v, want a *GapError", err)
	}
	if gap.Latest != 1 || gap.Oldest != 1 {
		t.Errorf("gap = %+v, want Oldest 1, Latest 1", *gap)
	}
}

// A restarted bus starts past every seq of the bus before it, so a client
// resuming from the old bus gets a gap, not a silent resume.
func TestBus_RestartGapsOldClients(t *testing.T) {
	old, _ := newBus(t, events.Config{FirstSeq: 1000})
	for i := range 5 {
		mustPublish(t, old, events.TypeFix, i)
	}
	if got := old.Latest(); got != 1004 {
		t.Fatalf("latest of the first bus = %d, want 1004", got)
	}

	restarted, _ := newBus(t, events.Config{FirstSeq: 2000})
	mustPublish(t, restarted, events.TypeIncidentOpened, 1)
	_, err := restarted.Subscribe(1004)
	var gap *events.GapError
	if !errors.As(err, &gap) {
		t.Fatalf("Subscribe(1004) on the restarted bus: error = %v, want a *GapError", err)
	}
	if gap.Oldest != 2000 {
		t.Errorf("gap oldest = %d, want 2000", gap.Oldest)
	}

	s := mustSubscribe(t, restarted, 1999)
	if got := receive(t, s, 1); got[0].Seq != 2000 {
		t.Errorf("first event seq = %d, want 2000", got[0].Seq)
	}
}

func TestBus_SubscribeAfterZeroOnEmptyBus(t *testing.T) {
	b, _ := newBus(t, events.Config{})
	s := mustSubscribe(t, b, 0)
	mustPublish(t, b, events.TypeFix, 1)
	if got := receive(t, s, 1); got[0].Seq != 1 {
		t.Errorf("first event seq = %d, want 1", got[0].Seq)
	}
}

func TestBus_SlowConsumerClosedWithoutBlockingOthers(t *testing.T) {
	b, reg := newBus(t, events.Config{Buffer: 4})
	slow := mustSubscribe(t, b, 0)
	fast := mustSubscribe(t, b, 0)

	// The publisher and the fast subscriber go in lockstep; the slow one
	// reads nothing. A Publish that blocked would stall the loop.
	fastGot := make(chan []uint64, 1)
	go func() {
		var got []uint64
		defer func() { fastGot <- got }()
		for i := range 100 {
			if _, err := b.Publish(events.TypeFix, i); err != nil {
				t.Errorf("publish %d: %v", i, err)
				return
			}
			ev, ok := <-fast.C()
			if !ok {
				t.Errorf("fast subscriber closed after %d events: %v", len(got), fast.Err())
				return
			}
			got = append(got, ev.Seq)
		}
	}()
	select {
	case got := <-fastGot:
		if !equalSeqs(got, seqRange(1, 100)) {
			t.Errorf("fast subscriber got %v, want 1..100", got)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Publish blocked on a slow subscriber")
	}

	slowGot := drain(t, slow)
	if !equalSeqs(seqs(slowGot), seqRange(1, 4)) {
		t.Errorf("slow subscriber got %v before closing, want its buffer 1..4", seqs(slowGot))
	}
	if !errors.Is(slow.Err(), events.ErrSlowConsumer) {
		t.Errorf("slow subscriber Err() = %v, want ErrSlowConsumer", slow.Err())
	}
	if got := metricValue(t, reg, "xpress_events_slow_consumers_total", ""); got != 1 {
		t.Errorf("slow consumers counter = %v, want 1", got)
	}

	// Resuming from the last received seq loses nothing.
	resumed := mustSubscribe(t, b, slowGot[len(slowGot)-1].Seq)
	if got := receive(t, resumed, 96); !equalSeqs(seqs(got), seqRange(5, 100)) {
		t.Errorf("resumed subscriber got %v, want 5..100", seqs(got))
	}
}

func TestBus_ConcurrentPublishersKeepOrder(t *testing.T) {
	const publishers, perPublisher = 8, 500
	b, _ := newBus(t, events.Config{Buffer: publishers * perPublisher})
	s := mustSubscribe(t, b, 0)

	type payload struct{ P, N int }
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for n := range perPublisher {
				if _, err := b.Publish(events.TypeFix, payload{p, n}); err != nil {
					t.Errorf("publisher %d event %d: %v", p, n, err)
					return
				}
			}
		})
	}
	wg.Wait()

	got := receive(t, s, publishers*perPublisher)
	next := make([]int, publishers)
	for i, ev := range got {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d, want %d", i, ev.Seq, i+1)
		}
		var p payload
		if err := json.Unmarshal(ev.Data, &p); err != nil {
			t.Fatalf("event %d data %s: %v", ev.Seq, ev.Data, err)
		}
		if p.N != next[p.P] {
			t.Fatalf("publisher %d: got event %d, want %d (publish order lost)", p.P, p.N, next[p.P])
		}
		next[p.P]++
	}
	if b.Latest() != publishers*perPublisher {
		t.Errorf("Latest() = %d, want %d", b.Latest(), publishers*perPublisher)
	}
}

func TestBus_CloseClosesSubscriptions(t *testing.T) {
	b, reg := newBus(t, events.Config{})
	a := mustSubscribe(t, b, 0)
	c := mustSubscribe(t, b, 0)
	mustPublish(t, b, events.TypeFix, 1)

	if got := metricValue(t, reg, "xpress_events_subscribers", ""); got != 2 {
		t.Errorf("subscribers gauge = %v, want 2", got)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	for name, s := range map[string]*events.Subscription{"a": a, "c": c} {
		if got := drain(t, s); len(got) != 1 {
			t.Errorf("subscriber %s drained %d events, want the 1 queued", name, len(got))
		}
		if !errors.Is(s.Err(), events.ErrClosed) {
			t.Errorf("subscriber %s Err() = %v, want ErrClosed", name, s.Err())
		}
	}
	if got := metricValue(t, reg, "xpress_events_subscribers", ""); got != 0 {
		t.Errorf("subscribers gauge after close = %v, want 0", got)
	}

	if _, err := b.Publish(events.TypeFix, 2); !errors.Is(err, events.ErrClosed) {
		t.Errorf("Publish after Close error = %v, want ErrClosed", err)
	}
	if _, err := b.Subscribe(0); !errors.Is(err, events.ErrClosed) {
		t.Errorf("Subscribe after Close error = %v, want ErrClosed", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestSubscription_CloseEndsDelivery(t *testing.T) {
	b, reg := newBus(t, events.Config{})
	s := mustSubscribe(t, b, 0)
	other := mustSubscribe(t, b, 0)

	s.Close()
	s.Close()
	if got := drain(t, s); len(got) != 0 {
		t.Errorf("closed subscription delivered %d events", len(got))
	}
	if s.Err() != nil {
		t.Errorf("Err() after Close = %v, want nil", s.Err())
	}
	if got := metricValue(t, reg, "xpress_events_subscribers", ""); got != 1 {
		t.Errorf("subscribers gauge = %v, want 1", got)
	}

	mustPublish(t, b, events.TypeFix, 1)
	if got := receive(t, other, 1); got[0].Seq != 1 {
		t.Errorf("remaining subscriber got seq %d, want 1", got[0].Seq)
	}
	if other.Err() != nil {
		t.Errorf("open subscription Err() = %v, want nil", other.Err())
	}
}

func TestBus_RejectsBadInputWithoutUsingSeq(t *testing.T) {
	b, _ := newBus(t, events.Config{})
	for _, typ := range []string{"", "Fix", "fix event", strings.Repeat("a", 65), "fix\n"} {
		if _, err := b.Publish(typ, 1); !errors.Is(err, events.ErrInvalidType) {
			t.Errorf("Publish(%q) error = %v, want ErrInvalidType", typ, err)
		}
	}
	if _, err := b.Publish(events.TypeFix, make(chan int)); err == nil {
		t.Error("Publish of a channel succeeded, want an encoding error")
	}
	if b.Latest() != 0 {
		t.Errorf("Latest() = %d after rejected publishes, want 0", b.Latest())
	}
	if ev := mustPublish(t, b, "custom.type_2", nil); ev.Seq != 1 || string(ev.Data) != "null" {
		t.Errorf("custom event = seq %d data %s, want seq 1 data null", ev.Seq, ev.Data)
	}
}

func TestBus_MetricsPassPromlint(t *testing.T) {
	b, reg := newBus(t, events.Config{Buffer: 1})
	mustSubscribe(t, b, 0)
	mustPublish(t, b, events.TypeFix, 1)
	mustPublish(t, b, events.TypeIncidentOpened, 2)
	mustPublish(t, b, "custom", 3)
	if _, err := b.Subscribe(99); err == nil {
		t.Fatal("Subscribe(99) succeeded, want a gap")
	}

	problems, err := promlint.NewWithMetricFamilies(gather(t, reg)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	published, err := testutil.GatherAndCount(reg, "xpress_events_published_total")
	if err != nil {
		t.Fatal(err)
	}
	if published != 6 {
		t.Errorf("published_total has %d series, want one per known type plus other (6)", published)
	}
	if got := metricValue(t, reg, "xpress_events_published_total", "other"); got != 1 {
		t.Errorf("published_total{type=other} = %v, want 1", got)
	}
}

func gather(t *testing.T, reg *prometheus.Registry) []*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	return mfs
}

// metricValue returns the value of the counter or gauge name whose first
// label has value label, or of its only series when label is empty.
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	for _, mf := range gather(t, reg) {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s{%s} not found", name, label)
	return 0
}
