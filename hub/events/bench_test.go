package events_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// benchSubscribers are the subscriber counts of the publish benchmarks.
var benchSubscribers = []int{1, 100, 1000}

// benchPayload is a fix event's payload, about the size the hub publishes.
var benchPayload = map[string]any{
	"vehicle_id": "MNL-0001", "region": "NCR-Manila", "seq": 123456,
	"fix": map[string]any{"lat": 14.5995, "lon": 120.9842, "speed_kmh": 42.5, "heading": 270, "accuracy_m": 4.5,
		"recorded_at": "2026-12-04T02:00:00.123456Z"},
	"received_at": "2026-12-04T02:00:00.234567Z",
}

// BenchmarkPublish measures Publish with live subscribers that receive
// every event through C. A subscriber that falls behind resumes from its
// last seq, as the WebSocket handler does; resumes/op reports how often
// that happened.
func BenchmarkPublish(b *testing.B) {
	for _, n := range benchSubscribers {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			benchmarkPublish(b, n)
		})
	}
}

func benchmarkPublish(b *testing.B, subscribers int) {
	bus := events.NewBus(events.Config{})

	var resumes atomic.Int64
	var wg sync.WaitGroup
	for range subscribers {
		s, err := bus.Subscribe(0)
		if err != nil {
			b.Fatal(err)
		}
		// The first C makes the channel, which belongs to the setup.
		ch := s.C()
		wg.Go(func() {
			var last uint64
			for {
				for ev := range ch {
					last = ev.Seq
				}
				if !errors.Is(s.Err(), events.ErrSlowConsumer) {
					return
				}
				resumes.Add(1)
				next, err := bus.Subscribe(last)
				if err != nil {
					return
				}
				s, ch = next, next.C()
			}
		})
	}

	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := bus.Publish(events.TypeFix, benchPayload); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()

	if err := bus.Close(); err != nil {
		b.Fatal(err)
	}
	wg.Wait()
	b.ReportMetric(float64(resumes.Load())/float64(b.N), "resumes/op")
}

// BenchmarkPublishNext measures Publish with live subscribers that read
// with Next and Ready, as the WebSocket stream does, and resume from their
// last seq when they fall behind.
func BenchmarkPublishNext(b *testing.B) {
	for _, n := range benchSubscribers {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			benchmarkPublishNext(b, n)
		})
	}
}

func benchmarkPublishNext(b *testing.B, subscribers int) {
	bus := events.NewBus(events.Config{})

	var resumes atomic.Int64
	var wg sync.WaitGroup
	for range subscribers {
		s, err := bus.Subscribe(0)
		if err != nil {
			b.Fatal(err)
		}
		wg.Go(func() {
			var last uint64
			for {
				<-s.Ready()
				ev, ok, err := s.Next()
				switch {
				case ok:
					last = ev.Seq
				case errors.Is(err, events.ErrSlowConsumer):
					resumes.Add(1)
					if s, err = bus.Subscribe(last); err != nil {
						return
					}
				case err != nil:
					return
				}
			}
		})
	}

	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := bus.Publish(events.TypeFix, benchPayload); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()

	if err := bus.Close(); err != nil {
		b.Fatal(err)
	}
	wg.Wait()
	b.ReportMetric(float64(resumes.Load())/float64(b.N), "resumes/op")
}

// BenchmarkSubscribe measures what an open subscription costs: B/op is
// the memory Subscribe allocates for it. Subscriptions stay open in
// batches of 1,000, so that the benchmark's memory stays bounded.
func BenchmarkSubscribe(b *testing.B) {
	bus := events.NewBus(events.Config{})
	for range 100 {
		if _, err := bus.Publish(events.TypeFix, benchPayload); err != nil {
			b.Fatal(err)
		}
	}
	subs := make([]*events.Subscription, 0, 1000)
	closeAll := func() {
		for _, s := range subs {
			s.Close()
		}
		subs = subs[:0]
	}
	b.ReportAllocs()
	for b.Loop() {
		s, err := bus.Subscribe(bus.Latest())
		if err != nil {
			b.Fatal(err)
		}
		if subs = append(subs, s); len(subs) == cap(subs) {
			closeAll()
		}
	}
	b.StopTimer()
	closeAll()
	if err := bus.Close(); err != nil {
		b.Fatal(err)
	}
}

// jsonOnlyFix is a stored fix without its AppendJSON method, so that the
// bus encodes it with encoding/json. Its JSON is the same.
type jsonOnlyFix store.StoredFix

// benchFix is a fix event's payload as the hub publishes it.
func benchFix() store.StoredFix {
	at := time.Date(2026, 12, 4, 2, 0, 0, 234567000, time.UTC)
	speed, heading, accuracy := 42.5, 270.0, 4.5
	return store.StoredFix{
		VehicleID: "MNL-0001", AgentID: "ncr-1", Region: "NCR-Manila",
		Fix: protocol.Fix{Time: at.Add(-111 * time.Millisecond), Lat: 14.5995, Lon: 120.9842,
			SpeedKmh: &speed, HeadingDeg: &heading, AccuracyM: &accuracy},
		ReceivedAt: at,
	}
}

// BenchmarkPublishIn_Fix measures PublishIn of a fix as the hub passes
// it, a store.StoredFix value boxed anew for each event, with no
// subscribers: fast uses its AppendJSON method, json hides the method and
// uses encoding/json.
func BenchmarkPublishIn_Fix(b *testing.B) {
	for _, tc := range []struct {
		name    string
		publish func(*events.Bus, store.StoredFix) error
	}{
		{"fast", func(bus *events.Bus, f store.StoredFix) error {
			_, err := bus.PublishIn(f.Region, events.TypeFix, f)
			return err
		}},
		{"json", func(bus *events.Bus, f store.StoredFix) error {
			_, err := bus.PublishIn(f.Region, events.TypeFix, jsonOnlyFix(f))
			return err
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			fix := benchFix()
			bus := events.NewBus(events.Config{})
			b.ReportAllocs()
			for b.Loop() {
				if err := tc.publish(bus, fix); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if err := bus.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}
