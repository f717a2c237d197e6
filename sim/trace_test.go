package sim

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	munichTrace = "../testdata/traces/munich_car_barefoot_x0001-001.json"
	portoTrace  = "../testdata/traces/porto_taxi_ecml2015_test_320trips.csv"
	ktmbTrace   = "../testdata/traces/malaysia_ktmb_trains_gtfsr_2026-06-30.csv"
)

func mustLoadTrace(t *testing.T, path string) *Trace {
	t.Helper()
	tr, err := LoadTrace(path)
	if err != nil {
		t.Fatalf("LoadTrace(%s): %v", path, err)
	}
	return tr
}

// checkTrackInvariants checks what every loaded track promises: points in
// range, offsets strictly increasing from 0, and speed and heading valid
// for the device contract wherever they are set.
func checkTrackInvariants(t *testing.T, tr *Trace) {
	t.Helper()
	for _, track := range tr.Tracks {
		if len(track.Points) == 0 {
			t.Fatalf("track %q has no points", track.ID)
		}
		if track.Points[0].Offset != 0 {
			t.Errorf("track %q: first offset %s, want 0", track.ID, track.Points[0].Offset)
		}
		for i, p := range track.Points {
			if err := checkLatLon(p.Lat, p.Lon); err != nil || (p.Lat == 0 && p.Lon == 0) {
				t.Fatalf("track %q point %d: bad position %v,%v", track.ID, i, p.Lat, p.Lon)
			}
			if i > 0 && p.Offset <= track.Points[i-1].Offset {
				t.Fatalf("track %q point %d: offset %s not after %s", track.ID, i, p.Offset, track.Points[i-1].Offset)
			}
			if p.HasSpeed && !(p.SpeedKmh >= 0 && p.SpeedKmh <= maxDerivedSpeedKmh) {
				t.Fatalf("track %q point %d: speed %v km/h", track.ID, i, p.SpeedKmh)
			}
			if p.HasHeading && !(p.HeadingDeg >= 0 && p.HeadingDeg < 360) {
				t.Fatalf("track %q point %d: heading %v", track.ID, i, p.HeadingDeg)
			}
		}
	}
}

func TestLoadTrace_MunichBarefootJSON(t *testing.T) {
	tr := mustLoadTrace(t, munichTrace)

	if tr.Format != FormatBarefootJSON {
		t.Errorf("format %q, want %q", tr.Format, FormatBarefootJSON)
	}
	if tr.Name != "munich_car_barefoot_x0001-001.json" {
		t.Errorf("name %q", tr.Name)
	}
	if len(tr.Tracks) != 1 {
		t.Fatalf("%d tracks, want 1", len(tr.Tracks))
	}
	if got := tr.Points(); got != 1194 {
		t.Errorf("%d points, want 1,194", got)
	}
	track := tr.Tracks[0]
	if track.ID != `\x0001` {
		t.Errorf("track id %q, want \\x0001", track.ID)
	}
	wantStart := time.Date(2014, 9, 10, 4, 54, 7, 0, time.UTC)
	if !track.Start.Equal(wantStart) {
		t.Errorf("start %s, want %s", track.Start, wantStart)
	}
	if want := 19*time.Minute + 55*time.Second; track.Duration() != want {
		t.Errorf("duration %s, want %s", track.Duration(), want)
	}
	first := track.Points[0]
	if first.Lat != 48.16350662940509 || first.Lon != 11.564388282625075 {
		t.Errorf("first point %v,%v: WKT is POINT(lon lat), so want 48.1635…,11.5643…", first.Lat, first.Lon)
	}
	for i, p := range track.Points {
		if !p.HasSpeed || !p.HasHeading {
			t.Fatalf("point %d: speed or heading not derived", i)
		}
	}
	checkTrackInvariants(t, tr)
}

