package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits of the device contract.
const (
	// MaxFixesPerMessage is the longest fix array a vehicle may publish at once.
	MaxFixesPerMessage = 1000
	// MaxPayloadBytes is the largest device payload accepted. A full fix
	// array with every optional field is about 200 KiB.
	MaxPayloadBytes = 256 << 10
	// MaxNoteLength is the longest SOS note or cancel reason, in bytes.
	MaxNoteLength = 1000
	// DefaultMaxFuture is how far ahead of the receiver's clock a timestamp may be.
	DefaultMaxFuture = 5 * time.Minute
	// DefaultRetention is how old a fix may be and still be accepted.
	DefaultRetention = 30 * 24 * time.Hour
)

// Limits bounds the timestamps a decoder accepts.
type Limits struct {
	// Now is the receiver's clock. Nil means time.Now.
	Now func() time.Time
	// MaxFuture is how far ahead of Now a timestamp may be. Zero means DefaultMaxFuture.
	MaxFuture time.Duration
	// Retention is how far behind Now a fix may be. Zero means DefaultRetention.
	Retention time.Duration
}

func (l Limits) now() time.Time {
	if l.Now == nil {
		return time.Now()
	}
	return l.Now()
}

func (l Limits) maxFuture() time.Duration {
	if l.MaxFuture <= 0 {
		return DefaultMaxFuture
	}
	return l.MaxFuture
}

func (l Limits) retention() time.Duration {
	if l.Retention <= 0 {
		return DefaultRetention
	}
	return l.Retention
}

// checkTime applies the timestamp rules: no more than MaxFuture ahead of
// now, no older than Retention.
func (l Limits) checkTime(ts, now time.Time) error {
	if ts.After(now.Add(l.maxFuture())) {
		return fmt.Errorf("%w: ts %s is more than %s ahead of %s", ErrFutureTimestamp,
			ts.UTC().Format(time.RFC3339), l.maxFuture(), now.UTC().Format(time.RFC3339))
	}
	if ts.Before(now.Add(-l.retention())) {
		return fmt.Errorf("%w: ts %s is more than %s old", ErrStaleTimestamp,
			ts.UTC().Format(time.RFC3339), l.retention())
	}
	return nil
}

// Fix is one validated GPS position. Times are UTC.
type Fix struct {
	Time       time.Time `json:"ts"`
	Lat        float64   `json:"lat"`
	Lon        float64   `json:"lon"`
	SpeedKmh   *float64  `json:"speed_kmh,omitempty"`
	HeadingDeg *float64  `json:"heading_deg,omitempty"`
	AccuracyM  *float64  `json:"accuracy_m,omitempty"`
	AltM       *float64  `json:"alt_m,omitempty"`
	BatteryPct *float64  `json:"battery_pct,omitempty"`
}

// SOSKind is the kind of emergency a driver reports.
type SOSKind string

// The SOS kinds of the device contract.
const (
	SOSPanic      SOSKind = "panic"
	SOSCrash      SOSKind = "crash"
	SOSMedical    SOSKind = "medical"
	SOSFire       SOSKind = "fire"
	SOSHarassment SOSKind = "harassment"
	SOSOther      SOSKind = "other"
)

// SOS is a validated SOS alert. An SOS is never rejected for its content,
// because a driver in a tunnel may have no position and a damaged message
// is still a button press: see DecodeSOS.
type SOS struct {
	ID   string    `json:"id"`
	Time time.Time `json:"ts"`
	// HasLocation is false when the device sent no usable position.
	HasLocation bool    `json:"has_location"`
	Lat         float64 `json:"lat,omitempty"`
	Lon         float64 `json:"lon,omitempty"`
	Kind        SOSKind `json:"kind"`
	Note        string  `json:"note,omitempty"`
	// IDAssigned is true when the device sent no id and the receiver made one.
	IDAssigned bool `json:"id_assigned,omitempty"`
	// LocationError is the reason a sent position was dropped.
	LocationError string `json:"location_error,omitempty"`
	// TimeError is the reason a sent timestamp was replaced by the receive time.
	TimeError string `json:"time_error,omitempty"`
	// PayloadError lists the parts of a damaged payload that were replaced
	// or ignored. Note repeats it, so operators see it on the incident.
	PayloadError string `json:"payload_error,omitempty"`
}

// SOSCancel is a driver's request to cancel an SOS. An operator must
// confirm it, because a cancel may be coerced.
type SOSCancel struct {
	ID     string `json:"id"`
	Reason string `json:"reason,omitempty"`
}

// Status is a vehicle's online state, usually its MQTT will message.
type Status struct {
	Online bool `json:"online"`
}

