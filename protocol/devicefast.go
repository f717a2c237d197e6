package protocol

import (
	"bytes"
	"time"
)

// A fast path for DecodeFixes, which an agent runs on every GPS message a
// vehicle publishes. Most of its CPU time went to encoding/json's
// reflection into rawFix before this existed.
//
// It reads the common shape only: one object or an array of objects. The
// keys are ts, lat, lon, speed_kmh, heading_deg, accuracy_m, alt_m and
// battery_pct in lower case, each at most once. Values are numbers or
// null, and ts may also be an RFC 3339 string without escapes.
//
// It declines everything else: other or repeated keys, other letter case,
// escapes, nested values, syntax errors, a timestamp that does not parse,
// more than MaxFixesPerMessage objects. decodeFixesJSON then decodes the
// payload, so the fast path never changes what DecodeFixes returns. Both
// paths validate with checkFix, checkFixCount and fixError, so they
// reject the same fixes with the same errors.
//
// A field added to rawFix must be added to deviceFix too.

// Flags of the required fields a fix object contains.
const (
	fixHasTime = 1 << iota
	fixHasLat
	fixHasLon
)

// decodeFixesFast decodes a payload that checkPayload accepted. It
// returns DecodeFixes' result and true, or false when the payload is
// outside the fast path's shape.
//
// It allocates the []Fix and one []float64 that backs every optional
// field of the message. Both are sized before reading. An accepted
// payload contains a '{' for each fix and an '_' for each optional key
// (speed_kmh, heading_deg, accuracy_m, alt_m, battery_pct), and neither
// character anywhere else, because its only strings are keys and valid
// timestamps.
func decodeFixesFast(payload []byte, limits Limits) ([]Fix, bool, error) {
	d := jsonScanner{data: payload}
	d.skipSpace()
	array := d.pos < len(payload) && payload[d.pos] == '['
	n := bytes.Count(payload, []byte{'{'})
	if n > MaxFixesPerMessage || (!array && n != 1) {
		return nil, false, nil
	}
	if n == 0 {
		// The only accepted payload without objects is an empty array.
		if !d.consume('[') || !d.consume(']') || !d.end() {
			return nil, false, nil
		}
		return nil, true, checkFixCount(0)
	}
	optional := min(bytes.Count(payload, []byte{'_'}), 5*n)

	fixes := make([]Fix, n)
	var floats []float64
	if optional > 0 {
		floats = make([]float64, optional)
	}
	var flags [MaxFixesPerMessage]uint8
	if array && !d.consume('[') {
		return nil, false, nil
	}
	for i := 0; ; i++ {
		if i == n || d.deviceFix(&fixes[i], &flags[i], &floats) != nil {
			return nil, false, nil
		}
		if !array || d.consume(']') {
			if i+1 != n {
				return nil, false, nil
			}
			break
		}
		if !d.consume(',') {
			return nil, false, nil
		}
	}
	if !d.end() {
		return nil, false, nil
	}
	if array {
		if err := checkFixCount(n); err != nil {
			return nil, true, err
		}
	}

	now := limits.now()
	for i := range fixes {
		f := flags[i]
		err := checkFix(&fixes[i], f&fixHasTime != 0, f&(fixHasLat|fixHasLon) == fixHasLat|fixHasLon, limits, now)
		if err != nil {
			return nil, true, fixError(i, n, err)
		}
	}
	return fixes, true, nil
}

// deviceFix reads one fix object into f and sets the flags of the
// required fields it contains. Each optional field takes the first
// element of *floats, which then starts one element later.
func (d *jsonScanner) deviceFix(f *Fix, flags *uint8, floats *[]float64) error {
	if !d.consume('{') {
		return errSlowPath
	}
	var read uint32
	for first := true; ; {
		key, err := d.key(&first)
		if err != nil || key == nil {
			return err
		}
		var bit uint32
		switch string(key) {
		case "ts":
			bit = 1 << 0
			err = d.deviceTime(&f.Time, flags)
		case "lat":
			bit = 1 << 1
			err = d.nullableFloat(&f.Lat, flags, fixHasLat)
		case "lon":
			bit = 1 << 2
			err = d.nullableFloat(&f.Lon, flags, fixHasLon)
		case "speed_kmh":
			bit = 1 << 3
			err = d.backedFloat(&f.SpeedKmh, floats)
		case "heading_deg":
			bit = 1 << 4
			err = d.backedFloat(&f.HeadingDeg, floats)
		case "accuracy_m":
			bit = 1 << 5
			err = d.backedFloat(&f.AccuracyM, floats)
		case "alt_m":
			bit = 1 << 6
			err = d.backedFloat(&f.AltM, floats)
		case "battery_pct":
			bit = 1 << 7
			err = d.backedFloat(&f.BatteryPct, floats)
		default:
			return errSlowPath
		}
		if err != nil {
			return err
		}
		if err := seen(&read, bit); err != nil {
			return err
		}
	}
}