func TestLoadTrace_MunichGPSJumpKeepsPreviousSpeed(t *testing.T) {
	tr := mustLoadTrace(t, munichTrace)
	pts := tr.Tracks[0].Points

	// Points 618 and 619 are about 470 m apart after 1 s, a GPS jump.
	jump := distanceM(pts[618].Lat, pts[618].Lon, pts[619].Lat, pts[619].Lon)
	if jump < 400 || pts[619].Offset-pts[618].Offset != time.Second {
		t.Fatalf("fixture changed: step 618→619 is %.0f m in %s", jump, pts[619].Offset-pts[618].Offset)
	}
	if pts[619].SpeedKmh != pts[618].SpeedKmh {
		t.Errorf("speed at the jump %.1f km/h, want the previous %.1f km/h", pts[619].SpeedKmh, pts[618].SpeedKmh)
	}
}

func TestLoadTrace_PortoTaxiCSV(t *testing.T) {
	tr := mustLoadTrace(t, portoTrace)

	if tr.Format != FormatPortoTaxiCSV {
		t.Errorf("format %q, want %q", tr.Format, FormatPortoTaxiCSV)
	}
	if len(tr.Tracks) != 320 {
		t.Errorf("%d tracks, want 320", len(tr.Tracks))
	}
	if got := tr.Points(); got != 14438 {
		t.Errorf("%d points, want 14,438", got)
	}
	if tr.Skipped != 0 {
		t.Errorf("skipped %d records, want 0", tr.Skipped)
	}
	t1 := tr.Tracks[0]
	if t1.ID != "T1" || len(t1.Points) != 11 {
		t.Fatalf("first track %q with %d points, want T1 with 11", t1.ID, len(t1.Points))
	}
	if !t1.Start.Equal(time.Unix(1408039037, 0)) {
		t.Errorf("T1 start %s, want Unix 1408039037", t1.Start)
	}
	if t1.Points[0].Lat != 41.148522 || t1.Points[0].Lon != -8.585676 {
		t.Errorf("T1 first point %v,%v: POLYLINE is [lon, lat], so want 41.148522,-8.585676", t1.Points[0].Lat, t1.Points[0].Lon)
	}
	for i, p := range t1.Points {
		if p.Offset != time.Duration(i)*15*time.Second {
			t.Errorf("T1 point %d offset %s, want %s", i, p.Offset, time.Duration(i)*15*time.Second)
		}
	}
	checkTrackInvariants(t, tr)
}

func TestLoadTrace_KTMBGTFSRCSV(t *testing.T) {
	tr := mustLoadTrace(t, ktmbTrace)

	if tr.Format != FormatGTFSRCSV {
		t.Errorf("format %q, want %q", tr.Format, FormatGTFSRCSV)
	}
	if len(tr.Tracks) != 37 {
		t.Errorf("%d tracks, want 37 vehicles", len(tr.Tracks))
	}
	// 13,672 rows, of which 265 repeat an earlier row exactly.
	if tr.Skipped != 265 {
		t.Errorf("skipped %d rows, want the 265 exact duplicates", tr.Skipped)
	}
	if got := tr.Points(); got != 13672-265 {
		t.Errorf("%d points, want %d", got, 13672-265)
	}
	for i := 1; i < len(tr.Tracks); i++ {
		if tr.Tracks[i-1].ID >= tr.Tracks[i].ID {
			t.Errorf("tracks not sorted by vehicle id: %q before %q", tr.Tracks[i-1].ID, tr.Tracks[i].ID)
		}
	}
	// The feed's speed is kept. Its bearing is always 0, so the heading is derived.
	var moving, headings int
	for _, track := range tr.Tracks {
		for _, p := range track.Points {
			if p.SpeedKmh > 0 {
				moving++
			}
			if p.HasHeading && p.HeadingDeg != 0 {
				headings++
			}
		}
	}
	if moving == 0 || headings == 0 {
		t.Errorf("%d points with speed > 0, %d with a heading other than 0; want both above 0", moving, headings)
	}
	checkTrackInvariants(t, tr)
}

