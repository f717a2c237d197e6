package protocol

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
)

// jsonEdgeFloats are floats at the edges of encoding/json's number formats:
// signed zeros, the switch between plain and exponent notation at 1e-6
// and 1e21, subnormals, the largest finite float and the values it
// rejects.
var jsonEdgeFloats = []float64{
	0, math.Copysign(0, -1), 1, -1, 0.1, 1.0 / 3, 14.5995, -120.9842, 123456789.123,
	1e-6, 9.99e-7, -9.99e-7, 1e-7, 1e-10, 1.5e-300, 5e-324, -5e-324,
	1e20, 9.999e20, 1e21, -1e21, 1.5e22, 1e100, math.MaxFloat64, -math.MaxFloat64,
	math.NaN(), math.Inf(1), math.Inf(-1),
}

// jsonEdgeTimes are times with and without fractional seconds, in and out of
// UTC, and outside the years 0 to 9999 that time.Time.MarshalJSON accepts.
func jsonEdgeTimes() []time.Time {
	at := time.Date(2026, 12, 4, 2, 0, 0, 123456789, time.UTC)
	return []time.Time{
		at,
		at.Truncate(time.Second),
		at.Truncate(time.Millisecond),
		at.Truncate(time.Microsecond),
		at.Add(100 * time.Nanosecond),
		at.In(time.FixedZone("PHT", 8*3600)),
		at.In(time.FixedZone("NST", -(3*3600 + 30*60))),
		at.In(time.FixedZone("LMT", 8*3600+4*60+20)),
		at.In(time.FixedZone("UTC0", 0)),
		at.In(time.FixedZone("BAD", 24*3600)),
		at.Local(),
		{},
		time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(-1, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 0, 0, 0, time.UTC).In(time.FixedZone("E", 2*3600)),
	}
}

// jsonEdgeFixes returns fixes that combine every edge float in every field
// and every edge time, with optional fields nil and set.
func jsonEdgeFixes() []Fix {
	at := time.Date(2026, 12, 4, 2, 0, 0, 123456789, time.UTC)
	var fixes []Fix
	fixes = append(fixes, Fix{}, Fix{Time: at, Lat: 14.5995, Lon: 120.9842})
	for _, v := range jsonEdgeFloats {
		fixes = append(fixes,
			Fix{Time: at, Lat: v, Lon: 120.9842},
			Fix{Time: at, Lat: 14.5995, Lon: v},
			Fix{Time: at, SpeedKmh: ptr(v)},
			Fix{Time: at, HeadingDeg: ptr(v)},
			Fix{Time: at, AccuracyM: ptr(v)},
			Fix{Time: at, AltM: ptr(v)},
			Fix{Time: at, BatteryPct: ptr(v)},
			Fix{Time: at, SpeedKmh: ptr(v), HeadingDeg: ptr(v), AccuracyM: ptr(v), AltM: ptr(v), BatteryPct: ptr(v)},
		)
	}
	for _, ts := range jsonEdgeTimes() {
		fixes = append(fixes, Fix{Time: ts, Lat: -33.8688, Lon: 151.2093, SpeedKmh: ptr(0), BatteryPct: ptr(87)})
	}
	return fixes
}

// randomJSONFix returns a fix with random times, floats from jsonEdgeFloats and
// random ranges, and each optional field set or nil.
func randomJSONFix(rng *rand.Rand) Fix {
	randomFloat := func() float64 {
		switch rng.IntN(4) {
		case 0:
			return jsonEdgeFloats[rng.IntN(len(jsonEdgeFloats))]
		case 1:
			return (rng.Float64() - 0.5) * 360
		case 2:
			return math.Ldexp(rng.Float64()-0.5, rng.IntN(2100)-1050)
		default:
			return math.Float64frombits(rng.Uint64())
		}
	}
	optional := func() *float64 {
		if rng.IntN(2) == 0 {
			return nil
		}
		return ptr(randomFloat())
	}
	ts := time.Unix(rng.Int64N(400e9)-200e9, rng.Int64N(1e9))
	if rng.IntN(2) == 0 {
		ts = ts.In(time.FixedZone("", (rng.IntN(49)-24)*1800))
	}
	return Fix{Time: ts, Lat: randomFloat(), Lon: randomFloat(),
		SpeedKmh: optional(), HeadingDeg: optional(), AccuracyM: optional(), AltM: optional(), BatteryPct: optional()}
}

