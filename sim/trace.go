package sim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

// MaxTraceBytes is the largest trace file LoadTrace reads. The traces in
// testdata/traces are below 1 MiB.
const MaxTraceBytes = 256 << 20

// maxDerivedSpeedKmh is the fastest speed derived from two consecutive
// points that is taken as real motion. A faster step is a GPS jump, and the
// point keeps the speed of the step before it. The value is a judgement:
// the fastest vehicles in the bundled traces are trains at 135 km/h.
const maxDerivedSpeedKmh = 250

// minHeadingMoveM is the shortest step, in metres, that sets a heading.
// A vehicle that moved less keeps its previous heading, because the bearing
// of a step within GPS noise is random.
const minHeadingMoveM = 1.0

// Trace errors.
var (
	// ErrInvalidTrace means a trace file is malformed. The error is a *TraceError naming file and line.
	ErrInvalidTrace = errors.New("invalid trace")
	// ErrUnknownFormat means a file is in none of the trace formats this package reads.
	ErrUnknownFormat = errors.New("unknown trace format")
	// ErrEmptyTrace means a trace holds no usable point.
	ErrEmptyTrace = errors.New("trace has no points")
)

// TraceError is a malformed trace: what is wrong and where.
type TraceError struct {
	// File is the trace's path or name.
	File string
	// Line is the 1-based line of the bad record, or 0 when it is unknown.
	Line int
	// Msg describes what is wrong with the record.
	Msg string
}

func (e *TraceError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s: %s:%d: %s", ErrInvalidTrace, e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", ErrInvalidTrace, e.File, e.Msg)
}

// Unwrap makes errors.Is(err, ErrInvalidTrace) true.
func (e *TraceError) Unwrap() error { return ErrInvalidTrace }

func traceErr(file string, line int, format string, args ...any) *TraceError {
	return &TraceError{File: file, Line: line, Msg: fmt.Sprintf(format, args...)}
}

// Format names a trace file format.
type Format string

// The formats LoadTrace reads, and the synthetic routes.
const (
	// FormatBarefootJSON is the sample format of the barefoot map matcher:
	// a JSON array of {"point":"POINT(lon lat)","time":"YYYY-MM-DD HH:MM:SS+hhmm","id":"..."}.
	// The Munich trace uses it.
	FormatBarefootJSON Format = "barefoot-json"
	// FormatPortoTaxiCSV is the ECML/PKDD 2015 taxi trajectory CSV: one
	// trip per row, with a POLYLINE of [lon, lat] pairs 15 s apart.
	FormatPortoTaxiCSV Format = "porto-taxi-csv"
	// FormatGTFSRCSV is GTFS Realtime vehicle positions flattened to CSV
	// (vehicle_id, trip_id, timestamp, speed, lat, lon), as archived for
	// Malaysia's KTMB trains.
	FormatGTFSRCSV Format = "gtfs-rt-csv"
	// FormatSynthetic marks routes made by Synthetic.
	FormatSynthetic Format = "synthetic"
)

// Point is one position of a track.
type Point struct {
	Lat float64
	Lon float64
	// Offset is the time since the first point of the track.
	Offset time.Duration
	// SpeedKmh is the ground speed in km/h, valid when HasSpeed is true.
	SpeedKmh float64
	// HeadingDeg is the direction of travel in degrees clockwise from
	// north, in [0, 360), valid when HasHeading is true.
	HeadingDeg float64
	HasSpeed   bool
	HasHeading bool
}

// Track is the time-ordered points of one vehicle or trip.
type Track struct {
	// ID is the vehicle or trip id in the source.
	ID string
	// Start is the recorded time of the first point, or zero for synthetic routes.
	Start time.Time
	// Points are ordered by Offset, which strictly increases.
	Points []Point
}

// Duration returns the time from the first to the last point.
func (t *Track) Duration() time.Duration {
	if len(t.Points) == 0 {
		return 0
	}
	return t.Points[len(t.Points)-1].Offset
}

// Trace is a set of tracks read from one file or made by Synthetic.
type Trace struct {
	// Name is the file's base name, or "synthetic".
	Name   string
	Format Format
	// Tracks are never empty and each has at least one point.
	Tracks []Track
	// Skipped counts source records dropped on purpose: exact duplicate
	// rows, a second position for a time already seen, positions of
	// exactly (0, 0) and trips without points.
	Skipped int
}

// Points returns the number of points in all tracks.
func (tr *Trace) Points() int {
	n := 0
	for i := range tr.Tracks {
		n += len(tr.Tracks[i].Points)
	}
	return n
}

