package protocol

import (
	"errors"
	"testing"
	"time"
)

func agentBatch() *Batch {
	at := time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)
	return &Batch{
		AgentID: "ncr-1", Region: "NCR-Manila", SpoolID: "abc", Lane: LaneSOS, SentAt: at,
		Records: []Record{
			{Seq: 1, Kind: KindSOSAck, VehicleID: "v1", ReceivedAt: at, Ack: &LocalAck{SOSID: "s-1", Actor: "Maria", At: at}},
			{Seq: 2, Kind: KindSOSNotified, VehicleID: "v1", ReceivedAt: at, Notified: &AgentNotified{
				SOSID: "s-1", Channel: "sms", Address: "+639171234567", ProviderID: "SM1", At: at, Error: "",
			}},
		},
	}
}

func TestAgentRecords_RoundTripInSOSLane(t *testing.T) {
	for _, k := range []RecordKind{KindSOSAck, KindSOSNotified} {
		if k.Lane() != LaneSOS {
			t.Errorf("%s travels in lane %s, want sos", k, k.Lane())
		}
	}
	data, err := EncodeBatch(agentBatch())
	if err != nil {
		t.Fatal(err)
	}
	b, err := DecodeBatch(data)
	if err != nil {
		t.Fatalf("DecodeBatch: %v", err)
	}
	ack, n := b.Records[0].Ack, b.Records[1].Notified
	if ack == nil || ack.SOSID != "s-1" || ack.Actor != "Maria" || !ack.At.Equal(agentBatch().Records[0].Ack.At) {
		t.Errorf("decoded acknowledgement = %+v", ack)
	}
	if n == nil || n.Channel != "sms" || n.Address != "+639171234567" || n.ProviderID != "SM1" || n.Error != "" {
		t.Errorf("decoded notification = %+v", n)
	}
}

func TestAgentRecords_Rules(t *testing.T) {
	at := time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)
	cases := []struct {
		name   string
		mutate func(b *Batch)
		want   error
	}{
		{"ack without payload", func(b *Batch) { b.Records[0].Ack = nil }, ErrInvalidBatch},
		{"ack with a second payload", func(b *Batch) { b.Records[0].SOS = &SOS{ID: "s-1", Time: at} }, ErrInvalidBatch},
		{"notification with an ack payload", func(b *Batch) { b.Records[1].Ack = &LocalAck{SOSID: "s-1", At: at} }, ErrInvalidBatch},
		{"ack with invalid SOS id", func(b *Batch) { b.Records[0].Ack.SOSID = "a b" }, ErrInvalidID},
		{"ack without SOS id", func(b *Batch) { b.Records[0].Ack.SOSID = "" }, ErrInvalidID},
		{"ack without time", func(b *Batch) { b.Records[0].Ack.At = time.Time{} }, ErrInvalidBatch},
		{"notification without time", func(b *Batch) { b.Records[1].Notified.At = time.Time{} }, ErrInvalidBatch},
		{"notification with invalid SOS id", func(b *Batch) { b.Records[1].Notified.SOSID = "x/y" }, ErrInvalidID},
		{"agent records in the GPS lane", func(b *Batch) { b.Lane = LaneGPS }, ErrInvalidBatch},
	}
	for _, tc := range cases {
		b := agentBatch()
		tc.mutate(b)
		if err := b.Validate(); !errors.Is(err, tc.want) {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.want)
		}
	}

	// Content the hub checks itself does not make the batch invalid, since
	// a rejected SOS batch would block the agent's SOS lane.
	b := agentBatch()
	b.Records[0].Ack.Actor = ""
	b.Records[1].Notified.Channel, b.Records[1].Notified.Address = "pager", ""
	if err := b.Validate(); err != nil {
		t.Errorf("batch with an empty actor and an unknown channel: %v, want valid", err)
	}
}
