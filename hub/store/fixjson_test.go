package store_test

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

func floatPtr(v float64) *float64 { return &v }

// jsonEdgeStrings are ids and region names that encoding/json copies
// as they are, and ones it escapes or repairs.
var jsonEdgeStrings = []string{
	"", "MNL-0001", "ncr-1", "NCR-Manila", "Parañaque", "Región de Murcia", "東京", "emoji-😀", "del\x7f",
	"a<b", "a>b", "a&b", `quote"d`, `back\slash`, "/slash", "'apos'", "tab\there", "nul\x00", "bell\x07", "esc\x1b",
	"line\u2028sep", "para\u2029sep", "\xff", "ok-\xc3", "\xed\xa0\x80", "\xef\xbf\xbd", "\U0010ffff", "~",
}

// jsonEdgeFloats are floats at the edges of encoding/json's number formats.
var jsonEdgeFloats = []float64{
	0, math.Copysign(0, -1), 1, -1, 14.5995, 120.9842, 123456789.123, 1e-6, 9.99e-7, 1e-7, -1e-7,
	5e-324, 1e20, 1e21, -1e21, 1.5e300, math.MaxFloat64, math.NaN(), math.Inf(1), math.Inf(-1),
}

// jsonEdgeTimes are times with and without fractional seconds, in and
// out of UTC, and outside the years 0 to 9999 that JSON times allow.
func jsonEdgeTimes() []time.Time {
	at := time.Date(2026, 12, 4, 2, 0, 0, 123456789, time.UTC)
	return []time.Time{
		at, at.Truncate(time.Second), at.Truncate(time.Microsecond), store.Time(at),
		at.In(time.FixedZone("PHT", 8*3600)), at.In(time.FixedZone("NST", -(3*3600 + 30*60))),
		at.In(time.FixedZone("LMT", 8*3600+4*60+20)), at.In(time.FixedZone("BAD", -24*3600)), at.Local(),
		{}, time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
	}
}

func baseStoredFix() store.StoredFix {
	at := time.Date(2026, 12, 4, 2, 0, 0, 123456000, time.UTC)
	return store.StoredFix{
		VehicleID: "MNL-0001", AgentID: "ncr-1", Region: "NCR-Manila",
		Fix: protocol.Fix{Time: at.Add(-time.Second), Lat: 14.5995, Lon: 120.9842,
			SpeedKmh: floatPtr(42.5), HeadingDeg: floatPtr(270), AccuracyM: floatPtr(4.5)},
		ReceivedAt: at,
	}
}

// jsonEdgeStoredFixes returns the base fix with each edge string in each
// string field, each edge float and time, and historical set and unset.
func jsonEdgeStoredFixes() []store.StoredFix {
	var fixes []store.StoredFix
	add := func(mutate func(f *store.StoredFix)) {
		f := baseStoredFix()
		mutate(&f)
		fixes = append(fixes, f)
	}
	add(func(*store.StoredFix) {})
	add(func(f *store.StoredFix) { *f = store.StoredFix{} })
	add(func(f *store.StoredFix) { f.Historical = true })
	add(func(f *store.StoredFix) { f.Fix.SpeedKmh, f.Fix.HeadingDeg, f.Fix.AccuracyM = nil, nil, nil })
	add(func(f *store.StoredFix) { f.Fix.AltM, f.Fix.BatteryPct = floatPtr(-12.25), floatPtr(100) })
	for _, s := range jsonEdgeStrings {
		add(func(f *store.StoredFix) { f.VehicleID = s })
		add(func(f *store.StoredFix) { f.AgentID = s })
		add(func(f *store.StoredFix) { f.Region = s })
	}
	for _, v := range jsonEdgeFloats {
		add(func(f *store.StoredFix) { f.Fix.Lat = v })
		add(func(f *store.StoredFix) { f.Fix.Lon = v })
		add(func(f *store.StoredFix) { f.Fix.SpeedKmh, f.Fix.BatteryPct = floatPtr(v), floatPtr(v) })
	}
	for _, ts := range jsonEdgeTimes() {
		add(func(f *store.StoredFix) { f.ReceivedAt = ts })
		add(func(f *store.StoredFix) { f.Fix.Time = ts })
	}
	return fixes
}

// escapes reports whether encoding/json writes s other than as its bytes
// in quotes.
func escapes(t *testing.T, s string) bool {
	t.Helper()
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatalf("marshal %q: %v", s, err)
	}
	return string(data) != `"`+s+`"`
}