// LoadTrace reads a trace file. The format comes from the extension
// (.json, .csv) and the content: a JSON array is barefoot JSON, a CSV
// header with POLYLINE is the Porto taxi format, a header with vehicle_id,
// timestamp, lat and lon is GTFS Realtime CSV. Speed and heading missing
// from the source are derived from consecutive points.
func LoadTrace(path string) (*Trace, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open trace: %w", err)
	}
	defer f.Close()

	data, err := io.ReadAll(io.LimitReader(f, MaxTraceBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read trace %s: %w", path, err)
	}
	if len(data) > MaxTraceBytes {
		return nil, traceErr(path, 0, "file is larger than the limit of %d bytes", MaxTraceBytes)
	}
	return ParseTrace(path, data)
}

// ParseTrace parses the content of a trace file. The name is used for the
// format's extension and in error messages. See LoadTrace for the formats.
func ParseTrace(name string, data []byte) (*Trace, error) {
	format, err := detectFormat(name, data)
	if err != nil {
		return nil, err
	}

	var tr *Trace
	switch format {
	case FormatBarefootJSON:
		tr, err = parseBarefootJSON(name, data)
	case FormatPortoTaxiCSV:
		tr, err = parsePortoCSV(name, data)
	case FormatGTFSRCSV:
		tr, err = parseGTFSRCSV(name, data)
	}
	if err != nil {
		return nil, err
	}
	if len(tr.Tracks) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrEmptyTrace, name)
	}
	tr.Name = filepath.Base(name)
	tr.Format = format
	for i := range tr.Tracks {
		deriveMotion(tr.Tracks[i].Points)
	}
	return tr, nil
}

// detectFormat picks the format from the file extension and the first bytes.
func detectFormat(name string, data []byte) (Format, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	ext := strings.ToLower(filepath.Ext(name))
	if ext == ".json" || (ext != ".csv" && len(trimmed) > 0 && trimmed[0] == '[') {
		return FormatBarefootJSON, nil
	}

	header, _, _ := bytes.Cut(trimmed, []byte("\n"))
	columns := map[string]bool{}
	for _, c := range strings.Split(strings.TrimSpace(string(header)), ",") {
		columns[strings.ToLower(strings.Trim(strings.TrimSpace(c), `"`))] = true
	}
	switch {
	case columns["polyline"]:
		return FormatPortoTaxiCSV, nil
	case columns["vehicle_id"] && columns["timestamp"] && columns["lat"] && columns["lon"]:
		return FormatGTFSRCSV, nil
	}
	return "", fmt.Errorf("%w: %s: expected a JSON array of barefoot points, or a CSV header with POLYLINE (Porto taxi) or with vehicle_id, timestamp, lat and lon (GTFS Realtime)",
		ErrUnknownFormat, name)
}

// checkLatLon rejects a position that is not finite or out of range.
func checkLatLon(lat, lon float64) error {
	if math.IsNaN(lat) || math.IsInf(lat, 0) || lat < -90 || lat > 90 {
		return fmt.Errorf("latitude %v not in [-90, 90]", lat)
	}
	if math.IsNaN(lon) || math.IsInf(lon, 0) || lon < -180 || lon > 180 {
		return fmt.Errorf("longitude %v not in [-180, 180]", lon)
	}
	return nil
}

// timedPoint is a point with its absolute time, before a track is built.
type timedPoint struct {
	at   time.Time
	lat  float64
	lon  float64
	kmh  float64
	hasV bool
}

// buildTrack sorts points by time (a stable sort, so rows with equal times
// keep their file order) and keeps only the first point for each time. An
// exact duplicate row is such a repeat. It returns the track and the number
// of points dropped.
func buildTrack(id string, pts []timedPoint) (Track, int) {
	sort.SliceStable(pts, func(i, j int) bool { return pts[i].at.Before(pts[j].at) })

	kept := pts[:0]
	skipped := 0
	for _, p := range pts {
		if len(kept) > 0 && p.at.Equal(kept[len(kept)-1].at) {
			skipped++
			continue
		}
		kept = append(kept, p)
	}

	tr := Track{ID: id, Points: make([]Point, len(kept))}
	if len(kept) > 0 {
		tr.Start = kept[0].at.UTC()
	}
	for i, p := range kept {
		tr.Points[i] = Point{
			Lat: p.lat, Lon: p.lon,
			Offset:   p.at.Sub(kept[0].at),
			SpeedKmh: p.kmh, HasSpeed: p.hasV,
		}
	}
	return tr, skipped
}