// rawFix is a fix as a device sends it, before validation.
type rawFix struct {
	TS         json.RawMessage `json:"ts"`
	Lat        *float64        `json:"lat"`
	Lon        *float64        `json:"lon"`
	SpeedKmh   *float64        `json:"speed_kmh"`
	HeadingDeg *float64        `json:"heading_deg"`
	AccuracyM  *float64        `json:"accuracy_m"`
	AltM       *float64        `json:"alt_m"`
	BatteryPct *float64        `json:"battery_pct"`
}

// checkPayload applies the rules every device payload shares.
func checkPayload(payload []byte) error {
	if len(payload) > MaxPayloadBytes {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(payload), MaxPayloadBytes)
	}
	if !utf8.Valid(payload) {
		return ErrInvalidUTF8
	}
	return nil
}

// DecodeFixes decodes a fix payload: one JSON object or an array of up to
// MaxFixesPerMessage objects. The first invalid fix rejects the whole
// message, so a device learns that its buffer holds bad data.
func DecodeFixes(payload []byte, limits Limits) ([]Fix, error) {
	if err := checkPayload(payload); err != nil {
		return nil, err
	}
	if fixes, ok, err := decodeFixesFast(payload, limits); ok {
		return fixes, err
	}
	return decodeFixesJSON(payload, limits)
}

// decodeFixesJSON is DecodeFixes with encoding/json, for every payload the
// fast path of devicefast.go declines. It defines what DecodeFixes accepts.
func decodeFixesJSON(payload []byte, limits Limits) ([]Fix, error) {
	trimmed := bytes.TrimLeft(payload, " \t\r\n")
	var raws []rawFix
	if len(trimmed) > 0 && trimmed[0] == '[' {
		if err := json.Unmarshal(payload, &raws); err != nil {
			return nil, fmt.Errorf("%w: fix array: %v", ErrMalformed, err)
		}
		if err := checkFixCount(len(raws)); err != nil {
			return nil, err
		}
	} else {
		var one rawFix
		if err := json.Unmarshal(payload, &one); err != nil {
			return nil, fmt.Errorf("%w: fix: %v", ErrMalformed, err)
		}
		raws = []rawFix{one}
	}

	now := limits.now()
	fixes := make([]Fix, len(raws))
	for i := range raws {
		f, err := raws[i].validate(limits, now)
		if err != nil {
			return nil, fixError(i, len(raws), err)
		}
		fixes[i] = f
	}
	return fixes, nil
}

// checkFixCount applies the length rules of a fix array.
func checkFixCount(n int) error {
	if n == 0 {
		return fmt.Errorf("%w: fix array is empty", ErrMissingField)
	}
	if n > MaxFixesPerMessage {
		return fmt.Errorf("%w: %d fixes in one message, limit %d", ErrTooLarge, n, MaxFixesPerMessage)
	}
	return nil
}

// fixError names the fix that err is about when the message holds more
// than one.
func fixError(i, n int, err error) error {
	if n > 1 {
		return fmt.Errorf("fix %d: %w", i, err)
	}
	return err
}

func (r *rawFix) validate(limits Limits, now time.Time) (Fix, error) {
	f := Fix{
		SpeedKmh: r.SpeedKmh, HeadingDeg: r.HeadingDeg, AccuracyM: r.AccuracyM,
		AltM: r.AltM, BatteryPct: r.BatteryPct,
	}
	hasTime := len(r.TS) > 0 && string(r.TS) != "null"
	if hasTime {
		ts, err := parseTimestamp(r.TS)
		if err != nil {
			return Fix{}, err
		}
		f.Time = ts
	}
	hasPosition := r.Lat != nil && r.Lon != nil
	if hasPosition {
		f.Lat, f.Lon = *r.Lat, *r.Lon
	}
	if err := checkFix(&f, hasTime, hasPosition, limits, now); err != nil {
		return Fix{}, err
	}
	return f, nil
}

