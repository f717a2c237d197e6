package protocol

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var testNow = time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)

func testLimits() Limits {
	return Limits{Now: func() time.Time { return testNow }}
}

func TestDecodeFixes_Rules(t *testing.T) {
	cases := []struct {
		name    string
		payload string
		wantErr error
		wantN   int
	}{
		{"rfc3339 with offset", `{"ts":"2026-12-04T10:00:00.123+08:00","lat":14.5995,"lon":120.9842}`, nil, 1},
		{"unix milliseconds", fmt.Sprintf(`{"ts":%d,"lat":14.5995,"lon":120.9842}`, testNow.UnixMilli()), nil, 1},
		{"all optional fields", `{"ts":"2026-12-04T10:00:00+08:00","lat":14.5,"lon":120.9,"speed_kmh":32.5,"heading_deg":181,"accuracy_m":5,"alt_m":12,"battery_pct":80}`, nil, 1},
		{"array of two", `[{"ts":"2026-12-04T09:59:00+08:00","lat":14.5,"lon":120.9},{"ts":"2026-12-04T10:00:00+08:00","lat":14.6,"lon":120.9}]`, nil, 2},
		{"unknown fields ignored", `{"ts":"2026-12-04T10:00:00+08:00","lat":14.5,"lon":120.9,"extra":true}`, nil, 1},
		{"malformed json", `{"ts":`, ErrMalformed, 0},
		{"NaN literal", `{"ts":"2026-12-04T10:00:00+08:00","lat":NaN,"lon":120.9}`, ErrMalformed, 0},
		{"number too large for float64", `{"ts":"2026-12-04T10:00:00+08:00","lat":1e400,"lon":120.9}`, ErrMalformed, 0},
		{"latitude 91", `{"ts":"2026-12-04T10:00:00+08:00","lat":91,"lon":120.9}`, ErrOutOfRange, 0},
		{"latitude -90.0001", `{"ts":"2026-12-04T10:00:00+08:00","lat":-90.0001,"lon":120.9}`, ErrOutOfRange, 0},
		{"longitude 180.5", `{"ts":"2026-12-04T10:00:00+08:00","lat":14,"lon":180.5}`, ErrOutOfRange, 0},
		{"latitude 90 allowed", `{"ts":"2026-12-04T10:00:00+08:00","lat":90,"lon":0}`, nil, 1},
		{"null island", `{"ts":"2026-12-04T10:00:00+08:00","lat":0,"lon":0}`, ErrNullIsland, 0},
		{"missing lat", `{"ts":"2026-12-04T10:00:00+08:00","lon":120.9}`, ErrMissingField, 0},
		{"missing ts", `{"lat":14.5,"lon":120.9}`, ErrMissingField, 0},
		{"null ts", `{"ts":null,"lat":14.5,"lon":120.9}`, ErrMissingField, 0},
		{"ts without offset", `{"ts":"2026-12-04T10:00:00","lat":14.5,"lon":120.9}`, ErrMalformed, 0},
		{"ts as float", `{"ts":1.5,"lat":14.5,"lon":120.9}`, ErrMalformed, 0},
		{"ts negative ms", `{"ts":-1,"lat":14.5,"lon":120.9}`, ErrOutOfRange, 0},
		{"ts a year ahead", `{"ts":"2027-12-04T10:00:00+08:00","lat":14.5,"lon":120.9}`, ErrFutureTimestamp, 0},
		{"ts 4 minutes ahead allowed", `{"ts":"2026-12-04T02:04:00Z","lat":14.5,"lon":120.9}`, nil, 1},
		{"ts 6 minutes ahead", `{"ts":"2026-12-04T02:06:00Z","lat":14.5,"lon":120.9}`, ErrFutureTimestamp, 0},
		{"ts older than retention", `{"ts":"2026-10-01T00:00:00Z","lat":14.5,"lon":120.9}`, ErrStaleTimestamp, 0},
		{"negative speed", `{"ts":"2026-12-04T10:00:00+08:00","lat":14.5,"lon":120.9,"speed_kmh":-1}`, ErrOutOfRange, 0},
		{"battery 101", `{"ts":"2026-12-04T10:00:00+08:00","lat":14.5,"lon":120.9,"battery_pct":101}`, ErrOutOfRange, 0},
		{"heading 361", `{"ts":"2026-12-04T10:00:00+08:00","lat":14.5,"lon":120.9,"heading_deg":361}`, ErrOutOfRange, 0},
		{"empty array", `[]`, ErrMissingField, 0},
		{"one bad fix rejects the array", `[{"ts":"2026-12-04T10:00:00+08:00","lat":14.5,"lon":120.9},{"ts":"2026-12-04T10:00:00+08:00","lat":95,"lon":120.9}]`, ErrOutOfRange, 0},
		{"json string instead of object", `"hello"`, ErrMalformed, 0},
		{"empty payload", ``, ErrMalformed, 0},
		{"invalid utf-8", "{\"ts\":\"2026-12-04T10:00:00+08:00\",\"lat\":14.5,\"lon\":120.9,\"x\":\"\xff\"}", ErrInvalidUTF8, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fixes, err := DecodeFixes([]byte(tc.payload), testLimits())
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if len(fixes) != tc.wantN {
				t.Fatalf("got %d fixes, want %d", len(fixes), tc.wantN)
			}
		})
	}
}

