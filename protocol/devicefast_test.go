package protocol

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fastFix is a fix with every key, a minute before testNow.
const fastFix = `{"ts":"2026-12-04T09:59:00.123+08:00","lat":14.5995,"lon":120.9842,"speed_kmh":32.5,"heading_deg":181,"accuracy_m":5,"alt_m":-12.25,"battery_pct":80}`

// sentinels are the errors a fix decoder may wrap.
var sentinels = []error{
	ErrMalformed, ErrInvalidUTF8, ErrTooLarge, ErrMissingField, ErrOutOfRange,
	ErrNullIsland, ErrFutureTimestamp, ErrStaleTimestamp,
}

// checkSameResult fails unless the fast path's result equals the one of
// encoding/json's path: the same fixes, or the same error message and
// sentinels.
func checkSameResult(t *testing.T, payload []byte, fixes []Fix, err error) {
	t.Helper()
	wantFixes, wantErr := decodeFixesJSON(payload, testLimits())
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("fast path error = %v, encoding/json path error = %v", err, wantErr)
	}
	if err != nil {
		if err.Error() != wantErr.Error() {
			t.Fatalf("fast path error %q, encoding/json path error %q", err, wantErr)
		}
		for _, s := range sentinels {
			if errors.Is(err, s) != errors.Is(wantErr, s) {
				t.Fatalf("errors.Is(%v, %v) differs between the paths", err, s)
			}
		}
	}
	if !reflect.DeepEqual(fixes, wantFixes) {
		t.Fatalf("fast path fixes %s, encoding/json path fixes %s", fixesString(fixes), fixesString(wantFixes))
	}
}

func fixesString(fixes []Fix) string {
	if fixes == nil {
		return "nil"
	}
	var b strings.Builder
	for _, f := range fixes {
		fmt.Fprintf(&b, "{%s %v %v", f.Time.Format(time.RFC3339Nano), f.Lat, f.Lon)
		for _, p := range []*float64{f.SpeedKmh, f.HeadingDeg, f.AccuracyM, f.AltM, f.BatteryPct} {
			if p == nil {
				b.WriteString(" nil")
			} else {
				fmt.Fprintf(&b, " %v", *p)
			}
		}
		b.WriteString("} ")
	}
	return b.String()
}

