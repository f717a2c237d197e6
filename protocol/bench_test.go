package protocol

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func BenchmarkDecodeFixes_One(b *testing.B) {
	payload := []byte(`{"ts":"2026-12-04T10:00:00.123+08:00","lat":14.5995,"lon":120.9842,"speed_kmh":32.5,"heading_deg":181,"accuracy_m":5,"alt_m":12,"battery_pct":80}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		if _, err := DecodeFixes(payload, testLimits()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeFixes_Array100(b *testing.B) {
	one := `{"ts":"2026-12-04T10:00:00.123+08:00","lat":14.5995,"lon":120.9842,"speed_kmh":32.5,"heading_deg":181,"accuracy_m":5,"battery_pct":80}`
	payload := []byte("[" + strings.Repeat(one+",", 99) + one + "]")
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		if _, err := DecodeFixes(payload, testLimits()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "fixes/s")
}

// The SlowPath benchmarks run the encoding/json path that DecodeFixes
// takes for payloads its fast path declines, and took for every payload
// before the fast path existed, on the payloads of the benchmarks above.

func BenchmarkDecodeFixes_SlowPath_One(b *testing.B) {
	payload := []byte(`{"ts":"2026-12-04T10:00:00.123+08:00","lat":14.5995,"lon":120.9842,"speed_kmh":32.5,"heading_deg":181,"accuracy_m":5,"alt_m":12,"battery_pct":80}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		if _, err := decodeFixesJSON(payload, testLimits()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeFixes_SlowPath_Array100(b *testing.B) {
	one := `{"ts":"2026-12-04T10:00:00.123+08:00","lat":14.5995,"lon":120.9842,"speed_kmh":32.5,"heading_deg":181,"accuracy_m":5,"battery_pct":80}`
	payload := []byte("[" + strings.Repeat(one+",", 99) + one + "]")
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		if _, err := decodeFixesJSON(payload, testLimits()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "fixes/s")
}

func BenchmarkEncodeBatch_1000Fixes(b *testing.B) {
	at := time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)
	speed := 30.0
	batch := &Batch{AgentID: "ncr-1", Region: "NCR-Manila", SpoolID: "abc", Lane: LaneGPS, SentAt: at}
	for i := range 1000 {
		batch.Records = append(batch.Records, Record{
			Seq: uint64(i + 1), Kind: KindFix, VehicleID: fmt.Sprintf("veh-%04d", i%100), ReceivedAt: at,
			Fix: &Fix{Time: at, Lat: 14.5 + float64(i)/1e4, Lon: 121, SpeedKmh: &speed},
		})
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := EncodeBatch(batch); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeBatch_1000Fixes(b *testing.B) {
	at := time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)
	batch := &Batch{AgentID: "ncr-1", Region: "NCR-Manila", SpoolID: "abc", Lane: LaneGPS, SentAt: at}
	for i := range 1000 {
		batch.Records = append(batch.Records, Record{
			Seq: uint64(i + 1), Kind: KindFix, VehicleID: fmt.Sprintf("veh-%04d", i%100), ReceivedAt: at,
			Fix: &Fix{Time: at, Lat: 14.5 + float64(i)/1e4, Lon: 121},
		})
	}
	data, err := EncodeBatch(batch)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := DecodeBatch(data); err != nil {
			b.Fatal(err)
		}
	}
}