// checkFixAppendJSON fails t unless f.AppendJSON appends exactly what
// json.Marshal returns, or reports false. It returns whether the fast
// path produced the bytes.
func checkFixAppendJSON(t *testing.T, f *Fix) bool {
	t.Helper()
	prefix := []byte(`{"prefix":`)
	got, ok := f.AppendJSON(prefix)
	want, err := json.Marshal(f)
	if !ok {
		if !bytes.Equal(got, prefix) {
			t.Errorf("%#v: AppendJSON reported false but changed dst to %s", f, got)
		}
		return false
	}
	if err != nil {
		t.Errorf("%#v: AppendJSON wrote %s, json.Marshal failed: %v", f, got[len(prefix):], err)
		return true
	}
	if !bytes.Equal(got, append(prefix, want...)) {
		t.Errorf("%#v:\n got %s\nwant %s%s", f, got, prefix, want)
	}
	return true
}

func TestFixAppendJSON_EdgeCasesMatchMarshal(t *testing.T) {
	fast, slow := 0, 0
	for _, f := range jsonEdgeFixes() {
		if checkFixAppendJSON(t, &f) {
			fast++
		} else {
			slow++
			// Only values encoding/json rejects may leave the fast path.
			if _, err := json.Marshal(&f); err == nil {
				t.Errorf("%#v: AppendJSON reported false for a fix json.Marshal encodes", f)
			}
		}
	}
	if fast == 0 || slow == 0 {
		t.Errorf("%d fixes took the fast path and %d the slow one, want some of each", fast, slow)
	}
}

func TestFixAppendJSON_RandomFixesMatchMarshal(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		f := randomJSONFix(rng)
		if !checkFixAppendJSON(t, &f) {
			if _, err := json.Marshal(&f); err == nil {
				t.Errorf("%#v: AppendJSON reported false for a fix json.Marshal encodes", f)
			}
		}
	}
}

func TestFixAppendJSON_Nil(t *testing.T) {
	var f *Fix
	got, ok := f.AppendJSON([]byte("x"))
	want, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	if !ok || string(got) != "x"+string(want) {
		t.Errorf("nil fix: AppendJSON = %q, %v, want x%s, true", got, ok, want)
	}
}

// TestFixAppendJSON_CoversEveryField fails when Fix gains or reorders a
// JSON field, because AppendJSON writes the fields it lists by name and
// would drop a new one from every published fix.
func TestFixAppendJSON_CoversEveryField(t *testing.T) {
	known := []string{"ts", "lat", "lon", "speed_kmh", "heading_deg", "accuracy_m", "alt_m", "battery_pct"}
	typ := reflect.TypeFor[Fix]()
	var fields []string
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		fields = append(fields, name)
	}
	if !reflect.DeepEqual(fields, known) {
		t.Errorf("Fix has JSON fields %v, Fix.AppendJSON in fixjson.go writes %v: update it", fields, known)
	}
}

// FuzzFixAppendJSONMatchesMarshal checks that Fix.AppendJSON writes
// exactly what json.Marshal does for any floats, time and zone offset, or
// reports false for a fix that json.Marshal rejects.
func FuzzFixAppendJSONMatchesMarshal(f *testing.F) {
	for i, v := range jsonEdgeFloats {
		f.Add(v, -v, v*3, v, v, v, v, uint8(i), int64(1796349600)+int64(i), int64(i)*123456789, int32(i*1800))
	}
	f.Add(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, uint8(0), int64(-62135596800), int64(0), int32(0))
	f.Add(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, uint8(0xff), int64(253402300799), int64(999999999), int32(-86399))
	f.Fuzz(func(t *testing.T, lat, lon, speed, heading, accuracy, alt, battery float64, present uint8, sec, nsec int64, offset int32) {
		opt := func(bit uint8, v float64) *float64 {
			if present&bit == 0 {
				return nil
			}
			return &v
		}
		ts := time.Unix(sec, nsec)
		if present&0x80 != 0 {
			ts = ts.In(time.FixedZone("", int(offset)))
		} else {
			ts = ts.UTC()
		}
		fix := Fix{Time: ts, Lat: lat, Lon: lon,
			SpeedKmh: opt(1, speed), HeadingDeg: opt(2, heading), AccuracyM: opt(4, accuracy), AltM: opt(8, alt), BatteryPct: opt(16, battery)}
		if !checkFixAppendJSON(t, &fix) {
			if _, err := json.Marshal(&fix); err == nil {
				t.Errorf("%#v: AppendJSON reported false for a fix json.Marshal encodes", fix)
			}
		}
	})
}

func BenchmarkFixAppendJSON(b *testing.B) {
	at := time.Date(2026, 12, 4, 2, 0, 0, 123456000, time.UTC)
	f := Fix{Time: at, Lat: 14.5995, Lon: 120.9842, SpeedKmh: ptr(42.5), HeadingDeg: ptr(270), AccuracyM: ptr(4.5)}
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 256)
		for b.Loop() {
			var ok bool
			if buf, ok = f.AppendJSON(buf[:0]); !ok {
				b.Fatal("fast path rejected the fix")
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(&f); err != nil {
				b.Fatal(err)
			}
		}
	})
}
