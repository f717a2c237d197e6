package spool_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

// BenchmarkSpool_SOSBurst appends 10,000 SOS records, one per call, from
// 10,000 goroutines at once, as the agent's broker does when 10,000
// vehicles press SOS together. ns/op is the time for all of them.
func BenchmarkSpool_SOSBurst(b *testing.B) {
	const n = 10000
	for i := 0; i < b.N; i++ {
		s := spool.New(spool.Config{Path: filepath.Join(b.TempDir(), "spool.db"), Registerer: prometheus.NewRegistry()})
		if err := s.Open(); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		var wg sync.WaitGroup
		for v := 0; v < n; v++ {
			wg.Go(func() {
				now := time.Now().UTC()
				rec := []protocol.Record{{Kind: protocol.KindSOS, VehicleID: fmt.Sprintf("v-%05d", v), ReceivedAt: now,
					SOS: &protocol.SOS{ID: fmt.Sprintf("s-%05d", v), Time: now, Kind: protocol.SOSPanic}}}
				if err := s.Append(context.Background(), rec); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms/burst")
		s.Close()
	}
}