func TestParseTrace_GTFSRSortsAndDropsDuplicates(t *testing.T) {
	csv := "vehicle_id,trip_id,timestamp,speed,lat,lon,bearing\n" +
		"B1,t,1000,10.0,3.0,101.0,0.0\n" +
		"A1,t,1120,20.0,3.01,101.0,0.0\n" +
		"A1,t,1000,0.0,3.0,101.0,0.0\n" +
		"A1,t,1060,,3.005,101.0,0.0\n" +
		"A1,t,1060,,3.005,101.0,0.0\n" + // exact duplicate
		"A1,u,1060,5.0,3.9,101.9,0.0\n" + // second position for the same time
		"B1,t,1000,10.0,0,0,0.0\n" // (0, 0)
	tr, err := ParseTrace("feed.csv", []byte(csv))
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Tracks) != 2 || tr.Tracks[0].ID != "A1" || tr.Tracks[1].ID != "B1" {
		t.Fatalf("tracks %+v, want A1 then B1", tr.Tracks)
	}
	if tr.Skipped != 3 {
		t.Errorf("skipped %d, want 3", tr.Skipped)
	}
	a := tr.Tracks[0].Points
	if len(a) != 3 {
		t.Fatalf("A1 has %d points, want 3", len(a))
	}
	for i, want := range []time.Duration{0, 60 * time.Second, 120 * time.Second} {
		if a[i].Offset != want {
			t.Errorf("A1 point %d offset %s, want %s", i, a[i].Offset, want)
		}
	}
	if a[1].Lat != 3.005 {
		t.Errorf("A1 point at 1060 has lat %v, want the first row's 3.005", a[1].Lat)
	}
	if !a[2].HasSpeed || a[2].SpeedKmh != 20 {
		t.Errorf("A1 last speed %v (known %v), want the feed's 20", a[2].SpeedKmh, a[2].HasSpeed)
	}
	// The empty speed cell is derived: about 556 m in 60 s.
	if !a[1].HasSpeed || math.Abs(a[1].SpeedKmh-33.4) > 0.5 {
		t.Errorf("A1 derived speed %v km/h, want about 33.4", a[1].SpeedKmh)
	}
}

func TestParseTrace_DetectsFormatByContent(t *testing.T) {
	for _, tc := range []struct {
		name, data string
		want       Format
	}{
		{"trace.dat", `[{"point":"POINT(121 14.6)","time":"2026-01-01 00:00:00+0800","id":"a"}]`, FormatBarefootJSON},
		{"trace.txt", "TRIP_ID,TIMESTAMP,POLYLINE\nT1,1400000000,\"[[121.0,14.6]]\"\n", FormatPortoTaxiCSV},
		{"feed", "vehicle_id,timestamp,lat,lon\nv,1400000000,14.6,121.0\n", FormatGTFSRCSV},
	} {
		tr, err := ParseTrace(tc.name, []byte(tc.data))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if tr.Format != tc.want {
			t.Errorf("%s: format %q, want %q", tc.name, tr.Format, tc.want)
		}
	}
}