// null reads a null literal if one comes next, and reports whether it did.
func (d *jsonScanner) null() bool {
	d.skipSpace()
	if rest := d.data[d.pos:]; len(rest) >= 4 && string(rest[:4]) == "null" {
		d.pos += 4
		return true
	}
	return false
}

// nullableFloat reads a number into v and sets the flag has. It reads
// null as absent, because encoding/json stores null as a nil *float64.
func (d *jsonScanner) nullableFloat(v *float64, flags *uint8, has uint8) error {
	if d.null() {
		return nil
	}
	if err := d.float(v); err != nil {
		return err
	}
	*flags |= has
	return nil
}

// backedFloat reads a number into the first element of *floats, points
// *p at that element and removes it from *floats. It reads null as nil.
func (d *jsonScanner) backedFloat(p **float64, floats *[]float64) error {
	if d.null() {
		return nil
	}
	if len(*floats) == 0 {
		return errSlowPath
	}
	v := &(*floats)[0]
	if err := d.float(v); err != nil {
		return err
	}
	*p = v
	*floats = (*floats)[1:]
	return nil
}

// deviceTime reads ts as parseTimestamp does and sets fixHasTime. It
// reads null as absent, as validate does. A timestamp that parseTimestamp
// rejects makes the fast path decline, so encoding/json's path reports it
// in validate's order.
func (d *jsonScanner) deviceTime(t *time.Time, flags *uint8) error {
	if d.null() {
		return nil
	}
	if d.pos < len(d.data) && d.data[d.pos] == '"' {
		s, err := d.rawString()
		if err != nil {
			return err
		}
		ts, ok := parseRFC3339Exact(s)
		if !ok {
			return errSlowPath
		}
		*t = ts
	} else {
		text, err := d.number()
		if err != nil {
			return err
		}
		ts, err := parseTimestamp(text)
		if err != nil {
			return errSlowPath
		}
		*t = ts
	}
	*flags |= fixHasTime
	return nil
}

// parseRFC3339Exact returns time.Parse(time.RFC3339Nano, string(s)).UTC()
// and true without copying s, or false when it cannot be sure of that
// result.
//
// In Go's time package (format_rfc3339.go and format.go), both
// time.Time.UnmarshalText and time.Parse with the RFC 3339 layouts first
// try the same RFC 3339 parser. When it fails, UnmarshalText falls back to
// time.Parse(time.RFC3339, ...), which may differ from RFC3339Nano on odd
// input. So s must have the exact shape
// 2006-01-02T15:04:05[.digits](Z|±hh:mm), with an offset in range. That
// parser then fails only for a date or clock field out of range. time.Parse
// rejects those too, so when UnmarshalText succeeds, that parser produced
// the result. TestParseRFC3339Exact_MatchesTimeParse and
// FuzzParseRFC3339ExactMatchesTimeParse check this against time.Parse.
func parseRFC3339Exact(s []byte) (time.Time, bool) {
	const layout = "dddd-dd-ddTdd:dd:dd"
	if len(s) < len(layout)+1 {
		return time.Time{}, false
	}
	for i := range len(layout) {
		if layout[i] == 'd' {
			if !isDigit(s[i]) {
				return time.Time{}, false
			}
		} else if s[i] != layout[i] {
			return time.Time{}, false
		}
	}
	rest := s[len(layout):]
	if len(rest) >= 2 && rest[0] == '.' && isDigit(rest[1]) {
		n := 2
		for n < len(rest) && isDigit(rest[n]) {
			n++
		}
		rest = rest[n:]
	}
	switch {
	case len(rest) == 1 && rest[0] == 'Z':
	case len(rest) == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':' &&
		isDigit(rest[1]) && isDigit(rest[2]) && isDigit(rest[4]) && isDigit(rest[5]):
		if hh, mm := (rest[1]-'0')*10+rest[2]-'0', (rest[4]-'0')*10+rest[5]-'0'; hh > 23 || mm > 59 {
			return time.Time{}, false
		}
	default:
		return time.Time{}, false
	}
	var t time.Time
	if t.UnmarshalText(s) != nil {
		return time.Time{}, false
	}
	return t.UTC(), true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
