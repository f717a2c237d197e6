package protocol

import "testing"

// BenchmarkDecodeSOS measures decoding and checking one SOS as the agent
// does for every SOS a vehicle publishes.
func BenchmarkDecodeSOS(b *testing.B) {
	payload := []byte(`{"id":"sos-1","ts":"2026-12-04T10:00:00.123+08:00","lat":14.5995,"lon":120.9842,"kind":"panic","note":"rear seat"}`)
	newID := func() string { return "assigned" }
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		sos, err := DecodeSOS(payload, testLimits(), newID)
		if err != nil {
			b.Fatal(err)
		}
		if sos.PayloadError != "" || sos.TimeError != "" || sos.LocationError != "" {
			b.Fatalf("valid SOS was repaired: %+v", sos)
		}
	}
}
