package sim

import (
	"testing"
	"time"
)

// BenchmarkRun_MunichBurst measures how fast the simulator pushes QoS 1
// fixes through a local mochi broker: 4 vehicles replay the Munich trace
// at a speedup so high that every fix is due at once.
func BenchmarkRun_MunichBurst(b *testing.B) {
	trace, err := LoadTrace(munichTrace)
	if err != nil {
		b.Fatal(err)
	}
	broker := startBroker(b)

	var fixes uint64
	var elapsed time.Duration
	for b.Loop() {
		st, err := Run(b.Context(), Config{Broker: broker.url, Vehicles: 4, Source: trace, Speedup: 1e6})
		if err != nil {
			b.Fatal(err)
		}
		if st.FixesFailed != 0 {
			b.Fatalf("%d fixes failed", st.FixesFailed)
		}
		fixes += st.FixesAcked
		elapsed += st.Elapsed
	}
	b.ReportMetric(float64(fixes)/elapsed.Seconds(), "fixes/s")
}

func BenchmarkLatencyRecorder_Record(b *testing.B) {
	var r latencyRecorder
	b.RunParallel(func(pb *testing.PB) {
		d := time.Duration(0)
		for pb.Next() {
			d += 7 * time.Microsecond
			r.record(d % time.Second)
		}
	})
}
