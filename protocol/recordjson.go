package protocol

import (
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// Fast paths for the JSON of GPS records and batches, the bulk of what an
// agent spools and forwards. They produce and accept exactly what
// encoding/json does, with the same field order, escaping and number
// formats, so the wire format and the spool format are unchanged. They
// only handle the common shape: a record of kind fix with a Fix payload
// and no other payload, strings without escapes, and no null values.
// Anything else takes encoding/json's path, which also produces the error
// messages. About a third of the CPU of a GPS drain went to
// encoding/json's reflection before these existed.
//
// A field added to Batch, Record or Fix must be added here too, in the
// order of its struct; TestFastJSON_KnowsEveryField fails until it is.

// errSlowPath means the input is outside the fast path's shape; the caller
// uses encoding/json instead.
var errSlowPath = errors.New("protocol: not handled by the fast JSON path")

// AppendRecordJSON appends the JSON encoding of r to dst and returns the
// extended slice. The bytes are those json.Marshal(r) returns.
func AppendRecordJSON(dst []byte, r *Record) ([]byte, error) {
	if out, ok := appendFixRecord(dst, r); ok {
		return out, nil
	}
	data, err := json.Marshal(r)
	if err != nil {
		return dst, err
	}
	return append(dst, data...), nil
}

// UnmarshalRecordJSON decodes data into r, which must be zero, with the
// result json.Unmarshal(data, r) has.
func UnmarshalRecordJSON(data []byte, r *Record) error {
	d := jsonScanner{data: data}
	if d.record(r) == nil && d.end() {
		return nil
	}
	*r = Record{}
	return json.Unmarshal(data, r)
}

// appendFixRecord appends r as encoding/json would, or reports false
// when r is not a fix record of the fast path's shape.
func appendFixRecord(dst []byte, r *Record) ([]byte, bool) {
	if r.Kind != KindFix || r.Fix == nil || r.SOS != nil || r.Cancel != nil || r.Status != nil ||
		r.Ack != nil || r.Notified != nil {
		return dst, false
	}
	out := append(dst, `{"seq":`...)
	out = strconv.AppendUint(out, r.Seq, 10)
	out = append(out, `,"kind":"fix","vehicle":`...)
	out, ok := appendJSONString(out, r.VehicleID)
	if !ok {
		return dst, false
	}
	out = append(out, `,"received_at":`...)
	if out, ok = appendJSONTime(out, r.ReceivedAt); !ok {
		return dst, false
	}
	if r.Historical {
		out = append(out, `,"historical":true`...)
	}
	out = append(out, `,"fix":`...)
	if out, ok = r.Fix.AppendJSON(out); !ok {
		return dst, false
	}
	return append(out, '}'), true
}

// appendJSONString appends s quoted when it needs no escaping under
// encoding/json's rules (which escape <, > and & too), or reports false.
func appendJSONString(dst []byte, s string) ([]byte, bool) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return dst, false
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"'), true
}

// appendJSONTime appends t as time.Time.MarshalJSON does, or reports false
// for a time it rejects.
func appendJSONTime(dst []byte, t time.Time) ([]byte, bool) {
	out := append(dst, '"')
	out, err := t.AppendText(out)
	if err != nil {
		return dst, false
	}
	return append(out, '"'), true
}

// appendJSONFloat appends f as encoding/json formats a float64, or reports
// false for NaN and infinities, which it rejects.
func appendJSONFloat(dst []byte, f float64) ([]byte, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return dst, false
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		// encoding/json writes e-07 as e-7.
		n := len(dst)
		if n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst, true
}

// encodeBatchFast encodes b as json.Marshal does, or reports false when a
// field is outside the fast path's shape.
func encodeBatchFast(b *Batch) ([]byte, bool) {
	size := 160
	for i := range b.Records {
		size += 200 + len(b.Records[i].VehicleID)
	}
	out := make([]byte, 0, size)
	out = append(out, `{"agent":`...)
	var ok bool
	for _, f := range [...]struct {
		key, value string
	}{
		{"", b.AgentID},
		{`,"region":`, b.Region},
		{`,"spool":`, b.SpoolID},
		{`,"lane":`, string(b.Lane)},
	} {
		out = append(out, f.key...)
		if out, ok = appendJSONString(out, f.value); !ok {
			return nil, false
		}
	}
	if b.Prev != 0 {
		out = append(out, `,"prev":`...)
		out = strconv.AppendUint(out, b.Prev, 10)
	}
	if b.More {
		out = append(out, `,"more":true`...)
	}
	out = append(out, `,"records":`...)
	if b.Records == nil {
		out = append(out, "null"...)
	} else {
		out = append(out, '[')
		for i := range b.Records {
			if i > 0 {
				out = append(out, ',')
			}
			if out, ok = appendFixRecord(out, &b.Records[i]); !ok {
				return nil, false
			}
		}
		out = append(out, ']')
	}
	out = append(out, `,"sent_at":`...)
	if out, ok = appendJSONTime(out, b.SentAt); !ok {
		return nil, false
	}
	return append(out, '}'), true
}