func TestDecodeFixes_NormalisesToUTC(t *testing.T) {
	fixes, err := DecodeFixes([]byte(`{"ts":"2026-12-04T10:00:00.123+08:00","lat":14.5995,"lon":120.9842,"speed_kmh":32.5}`), testLimits())
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2026, 12, 4, 2, 0, 0, 123e6, time.UTC)
	if !fixes[0].Time.Equal(want) {
		t.Errorf("time = %v, want %v", fixes[0].Time, want)
	}
	if fixes[0].Time.Location() != time.UTC {
		t.Errorf("location = %v, want UTC", fixes[0].Time.Location())
	}
	if fixes[0].SpeedKmh == nil || *fixes[0].SpeedKmh != 32.5 {
		t.Errorf("speed = %v, want 32.5", fixes[0].SpeedKmh)
	}
	if fixes[0].BatteryPct != nil {
		t.Errorf("battery = %v, want nil when absent", *fixes[0].BatteryPct)
	}
}

func TestDecodeFixes_ArrayLimit(t *testing.T) {
	one := `{"ts":"2026-12-04T10:00:00+08:00","lat":14.5,"lon":120.9}`
	atLimit := "[" + strings.Repeat(one+",", MaxFixesPerMessage-1) + one + "]"
	if _, err := DecodeFixes([]byte(atLimit), testLimits()); err != nil {
		t.Fatalf("%d fixes: %v", MaxFixesPerMessage, err)
	}
	over := "[" + strings.Repeat(one+",", MaxFixesPerMessage) + one + "]"
	if _, err := DecodeFixes([]byte(over), testLimits()); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("%d fixes: error = %v, want ErrTooLarge", MaxFixesPerMessage+1, err)
	}
}

func TestDecodeFixes_OversizedPayload(t *testing.T) {
	payload := make([]byte, MaxPayloadBytes+1)
	for i := range payload {
		payload[i] = ' '
	}
	if _, err := DecodeFixes(payload, testLimits()); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("error = %v, want ErrTooLarge", err)
	}
}

