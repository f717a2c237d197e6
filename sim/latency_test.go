package sim

import (
	"sync"
	"testing"
	"time"
)

func TestLatencyRecorder_Quantiles(t *testing.T) {
	var r latencyRecorder
	// 1 ms to 1000 ms, one each.
	for i := 1; i <= 1000; i++ {
		r.record(time.Duration(i) * time.Millisecond)
	}
	s := r.summary()

	if s.Count != 1000 {
		t.Errorf("count %d, want 1000", s.Count)
	}
	if s.Max != time.Second {
		t.Errorf("max %s, want 1s", s.Max)
	}
	for _, q := range []struct {
		name string
		got  time.Duration
		want time.Duration
	}{
		{"p50", s.P50, 500 * time.Millisecond},
		{"p90", s.P90, 900 * time.Millisecond},
		{"p99", s.P99, 990 * time.Millisecond},
	} {
		if q.got < q.want || float64(q.got) > float64(q.want)*1.008 {
			t.Errorf("%s = %s, want %s to %s + 0.8 %%", q.name, q.got, q.want, q.want)
		}
	}
}

func TestLatencyRecorder_Empty(t *testing.T) {
	var r latencyRecorder
	if s := r.summary(); s != (LatencySummary{}) {
		t.Errorf("empty recorder summary %+v, want zero", s)
	}
}

func TestLatencyRecorder_SmallAndHugeValues(t *testing.T) {
	var r latencyRecorder
	r.record(-time.Second)
	r.record(0)
	r.record(100 * 24 * time.Hour)
	s := r.summary()
	if s.Count != 3 {
		t.Errorf("count %d, want 3", s.Count)
	}
	if s.P50 != 0 {
		t.Errorf("p50 %s, want 0 for a negative and a zero value", s.P50)
	}
	if want := time.Duration(maxRecordableMicros) * time.Microsecond; s.Max != want {
		t.Errorf("max %s, want the clamp %s", s.Max, want)
	}
}

func TestLatencyRecorder_BucketBounds(t *testing.T) {
	for _, us := range []uint64{0, 1, 127, 128, 255, 256, 257, 1000, 123456, 1 << 30, maxRecordableMicros} {
		i := bucketOf(us)
		if i < 0 || i >= latencyBuckets {
			t.Fatalf("bucketOf(%d) = %d, outside [0, %d)", us, i, latencyBuckets)
		}
		upper := bucketUpper(i)
		if upper < us || float64(upper) > float64(us)*1.008+1 {
			t.Errorf("value %d in bucket %d with upper bound %d", us, i, upper)
		}
		if i > 0 && bucketUpper(i-1) >= us {
			t.Errorf("value %d also fits bucket %d (upper %d)", us, i-1, bucketUpper(i-1))
		}
	}
}

func TestLatencyRecorder_ConcurrentRecords(t *testing.T) {
	var r latencyRecorder
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				r.record(time.Duration(g*1000+i) * time.Microsecond)
			}
		})
	}
	wg.Wait()
	s := r.summary()
	if s.Count != 8000 || s.Max != 7999*time.Microsecond {
		t.Errorf("count %d max %s, want 8000 and 7.999ms", s.Count, s.Max)
	}
}
