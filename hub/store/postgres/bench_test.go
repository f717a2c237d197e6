package postgres

import (
	"context"
	"fmt"
	"testing"

	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/protocol"
)

const (
	benchBatchSize = 1000
	benchVehicles  = 100
)

func benchBatch(n int) *protocol.Batch {
	return storetest.BenchBatch(n, benchBatchSize, benchVehicles)
}

// BenchmarkCommitBatch measures CommitBatch with 1000-fix batches: one
// transaction with COPY, the cursor and the latest-position upsert.
func BenchmarkCommitBatch(b *testing.B) {
	benchCommitBatches(b, benchBatchSize, benchVehicles)
}

// benchCommitBatches measures CommitBatch with batches of size fixes
// from the given number of vehicles and reports the rate in fixes/s.
func benchCommitBatches(b *testing.B, size, vehicles int) {
	s := openStore(b, Config{})
	batches := make([]*protocol.Batch, b.N)
	for i := range batches {
		batches[i] = storetest.BenchBatch(i, size, vehicles)
	}
	ctx := context.Background()

	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := s.CommitBatch(ctx, batches[i]); err != nil {
			b.Fatalf("CommitBatch: %v", err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "fixes/s")
}

// BenchmarkCommitBatch_1000Vehicles measures CommitBatch with 1000-fix
// batches of one fix from each of 1000 vehicles, as many vehicles sending
// now and then produce: every fix moves a latest position, and every
// vehicle's row is checked.
func BenchmarkCommitBatch_1000Vehicles(b *testing.B) {
	benchCommitBatches(b, benchBatchSize, 1000)
}

// BenchmarkCommitBatch_100Fixes measures CommitBatch with 100-fix batches,
// where the fixed cost of the transaction (its round trips to the
// server) weighs more than the rows.
func BenchmarkCommitBatch_100Fixes(b *testing.B) {
	benchCommitBatches(b, 100, benchVehicles)
}

// BenchmarkCommitNaive is the baseline of simple trackers: one INSERT per
// fix, each its own transaction, with no cursor and no latest position.
func BenchmarkCommitNaive(b *testing.B) {
	s := openStore(b, Config{})
	batches := make([]*protocol.Batch, b.N)
	for i := range batches {
		batches[i] = benchBatch(i)
	}
	ctx := context.Background()
	pool := s.Pool()

	b.ResetTimer()
	for i := range b.N {
		batch := batches[i]
		for j := range batch.Records {
			r := &batch.Records[j]
			_, err := pool.Exec(ctx, `
				INSERT INTO fixes (vehicle_id, agent_id, region, ts, received_at, lat, lon, speed_kmh, historical)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
				r.VehicleID, batch.AgentID, batch.Region, r.Fix.Time, r.ReceivedAt, r.Fix.Lat, r.Fix.Lon, r.Fix.SpeedKmh, r.Historical)
			if err != nil {
				b.Fatalf("insert fix %d: %v", r.Seq, err)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*benchBatchSize)/b.Elapsed().Seconds(), "fixes/s")
}

// BenchmarkCommitBatch_Sizes measures CommitBatch with batches of 1,000,
// 5,000 and 10,000 fixes from 100 vehicles, to show how much of a batch's
// cost is per batch rather than per fix. Compare the fixes/s of the sizes.
func BenchmarkCommitBatch_Sizes(b *testing.B) {
	for _, size := range []int{1000, 5000, 10000} {
		b.Run(fmt.Sprintf("fixes=%d", size), func(b *testing.B) {
			benchCommitBatches(b, size, 100)
		})
	}
}