func TestDecodeSOS_Rules(t *testing.T) {
	newID := func() string { return "agent-1" }
	cases := []struct {
		name         string
		payload      string
		wantErr      error
		wantID       string
		wantAssigned bool
		wantLocation bool
		wantKind     SOSKind
		wantTimeErr  bool
	}{
		{"full", `{"id":"s-1","ts":"2026-12-04T10:00:00+08:00","lat":10.3157,"lon":123.8854,"kind":"medical","note":"chest pain"}`, nil, "s-1", false, true, SOSMedical, false},
		{"bare press", ``, nil, "agent-1", true, false, SOSPanic, false},
		{"empty object", `{}`, nil, "agent-1", true, false, SOSPanic, false},
		{"empty id gets one", `{"id":""}`, nil, "agent-1", true, false, SOSPanic, false},
		{"latitude 91 keeps the sos", `{"id":"s-2","lat":91,"lon":120}`, nil, "s-2", false, false, SOSPanic, false},
		{"null island keeps the sos", `{"id":"s-3","lat":0,"lon":0}`, nil, "s-3", false, false, SOSPanic, false},
		{"only lat keeps the sos", `{"id":"s-4","lat":14}`, nil, "s-4", false, false, SOSPanic, false},
		{"future ts replaced", `{"id":"s-5","ts":"2027-12-04T10:00:00+08:00","lat":14,"lon":121}`, nil, "s-5", false, true, SOSPanic, true},
		{"unparseable ts replaced", `{"id":"s-6","ts":"yesterday"}`, nil, "s-6", false, false, SOSPanic, true},
		{"unknown kind becomes other", `{"id":"s-7","kind":"flood"}`, nil, "s-7", false, false, SOSOther, false},
		{"oversized", `{"id":"s-10","note":"` + strings.Repeat("x", MaxPayloadBytes) + `"}`, ErrTooLarge, "", false, false, "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := DecodeSOS([]byte(tc.payload), testLimits(), newID)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if s.ID != tc.wantID {
				t.Errorf("id = %q, want %q", s.ID, tc.wantID)
			}
			if s.IDAssigned != tc.wantAssigned {
				t.Errorf("id assigned = %v, want %v", s.IDAssigned, tc.wantAssigned)
			}
			if s.HasLocation != tc.wantLocation {
				t.Errorf("has location = %v, want %v (location error %q)", s.HasLocation, tc.wantLocation, s.LocationError)
			}
			if !tc.wantLocation && s.LocationError == "" {
				t.Error("location error is empty for an SOS without a usable position")
			}
			if s.Kind != tc.wantKind {
				t.Errorf("kind = %q, want %q", s.Kind, tc.wantKind)
			}
			if (s.TimeError != "") != tc.wantTimeErr {
				t.Errorf("time error = %q, want set: %v", s.TimeError, tc.wantTimeErr)
			}
			if tc.wantTimeErr && !s.Time.Equal(testNow) {
				t.Errorf("time = %v, want the receive time %v", s.Time, testNow)
			}
		})
	}
}

// A damaged SOS is still a button press: it is kept, and what was wrong
// with it is recorded for the operator.
func TestDecodeSOS_KeepsDamagedPayloads(t *testing.T) {
	newID := func() string { return "agent-1" }
	cases := []struct {
		name         string
		payload      string
		wantID       string
		wantLocation bool
		wantKind     SOSKind
		wantInNote   string
	}{
		{"malformed json", `{"id":`, "agent-1", false, SOSPanic, "not a JSON object"},
		{"json array", `[1,2]`, "agent-1", false, SOSPanic, "not a JSON object"},
		{"bad id replaced", `{"id":"a b","lat":14.6,"lon":121}`, "agent-1", true, SOSPanic, "invalid id"},
		{"id too long replaced", `{"id":"` + strings.Repeat("x", 65) + `"}`, "agent-1", false, SOSPanic, "invalid id"},
		{"id a number", `{"id":5}`, "agent-1", false, SOSPanic, "id is not a string"},
		{"lat a string", `{"id":"s-1","lat":"14.6","lon":121,"kind":"medical"}`, "s-1", false, SOSMedical, ""},
		{"lon out of float range", `{"id":"s-2","lat":14.6,"lon":1e999}`, "s-2", false, SOSPanic, ""},
		{"lat a bool", `{"id":"s-3","lat":true,"lon":121}`, "s-3", false, SOSPanic, ""},
		{"kind a number", `{"id":"s-4","kind":5,"lat":14.6,"lon":121}`, "s-4", true, SOSOther, "kind is not a string"},
		{"note a number", `{"id":"s-5","note":5}`, "s-5", false, SOSPanic, "5"},
		{"note too long cut", `{"id":"s-6","note":"` + strings.Repeat("x", MaxNoteLength+1) + `"}`, "s-6", false, SOSPanic, "note cut"},
		{"invalid utf-8 replaced", "{\"id\":\"s-7\",\"note\":\"caf\xe9\"}", "s-7", false, SOSPanic, "not valid UTF-8"},
		{"byte order mark", "\xef\xbb\xbf{\"id\":\"s-8\",\"lat\":14.6,\"lon\":121}", "s-8", true, SOSPanic, ""},
		{"json null", `null`, "agent-1", false, SOSPanic, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := DecodeSOS([]byte(tc.payload), testLimits(), newID)
			if err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if s.ID != tc.wantID {
				t.Errorf("id = %q, want %q", s.ID, tc.wantID)
			}
			if s.HasLocation != tc.wantLocation {
				t.Errorf("has location = %v, want %v (location error %q)", s.HasLocation, tc.wantLocation, s.LocationError)
			}
			if s.Kind != tc.wantKind {
				t.Errorf("kind = %q, want %q", s.Kind, tc.wantKind)
			}
			if !strings.Contains(s.Note, tc.wantInNote) {
				t.Errorf("note = %q, want it to contain %q", s.Note, tc.wantInNote)
			}
			if !utf8.ValidString(s.Note) {
				t.Errorf("note %q is not valid UTF-8", s.Note)
			}
			if len(s.Note) > MaxNoteLength+500 {
				t.Errorf("note is %d bytes", len(s.Note))
			}
		})
	}
}