func TestDecodeFixesFast_TakesCommonShapes(t *testing.T) {
	cases := []struct {
		name    string
		payload string
		wantErr error
		wantN   int
	}{
		{"every key", fastFix, nil, 1},
		{"required keys only", `{"ts":"2026-12-04T10:00:00+08:00","lat":14.5,"lon":120.9}`, nil, 1},
		{"keys in another order", `{"battery_pct":1,"lon":120.9,"alt_m":3,"ts":"2026-12-04T02:00:00Z","lat":14.5}`, nil, 1},
		{"unix milliseconds", fmt.Sprintf(`{"ts":%d,"lat":14.5,"lon":120.9}`, testNow.UnixMilli()), nil, 1},
		{"negative zero ms", `{"ts":-0,"lat":14.5,"lon":120.9}`, ErrStaleTimestamp, 0},
		{"white space everywhere", " \t\r\n[ \n{ \"ts\" :\t\"2026-12-04T10:00:00+08:00\" , \"lat\" : 14.5 ,\r\n\"lon\": 120.9 } ,\n" + fastFix + " ] \n", nil, 2},
		{"exponents and fractions", `{"ts":"2026-12-04T02:00:00.999999999Z","lat":1.45e1,"lon":-1.209E+2,"speed_kmh":0e0,"heading_deg":3.6E2,"accuracy_m":1e-7,"alt_m":-0,"battery_pct":100.0}`, nil, 1},
		{"fraction longer than nanoseconds", `{"ts":"2026-12-04T02:00:00.1234567891234Z","lat":14.5,"lon":120.9}`, nil, 1},
		{"null optional fields", `{"ts":"2026-12-04T02:00:00Z","lat":14.5,"lon":120.9,"speed_kmh":null,"heading_deg":null,"accuracy_m":null,"alt_m":null,"battery_pct":null}`, nil, 1},
		{"array of one", "[" + fastFix + "]", nil, 1},
		{"array of 1000", "[" + strings.Repeat(fastFix+",", MaxFixesPerMessage-1) + fastFix + "]", nil, MaxFixesPerMessage},
		{"empty array", ` [ ] `, ErrMissingField, 0},
		{"empty object", `{}`, ErrMissingField, 0},
		{"empty object in array", "[" + fastFix + ",{}]", ErrMissingField, 0},
		{"null ts", `{"ts":null,"lat":14.5,"lon":120.9}`, ErrMissingField, 0},
		{"missing ts", `{"lat":14.5,"lon":120.9}`, ErrMissingField, 0},
		{"null lat", `{"ts":"2026-12-04T02:00:00Z","lat":null,"lon":120.9}`, ErrMissingField, 0},
		{"missing lon", `{"ts":"2026-12-04T02:00:00Z","lat":14.5}`, ErrMissingField, 0},
		{"missing ts beats bad lat", `{"lat":91,"lon":120.9}`, ErrMissingField, 0},
		{"stale beats missing lat", `{"ts":"2026-10-01T00:00:00Z"}`, ErrStaleTimestamp, 0},
		{"future", `{"ts":"2027-12-04T10:00:00+08:00","lat":14.5,"lon":120.9}`, ErrFutureTimestamp, 0},
		{"null island", `{"ts":"2026-12-04T02:00:00Z","lat":-0,"lon":0}`, ErrNullIsland, 0},
		{"latitude 91", `{"ts":"2026-12-04T02:00:00Z","lat":91,"lon":120.9}`, ErrOutOfRange, 0},
		{"alt below range", `{"ts":"2026-12-04T02:00:00Z","lat":14.5,"lon":120.9,"alt_m":-1000.5}`, ErrOutOfRange, 0},
		{"first bad fix named", "[" + fastFix + "," + fastFix + `,{"ts":"2026-12-04T02:00:00Z","lat":14.5,"lon":120.9,"speed_kmh":1001}]`, ErrOutOfRange, 0},
		{"underflow to zero", `{"ts":"2026-12-04T02:00:00Z","lat":1e-400,"lon":120.9}`, nil, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			payload := []byte(tc.payload)
			fixes, ok, err := decodeFixesFast(payload, testLimits())
			if !ok {
				t.Fatal("fast path declined a payload of its shape")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) || tc.wantErr == nil && err != nil {
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
			if len(fixes) != tc.wantN {
				t.Fatalf("got %d fixes, want %d", len(fixes), tc.wantN)
			}
			checkSameResult(t, payload, fixes, err)
		})
	}
}

func TestDecodeFixesFast_ValuesAndPointers(t *testing.T) {
	payload := []byte("[" + fastFix + `,{"ts":1796349540000,"lat":-14.5,"lon":-120.9,"heading_deg":90}]`)
	fixes, ok, err := decodeFixesFast(payload, testLimits())
	if !ok || err != nil {
		t.Fatalf("ok = %v, error = %v", ok, err)
	}
	want0 := time.Date(2026, 12, 4, 1, 59, 0, 123e6, time.UTC)
	if f := fixes[0]; !f.Time.Equal(want0) || f.Time.Location() != time.UTC || f.Lat != 14.5995 || f.Lon != 120.9842 ||
		*f.SpeedKmh != 32.5 || *f.HeadingDeg != 181 || *f.AccuracyM != 5 || *f.AltM != -12.25 || *f.BatteryPct != 80 {
		t.Fatalf("fix 0 = %s", fixesString(fixes[:1]))
	}
	f := fixes[1]
	if !f.Time.Equal(time.UnixMilli(1796349540000)) || f.Lat != -14.5 || f.Lon != -120.9 || *f.HeadingDeg != 90 ||
		f.SpeedKmh != nil || f.AccuracyM != nil || f.AltM != nil || f.BatteryPct != nil {
		t.Fatalf("fix 1 = %s", fixesString(fixes[1:]))
	}
	// The optional fields share one backing array but not a value.
	*fixes[0].BatteryPct = 1
	if *fixes[0].AltM != -12.25 || *fixes[1].HeadingDeg != 90 {
		t.Fatal("writing one optional field changed another")
	}
}