// deriveMotion fills speed and heading where the source has none, from the
// step that arrives at each point. The first point takes the values of the
// first step.
func deriveMotion(pts []Point) {
	if len(pts) < 2 {
		return
	}
	var lastSpeed, lastHeading float64
	haveSpeed, haveHeading := false, false
	for i := 1; i < len(pts); i++ {
		prev, cur := &pts[i-1], &pts[i]
		dist := distanceM(prev.Lat, prev.Lon, cur.Lat, cur.Lon)
		dt := (cur.Offset - prev.Offset).Seconds()

		if !cur.HasSpeed && dt > 0 {
			kmh := dist / dt * 3.6
			switch {
			case kmh <= maxDerivedSpeedKmh:
				cur.SpeedKmh, cur.HasSpeed = kmh, true
			case haveSpeed:
				cur.SpeedKmh, cur.HasSpeed = lastSpeed, true
			}
		}
		if cur.HasSpeed {
			lastSpeed, haveSpeed = cur.SpeedKmh, true
		}

		if !cur.HasHeading {
			switch {
			case dist >= minHeadingMoveM:
				cur.HeadingDeg, cur.HasHeading = bearingDeg(prev.Lat, prev.Lon, cur.Lat, cur.Lon), true
			case haveHeading:
				cur.HeadingDeg, cur.HasHeading = lastHeading, true
			}
		}
		if cur.HasHeading {
			lastHeading, haveHeading = cur.HeadingDeg, true
		}
	}

	first := &pts[0]
	for i := 1; i < len(pts) && (!first.HasSpeed || !first.HasHeading); i++ {
		if !first.HasSpeed && pts[i].HasSpeed {
			first.SpeedKmh, first.HasSpeed = pts[i].SpeedKmh, true
		}
		if !first.HasHeading && pts[i].HasHeading {
			first.HeadingDeg, first.HasHeading = pts[i].HeadingDeg, true
		}
	}
}

const earthRadiusM = 6371008.8

// distanceM returns the great-circle distance in metres (haversine).
func distanceM(lat1, lon1, lat2, lon2 float64) float64 {
	φ1, φ2 := lat1*math.Pi/180, lat2*math.Pi/180
	dφ := φ2 - φ1
	dλ := (lon2 - lon1) * math.Pi / 180
	a := math.Sin(dφ/2)*math.Sin(dφ/2) + math.Cos(φ1)*math.Cos(φ2)*math.Sin(dλ/2)*math.Sin(dλ/2)
	return 2 * earthRadiusM * math.Asin(math.Min(1, math.Sqrt(a)))
}

// bearingDeg returns the initial great-circle bearing from the first
// position to the second, in degrees clockwise from north, in [0, 360).
func bearingDeg(lat1, lon1, lat2, lon2 float64) float64 {
	φ1, φ2 := lat1*math.Pi/180, lat2*math.Pi/180
	dλ := (lon2 - lon1) * math.Pi / 180
	y := math.Sin(dλ) * math.Cos(φ2)
	x := math.Cos(φ1)*math.Sin(φ2) - math.Sin(φ1)*math.Cos(φ2)*math.Cos(dλ)
	deg := math.Mod(math.Atan2(y, x)*180/math.Pi+360, 360)
	if deg >= 360 {
		deg = 0
	}
	return deg
}

// RelocatedTo returns a copy of t shifted so that the median of its points
// lies on city. Each track keeps its real shape, timing and speeds. Only
// latitude and longitude are offset, so distances shrink or stretch
// slightly when the trace was recorded far from the city's latitude.
// Points that would leave the valid range are clamped.
func (t *Trace) RelocatedTo(city City) *Trace {
	var lats, lons []float64
	for _, tr := range t.Tracks {
		for _, p := range tr.Points {
			lats = append(lats, p.Lat)
			lons = append(lons, p.Lon)
		}
	}
	if len(lats) == 0 {
		return t
	}
	slices.Sort(lats)
	slices.Sort(lons)
	dLat := city.Lat - lats[len(lats)/2]
	dLon := city.Lon - lons[len(lons)/2]

	out := *t
	out.Name = t.Name + " relocated to " + city.Name
	out.Tracks = make([]Track, len(t.Tracks))
	for i, tr := range t.Tracks {
		moved := tr
		moved.Points = make([]Point, len(tr.Points))
		for j, p := range tr.Points {
			p.Lat = min(max(p.Lat+dLat, -90), 90)
			p.Lon = min(max(p.Lon+dLon, -180), 180)
			moved.Points[j] = p
		}
		out.Tracks[i] = moved
	}
	return &out
}

// CityByName returns the city of Cities whose name is name, ignoring case,
// or false.
func CityByName(name string) (City, bool) {
	for _, c := range Cities {
		if strings.EqualFold(c.Name, name) {
			return c, true
		}
	}
	return City{}, false
}
