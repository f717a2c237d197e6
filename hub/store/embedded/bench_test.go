package embedded

import (
	"context"
	"testing"

	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/protocol"
)

const (
	benchBatchSize = 1000
	benchVehicles  = 100
)

// BenchmarkCommitBatch measures CommitBatch with 1000-fix batches from 100
// vehicles: one bbolt transaction with the fixes, their index entries,
// the latest positions and the cursor, fsynced on commit. Compare with
// BenchmarkCommitBatch of package postgres.
func BenchmarkCommitBatch(b *testing.B) {
	s := openStore(b, Config{})
	batches := make([]*protocol.Batch, b.N)
	for i := range batches {
		batches[i] = storetest.BenchBatch(i, benchBatchSize, benchVehicles)
	}
	ctx := context.Background()

	b.ResetTimer()
	for i := range b.N {
		if _, err := s.CommitBatch(ctx, batches[i]); err != nil {
			b.Fatalf("CommitBatch: %v", err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*benchBatchSize)/b.Elapsed().Seconds(), "fixes/s")
}

// BenchmarkFixes measures reading one vehicle's track of 1000 fixes out
// of 100 000 fixes of 100 vehicles.
func BenchmarkFixes(b *testing.B) {
	s := openStore(b, Config{})
	ctx := context.Background()
	for i := range 100 {
		if _, err := s.CommitBatch(ctx, storetest.BenchBatch(i, benchBatchSize, benchVehicles)); err != nil {
			b.Fatalf("CommitBatch: %v", err)
		}
	}

	b.ResetTimer()
	for range b.N {
		fixes, err := s.Fixes(ctx, "veh-042", storetest.Epoch.AddDate(0, 0, -1), storetest.Epoch, 0)
		if err != nil || len(fixes) != 1000 {
			b.Fatalf("Fixes = %d fixes, %v, want 1000", len(fixes), err)
		}
	}
}
