package spool_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

// The agent's own records about an SOS (a local acknowledgement, a
// notification it sent) travel in the SOS lane, after the SOS, and read
// back with their payloads.
func TestSpool_AgentRecordsInSOSLane(t *testing.T) {
	s := openSpool(t, spool.Config{Path: filepath.Join(t.TempDir(), "spool.db")})
	recs := []protocol.Record{
		{Kind: protocol.KindSOS, VehicleID: "taxi-1", ReceivedAt: baseTime, SOS: &protocol.SOS{ID: "sos-1", Kind: protocol.SOSPanic}},
		{Kind: protocol.KindSOSAck, VehicleID: "taxi-1", ReceivedAt: baseTime,
			Ack: &protocol.LocalAck{SOSID: "sos-1", Actor: "Ana Reyes", At: baseTime}},
		{Kind: protocol.KindSOSNotified, VehicleID: "taxi-1", ReceivedAt: baseTime,
			Notified: &protocol.AgentNotified{SOSID: "sos-1", Channel: "sms", Address: "+639171234567", ProviderID: "SM1", At: baseTime}},
	}
	if err := s.Append(context.Background(), recs); err != nil {
		t.Fatalf("append: %v", err)
	}
	got, err := s.Read(protocol.LaneSOS, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("SOS lane holds %d records, want 3", len(got))
	}
	if got[1].Kind != protocol.KindSOSAck || got[1].Ack == nil || got[1].Ack.Actor != "Ana Reyes" || got[1].Seq != 2 {
		t.Errorf("second record = %+v, want the acknowledgement by Ana Reyes as seq 2", got[1])
	}
	if got[2].Kind != protocol.KindSOSNotified || got[2].Notified == nil || got[2].Notified.ProviderID != "SM1" || got[2].Seq != 3 {
		t.Errorf("third record = %+v, want the notification SM1 as seq 3", got[2])
	}
	for _, rec := range got {
		if err := rec.Validate(); err != nil {
			t.Errorf("record %d read back invalid: %v", rec.Seq, err)
		}
	}
	if st := s.Stats()[protocol.LaneGPS]; st.Records != 0 {
		t.Errorf("GPS lane holds %d records, want none", st.Records)
	}
}