func TestDecodeSOSCancel_Rules(t *testing.T) {
	if c, err := DecodeSOSCancel([]byte(`{"id":"s-1","reason":"pressed by mistake"}`)); err != nil || c.ID != "s-1" || c.Reason != "pressed by mistake" {
		t.Errorf("valid cancel: got %+v, %v", c, err)
	}
	for payload, want := range map[string]error{
		`{}`:                ErrMissingField,
		`{"id":"a/b"}`:      ErrInvalidID,
		`[`:                 ErrMalformed,
		"{\"id\":\"\xff\"}": ErrInvalidUTF8,
	} {
		if _, err := DecodeSOSCancel([]byte(payload)); !errors.Is(err, want) {
			t.Errorf("DecodeSOSCancel(%q) error = %v, want %v", payload, err, want)
		}
	}
}

func TestDecodeStatus_Rules(t *testing.T) {
	if s, err := DecodeStatus([]byte(`{"online":true}`)); err != nil || !s.Online {
		t.Errorf("online true: got %+v, %v", s, err)
	}
	if s, err := DecodeStatus([]byte(`{"online":false}`)); err != nil || s.Online {
		t.Errorf("online false: got %+v, %v", s, err)
	}
	if _, err := DecodeStatus([]byte(`{}`)); !errors.Is(err, ErrMissingField) {
		t.Errorf("missing online: error = %v, want ErrMissingField", err)
	}
	if _, err := DecodeStatus([]byte(`{"online":"yes"}`)); !errors.Is(err, ErrMalformed) {
		t.Errorf("string online: error = %v, want ErrMalformed", err)
	}
}

func TestValidateIDs(t *testing.T) {
	for _, id := range []string{"v1", "ABC-123_x", strings.Repeat("a", 64)} {
		if err := ValidateVehicleID(id); err != nil {
			t.Errorf("ValidateVehicleID(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"", strings.Repeat("a", 65), "a/b", "a+b", "a#", "ñ", "a b", "a.b"} {
		if err := ValidateVehicleID(id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("ValidateVehicleID(%q) = %v, want ErrInvalidID", id, err)
		}
	}
	if err := ValidateSOSID("veh-1:1733300000.5"); err != nil {
		t.Errorf("ValidateSOSID with dot and colon: %v", err)
	}
}

func TestReason_Labels(t *testing.T) {
	if got := Reason(fmt.Errorf("wrapped: %w", ErrNullIsland)); got != "null_island" {
		t.Errorf("Reason = %q, want null_island", got)
	}
	if got := Reason(errors.New("x")); got != "other" {
		t.Errorf("Reason = %q, want other", got)
	}
}

func TestCheckRange_NonFinite(t *testing.T) {
	for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if err := checkPosition(v, 120); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("checkPosition(%v) = %v, want ErrOutOfRange", v, err)
		}
	}
}
