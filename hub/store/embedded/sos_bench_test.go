package embedded

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/protocol"
)

// BenchmarkCommitBatch_SOS measures committing a batch of one SOS from a
// new vehicle, which opens an incident. Compare with
// BenchmarkCommitBatch_SOS of package postgres.
func BenchmarkCommitBatch_SOS(b *testing.B) {
	s := openStore(b, Config{})
	batches := make([]*protocol.Batch, b.N)
	at := storetest.Epoch.Add(-time.Minute)
	for i := range batches {
		batches[i] = storetest.NewBatch(storetest.SOSRecord(uint64(i+1), fmt.Sprintf("veh-%06d", i), fmt.Sprintf("sos-%06d", i), at))
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
