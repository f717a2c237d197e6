package spool_test

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

// BenchmarkSpool_AppendGPSEviction compares parallel single-fix appends
// below the size cap with appends at the cap, where every commit also
// evicts the oldest fixes. Compare the two ns/op for the cost of eviction.
func BenchmarkSpool_AppendGPSEviction(b *testing.B) {
	for _, bc := range []struct {
		name     string
		maxBytes int64
	}{
		{"below_cap", -1},
		{"evicting", 4 << 20},
	} {
		b.Run(bc.name, func(b *testing.B) {
			reg := prometheus.NewRegistry()
			s := spool.New(spool.Config{Path: filepath.Join(b.TempDir(), "spool.db"), Registerer: reg, MaxBytes: bc.maxBytes})
			if err := s.Open(); err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var n atomic.Int64
			if bc.maxBytes > 0 {
				// Fill to the cap, so every append below evicts.
				for s.Stats()[protocol.LaneGPS].Records == 0 || s.Usage().LiveBytes < bc.maxBytes-s.Usage().SOSReserveBytes-1024 {
					batch := make([]protocol.Record, 500)
					for i := range batch {
						batch[i] = gpsFix(int(n.Add(1) % 1000000))
					}
					if err := s.Append(context.Background(), batch); err != nil {
						b.Fatal(err)
					}
				}
			}
			before := evictedGPS(b, reg)

			b.ReportAllocs()
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					rec := []protocol.Record{gpsFix(int(n.Add(1) % 1000000))}
					if err := s.Append(context.Background(), rec); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()

			evicted := evictedGPS(b, reg) - before
			if bc.maxBytes > 0 && evicted < float64(b.N) {
				b.Errorf("evicted %v fixes during %d appends at the cap, want at least one per append", evicted, b.N)
			}
			if bc.maxBytes < 0 && evicted != 0 {
				b.Errorf("evicted %v fixes below the cap, want 0", evicted)
			}
		})
	}
}

func evictedGPS(b *testing.B, reg *prometheus.Registry) float64 {
	b.Helper()
	families, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "xpress_agent_spool_evicted_records_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if m.GetLabel()[0].GetValue() == "gps" {
				return m.GetCounter().GetValue()
			}
		}
	}
	b.Fatal("xpress_agent_spool_evicted_records_total{lane=\"gps\"} not found")
	return 0
}

// BenchmarkSpool_Read1000 measures reading a batch of 1000 fixes, as the
// uplink does before each GPS batch.
func BenchmarkSpool_Read1000(b *testing.B) {
	s := spool.New(spool.Config{Path: filepath.Join(b.TempDir(), "spool.db"), Registerer: prometheus.NewRegistry()})
	if err := s.Open(); err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	batch := make([]protocol.Record, 1000)
	for i := range batch {
		batch[i] = gpsFix(i)
	}
	if err := s.Append(context.Background(), batch); err != nil {
		b.Fatal(err)
	}

	b.ReportAllocs()
	for b.Loop() {
		recs, err := s.Read(protocol.LaneGPS, 0, 1000, 0)
		if err != nil {
			b.Fatal(err)
		}
		if len(recs) != 1000 {
			b.Fatalf("read %d records, want 1000", len(recs))
		}
	}
}