func TestDecodeFixesFast_DeclinesOtherShapes(t *testing.T) {
	const ts = `"ts":"2026-12-04T02:00:00Z"`
	for _, tc := range []struct{ name, payload string }{
		{"unknown key", `{` + ts + `,"lat":14.5,"lon":120.9,"extra":1}`},
		{"key in upper case", `{"TS":"2026-12-04T02:00:00Z","lat":14.5,"lon":120.9}`},
		{"key with other case", `{` + ts + `,"Lat":14.5,"lon":120.9}`},
		{"key folding to a known key", "{" + ts + ",\"lat\":14.5,\"lon\":120.9,\"speed_\u212amh\":1}"},
		{"repeated key", `{` + ts + `,"lat":14.5,"lat":14.6,"lon":120.9}`},
		{"repeated null key", `{` + ts + `,"lat":14.5,"lon":120.9,"alt_m":null,"alt_m":1}`},
		{"escape in ts", `{"ts":"2026-12-04T02:00:00\u005a","lat":14.5,"lon":120.9}`},
		{"escape in key", `{"t\u0073":"2026-12-04T02:00:00Z","lat":14.5,"lon":120.9}`},
		{"nested object", `{` + ts + `,"lat":{"v":1},"lon":120.9}`},
		{"array value", `{` + ts + `,"lat":[14.5],"lon":120.9}`},
		{"string number", `{` + ts + `,"lat":"14.5","lon":120.9}`},
		{"bool value", `{` + ts + `,"lat":true,"lon":120.9}`},
		{"leading plus", `{` + ts + `,"lat":+14.5,"lon":120.9}`},
		{"leading zero", `{` + ts + `,"lat":014.5,"lon":120.9}`},
		{"fraction without integer", `{` + ts + `,"lat":.5,"lon":120.9}`},
		{"fraction without digits", `{` + ts + `,"lat":1.,"lon":120.9}`},
		{"exponent without digits", `{` + ts + `,"lat":1e,"lon":120.9}`},
		{"NaN", `{` + ts + `,"lat":NaN,"lon":120.9}`},
		{"overflow", `{` + ts + `,"lat":1e400,"lon":120.9}`},
		{"trailing garbage", `{` + ts + `,"lat":14.5,"lon":120.9}x`},
		{"two objects", `{` + ts + `,"lat":14.5,"lon":120.9}{}`},
		{"trailing comma in object", `{` + ts + `,"lat":14.5,"lon":120.9,}`},
		{"trailing comma in array", `[{` + ts + `,"lat":14.5,"lon":120.9},]`},
		{"null element", `[{` + ts + `,"lat":14.5,"lon":120.9},null]`},
		{"number element", `[1]`},
		{"unclosed array", `[{` + ts + `,"lat":14.5,"lon":120.9}`},
		{"top-level null", `null`},
		{"empty payload", ``},
		{"byte order mark", "\uFEFF{" + ts + `,"lat":14.5,"lon":120.9}`},
		{"ts as float", `{"ts":1.5,"lat":14.5,"lon":120.9}`},
		{"ts negative ms", `{"ts":-1,"lat":14.5,"lon":120.9}`},
		{"ts too large", `{"ts":99999999999999999999,"lat":14.5,"lon":120.9}`},
		{"ts without offset", `{"ts":"2026-12-04T02:00:00","lat":14.5,"lon":120.9}`},
		{"ts offset hour 24", `{"ts":"2026-12-04T02:00:00+24:00","lat":14.5,"lon":120.9}`},
		{"ts with comma fraction", `{"ts":"2026-12-04T02:00:00,5Z","lat":14.5,"lon":120.9}`},
		{"ts true", `{"ts":true,"lat":14.5,"lon":120.9}`},
		{"brace inside ts", `{"ts":"{","lat":14.5,"lon":120.9}`},
		{"too many fixes", "[" + strings.Repeat(fastFix+",", MaxFixesPerMessage) + fastFix + "]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, ok, err := decodeFixesFast([]byte(tc.payload), testLimits()); ok {
				t.Fatalf("fast path took it, error = %v", err)
			}
		})
	}
}

