package sim

import (
	"math"
	"reflect"
	"testing"
	"time"
)

func TestSynthetic_RoutesLoopAroundPhilippineCities(t *testing.T) {
	tr := Synthetic(8)

	if tr.Format != FormatSynthetic || len(tr.Tracks) != 8 {
		t.Fatalf("format %q with %d tracks, want synthetic with 8", tr.Format, len(tr.Tracks))
	}
	checkTrackInvariants(t, tr)
	for r, track := range tr.Tracks {
		city := Cities[r%len(Cities)]
		if len(track.Points) < 100 {
			t.Fatalf("route %d has %d points", r, len(track.Points))
		}
		for i, p := range track.Points {
			if d := distanceM(city.Lat, city.Lon, p.Lat, p.Lon); d > 5000 {
				t.Fatalf("route %d point %d is %.0f m from %s", r, i, d, city.Name)
			}
			if p.Offset != time.Duration(i)*time.Second {
				t.Fatalf("route %d point %d offset %s, want %d s", r, i, p.Offset, i)
			}
			if !p.HasSpeed || p.SpeedKmh < 10 || p.SpeedKmh > 70 {
				t.Fatalf("route %d point %d speed %v km/h, want a city speed", r, i, p.SpeedKmh)
			}
		}

		// The loop closes: the last point is at most one step from the first.
		first, last := track.Points[0], track.Points[len(track.Points)-1]
		if gap := distanceM(last.Lat, last.Lon, first.Lat, first.Lon); gap > 70/3.6 {
			t.Errorf("route %d: last point %.1f m from the first, want at most one step", r, gap)
		}
	}
}

func TestSynthetic_IsDeterministic(t *testing.T) {
	if !reflect.DeepEqual(Synthetic(5), Synthetic(5)) {
		t.Error("two calls with the same count made different routes")
	}
	a, b := Synthetic(5).Tracks[4], Synthetic(5).Tracks[0]
	if math.Abs(a.Points[0].Lat-b.Points[0].Lat) < 1e-6 && math.Abs(a.Points[0].Lon-b.Points[0].Lon) < 1e-6 {
		t.Error("routes 0 and 4 in Manila start at the same point")
	}
}

func TestSynthetic_AtLeastOneRoute(t *testing.T) {
	if n := len(Synthetic(0).Tracks); n != 1 {
		t.Errorf("Synthetic(0) made %d routes, want 1", n)
	}
}