func TestParseTrace_MalformedInputNamesFileAndLine(t *testing.T) {
	for _, tc := range []struct {
		name, data string
		line       int
		contains   string
	}{
		{"bad.json", "[\n{\"point\":\"POINT(11.5 48.1)\",\"time\":\"2014-09-10 06:54:07+0200\"},\n{\"point\":\"POINT(11.5)\",\"time\":\"2014-09-10 06:54:08+0200\"}\n]", 3, "WKT"},
		{"bad.json", "[\n{\"point\":\"POINT(11.5 48.1)\",\"time\":\"yesterday\"}\n]", 2, "YYYY-MM-DD"},
		{"bad.json", "[\n{\"point\":\"POINT(11.5 48.1)\"}\n]", 2, `"time"`},
		{"bad.json", "[\n{\"point\":\"POINT(11.5 98.1)\",\"time\":\"2014-09-10 06:54:07+0200\"}\n]", 2, "latitude"},
		{"bad.json", "[\n{\"point\":\"POINT(11.5 48.1)\",\"time\":\"2014-09-10 06:54:07+0200\"},\n{\"point\": 5}\n]", 3, "point"},
		{"bad.json", "[\n{\"point\":\"POINT(11.5 48.1)\",\n\"time\" \"x\"}]", 3, "invalid character"},
		{"bad.json", "[\n{\"point\":\"POINT(11.5 48.1)\",\n\"time\": 7}]", 3, "time"},
		{"bad.json", "[\n{\"point\":\"POINT(11.5 48.1)\",\"time\":\"2014-09-10 06:54:07+0200\"}\n", 3, "not closed"},
		{"bad.json", `{"point":"POINT(11.5 48.1)"}`, 1, "JSON array"},
		{"porto.csv", "TRIP_ID,TIMESTAMP,POLYLINE\nT1,1400000000,\"[[-8.6,41.1]]\"\nT2,soon,\"[[-8.6,41.1]]\"\n", 3, "TIMESTAMP"},
		{"porto.csv", "TRIP_ID,TIMESTAMP,POLYLINE\nT1,1400000000,\"[[-8.6,41.1],[41.1]]\"\n", 2, "point 1"},
		{"porto.csv", "TRIP_ID,TIMESTAMP,POLYLINE\nT1,1400000000,\"[[-8.6,41.1\"\n", 2, "POLYLINE"},
		{"porto.csv", "TRIP_ID,TIMESTAMP,POLYLINE\nT1,1400000000\n", 2, "wrong number of fields"},
		{"ktmb.csv", "vehicle_id,timestamp,speed,lat,lon\nA,1000,1,3.0,101.0\nA,1060,1,north,101.0\n", 3, "lat"},
		{"ktmb.csv", "vehicle_id,timestamp,speed,lat,lon\nA,1000,-4,3.0,101.0\n", 2, "speed"},
		{"ktmb.csv", "vehicle_id,timestamp,speed,lat,lon\n,1000,1,3.0,101.0\n", 2, "vehicle_id"},
		{"ktmb.csv", "vehicle_id,timestamp,speed,lat,lon\nA,1000,1,3.0,181.0\n", 2, "longitude"},
		{"ktmb.csv", "vehicle_id,timestamp,speed,lat,lon\nA,1000.5,1,3.0,101.0\n", 2, "timestamp"},
		{"ktmb.csv", "vehicle_id,timestamp,speed,lat,lon\nA,1000,1,\"3.0,101.0\n", 2, "quote"},
	} {
		_, err := ParseTrace(tc.name, []byte(tc.data))
		var te *TraceError
		if !errors.As(err, &te) {
			t.Errorf("%s %q: error %v, want a *TraceError", tc.name, tc.data, err)
			continue
		}
		if !errors.Is(err, ErrInvalidTrace) {
			t.Errorf("%s: error %v does not wrap ErrInvalidTrace", tc.name, err)
		}
		if te.File != tc.name || te.Line != tc.line {
			t.Errorf("%s %q: error at %s:%d, want %s:%d (%v)", tc.name, tc.data, te.File, te.Line, tc.name, tc.line, err)
		}
		if !strings.Contains(err.Error(), tc.contains) || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("%s: error %q does not mention %q and the file", tc.name, err, tc.contains)
		}
	}
}

func TestParseTrace_UnknownFormat(t *testing.T) {
	_, err := ParseTrace("notes.csv", []byte("id,name\n1,x\n"))
	if !errors.Is(err, ErrUnknownFormat) {
		t.Errorf("error %v, want ErrUnknownFormat", err)
	}
	if err != nil && !strings.Contains(err.Error(), "notes.csv") {
		t.Errorf("error %q does not name the file", err)
	}
}

func TestParseTrace_CSVMissingColumn(t *testing.T) {
	_, err := ParseTrace("ktmb.csv", []byte("vehicle_id,timestamp,lat\nA,1,2\n"))
	if !errors.Is(err, ErrUnknownFormat) {
		t.Errorf("error %v, want ErrUnknownFormat for a CSV without lon", err)
	}
}