func TestParseRFC3339Exact_MatchesTimeParse(t *testing.T) {
	for _, tc := range []struct {
		s      string
		wantOK bool
	}{
		{"2026-12-04T10:00:00Z", true},
		{"2026-12-04T10:00:00.123+08:00", true},
		{"2026-12-04T10:00:00.1234567891-05:30", true},
		{"2024-02-29T23:59:59.999999999-23:59", true},
		{"0000-01-01T00:00:00Z", true},
		{"9999-12-31T23:59:59+00:00", true},
		{"2025-02-29T00:00:00Z", false},
		{"2026-13-01T00:00:00Z", false},
		{"2026-00-01T00:00:00Z", false},
		{"2026-12-32T00:00:00Z", false},
		{"2026-12-04T24:00:00Z", false},
		{"2026-12-04T10:60:00Z", false},
		{"2026-12-04T10:00:60Z", false},
		{"2026-12-04T10:00:00+24:00", false},
		{"2026-12-04T10:00:00+23:60", false},
		{"2026-12-04T10:00:00,5Z", false},
		{"2026-12-04T10:00:00.Z", false},
		{"2026-12-04t10:00:00Z", false},
		{"2026-12-04T10:00:00z", false},
		{"2026-12-04 10:00:00Z", false},
		{"2026-12-04T1:00:00Z", false},
		{"2026-12-04T10:00:00+0800", false},
		{"2026-12-04T10:00:00", false},
		{"2026-12-04T10:00:00ZZ", false},
		{"+2026-12-04T10:00:00Z", false},
		{"", false},
	} {
		got, ok := parseRFC3339Exact([]byte(tc.s))
		if ok != tc.wantOK {
			t.Errorf("%q: ok = %v, want %v", tc.s, ok, tc.wantOK)
		}
		if !ok {
			continue
		}
		want, err := time.Parse(time.RFC3339Nano, tc.s)
		if err != nil {
			t.Errorf("%q: accepted, time.Parse: %v", tc.s, err)
			continue
		}
		if want = want.UTC(); !reflect.DeepEqual(got, want) {
			t.Errorf("%q: got %v, time.Parse gives %v", tc.s, got, want)
		}
	}
}

func TestDecodeFixesFast_Allocations(t *testing.T) {
	payload := []byte("[" + strings.Repeat(fastFix+",", 99) + fastFix + "]")
	limits := testLimits()
	allocs := testing.AllocsPerRun(20, func() {
		if _, ok, err := decodeFixesFast(payload, limits); !ok || err != nil {
			t.Fatalf("ok = %v, error = %v", ok, err)
		}
	})
	// One []Fix and one []float64 for the optional fields.
	if allocs != 2 {
		t.Fatalf("%v allocations for 100 fixes, want 2", allocs)
	}
}

func FuzzDecodeFixesFastMatchesSlow(f *testing.F) {
	for _, seed := range []string{
		// The seeds of FuzzDecodeFixes.
		`{"ts":"2026-12-04T10:00:00.123+08:00","lat":14.5995,"lon":120.9842,"speed_kmh":32.5}`,
		`[{"ts":1733277600000,"lat":14.5,"lon":120.9},{"ts":"2026-12-04T10:00:00Z","lat":-14.5,"lon":-120.9}]`,
		`{"ts":"2027-12-04T10:00:00+08:00","lat":91,"lon":0}`,
		`[]`, `{`, "\xff",
		fastFix,
		"[" + strings.Repeat(fastFix+",", 9) + fastFix + "]",
		"[" + strings.Repeat(fastFix+",", MaxFixesPerMessage) + fastFix + "]",
		`{"ts":null,"lat":null,"lon":null,"speed_kmh":null,"heading_deg":null,"accuracy_m":null,"alt_m":null,"battery_pct":null}`,
		" \t\r\n[ \n{ \"ts\" :\t1733277600000 , \"lat\" : -0 ,\r\n\"lon\": 1e2 } ] \n",
		`{"ts":"2026-12-04T02:00:00.5-00:30","lat":1E-3,"lon":-0.0,"alt_m":-1000,"battery_pct":100}`,
		`{"ts":"2026-12-04T02:00:00Z","lat":14.5,"lon":120.9,"extra":[1,{"a":null}]}`,
		`{"ts":"2026-12-04T02:00:00Z","LAT":14.5,"lon":120.9}`,
		`{"ts":"2026-12-04T02:00:00\u005a","lat":14.5,"lon":120.9}`,
		`[{},{}]`, `{}`, `null`, `[null]`, `{"ts":-1}`, `{"ts":1.5e12}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		if checkPayload(payload) != nil {
			return
		}
		fixes, ok, err := decodeFixesFast(payload, testLimits())
		if !ok {
			return
		}
		checkSameResult(t, payload, fixes, err)
	})
}

func FuzzParseRFC3339ExactMatchesTimeParse(f *testing.F) {
	for _, seed := range []string{
		"2026-12-04T10:00:00.123+08:00", "2024-02-29T23:59:59.999999999-23:59", "2026-12-04T10:00:00Z",
		"2026-12-04T24:00:00Z", "2026-12-04T10:00:00+24:00", "2026-12-04T10:00:00,5Z",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := parseRFC3339Exact([]byte(s))
		if !ok {
			return
		}
		want, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatalf("%q: accepted, time.Parse: %v", s, err)
		}
		if want = want.UTC(); !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: got %v, time.Parse gives %v", s, got, want)
		}
	})
}
