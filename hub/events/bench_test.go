package events_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/xpress-ops/tower/hub/events"
)

// BenchmarkPublish measures Publish with live subscribers that receive
// every event. A subscriber that falls behind resumes from its last seq,
// as the WebSocket handler does; resumes/op reports how often that happened.
func BenchmarkPublish(b *testing.B) {
	for _, n := range []int{1, 1000} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			benchmarkPublish(b, n)
		})
	}
}

func benchmarkPublish(b *testing.B, subscribers int) {
	bus := events.NewBus(events.Config{})
	payload := map[string]any{"vehicle_id": "MNL-0001", "fix": map[string]float64{"lat": 14.5995, "lon": 120.9842}}

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
				for ev := range s.C() {
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
				s = next
			}
		})
	}

	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := bus.Publish(events.TypeFix, payload); err != nil {
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
