package protocol

import (
	"errors"
	"testing"
	"time"
)

func validBatch() *Batch {
	at := time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)
	return &Batch{
		AgentID: "ncr-1", Region: "NCR-Manila", SpoolID: "abc", Lane: LaneGPS, SentAt: at,
		Records: []Record{
			{Seq: 1, Kind: KindFix, VehicleID: "v1", ReceivedAt: at, Fix: &Fix{Time: at, Lat: 14.5, Lon: 120.9}},
			{Seq: 2, Kind: KindFix, VehicleID: "v2", ReceivedAt: at, Fix: &Fix{Time: at, Lat: 14.6, Lon: 121.0}},
		},
	}
}

func TestBatch_RoundTrip(t *testing.T) {
	data, err := EncodeBatch(validBatch())
	if err != nil {
		t.Fatal(err)
	}
	b, err := DecodeBatch(data)
	if err != nil {
		t.Fatal(err)
	}
	if b.First() != 1 || b.Last() != 2 {
		t.Errorf("seq range = %d..%d, want 1..2", b.First(), b.Last())
	}
	if b.Records[1].Fix.Lon != 121.0 {
		t.Errorf("lon = %v, want 121", b.Records[1].Fix.Lon)
	}
}

func TestBatch_Rules(t *testing.T) {
	at := time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)
	cases := []struct {
		name   string
		mutate func(b *Batch)
		want   error
	}{
		{"bad agent id", func(b *Batch) { b.AgentID = "a/b" }, ErrInvalidID},
		{"no spool id", func(b *Batch) { b.SpoolID = "" }, ErrInvalidBatch},
		{"unknown lane", func(b *Batch) { b.Lane = "video" }, ErrInvalidBatch},
		{"no records", func(b *Batch) { b.Records = nil }, ErrInvalidBatch},
		{"seq zero", func(b *Batch) { b.Records[0].Seq = 0 }, ErrInvalidBatch},
		{"seq not increasing", func(b *Batch) { b.Records[1].Seq = 1 }, ErrInvalidBatch},
		{"sos in gps lane", func(b *Batch) {
			b.Records[1] = Record{Seq: 2, Kind: KindSOS, VehicleID: "v1", ReceivedAt: at, SOS: &SOS{ID: "s1", Time: at, Kind: SOSPanic}}
		}, ErrInvalidBatch},
		{"kind without payload", func(b *Batch) { b.Records[0].Fix = nil }, ErrInvalidBatch},
		{"two payloads", func(b *Batch) { b.Records[0].Status = &Status{} }, ErrInvalidBatch},
		{"unknown kind", func(b *Batch) { b.Records[0].Kind = "photo" }, ErrInvalidBatch},
		{"bad vehicle id", func(b *Batch) { b.Records[0].VehicleID = "" }, ErrInvalidID},
		{"no received time", func(b *Batch) { b.Records[0].ReceivedAt = time.Time{} }, ErrInvalidBatch},
		{"fix out of range", func(b *Batch) { b.Records[0].Fix.Lat = 95 }, ErrOutOfRange},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := validBatch()
			tc.mutate(b)
			data, err := EncodeBatch(b)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := DecodeBatch(data); !errors.Is(err, tc.want) {
				t.Fatalf("error = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDecodeBatch_Malformed(t *testing.T) {
	if _, err := DecodeBatch([]byte(`{"agent":`)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("error = %v, want ErrMalformed", err)
	}
}

func TestAck_RoundTrip(t *testing.T) {
	data, err := EncodeAck(&Ack{AgentID: "ncr-1", SpoolID: "abc", Lane: LaneSOS, Through: 42})
	if err != nil {
		t.Fatal(err)
	}
	a, err := DecodeAck(data)
	if err != nil {
		t.Fatal(err)
	}
	if a.Through != 42 || a.Lane != LaneSOS {
		t.Errorf("ack = %+v", a)
	}
	if _, err := DecodeAck([]byte(`{"agent":"ncr-1","lane":"x"}`)); !errors.Is(err, ErrInvalidBatch) {
		t.Errorf("unknown lane: error = %v, want ErrInvalidBatch", err)
	}
}

func TestRecordKind_Lane(t *testing.T) {
	for kind, lane := range map[RecordKind]Lane{KindFix: LaneGPS, KindSOS: LaneSOS, KindSOSCancel: LaneSOS, KindStatus: LaneStatus} {
		if got := kind.Lane(); got != lane {
			t.Errorf("%s.Lane() = %s, want %s", kind, got, lane)
		}
	}
}