func TestParseTrace_EmptyTrace(t *testing.T) {
	for name, data := range map[string]string{
		"empty.json": "[]",
		"empty.csv":  "vehicle_id,timestamp,lat,lon\n",
		"zero.csv":   "TRIP_ID,TIMESTAMP,POLYLINE\nT1,1400000000,\"[]\"\n",
	} {
		_, err := ParseTrace(name, []byte(data))
		if !errors.Is(err, ErrEmptyTrace) {
			t.Errorf("%s: error %v, want ErrEmptyTrace", name, err)
		}
	}
}

func TestLoadTrace_MissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent.json")
	_, err := LoadTrace(path)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %v, want os.ErrNotExist", err)
	}
}

func TestDeriveMotion_HeadingAndSpeed(t *testing.T) {
	// Due north 111 m in 10 s, then due east, then standing still.
	pts := []Point{
		{Lat: 14.0, Lon: 121.0, Offset: 0},
		{Lat: 14.001, Lon: 121.0, Offset: 10 * time.Second},
		{Lat: 14.001, Lon: 121.001, Offset: 20 * time.Second},
		{Lat: 14.001, Lon: 121.001, Offset: 30 * time.Second},
	}
	deriveMotion(pts)

	for i, want := range []float64{0, 0, 90, 90} {
		if !pts[i].HasHeading || math.Abs(pts[i].HeadingDeg-want) > 0.5 {
			t.Errorf("point %d heading %v (known %v), want %v", i, pts[i].HeadingDeg, pts[i].HasHeading, want)
		}
	}
	if math.Abs(pts[1].SpeedKmh-40.0) > 0.5 {
		t.Errorf("speed north %v km/h, want about 40", pts[1].SpeedKmh)
	}
	if pts[0].SpeedKmh != pts[1].SpeedKmh {
		t.Errorf("first point speed %v, want the first step's %v", pts[0].SpeedKmh, pts[1].SpeedKmh)
	}
	if pts[3].SpeedKmh != 0 {
		t.Errorf("standing still at %v km/h", pts[3].SpeedKmh)
	}
}

func TestLineIndex_LineAt(t *testing.T) {
	li := newLineIndex([]byte("ab\ncd\n\nef"))
	for off, want := range map[int]int{0: 1, 2: 1, 3: 2, 5: 2, 6: 3, 7: 4, 9: 4} {
		if got := li.lineAt(off); got != want {
			t.Errorf("lineAt(%d) = %d, want %d", off, got, want)
		}
	}
}

func TestTrace_RelocatedToKeepsShape(t *testing.T) {
	tr, err := LoadTrace(filepath.Join("..", "testdata", "traces", "munich_car_barefoot_x0001-001.json"))
	if err != nil {
		t.Fatal(err)
	}
	cebu, ok := CityByName("Cebu")
	if !ok {
		t.Fatal("Cebu is not in Cities")
	}
	moved := tr.RelocatedTo(cebu)

	if got, want := moved.Points(), tr.Points(); got != want {
		t.Fatalf("relocated trace has %d points, want %d", got, want)
	}
	orig, reloc := tr.Tracks[0].Points, moved.Tracks[0].Points
	dLat, dLon := reloc[0].Lat-orig[0].Lat, reloc[0].Lon-orig[0].Lon
	for i := range orig {
		if math.Abs(reloc[i].Lat-orig[i].Lat-dLat) > 1e-9 || math.Abs(reloc[i].Lon-orig[i].Lon-dLon) > 1e-9 {
			t.Fatalf("point %d moved by a different offset than point 0", i)
		}
		if reloc[i].Offset != orig[i].Offset {
			t.Fatalf("point %d offset changed from %s to %s", i, orig[i].Offset, reloc[i].Offset)
		}
	}
	if math.Abs(reloc[len(reloc)/2].Lat-cebu.Lat) > 0.05 || math.Abs(reloc[len(reloc)/2].Lon-cebu.Lon) > 0.05 {
		t.Errorf("middle point at (%v, %v), want near Cebu (%v, %v)", reloc[len(reloc)/2].Lat, reloc[len(reloc)/2].Lon, cebu.Lat, cebu.Lon)
	}
	if tr.Tracks[0].Points[0].Lat < 48 {
		t.Error("RelocatedTo changed the original trace")
	}
}