// decodeBatchFast decodes data into a new batch, or returns errSlowPath
// when data is outside the fast path's shape. It does not validate.
func decodeBatchFast(data []byte) (*Batch, error) {
	d := jsonScanner{data: data}
	var b Batch
	if err := d.batch(&b); err != nil || !d.end() {
		return nil, errSlowPath
	}
	return &b, nil
}

// jsonScanner reads the JSON of the fast path's shape. Every method
// returns errSlowPath, or false, on anything outside that shape,
// including syntax errors, which encoding/json then reports.
type jsonScanner struct {
	data []byte
	pos  int
}

func (d *jsonScanner) skipSpace() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

// end reports whether only white space is left.
func (d *jsonScanner) end() bool {
	d.skipSpace()
	return d.pos == len(d.data)
}

// consume skips white space and then c, and reports whether c was there.
func (d *jsonScanner) consume(c byte) bool {
	d.skipSpace()
	if d.pos < len(d.data) && d.data[d.pos] == c {
		d.pos++
		return true
	}
	return false
}

// key reads the next key of an object whose '{' was consumed, and the
// ':' after it. It returns a nil key at the object's end. first is set
// until the first key was read.
func (d *jsonScanner) key(first *bool) ([]byte, error) {
	if *first {
		*first = false
		if d.consume('}') {
			return nil, nil
		}
	} else if !d.consume(',') {
		if d.consume('}') {
			return nil, nil
		}
		return nil, errSlowPath
	}
	key, err := d.rawString()
	if err != nil || !d.consume(':') {
		return nil, errSlowPath
	}
	return key, nil
}

// seen records bit as read and fails for a key read twice, because
// encoding/json merges repeated keys.
func seen(read *uint32, bit uint32) error {
	if *read&bit != 0 {
		return errSlowPath
	}
	*read |= bit
	return nil
}

// rawString reads a string without escapes, control characters or invalid
// UTF-8 and returns its content, which aliases data.
func (d *jsonScanner) rawString() ([]byte, error) {
	if !d.consume('"') {
		return nil, errSlowPath
	}
	start := d.pos
	ascii := true
	for d.pos < len(d.data) {
		c := d.data[d.pos]
		switch {
		case c == '"':
			s := d.data[start:d.pos]
			d.pos++
			if !ascii && !utf8.Valid(s) {
				return nil, errSlowPath
			}
			return s, nil
		case c == '\\' || c < 0x20:
			return nil, errSlowPath
		case c >= 0x80:
			ascii = false
		}
		d.pos++
	}
	return nil, errSlowPath
}

func (d *jsonScanner) str() (string, error) {
	s, err := d.rawString()
	return string(s), err
}

// time reads a string as time.Time.UnmarshalJSON does.
func (d *jsonScanner) time(t *time.Time) error {
	d.skipSpace()
	start := d.pos
	if _, err := d.rawString(); err != nil {
		return err
	}
	if t.UnmarshalJSON(d.data[start:d.pos]) != nil {
		return errSlowPath
	}
	return nil
}

// number returns the text of a number of JSON's grammar.
func (d *jsonScanner) number() ([]byte, error) {
	d.skipSpace()
	start := d.pos
	digits := func() int {
		n := 0
		for d.pos < len(d.data) && d.data[d.pos] >= '0' && d.data[d.pos] <= '9' {
			d.pos++
			n++
		}
		return n
	}
	if d.pos < len(d.data) && d.data[d.pos] == '-' {
		d.pos++
	}
	intStart := d.pos
	if n := digits(); n == 0 || (n > 1 && d.data[intStart] == '0') {
		return nil, errSlowPath
	}
	if d.pos < len(d.data) && d.data[d.pos] == '.' {
		d.pos++
		if digits() == 0 {
			return nil, errSlowPath
		}
	}
	if d.pos < len(d.data) && (d.data[d.pos] == 'e' || d.data[d.pos] == 'E') {
		d.pos++
		if d.pos < len(d.data) && (d.data[d.pos] == '+' || d.data[d.pos] == '-') {
			d.pos++
		}
		if digits() == 0 {
			return nil, errSlowPath
		}
	}
	return d.data[start:d.pos], nil
}

