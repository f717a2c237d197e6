package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/events"
)

// next returns the next event of s, read with Next and Ready, failing the
// test if the subscription ends or nothing arrives within waitTimeout.
func next(t *testing.T, s *events.Subscription) events.Event {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for {
		ev, ok, err := s.Next()
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if ok {
			return ev
		}
		select {
		case <-s.Ready():
		case <-timer.C:
			t.Fatal("no event before timeout")
		}
	}
}

// nextUntilErr returns the events Next returns without waiting, and the
// error that ends them. It fails the test if Next runs out of events
// before the subscription ends.
func nextUntilErr(t *testing.T, s *events.Subscription) ([]events.Event, error) {
	t.Helper()
	var got []events.Event
	for {
		ev, ok, err := s.Next()
		if err != nil {
			return got, err
		}
		if !ok {
			t.Fatalf("Next ran out after %d events, want the subscription to end", len(got))
		}
		got = append(got, ev)
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func TestNext_ReplaysThenDeliversLive(t *testing.T) {
	b, _ := newBus(t, events.Config{})
	for i := range 5 {
		mustPublish(t, b, events.TypeFix, i)
	}
	s := mustSubscribe(t, b, 2)
	for want := uint64(3); want <= 5; want++ {
		if ev := next(t, s); ev.Seq != want {
			t.Fatalf("replayed seq %d, want %d", ev.Seq, want)
		}
	}
	if _, ok, err := s.Next(); ok || err != nil {
		t.Fatalf("Next after the replay = ok %v, err %v, want nothing yet", ok, err)
	}

	mustPublish(t, b, events.TypeIncidentOpened, "live")
	ev := next(t, s)
	if ev.Seq != 6 || ev.Type != events.TypeIncidentOpened || string(ev.Data) != `"live"` {
		t.Errorf("live event = %d %s %s, want 6 %s \"live\"", ev.Seq, ev.Type, ev.Data, events.TypeIncidentOpened)
	}
}

func TestReady_ClosedOnlyWhenSomethingIsDue(t *testing.T) {
	b, _ := newBus(t, events.Config{})
	s := mustSubscribe(t, b, 0)
	if isClosed(s.Ready()) {
		t.Fatal("Ready closed before any event")
	}

	mustPublish(t, b, events.TypeFix, 1)
	if !isClosed(s.Ready()) {
		t.Fatal("Ready open with an event due")
	}
	next(t, s)
	if isClosed(s.Ready()) {
		t.Fatal("Ready closed after the only event was read")
	}
}

func TestReady_WakesWaiterOnPublish(t *testing.T) {
	b, _ := newBus(t, events.Config{})
	const waiters = 10
	subs := make([]*events.Subscription, waiters)
	for i := range subs {
		subs[i] = mustSubscribe(t, b, 0)
	}

	// Each waiter takes Ready's channel before the publish, so the
	// publish must close the very channel it waits on.
	var taken, woke sync.WaitGroup
	taken.Add(waiters)
	for _, s := range subs {
		woke.Go(func() {
			ready := s.Ready()
			taken.Done()
			select {
			case <-ready:
			case <-time.After(waitTimeout):
				t.Error("waiter not woken by Publish")
			}
		})
	}
	taken.Wait()
	mustPublish(t, b, events.TypeIncidentOpened, 1)
	woke.Wait()
	for i, s := range subs {
		if ev := next(t, s); ev.Seq != 1 {
			t.Errorf("subscriber %d got seq %d, want 1", i, ev.Seq)
		}
	}
}

func TestNext_SlowConsumerGetsBufferThenErr(t *testing.T) {
	b, reg := newBus(t, events.Config{Buffer: 4})
	slow := mustSubscribe(t, b, 0)
	for i := range 100 {
		mustPublish(t, b, events.TypeFix, i)
	}

	got, err := nextUntilErr(t, slow)
	if !equalSeqs(seqs(got), seqRange(1, 4)) {
		t.Errorf("slow subscriber got %v before ending, want its buffer 1..4", seqs(got))
	}
	if !errors.Is(err, events.ErrSlowConsumer) {
		t.Errorf("Next error = %v, want ErrSlowConsumer", err)
	}
	if !errors.Is(slow.Err(), events.ErrSlowConsumer) {
		t.Errorf("Err() = %v, want ErrSlowConsumer", slow.Err())
	}
	if !isClosed(slow.Ready()) {
		t.Error("Ready open on an ended subscription")
	}
	if got := metricValue(t, reg, "xpress_events_slow_consumers_total", ""); got != 1 {
		t.Errorf("slow consumers counter = %v, want 1", got)
	}
	if got := metricValue(t, reg, "xpress_events_subscribers", ""); got != 0 {
		t.Errorf("subscribers gauge = %v, want 0", got)
	}

	// Resuming from the last received seq loses nothing.
	resumed := mustSubscribe(t, b, 4)
	for want := uint64(5); want <= 100; want++ {
		if ev := next(t, resumed); ev.Seq != want {
			t.Fatalf("resumed subscriber got seq %d, want %d", ev.Seq, want)
		}
	}
}

// A subscription read with Next has no buffer of its own: once the
// history has dropped its next event, it ends, and resuming is a gap.
func TestNext_EndsWhenHistoryDropsNextEvent(t *testing.T) {
	b, _ := newBus(t, events.Config{History: 5, Buffer: 100})
	s := mustSubscribe(t, b, 0)
	for i := range 20 {
		mustPublish(t, b, events.TypeFix, i)
	}

	got, err := nextUntilErr(t, s)
	if len(got) != 0 || !errors.Is(err, events.ErrSlowConsumer) {
		t.Fatalf("Next = %v, %v, want no events and ErrSlowConsumer", seqs(got), err)
	}
	if _, err := b.Subscribe(0); !errors.Is(err, events.ErrGap) {
		t.Errorf("resume after 0 = %v, want ErrGap", err)
	}
}

func TestNext_BusCloseDeliversPublishedThenErrClosed(t *testing.T) {
	b, _ := newBus(t, events.Config{})
	s := mustSubscribe(t, b, 0)
	mustPublish(t, b, events.TypeFix, 1)
	mustPublish(t, b, events.TypeIncidentOpened, 2)

	ready := s.Ready()
	next(t, s)
	next(t, s)
	waiting := s.Ready()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if !isClosed(ready) || !isClosed(waiting) {
		t.Fatal("Ready channel still open after the bus closed")
	}
	if _, _, err := s.Next(); !errors.Is(err, events.ErrClosed) {
		t.Errorf("Next after the bus closed = %v, want ErrClosed", err)
	}
	if !errors.Is(s.Err(), events.ErrClosed) {
		t.Errorf("Err() = %v, want ErrClosed", s.Err())
	}
}

func TestNext_AfterCloseIsErrUnsubscribed(t *testing.T) {
	b, reg := newBus(t, events.Config{})
	s := mustSubscribe(t, b, 0)
	mustPublish(t, b, events.TypeFix, 1)
	s.Close()

	if _, _, err := s.Next(); !errors.Is(err, events.ErrUnsubscribed) {
		t.Errorf("Next after Close = %v, want ErrUnsubscribed", err)
	}
	if s.Err() != nil {
		t.Errorf("Err() after Close = %v, want nil", s.Err())
	}
	if !isClosed(s.Ready()) {
		t.Error("Ready open after Close")
	}
	if got := metricValue(t, reg, "xpress_events_subscribers", ""); got != 0 {
		t.Errorf("subscribers gauge = %v, want 0", got)
	}
}

func TestSubscription_ReadThroughOneWay(t *testing.T) {
	b, _ := newBus(t, events.Config{})
	for i := range 5 {
		mustPublish(t, b, events.TypeFix, i)
	}

	// C after Next continues from Next's position.
	s := mustSubscribe(t, b, 0)
	for want := uint64(1); want <= 3; want++ {
		if ev := next(t, s); ev.Seq != want {
			t.Fatalf("Next got seq %d, want %d", ev.Seq, want)
		}
	}
	if got := receive(t, s, 2); !equalSeqs(seqs(got), seqRange(4, 5)) {
		t.Errorf("C after Next got %v, want 4..5", seqs(got))
	}
	mustPublish(t, b, events.TypeFix, 6)
	if got := receive(t, s, 1); got[0].Seq != 6 {
		t.Errorf("C got live seq %d, want 6", got[0].Seq)
	}

	// Next on a subscription read through C is an error, not an event.
	if _, ok, err := s.Next(); ok || err == nil {
		t.Errorf("Next on a channel subscription = ok %v, err %v, want an error", ok, err)
	}
	if !isClosed(s.Ready()) {
		t.Error("Ready on a channel subscription is open, want closed so that Next reports the misuse")
	}
}

// Every subscriber that keeps up gets every event, incidents included, in
// order, while publishers and readers run concurrently.
func TestNext_ConcurrentReadersGetEveryEvent(t *testing.T) {
	const readers, total = 20, 3000
	b, _ := newBus(t, events.Config{History: total, Buffer: total})

	var wg sync.WaitGroup
	for r := range readers {
		s := mustSubscribe(t, b, 0)
		wg.Go(func() {
			incidents := 0
			for want := uint64(1); want <= total; want++ {
				ev := next(t, s)
				if ev.Seq != want {
					t.Errorf("reader %d got seq %d, want %d", r, ev.Seq, want)
					return
				}
				if ev.Type == events.TypeIncidentOpened {
					incidents++
				}
			}
			if incidents != total/10 {
				t.Errorf("reader %d got %d incidents, want %d", r, incidents, total/10)
			}
		})
	}
	for i := range total {
		typ := events.TypeFix
		if i%10 == 0 {
			typ = events.TypeIncidentOpened
		}
		mustPublish(t, b, typ, i)
	}
	wg.Wait()
}

// A subscription read with Next costs a small fixed amount of memory,
// whatever Config.Buffer is: it holds no buffer of events.
func TestSubscribe_AllocatesNoEventBuffer(t *testing.T) {
	const subs = 1000
	b, _ := newBus(t, events.Config{Buffer: 4096})
	mustPublish(t, b, events.TypeFix, 1)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	list := make([]*events.Subscription, 0, subs)
	for range subs {
		list = append(list, mustSubscribe(t, b, b.Latest()))
	}
	runtime.ReadMemStats(&after)

	// Slices of list and of the bus's list grow by doubling, so allow for
	// them: each subscription alone takes well under 1 KB.
	perSub := float64(after.TotalAlloc-before.TotalAlloc) / subs
	if perSub > 1024 {
		t.Errorf("Subscribe allocated %.0f bytes per subscription, want under 1024 (no buffer of events)", perSub)
	}
	for _, s := range list {
		if _, ok, err := s.Next(); ok || err != nil {
			t.Fatalf("Next on a fresh subscription = ok %v, err %v", ok, err)
		}
	}
}

func TestEvent_FrameIsMarshalOutput(t *testing.T) {
	manila := time.FixedZone("PHT", 8*3600)
	clock := time.Date(2026, 12, 4, 10, 0, 0, 123456789, manila)
	b, _ := newBus(t, events.Config{Now: func() time.Time { return clock }})

	payloads := map[string]any{
		"map":           map[string]any{"vehicle_id": "MNL-0001", "lat": 14.5995, "lon": 120.9842},
		"html":          map[string]string{"note": `<script>alert("x")</script> & more`},
		"unicode":       "Niño\u2028line\u2029end",
		"raw with gaps": json.RawMessage(`{"vehicle_id": "v1",  "online": true}`),
		"raw html":      json.RawMessage(`{"a":"<b>&"}`),
		"nil":           nil,
		"number":        42,
	}
	for name, payload := range payloads {
		ev := mustPublish(t, b, "custom.type_2", payload)
		want, err := json.Marshal(ev)
		if err != nil {
			t.Fatalf("%s: marshal: %v", name, err)
		}
		if got := ev.Frame(); !bytes.Equal(got, want) {
			t.Errorf("%s: frame\n %s\nwant\n %s", name, got, want)
		}
	}
}

func TestEvent_FrameSharedAndProtected(t *testing.T) {
	b, _ := newBus(t, events.Config{})
	viaNext := mustSubscribe(t, b, 0)
	viaC := mustSubscribe(t, b, 0)
	viaC.C()
	published := mustPublish(t, b, events.TypeIncidentOpened, map[string]int{"id": 7})

	a := next(t, viaNext)
	c := receive(t, viaC, 1)[0]
	if &a.Frame()[0] != &published.Frame()[0] || &c.Frame()[0] != &published.Frame()[0] {
		t.Error("subscribers got copies of the frame, want the one encoded at publish")
	}

	// Data is part of the frame but capped, so an append to it cannot
	// change the frame.
	frame := string(published.Frame())
	_ = append(a.Data, "garbage"...)
	if string(published.Frame()) != frame {
		t.Errorf("append to Data changed the frame to %s", published.Frame())
	}
	if (events.Event{Type: events.TypeFix}).Frame() != nil {
		t.Error("an Event not published by a bus has a frame")
	}
}

func TestBus_RejectsClockOutsideJSONYears(t *testing.T) {
	clock := time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	b, _ := newBus(t, events.Config{Now: func() time.Time { return clock }})
	if _, err := b.Publish(events.TypeFix, 1); err == nil {
		t.Fatal("Publish with a clock in year 10000 succeeded, want an error")
	}
	if b.Latest() != 0 {
		t.Errorf("Latest() = %d after the rejected publish, want 0", b.Latest())
	}
}
