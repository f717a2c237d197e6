package events

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// plainFix is a stored fix without its AppendJSON method, so that the bus
// encodes it with encoding/json. Its JSON is the same.
type plainFix store.StoredFix

// frameFixes returns stored fixes for the frame comparison: the usual
// shape, every optional field, times in other zones and with nanoseconds,
// strings that encoding/json escapes, random floats and values it rejects.
func frameFixes() []store.StoredFix {
	at := time.Date(2026, 12, 4, 2, 0, 0, 234567000, time.UTC)
	floatPtr := func(v float64) *float64 { return &v }
	base := store.StoredFix{
		VehicleID: "MNL-0001", AgentID: "ncr-1", Region: "NCR-Manila",
		Fix: protocol.Fix{Time: at.Add(-111 * time.Millisecond), Lat: 14.5995, Lon: 120.9842,
			SpeedKmh: floatPtr(42.5), HeadingDeg: floatPtr(270), AccuracyM: floatPtr(4.5)},
		ReceivedAt: at,
	}
	fixes := []store.StoredFix{base, {}}
	add := func(mutate func(f *store.StoredFix)) {
		f := base
		mutate(&f)
		fixes = append(fixes, f)
	}
	add(func(f *store.StoredFix) { f.Historical = true })
	add(func(f *store.StoredFix) {
		f.Fix.SpeedKmh, f.Fix.HeadingDeg, f.Fix.AccuracyM, f.Fix.AltM, f.Fix.BatteryPct =
			floatPtr(0), floatPtr(math.Copysign(0, -1)), floatPtr(1e-7), floatPtr(1e21), floatPtr(123456789.123)
	})
	add(func(f *store.StoredFix) { f.Fix.SpeedKmh, f.Fix.HeadingDeg, f.Fix.AccuracyM = nil, nil, nil })
	add(func(f *store.StoredFix) { f.Fix.Lat, f.Fix.Lon = -1e-7, -1.5e22 })
	add(func(f *store.StoredFix) { f.ReceivedAt = at.Add(789).In(time.FixedZone("PHT", 8*3600)) })
	add(func(f *store.StoredFix) {
		f.Fix.Time = at.Truncate(time.Second).In(time.FixedZone("NST", -(3*3600 + 30*60)))
	})
	add(func(f *store.StoredFix) { f.Fix.Time = time.Time{} })
	add(func(f *store.StoredFix) { f.Region = "Parañaque" })
	for _, s := range []string{"a<b>&c", `q"b\s`, "ctl\x01\n", "\u2028", "bad-\xff"} {
		add(func(f *store.StoredFix) { f.VehicleID = s })
		add(func(f *store.StoredFix) { f.Region = s })
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for range 200 {
		add(func(f *store.StoredFix) {
			f.Fix.Lat, f.Fix.Lon = (rng.Float64()-0.5)*180, math.Float64frombits(rng.Uint64())
			f.Fix.AltM = floatPtr(math.Ldexp(rng.Float64(), rng.IntN(160)-80))
			f.Fix.Time = time.Unix(rng.Int64N(4e9), rng.Int64N(1e9)).In(time.FixedZone("", (rng.IntN(49)-24)*1800))
		})
	}
	return fixes
}

// TestPublishIn_FixFrameMatchesJSONPath checks that a fix event's frame is
// byte for byte the frame that encoding/json gives, whether the hub passes
// the fix as a value or a pointer, and that a fix encoding/json rejects is
// rejected the same way.
func TestPublishIn_FixFrameMatchesJSONPath(t *testing.T) {
	at := time.Date(2026, 12, 4, 2, 0, 1, 500, time.UTC)
	newBus := func() *Bus {
		b := NewBus(Config{Now: func() time.Time { return at }, FirstSeq: 1000})
		t.Cleanup(func() {
			if err := b.Close(); err != nil {
				t.Errorf("close bus: %v", err)
			}
		})
		return b
	}
	byValue, byPointer, byJSON := newBus(), newBus(), newBus()
	published := 0
	for _, f := range frameFixes() {
		want, wantErr := byJSON.PublishIn(f.Region, TypeFix, plainFix(f))
		got, gotErr := byValue.PublishIn(f.Region, TypeFix, f)
		gotPtr, gotPtrErr := byPointer.PublishIn(f.Region, TypeFix, &f)
		if wantErr != nil {
			if gotErr == nil || gotPtrErr == nil {
				t.Errorf("%#v: encoding/json failed with %v, the bus published %s and %s", f, wantErr, got.Frame(), gotPtr.Frame())
			}
			continue
		}
		if gotErr != nil || gotPtrErr != nil {
			t.Errorf("%#v: publish failed: %v, %v", f, gotErr, gotPtrErr)
			continue
		}
		published++
		if !bytes.Equal(got.Frame(), want.Frame()) || !bytes.Equal(gotPtr.Frame(), want.Frame()) {
			t.Errorf("%#v:\n value frame   %s\n pointer frame %s\n json frame    %s", f, got.Frame(), gotPtr.Frame(), want.Frame())
		}
		marshaled, err := json.Marshal(f)
		if err != nil || !bytes.Equal(got.Data, marshaled) {
			t.Errorf("%#v: data %s, json.Marshal %s, %v", f, got.Data, marshaled, err)
		}
	}
	if published < 200 {
		t.Errorf("only %d fixes were published, the test lost its cases", published)
	}
}

// selfEncoded appends fixed bytes that differ from its encoding/json
// encoding, so a test can see which path encoded it.
type selfEncoded struct {
	Value string `json:"value"`
	ok    bool
}

func (s selfEncoded) AppendJSON(dst []byte) ([]byte, bool) {
	if !s.ok {
		// Write into the spare capacity to check that the encoder ignores it.
		return append(dst, "garbage"...)[:len(dst)], false
	}
	return append(dst, `{"appended":"`+s.Value+`"}`...), true
}

func TestEncoder_UsesAppendJSONAndFallsBack(t *testing.T) {
	enc := getEncoder()
	defer putEncoder(enc)
	for _, tc := range []struct {
		name string
		data any
		want string
	}{
		{"value appends", selfEncoded{Value: "a<b", ok: true}, `{"appended":"a<b"}`},
		{"pointer appends", &selfEncoded{Value: "x", ok: true}, `{"appended":"x"}`},
		{"false falls back to encoding/json", selfEncoded{Value: "a<b"}, `{"value":"a\u003cb"}`},
		{"nil pointer is null", (*selfEncoded)(nil), `null`},
		{"nil stored fix is null", (*store.StoredFix)(nil), `null`},
		{"other data", map[string]int{"b": 2, "a": 1}, `{"a":1,"b":2}`},
	} {
		got, err := enc.encode(tc.data)
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: encode = %s, %v, want %s", tc.name, got, err, tc.want)
		}
	}
}