func (d *jsonScanner) float(f *float64) error {
	text, err := d.number()
	if err != nil {
		return err
	}
	v, err := strconv.ParseFloat(string(text), 64)
	if err != nil {
		return errSlowPath
	}
	*f = v
	return nil
}

func (d *jsonScanner) optionalFloat(f **float64) error {
	var v float64
	if err := d.float(&v); err != nil {
		return err
	}
	*f = &v
	return nil
}

func (d *jsonScanner) uint(u *uint64) error {
	text, err := d.number()
	if err != nil {
		return err
	}
	v, err := strconv.ParseUint(string(text), 10, 64)
	if err != nil {
		return errSlowPath
	}
	*u = v
	return nil
}

func (d *jsonScanner) bool(b *bool) error {
	d.skipSpace()
	switch rest := d.data[d.pos:]; {
	case len(rest) >= 4 && string(rest[:4]) == "true":
		*b = true
		d.pos += 4
	case len(rest) >= 5 && string(rest[:5]) == "false":
		*b = false
		d.pos += 5
	default:
		return errSlowPath
	}
	return nil
}

func (d *jsonScanner) batch(b *Batch) error {
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
		case "agent":
			bit = 1 << 0
			b.AgentID, err = d.str()
		case "region":
			bit = 1 << 1
			b.Region, err = d.str()
		case "spool":
			bit = 1 << 2
			b.SpoolID, err = d.str()
		case "lane":
			bit = 1 << 3
			var lane string
			lane, err = d.str()
			b.Lane = Lane(lane)
		case "prev":
			bit = 1 << 4
			err = d.uint(&b.Prev)
		case "more":
			bit = 1 << 5
			err = d.bool(&b.More)
		case "records":
			bit = 1 << 6
			err = d.records(&b.Records)
		case "sent_at":
			bit = 1 << 7
			err = d.time(&b.SentAt)
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

func (d *jsonScanner) records(out *[]Record) error {
	if !d.consume('[') {
		return errSlowPath
	}
	recs := []Record{}
	if !d.consume(']') {
		for {
			recs = append(recs, Record{})
			if err := d.record(&recs[len(recs)-1]); err != nil {
				return err
			}
			if d.consume(',') {
				continue
			}
			if d.consume(']') {
				break
			}
			return errSlowPath
		}
	}
	*out = recs
	return nil
}

// record reads a fix record. Kind must be fix and the payload a fix,
// because other payloads take the slow path.
func (d *jsonScanner) record(r *Record) error {
	if !d.consume('{') {
		return errSlowPath
	}
	var read uint32
	for first := true; ; {
		key, err := d.key(&first)
		if err != nil {
			return err
		}
		if key == nil {
			break
		}
		var bit uint32
		switch string(key) {
		case "seq":
			bit = 1 << 0
			err = d.uint(&r.Seq)
		case "kind":
			bit = 1 << 1
			var kind []byte
			kind, err = d.rawString()
			if string(kind) != string(KindFix) {
				return errSlowPath
			}
			r.Kind = KindFix
		case "vehicle":
			bit = 1 << 2
			r.VehicleID, err = d.str()
		case "received_at":
			bit = 1 << 3
			err = d.time(&r.ReceivedAt)
		case "historical":
			bit = 1 << 4
			err = d.bool(&r.Historical)
		case "fix":
			bit = 1 << 5
			r.Fix = &Fix{}
			err = d.fix(r.Fix)
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
	if r.Kind != KindFix || r.Fix == nil {
		return errSlowPath
	}
	return nil
}

func (d *jsonScanner) fix(f *Fix) error {
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
			err = d.time(&f.Time)
		case "lat":
			bit = 1 << 1
			err = d.float(&f.Lat)
		case "lon":
			bit = 1 << 2
			err = d.float(&f.Lon)
		case "speed_kmh":
			bit = 1 << 3
			err = d.optionalFloat(&f.SpeedKmh)
		case "heading_deg":
			bit = 1 << 4
			err = d.optionalFloat(&f.HeadingDeg)
		case "accuracy_m":
			bit = 1 << 5
			err = d.optionalFloat(&f.AccuracyM)
		case "alt_m":
			bit = 1 << 6
			err = d.optionalFloat(&f.AltM)
		case "battery_pct":
			bit = 1 << 7
			err = d.optionalFloat(&f.BatteryPct)
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
