package sim

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
)

// portoStep is the sampling interval of the Porto taxi terminals: point i
// of a trip was recorded at TIMESTAMP + 15·i seconds.
const portoStep = 15 * time.Second

// barefootTimeLayouts are the time formats accepted in barefoot JSON. The
// Munich trace uses the first.
var barefootTimeLayouts = []string{
	"2006-01-02 15:04:05-0700",
	"2006-01-02 15:04:05.999999999-0700",
	time.RFC3339Nano,
}

// parseBarefootJSON reads a JSON array of {"point","time","id"} objects.
// Points are grouped into one track per id, in the order the ids first appear.
func parseBarefootJSON(name string, data []byte) (*Trace, error) {
	lines := newLineIndex(data)
	dec := json.NewDecoder(bytes.NewReader(data))

	tok, err := dec.Token()
	if err != nil {
		return nil, jsonErr(name, lines, nextValue(data, 0), err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, traceErr(name, 1, "expected a JSON array of points, found %v", tok)
	}

	tr := &Trace{}
	groups := map[string][]timedPoint{}
	var order []string
	for dec.More() {
		valueStart := nextValue(data, int(dec.InputOffset()))
		line := lines.lineAt(valueStart)
		var raw struct {
			Point *string `json:"point"`
			Time  *string `json:"time"`
			ID    *string `json:"id"`
		}
		if err := dec.Decode(&raw); err != nil {
			return nil, jsonErr(name, lines, valueStart, err)
		}
		if raw.Point == nil || raw.Time == nil {
			return nil, traceErr(name, line, `point needs "point" and "time"`)
		}
		lon, lat, err := parseWKTPoint(*raw.Point)
		if err != nil {
			return nil, traceErr(name, line, "point: %v", err)
		}
		at, err := parseBarefootTime(*raw.Time)
		if err != nil {
			return nil, traceErr(name, line, "time: %v", err)
		}
		if lat == 0 && lon == 0 {
			tr.Skipped++
			continue
		}

		id := ""
		if raw.ID != nil {
			id = *raw.ID
		}
		if _, seen := groups[id]; !seen {
			order = append(order, id)
		}
		groups[id] = append(groups[id], timedPoint{at: at, lat: lat, lon: lon})
	}
	if _, err := dec.Token(); err != nil {
		return nil, jsonErr(name, lines, nextValue(data, int(dec.InputOffset())), err)
	}
	if rest := bytes.TrimSpace(data[dec.InputOffset():]); len(rest) > 0 {
		return nil, traceErr(name, lines.lineAt(nextValue(data, int(dec.InputOffset()))), "unexpected data after the JSON array")
	}

	for _, id := range order {
		track, skipped := buildTrack(id, groups[id])
		tr.Skipped += skipped
		tr.Tracks = append(tr.Tracks, track)
	}
	return tr, nil
}

// parseWKTPoint reads WKT "POINT(lon lat)".
func parseWKTPoint(s string) (lon, lat float64, err error) {
	body := strings.TrimSpace(s)
	if len(body) < 5 || !strings.EqualFold(body[:5], "POINT") {
		return 0, 0, fmt.Errorf("%q is not WKT POINT(lon lat)", truncate(s, 60))
	}
	body = strings.TrimSpace(body[5:])
	inner, ok := strings.CutPrefix(body, "(")
	if ok {
		inner, ok = strings.CutSuffix(inner, ")")
	}
	fields := strings.Fields(inner)
	if !ok || len(fields) != 2 {
		return 0, 0, fmt.Errorf("%q is not WKT POINT(lon lat)", truncate(s, 60))
	}
	if lon, err = strconv.ParseFloat(fields[0], 64); err != nil {
		return 0, 0, fmt.Errorf("longitude %q is not a number", truncate(fields[0], 40))
	}
	if lat, err = strconv.ParseFloat(fields[1], 64); err != nil {
		return 0, 0, fmt.Errorf("latitude %q is not a number", truncate(fields[1], 40))
	}
	if err := checkLatLon(lat, lon); err != nil {
		return 0, 0, err
	}
	return lon, lat, nil
}

func parseBarefootTime(s string) (time.Time, error) {
	for _, layout := range barefootTimeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not YYYY-MM-DD HH:MM:SS+hhmm", truncate(s, 60))
}

// parsePortoCSV reads the ECML/PKDD 2015 taxi CSV: one track per trip.
func parsePortoCSV(name string, data []byte) (*Trace, error) {
	r, cols, err := openCSV(name, data, "trip_id", "timestamp", "polyline")
	if err != nil {
		return nil, err
	}

	tr := &Trace{}
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, csvErr(name, err)
		}
		line, _ := r.FieldPos(0)

		id := rec[cols["trip_id"]]
		start, err := strconv.ParseInt(strings.TrimSpace(rec[cols["timestamp"]]), 10, 64)
		if err != nil {
			return nil, traceErr(name, line, "TIMESTAMP %q is not integer Unix seconds", truncate(rec[cols["timestamp"]], 40))
		}
		var pairs [][]float64
		if err := json.Unmarshal([]byte(rec[cols["polyline"]]), &pairs); err != nil {
			return nil, traceErr(name, line, "POLYLINE of trip %q is not a JSON array of [lon, lat] pairs: %v", truncate(id, 40), err)
		}
		if len(pairs) == 0 {
			tr.Skipped++
			continue
		}

		pts := make([]timedPoint, 0, len(pairs))
		for i, pair := range pairs {
			if len(pair) != 2 {
				return nil, traceErr(name, line, "POLYLINE of trip %q: point %d has %d numbers, expected [lon, lat]", truncate(id, 40), i, len(pair))
			}
			lon, lat := pair[0], pair[1]
			if err := checkLatLon(lat, lon); err != nil {
				return nil, traceErr(name, line, "POLYLINE of trip %q: point %d: %v", truncate(id, 40), i, err)
			}
			if lat == 0 && lon == 0 {
				tr.Skipped++
				continue
			}
			at := time.Unix(start, 0).Add(time.Duration(i) * portoStep)
			pts = append(pts, timedPoint{at: at, lat: lat, lon: lon})
		}
		if len(pts) == 0 {
			continue
		}
		track, skipped := buildTrack(id, pts)
		tr.Skipped += skipped
		tr.Tracks = append(tr.Tracks, track)
	}
	return tr, nil
}

