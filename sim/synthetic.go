package sim

import (
	"fmt"
	"math"
	"time"
)

// City is a centre that synthetic routes loop around.
type City struct {
	Name string
	Lat  float64
	Lon  float64
}

// Cities are the regional offices' cities, one per agent region.
var Cities = []City{
	{Name: "manila", Lat: 14.5995, Lon: 120.9842},
	{Name: "cebu", Lat: 10.3157, Lon: 123.8854},
	{Name: "davao", Lat: 7.1907, Lon: 125.4553},
	{Name: "iloilo", Lat: 10.7202, Lon: 122.5621},
}

// DefaultSyntheticRoutes is the number of routes Run makes when no trace is
// given. Vehicles beyond it share routes at different starting points.
const DefaultSyntheticRoutes = 16

// syntheticStep is the interval between points of a synthetic route.
const syntheticStep = time.Second

// metresPerDegreeLat is the length of one degree of latitude, close enough
// for routes a few kilometres across.
const metresPerDegreeLat = 111_320.0

// Synthetic makes routes closed loops around the cities in Cities, taking
// the cities in turn, with a point every second. Each loop is a wobbly
// circle 1.2 to 2.7 km in radius, driven at 20 to 45 km/h with the speed
// changing along the way, and its last point lies one step before its
// first, so a looped replay continues without a jump. The result depends
// only on routes, and fewer than 1 route gives one.
func Synthetic(routes int) *Trace {
	if routes < 1 {
		routes = 1
	}
	tr := &Trace{Name: "synthetic", Format: FormatSynthetic, Tracks: make([]Track, routes)}
	for r := range routes {
		tr.Tracks[r] = syntheticRoute(r)
	}
	return tr
}

func syntheticRoute(r int) Track {
	city := Cities[r%len(Cities)]
	round := r / len(Cities)

	// Shift each round's centre a little so routes in one city differ.
	angle := float64(round) * 2.4
	centreLat := city.Lat + 0.006*float64(round%3)*math.Sin(angle)
	centreLon := city.Lon + 0.006*float64(round%3)*math.Cos(angle)
	radius := 1200 + 500*float64(round%4)
	baseKmh := 25 + 5*float64((r*3)%5)
	phase := float64(r)
	clockwise := r%2 == 1

	// Sample the closed curve finely, then walk along it at a varying speed.
	const vertices = 4096
	xs, ys := make([]float64, vertices+1), make([]float64, vertices+1)
	cum := make([]float64, vertices+1)
	for i := 0; i <= vertices; i++ {
		θ := 2 * math.Pi * float64(i) / vertices
		if clockwise {
			θ = -θ
		}
		ρ := radius * (1 + 0.15*math.Sin(3*θ+phase) + 0.05*math.Sin(7*θ+2*phase))
		xs[i], ys[i] = ρ*math.Cos(θ), ρ*math.Sin(θ)
		if i > 0 {
			cum[i] = cum[i-1] + math.Hypot(xs[i]-xs[i-1], ys[i]-ys[i-1])
		}
	}
	perimeter := cum[vertices]

	metresPerDegreeLon := metresPerDegreeLat * math.Cos(centreLat*math.Pi/180)
	track := Track{ID: fmt.Sprintf("%s-%d", city.Name, round+1)}
	seg := 0
	for s, k := 0.0, 0; s < perimeter; k++ {
		for seg < vertices-1 && cum[seg+1] < s {
			seg++
		}
		frac := (s - cum[seg]) / (cum[seg+1] - cum[seg])
		x := xs[seg] + frac*(xs[seg+1]-xs[seg])
		y := ys[seg] + frac*(ys[seg+1]-ys[seg])
		track.Points = append(track.Points, Point{
			Lat:    centreLat + y/metresPerDegreeLat,
			Lon:    centreLon + x/metresPerDegreeLon,
			Offset: time.Duration(k) * syntheticStep,
		})

		kmh := baseKmh * (1 + 0.3*math.Sin(10*math.Pi*s/perimeter+phase))
		s += kmh / 3.6 * syntheticStep.Seconds()
	}
	deriveMotion(track.Points)
	return track
}