// checkStoredFixAppendJSON fails t unless f.AppendJSON appends exactly
// what json.Marshal returns, or reports false for a fix that json.Marshal
// rejects or whose strings it escapes. Both a value and a pointer are
// checked. It returns whether the fast path produced the bytes.
func checkStoredFixAppendJSON(t *testing.T, f store.StoredFix) bool {
	t.Helper()
	prefix := []byte(`{"prefix":`)
	got, ok := f.AppendJSON(bytes.Clone(prefix))
	gotPtr, okPtr := (&f).AppendJSON(bytes.Clone(prefix))
	want, err := json.Marshal(f)
	wantPtr, errPtr := json.Marshal(&f)
	if ok != okPtr || !bytes.Equal(got, gotPtr) || !bytes.Equal(want, wantPtr) || (err == nil) != (errPtr == nil) {
		t.Fatalf("%#v: value and pointer differ: %s %v, %s %v", f, got, ok, gotPtr, okPtr)
	}
	if !ok {
		if !bytes.Equal(got, prefix) {
			t.Errorf("%#v: AppendJSON reported false but changed dst to %s", f, got)
		}
		if err == nil && !escapes(t, f.VehicleID) && !escapes(t, f.AgentID) && !escapes(t, f.Region) {
			t.Errorf("%#v: AppendJSON reported false for a fix json.Marshal encodes without escapes: %s", f, want)
		}
		return false
	}
	if err != nil {
		t.Errorf("%#v: AppendJSON wrote %s, json.Marshal failed: %v", f, got[len(prefix):], err)
		return true
	}
	if !bytes.Equal(got, append(bytes.Clone(prefix), want...)) {
		t.Errorf("%#v:\n got %s\nwant %s%s", f, got, prefix, want)
	}
	return true
}

func TestStoredFixAppendJSON_EdgeCasesMatchMarshal(t *testing.T) {
	fast, slow := 0, 0
	for _, f := range jsonEdgeStoredFixes() {
		if checkStoredFixAppendJSON(t, f) {
			fast++
		} else {
			slow++
		}
	}
	if fast == 0 || slow == 0 {
		t.Errorf("%d fixes took the fast path and %d the slow one, want some of each", fast, slow)
	}
}

func TestStoredFixAppendJSON_RandomFixesMatchMarshal(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	str := func() string {
		if rng.IntN(2) == 0 {
			return jsonEdgeStrings[rng.IntN(len(jsonEdgeStrings))]
		}
		b := make([]byte, rng.IntN(12))
		for i := range b {
			b[i] = byte(rng.IntN(256))
			if rng.IntN(4) != 0 {
				b[i] = byte('a' + rng.IntN(26))
			}
		}
		return string(b)
	}
	num := func() float64 {
		if rng.IntN(2) == 0 {
			return jsonEdgeFloats[rng.IntN(len(jsonEdgeFloats))]
		}
		return math.Float64frombits(rng.Uint64())
	}
	opt := func() *float64 {
		if rng.IntN(2) == 0 {
			return nil
		}
		return floatPtr(num())
	}
	ts := func() time.Time {
		return time.Unix(rng.Int64N(400e9)-200e9, rng.Int64N(1e9)).In(time.FixedZone("", (rng.IntN(49)-24)*1800))
	}
	for range 20000 {
		f := store.StoredFix{
			VehicleID: str(), AgentID: str(), Region: str(),
			Fix: protocol.Fix{Time: ts(), Lat: num(), Lon: num(),
				SpeedKmh: opt(), HeadingDeg: opt(), AccuracyM: opt(), AltM: opt(), BatteryPct: opt()},
			ReceivedAt: ts(), Historical: rng.IntN(2) == 0,
		}
		checkStoredFixAppendJSON(t, f)
	}
}

// TestStoredFixAppendJSON_CoversEveryField fails when StoredFix gains or
// reorders a JSON field, because AppendJSON writes the fields it lists by
// name and would drop a new one from every published fix.
func TestStoredFixAppendJSON_CoversEveryField(t *testing.T) {
	known := []string{"vehicle_id", "agent_id", "region", "fix", "received_at", "historical"}
	typ := reflect.TypeFor[store.StoredFix]()
	var fields []string
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		fields = append(fields, name)
	}
	if !reflect.DeepEqual(fields, known) {
		t.Errorf("StoredFix has JSON fields %v, StoredFix.AppendJSON in fixjson.go writes %v: update it", fields, known)
	}
}

// FuzzStoredFixAppendJSONMatchesMarshal checks that StoredFix.AppendJSON
// writes exactly what json.Marshal does for any strings, floats and
// times, or reports false for a fix json.Marshal rejects or escapes.
func FuzzStoredFixAppendJSONMatchesMarshal(f *testing.F) {
	for i, s := range jsonEdgeStrings {
		v := jsonEdgeFloats[i%len(jsonEdgeFloats)]
		f.Add(s, "ncr-1", "NCR-Manila", v, -v, v, uint8(i), int64(1796349600)+int64(i), int64(i)*123456789, int32(i*1800))
	}
	f.Add("", "", "", 0.0, 0.0, 0.0, uint8(0), int64(-62135596800), int64(0), int32(0))
	f.Fuzz(func(t *testing.T, vehicle, agent, region string, lat, lon, speed float64, flags uint8, sec, nsec int64, offset int32) {
		ts := time.Unix(sec, nsec).UTC()
		if flags&1 != 0 {
			ts = ts.In(time.FixedZone("", int(offset)))
		}
		fix := store.StoredFix{
			VehicleID: vehicle, AgentID: agent, Region: region,
			Fix:        protocol.Fix{Time: ts, Lat: lat, Lon: lon},
			ReceivedAt: ts.Add(time.Duration(nsec)), Historical: flags&2 != 0,
		}
		if flags&4 != 0 {
			fix.Fix.SpeedKmh = &speed
		}
		checkStoredFixAppendJSON(t, fix)
	})
}