// checkFix applies the rules of one decoded fix, in this order. A
// timestamp is present and within limits (one that does not parse fails
// before this). Lat and lon are present and valid. Each optional field
// present is in its range. Both decoding paths use it, so they reject the
// same fixes with the same errors.
func checkFix(f *Fix, hasTime, hasPosition bool, limits Limits, now time.Time) error {
	if !hasTime {
		return fmt.Errorf("%w: ts", ErrMissingField)
	}
	if err := limits.checkTime(f.Time, now); err != nil {
		return err
	}
	if !hasPosition {
		return fmt.Errorf("%w: lat and lon are required", ErrMissingField)
	}
	if err := checkPosition(f.Lat, f.Lon); err != nil {
		return err
	}
	for _, opt := range [...]struct {
		name     string
		value    *float64
		min, max float64
	}{
		{"speed_kmh", f.SpeedKmh, 0, 1000},
		{"heading_deg", f.HeadingDeg, 0, 360},
		{"accuracy_m", f.AccuracyM, 0, 1e6},
		{"alt_m", f.AltM, -1000, 20000},
		{"battery_pct", f.BatteryPct, 0, 100},
	} {
		if opt.value != nil {
			if err := checkRange(opt.name, *opt.value, opt.min, opt.max); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkPosition applies the position rules: finite, in range, not (0, 0).
func checkPosition(lat, lon float64) error {
	if err := checkRange("lat", lat, -90, 90); err != nil {
		return err
	}
	if err := checkRange("lon", lon, -180, 180); err != nil {
		return err
	}
	if lat == 0 && lon == 0 {
		return ErrNullIsland
	}
	return nil
}

func checkRange(name string, v, lo, hi float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < lo || v > hi {
		return fmt.Errorf("%w: %s %v not in [%v, %v]", ErrOutOfRange, name, v, lo, hi)
	}
	return nil
}

// parseTimestamp reads an RFC 3339 string with an offset, or integer Unix
// milliseconds, and returns UTC.
func parseTimestamp(raw json.RawMessage) (time.Time, error) {
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return time.Time{}, fmt.Errorf("%w: ts: %v", ErrMalformed, err)
		}
		ts, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return time.Time{}, fmt.Errorf("%w: ts %q is not RFC 3339 with an offset", ErrMalformed, s)
		}
		return ts.UTC(), nil
	}
	ms, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: ts %s is neither an RFC 3339 string nor integer Unix milliseconds", ErrMalformed, truncate(string(raw), 40))
	}
	// Years 1970 to 9999 keep the value well inside time.Time's range.
	if ms < 0 || ms > 253402300799999 {
		return time.Time{}, fmt.Errorf("%w: ts %d ms", ErrOutOfRange, ms)
	}
	return time.UnixMilli(ms).UTC(), nil
}

// DecodeSOS decodes an SOS payload. newID makes an id when the device sent
// none or an invalid one. An SOS is never rejected for its content,
// because a damaged message is still a button press. Invalid UTF-8 is
// replaced and a payload that is not a JSON object counts as a bare press.
// Each field of the wrong type or out of range is dropped, with the reason
// in PayloadError, LocationError or TimeError. Only a payload over
// MaxPayloadBytes is rejected, with ErrTooLarge.
func DecodeSOS(payload []byte, limits Limits, newID func() string) (SOS, error) {
	if len(payload) > MaxPayloadBytes {
		return SOS{}, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(payload), MaxPayloadBytes)
	}
	now := limits.now()
	s := SOS{Time: now.UTC(), Kind: SOSPanic}
	var problems []string
	if !utf8.Valid(payload) {
		payload = bytes.ToValidUTF8(payload, []byte("\uFFFD"))
		problems = append(problems, "payload was not valid UTF-8")
	}
	payload = bytes.TrimPrefix(payload, []byte("\uFEFF"))

	var fields map[string]json.RawMessage
	if trimmed := bytes.TrimSpace(payload); len(trimmed) > 0 {
		if err := json.Unmarshal(trimmed, &fields); err != nil {
			problems = append(problems, fmt.Sprintf("payload is not a JSON object (%v): %q", err, truncate(string(trimmed), 200)))
			fields = nil
		}
	}

	var id string
	if raw, ok := fields["id"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &id); err != nil {
			problems = append(problems, "id is not a string: "+truncate(string(raw), 80))
			id = ""
		} else if id != "" {
			if err := ValidateSOSID(id); err != nil {
				problems = append(problems, err.Error())
				id = ""
			}
		}
	}
	if id == "" {
		id, s.IDAssigned = newID(), true
	}
	s.ID = id

	if raw, ok := fields["kind"]; ok && !isNull(raw) {
		var kind string
		if err := json.Unmarshal(raw, &kind); err != nil {
			s.Kind = SOSOther
			problems = append(problems, "kind is not a string: "+truncate(string(raw), 40))
		} else {
			switch k := SOSKind(kind); k {
			case "":
			case SOSPanic, SOSCrash, SOSMedical, SOSFire, SOSHarassment, SOSOther:
				s.Kind = k
			default:
				// An unknown kind is still an emergency, so it is kept as "other" with the sent kind in the note.
				s.Kind = SOSOther
				problems = append(problems, "kind: "+truncate(kind, 40))
			}
		}
	}

	var note string
	if raw, ok := fields["note"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &note); err != nil {
			note = string(raw)
		}
		if len(note) > MaxNoteLength {
			problems = append(problems, fmt.Sprintf("note cut to %d of %d bytes", MaxNoteLength, len(note)))
			note = strings.ToValidUTF8(note[:MaxNoteLength], "")
		}
	}

	if raw, ok := fields["ts"]; ok && !isNull(raw) {
		ts, err := parseTimestamp(raw)
		if err == nil {
			err = limits.checkTime(ts, now)
		}
		if err != nil {
			s.TimeError = err.Error()
		} else {
			s.Time = ts
		}
	}
	s.Lat, s.Lon, s.HasLocation, s.LocationError = decodeLocation(fields)

	if len(problems) > 0 {
		s.PayloadError = strings.Join(problems, "; ")
	}
	s.Note = strings.TrimSpace(note)
	if s.PayloadError != "" {
		s.Note = strings.TrimSpace(s.Note + "\n(agent: " + s.PayloadError + ")")
	}
	return s, nil
}

