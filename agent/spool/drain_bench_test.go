package spool_test

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

// BenchmarkSpool_SOSAppendDuringDrain appends single SOS records, one at
// a time with a pause between them. Meanwhile, in the "draining" case,
// another goroutine deletes a GPS backlog in steps of deleteStep records
// every deletePause, as the uplink does after the hub's Acks (50,000
// fixes per second). It reports the median and
// 99th percentile of the SOS Append latency. "idle" appends to an empty
// spool, and "drained" to a spool whose backlog was deleted before.
func BenchmarkSpool_SOSAppendDuringDrain(b *testing.B) {
	const (
		backlog     = 300_000
		deleteStep  = 1000
		deletePause = 20 * time.Millisecond
		pause       = 5 * time.Millisecond
	)
	for _, bc := range []struct {
		name    string
		backlog int
	}{
		{"idle", 0},
		{"draining", backlog},
		{"drained", -backlog},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := spool.New(spool.Config{Path: filepath.Join(b.TempDir(), "spool.db"), MaxBytes: -1})
			if err := s.Open(); err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			fill := max(bc.backlog, -bc.backlog)
			for n := 0; n < fill; {
				batch := make([]protocol.Record, min(4096, fill-n))
				for i := range batch {
					batch[i] = gpsFix(n % 1_000_000)
					n++
				}
				if err := s.Append(ctx, batch); err != nil {
					b.Fatal(err)
				}
			}

			if bc.backlog < 0 {
				if err := s.DeleteThrough(protocol.LaneGPS, uint64(fill)); err != nil {
					b.Fatal(err)
				}
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			deletes := 0
			if bc.backlog > 0 {
				wg.Go(func() {
					for through := uint64(deleteStep); through <= uint64(bc.backlog); through += deleteStep {
						select {
						case <-stop:
							return
						case <-time.After(deletePause):
						}
						if err := s.DeleteThrough(protocol.LaneGPS, through); err != nil {
							b.Error(err)
							return
						}
						deletes++
					}
				})
			}

			latencies := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				time.Sleep(pause)
				start := time.Now()
				if err := s.Append(ctx, []protocol.Record{sosAlert(i % 1_000_000)}); err != nil {
					b.Fatal(err)
				}
				latencies = append(latencies, time.Since(start))
			}
			b.StopTimer()
			close(stop)
			wg.Wait()
			if bc.backlog > 0 && deletes*deleteStep >= bc.backlog {
				b.Logf("the backlog was deleted before the last SOS append, so later appends ran without deletes; lower -benchtime below %d or raise backlog", b.N)
			}

			slices.Sort(latencies)
			b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(latencies[len(latencies)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
