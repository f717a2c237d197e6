package protocol

import (
	"errors"
	"testing"
)

// The fuzz targets check that decoders never panic, and that whatever they
// accept obeys the rules a store relies on.

func FuzzDecodeFixes(f *testing.F) {
	for _, seed := range []string{
		`{"ts":"2026-12-04T10:00:00.123+08:00","lat":14.5995,"lon":120.9842,"speed_kmh":32.5}`,
		`[{"ts":1733277600000,"lat":14.5,"lon":120.9},{"ts":"2026-12-04T10:00:00Z","lat":-14.5,"lon":-120.9}]`,
		`{"ts":"2027-12-04T10:00:00+08:00","lat":91,"lon":0}`,
		`[]`, `{`, "\xff",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		fixes, err := DecodeFixes(payload, testLimits())
		if err != nil {
			if Reason(err) == "other" {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if len(fixes) == 0 || len(fixes) > MaxFixesPerMessage {
			t.Fatalf("accepted %d fixes", len(fixes))
		}
		for _, fx := range fixes {
			if err := checkPosition(fx.Lat, fx.Lon); err != nil {
				t.Fatalf("accepted invalid position: %v", err)
			}
			if err := testLimits().checkTime(fx.Time, testNow); err != nil {
				t.Fatalf("accepted invalid time: %v", err)
			}
		}
	})
}

func FuzzDecodeSOS(f *testing.F) {
	for _, seed := range []string{
		`{"id":"s-1","ts":"2026-12-04T10:00:00+08:00","lat":10.3,"lon":123.8,"kind":"crash","note":"x"}`,
		``, `{}`, `{"lat":0,"lon":0}`, `{"id":"a b"}`, `{"ts":99999999999999999}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		s, err := DecodeSOS(payload, testLimits(), func() string { return "assigned" })
		if err != nil {
			if Reason(err) == "other" {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if err := ValidateSOSID(s.ID); err != nil {
			t.Fatalf("accepted invalid id: %v", err)
		}
		if s.HasLocation {
			if err := checkPosition(s.Lat, s.Lon); err != nil {
				t.Fatalf("kept invalid position: %v", err)
			}
		}
		if s.Time.IsZero() {
			t.Fatal("accepted SOS without a time")
		}
	})
}

func FuzzDecodeSOSCancel(f *testing.F) {
	f.Add([]byte(`{"id":"s-1","reason":"mistake"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		c, err := DecodeSOSCancel(payload)
		if err == nil {
			if err := ValidateSOSID(c.ID); err != nil {
				t.Fatalf("accepted invalid id: %v", err)
			}
		}
	})
}

func FuzzDecodeStatus(f *testing.F) {
	f.Add([]byte(`{"online":true}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		_, _ = DecodeStatus(payload)
	})
}

func FuzzDecodeBatch(f *testing.F) {
	data, err := EncodeBatch(validBatch())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte(`{"agent":"a","spool":"s","lane":"sos","records":[{"seq":1,"kind":"sos","vehicle":"v","received_at":"2026-12-04T00:00:00Z","sos":{"id":"x"}}]}`))
	f.Add([]byte(`{"agent":"a","spool":"s","lane":"sos","records":[{"seq":1,"kind":"sos_ack","vehicle":"v","received_at":"2026-12-04T00:00:00Z","ack":{"sos_id":"x","actor":"Maria","at":"2026-12-04T00:00:00Z"}}]}`))
	f.Add([]byte(`{"agent":"a","spool":"s","lane":"sos","records":[{"seq":1,"kind":"sos_notified","vehicle":"v","received_at":"2026-12-04T00:00:00Z","notified":{"sos_id":"x","channel":"sms","address":"+639171234567","provider_id":"SM1","at":"2026-12-04T00:00:00Z"}}]}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		b, err := DecodeBatch(payload)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && Reason(err) == "other" {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		var prev uint64
		for _, r := range b.Records {
			if r.Seq <= prev || r.Kind.Lane() != b.Lane {
				t.Fatalf("accepted out-of-order or wrong-lane record %d", r.Seq)
			}
			prev = r.Seq
			if r.Ack != nil && (ValidateSOSID(r.Ack.SOSID) != nil || r.Ack.At.IsZero()) {
				t.Fatalf("accepted acknowledgement record %d without a valid SOS id and time", r.Seq)
			}
			if r.Notified != nil && (ValidateSOSID(r.Notified.SOSID) != nil || r.Notified.At.IsZero()) {
				t.Fatalf("accepted notification record %d without a valid SOS id and time", r.Seq)
			}
		}
	})
}

func FuzzDecodeAck(f *testing.F) {
	f.Add([]byte(`{"agent":"a","spool":"s","lane":"gps","through":5}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		_, _ = DecodeAck(payload)
	})
}