// decodeLocation reads an SOS position leniently: any missing, mistyped or
// invalid coordinate drops the position and returns the reason.
func decodeLocation(fields map[string]json.RawMessage) (lat, lon float64, ok bool, reason string) {
	rawLat, hasLat := fields["lat"]
	rawLon, hasLon := fields["lon"]
	hasLat = hasLat && !isNull(rawLat)
	hasLon = hasLon && !isNull(rawLon)
	switch {
	case !hasLat && !hasLon:
		return 0, 0, false, "no position sent"
	case !hasLat || !hasLon:
		return 0, 0, false, "only one of lat and lon sent"
	}
	if err := json.Unmarshal(rawLat, &lat); err != nil {
		return 0, 0, false, fmt.Sprintf("%v: lat %s is not a number", ErrOutOfRange, truncate(string(rawLat), 40))
	}
	if err := json.Unmarshal(rawLon, &lon); err != nil {
		return 0, 0, false, fmt.Sprintf("%v: lon %s is not a number", ErrOutOfRange, truncate(string(rawLon), 40))
	}
	if err := checkPosition(lat, lon); err != nil {
		return 0, 0, false, err.Error()
	}
	return lat, lon, true, ""
}

func isNull(raw json.RawMessage) bool {
	return string(bytes.TrimSpace(raw)) == "null"
}

// DecodeSOSCancel decodes a driver's cancel request.
func DecodeSOSCancel(payload []byte) (SOSCancel, error) {
	if err := checkPayload(payload); err != nil {
		return SOSCancel{}, err
	}
	var c SOSCancel
	if err := json.Unmarshal(payload, &c); err != nil {
		return SOSCancel{}, fmt.Errorf("%w: sos cancel: %v", ErrMalformed, err)
	}
	if c.ID == "" {
		return SOSCancel{}, fmt.Errorf("%w: id", ErrMissingField)
	}
	if err := ValidateSOSID(c.ID); err != nil {
		return SOSCancel{}, err
	}
	if len(c.Reason) > MaxNoteLength {
		return SOSCancel{}, fmt.Errorf("%w: reason is %d bytes, limit %d", ErrTooLarge, len(c.Reason), MaxNoteLength)
	}
	return c, nil
}

// DecodeStatus decodes a vehicle status message.
func DecodeStatus(payload []byte) (Status, error) {
	if err := checkPayload(payload); err != nil {
		return Status{}, err
	}
	var raw struct {
		Online *bool `json:"online"`
	}
	if err := json.Unmarshal(payload, &raw); err != nil {
		return Status{}, fmt.Errorf("%w: status: %v", ErrMalformed, err)
	}
	if raw.Online == nil {
		return Status{}, fmt.Errorf("%w: online", ErrMissingField)
	}
	return Status{Online: *raw.Online}, nil
}

// ValidateVehicleID checks a vehicle id: 1 to 64 letters, digits, '-' or '_'.
func ValidateVehicleID(id string) error { return validateID("vehicle", id, "-_") }

// ValidateAgentID checks an agent id: 1 to 64 letters, digits, '-' or '_'.
func ValidateAgentID(id string) error { return validateID("agent", id, "-_") }

// ValidateSOSID checks an SOS id: 1 to 64 letters, digits, '-', '_', '.' or ':'.
func ValidateSOSID(id string) error { return validateID("sos", id, "-_.:") }

func validateID(what, id, extra string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("%w: %s id must be 1 to 64 characters, got %d", ErrInvalidID, what, len(id))
	}
	for _, c := range id {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.ContainsRune(extra, c)) {
			return fmt.Errorf("%w: %s id %q contains %q; allowed are letters, digits and %q", ErrInvalidID, what, truncate(id, 64), c, extra)
		}
	}
	return nil
}

// truncate shortens s to at most n runes for an error message.
func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}