// parseGTFSRCSV reads GTFS Realtime vehicle positions as CSV: one track
// per vehicle_id, sorted by vehicle id. The bearing column is ignored,
// because feeds that lack a bearing send 0 (the KTMB feed always does),
// so the heading is derived from the positions instead.
func parseGTFSRCSV(name string, data []byte) (*Trace, error) {
	r, cols, err := openCSV(name, data, "vehicle_id", "timestamp", "lat", "lon")
	if err != nil {
		return nil, err
	}
	speedCol, hasSpeed := cols["speed"]

	tr := &Trace{}
	groups := map[string][]timedPoint{}
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, csvErr(name, err)
		}
		line, _ := r.FieldPos(0)

		id := strings.TrimSpace(rec[cols["vehicle_id"]])
		if id == "" {
			return nil, traceErr(name, line, "vehicle_id is empty")
		}
		sec, err := strconv.ParseInt(strings.TrimSpace(rec[cols["timestamp"]]), 10, 64)
		if err != nil {
			return nil, traceErr(name, line, "timestamp %q is not integer Unix seconds", truncate(rec[cols["timestamp"]], 40))
		}
		lat, errLat := strconv.ParseFloat(strings.TrimSpace(rec[cols["lat"]]), 64)
		lon, errLon := strconv.ParseFloat(strings.TrimSpace(rec[cols["lon"]]), 64)
		if errLat != nil || errLon != nil {
			return nil, traceErr(name, line, "lat %q or lon %q is not a number", truncate(rec[cols["lat"]], 40), truncate(rec[cols["lon"]], 40))
		}
		if err := checkLatLon(lat, lon); err != nil {
			return nil, traceErr(name, line, "%v", err)
		}
		p := timedPoint{at: time.Unix(sec, 0), lat: lat, lon: lon}
		if hasSpeed {
			if cell := strings.TrimSpace(rec[speedCol]); cell != "" {
				kmh, err := strconv.ParseFloat(cell, 64)
				if err != nil || !(kmh >= 0 && kmh <= 1000) {
					return nil, traceErr(name, line, "speed %q is not a number in [0, 1000] km/h", truncate(cell, 40))
				}
				p.kmh, p.hasV = kmh, true
			}
		}
		if lat == 0 && lon == 0 {
			tr.Skipped++
			continue
		}
		groups[id] = append(groups[id], p)
	}

	ids := make([]string, 0, len(groups))
	for id := range groups {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		track, skipped := buildTrack(id, groups[id])
		tr.Skipped += skipped
		tr.Tracks = append(tr.Tracks, track)
	}
	return tr, nil
}

// openCSV reads the header and maps each lower-case column name to its
// index. It fails when a required column is missing.
func openCSV(name string, data []byte, required ...string) (*csv.Reader, map[string]int, error) {
	r := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))))
	r.ReuseRecord = true
	header, err := r.Read()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil, traceErr(name, 1, "file is empty, expected a CSV header")
		}
		return nil, nil, csvErr(name, err)
	}
	cols := make(map[string]int, len(header))
	for i, h := range header {
		cols[strings.ToLower(strings.TrimSpace(h))] = i
	}
	for _, c := range required {
		if _, ok := cols[c]; !ok {
			return nil, nil, traceErr(name, 1, "CSV header has no %s column (header: %s)", c, truncate(strings.Join(header, ","), 200))
		}
	}
	return r, cols, nil
}

// csvErr turns an encoding/csv error into a TraceError with its line.
func csvErr(name string, err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return traceErr(name, pe.Line, "%v", pe.Err)
	}
	return traceErr(name, 0, "%v", err)
}

// jsonErr turns an encoding/json error into a TraceError. valueStart is
// the offset of the value being decoded. A syntax error carries its offset
// in the whole input, a type error its offset within the value.
func jsonErr(name string, lines lineIndex, valueStart int, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return traceErr(name, lines.lineAt(int(se.Offset)), "%v", err)
	case errors.As(err, &te):
		return traceErr(name, lines.lineAt(valueStart+int(te.Offset)), "field %q: JSON %s where a %s is expected", te.Field, te.Value, te.Type)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return traceErr(name, lines.lineAt(len(lines.data)), "JSON array is not closed")
	}
	return traceErr(name, lines.lineAt(valueStart), "%v", err)
}

// lineIndex maps byte offsets to 1-based line numbers.
type lineIndex struct {
	data     []byte
	newlines []int
}

func newLineIndex(data []byte) lineIndex {
	li := lineIndex{data: data}
	for i, b := range data {
		if b == '\n' {
			li.newlines = append(li.newlines, i)
		}
	}
	return li
}

// lineAt returns the line that holds byte offset off.
func (li lineIndex) lineAt(off int) int {
	return sort.SearchInts(li.newlines, off) + 1
}

// nextValue returns the offset of the first byte at or after off that is
// neither white space nor a comma, which is where the decoder's next value starts.
func nextValue(data []byte, off int) int {
	for off < len(data) {
		switch data[off] {
		case ' ', '\t', '\r', '\n', ',':
			off++
		default:
			return off
		}
	}
	return off
}

// truncate shortens s to at most n runes for an error message.
func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}
