package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/protocol"
)

// BenchmarkCommitBatch_SOS measures committing a batch of one SOS from a
// new vehicle, which opens an incident: the store's share of the time from
// an SOS press to incident.opened.
func BenchmarkCommitBatch_SOS(b *testing.B) {
	s := openStore(b, Config{})
	batches := make([]*protocol.Batch, b.N)
	at := storetest.Epoch.Add(-time.Minute)
	for i := range batches {
		rec := storetest.SOSRecord(uint64(i+1), fmt.Sprintf("veh-%06d", i), fmt.Sprintf("sos-%06d", i), at)
		batches[i] = storetest.NewBatch(rec)
	}
	ctx := context.Background()

	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		res, err := s.CommitBatch(ctx, batches[i])
		if err != nil {
			b.Fatalf("CommitBatch: %v", err)
		}
		if len(res.Incidents) != 1 || !res.Incidents[0].Opened {
			b.Fatalf("SOS %d opened no incident: %+v", i, res.Incidents)
		}
	}
}

// BenchmarkCommitBatch_SOSBurst measures committing batches of 1,000 SOS,
// each from a vehicle of its own, as the uplink sends a burst of SOS: each
// op is one batch, and the incidents table grows by 1,000 per op.
func BenchmarkCommitBatch_SOSBurst(b *testing.B) {
	s := openStore(b, Config{})
	const size = 1000
	at := storetest.Epoch.Add(-time.Minute)
	batches := make([]*protocol.Batch, b.N)
	for i := range batches {
		recs := make([]protocol.Record, size)
		for j := range recs {
			n := i*size + j
			recs[j] = storetest.SOSRecord(uint64(n+1), fmt.Sprintf("veh-%07d", n), fmt.Sprintf("sos-%07d", n), at)
		}
		batches[i] = storetest.NewBatch(recs...)
	}
	ctx := context.Background()

	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		res, err := s.CommitBatch(ctx, batches[i])
		if err != nil {
			b.Fatalf("CommitBatch: %v", err)
		}
		if len(res.Incidents) != size {
			b.Fatalf("batch %d opened %d incidents, want %d", i, len(res.Incidents), size)
		}
	}
	b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "sos/s")
}
