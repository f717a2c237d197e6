//go:build !race

package retainguard

// raceEnabled reports whether the test binary runs under the race detector.
const raceEnabled = false
