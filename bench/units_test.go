package bench

import (
	"math"
	"testing"
	"time"

	"github.com/xpress-ops/tower/protocol"
)

func TestRecorderQuantiles(t *testing.T) {
	r := NewRecorder()
	// 1 ms to 1000 ms, one sample each: p50 is 500 ms, p99 990 ms.
	for i := 1; i <= 1000; i++ {
		r.Record(time.Duration(i) * time.Millisecond)
	}
	s := r.Summary()
	if s.Count != 1000 {
		t.Errorf("count = %d, want 1000", s.Count)
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"p50", s.P50Ms, 500},
		{"p90", s.P90Ms, 900},
		{"p99", s.P99Ms, 990},
		{"p99.9", s.P999Ms, 999},
		{"max", s.MaxMs, 1000},
		{"mean", s.MeanMs, 500.5},
	} {
		// Three significant digits: within 0.1 %, plus the bucket's upper end.
		if math.Abs(c.got-c.want) > c.want*0.002 {
			t.Errorf("%s = %v ms, want %v ms within 0.2 %%", c.name, c.got, c.want)
		}
	}
}

func TestRecorderClampsAndFloors(t *testing.T) {
	r := NewRecorder()
	r.Record(-time.Second)
	r.Record(2 * time.Hour)
	s := r.Summary()
	if s.Count != 2 {
		t.Fatalf("count = %d, want 2", s.Count)
	}
	if s.Clamped != 1 {
		t.Errorf("clamped = %d, want 1", s.Clamped)
	}
	if s.MaxMs < float64(time.Hour/time.Millisecond)*0.999 {
		t.Errorf("max = %v ms, want about one hour", s.MaxMs)
	}
}

func TestFixPayloadsPassValidation(t *testing.T) {
	ts := time.Now().Add(-time.Minute)
	for _, batch := range []int{1, 3, 1000} {
		payload := appendFixes(nil, ts, 14.55, 120.98, 42, batch)
		fixes, err := protocol.DecodeFixes(payload, protocol.Limits{})
		if err != nil {
			t.Fatalf("batch %d: DecodeFixes(%.120s…): %v", batch, payload, err)
		}
		if len(fixes) != batch {
			t.Errorf("batch %d: decoded %d fixes", batch, len(fixes))
		}
		last := fixes[len(fixes)-1]
		if !last.Time.Equal(ts.Truncate(time.Millisecond)) {
			t.Errorf("batch %d: last fix time %s, want the scheduled time %s", batch, last.Time, ts)
		}
	}
}

func TestSOSPayloadNeedsNoRepair(t *testing.T) {
	ts := time.Now().Add(-time.Second)
	sos, err := protocol.DecodeSOS(sosPayload("r1-bench-sos-000001", ts, 14.55, 120.98), protocol.Limits{}, func() string { return "assigned" })
	if err != nil {
		t.Fatalf("DecodeSOS: %v", err)
	}
	if sos.ID != "r1-bench-sos-000001" {
		t.Errorf("id = %q, want the one sent", sos.ID)
	}
	if sos.PayloadError != "" || sos.LocationError != "" || sos.TimeError != "" {
		t.Errorf("SOS was repaired: payload %q, location %q, time %q", sos.PayloadError, sos.LocationError, sos.TimeError)
	}
	if !sos.HasLocation || sos.Kind != protocol.SOSPanic {
		t.Errorf("SOS = %+v, want a located panic", sos)
	}
}

func TestBacklogSlope(t *testing.T) {
	var samples []BacklogSample
	for i := range 20 {
		samples = append(samples, BacklogSample{AtSeconds: float64(i), Backlog: int64(100 + 50*i)})
	}
	slope, n := backlogSlope(samples, 10, 19)
	if n != 10 {
		t.Errorf("used %d samples, want 10", n)
	}
	if math.Abs(slope-50) > 1e-9 {
		t.Errorf("slope = %v, want 50 fixes/s", slope)
	}
	if _, n := backlogSlope(samples, 100, 200); n != 0 {
		t.Errorf("used %d samples outside the range, want 0", n)
	}
}

func TestEdgeSearchSteps(t *testing.T) {
	cfg := DefaultEdgeConfig()
	cfg.StartRate, cfg.MaxRate, cfg.Factor, cfg.Refine = 1000, 100_000, 2, 2
	s := &EdgeSearch{next: cfg.StartRate, refines: cfg.Refine}
	// The broker sustains anything up to 5000 msg/s.
	limit := 5000.0
	var tried []float64
	for !s.done && len(tried) < maxEdgeSteps {
		rate := s.next
		tried = append(tried, rate)
		if rate <= limit {
			s.lo = max(s.lo, rate)
		} else if s.hi == 0 || rate < s.hi {
			s.hi = rate
		}
		s.chooseNext(cfg)
	}
	want := []float64{1000, 2000, 4000, 8000, 5657, 4757}
	if len(tried) != len(want) {
		t.Fatalf("tried %v, want %v", tried, want)
	}
	for i := range want {
		if tried[i] != want[i] {
			t.Fatalf("tried %v, want %v", tried, want)
		}
	}
	if s.lo != 4757 || s.hi != 5657 {
		t.Errorf("bounds = [%v, %v], want [4757, 5657]", s.lo, s.hi)
	}
}

func TestEdgeSearchStopsAtMaxRate(t *testing.T) {
	cfg := DefaultEdgeConfig()
	cfg.StartRate, cfg.MaxRate, cfg.Factor = 1000, 3000, 2
	s := &EdgeSearch{next: cfg.StartRate, refines: cfg.Refine}
	var tried []float64
	for !s.done && len(tried) < maxEdgeSteps {
		tried = append(tried, s.next)
		s.lo = s.next
		s.chooseNext(cfg)
	}
	if len(tried) != 3 || tried[2] != 3000 {
		t.Errorf("tried %v, want 1000, 2000 and the max rate 3000", tried)
	}
}

func TestFmtRate(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999.6: "1,000", 1234567: "1,234,567", -4500: "-4,500"} {
		if got := fmtRate(in); got != want {
			t.Errorf("fmtRate(%v) = %q, want %q", in, got, want)
		}
	}
}
