package bench

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram range and precision: microseconds from 1 µs to 1 hour, three
// significant digits (a reported value is within 0.1 % of the true one).
// Longer latencies are recorded as 1 hour and counted in Clamped.
const (
	histMinMicros = 1
	histMaxMicros = int64(time.Hour / time.Microsecond)
	histSigFigs   = 3
	// histShards spreads concurrent recorders over several histograms,
	// because an hdrhistogram.Histogram is not safe for concurrent use.
	histShards = 16
)

// Recorder collects latencies in HdrHistograms. It is safe for concurrent use.
type Recorder struct {
	next    atomic.Uint32
	clamped atomic.Int64
	shards  [histShards]struct {
		mu sync.Mutex
		h  *hdrhistogram.Histogram
	}
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder {
	r := &Recorder{}
	for i := range r.shards {
		r.shards[i].h = hdrhistogram.New(histMinMicros, histMaxMicros, histSigFigs)
	}
	return r
}

// Record adds one latency. A negative latency counts as 0.
func (r *Recorder) Record(d time.Duration) {
	us := max(int64(d/time.Microsecond), 0)
	if us > histMaxMicros {
		us = histMaxMicros
		r.clamped.Add(1)
	}
	s := &r.shards[r.next.Add(1)%histShards]
	s.mu.Lock()
	// RecordValue fails only for values outside the range, clamped above.
	_ = s.h.RecordValue(us)
	s.mu.Unlock()
}

// Summary merges the shards and returns the quantiles recorded so far.
func (r *Recorder) Summary() Latency {
	all := hdrhistogram.New(histMinMicros, histMaxMicros, histSigFigs)
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		all.Merge(s.h)
		s.mu.Unlock()
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return Latency{
		Count:   all.TotalCount(),
		P50Ms:   ms(all.ValueAtQuantile(50)),
		P90Ms:   ms(all.ValueAtQuantile(90)),
		P99Ms:   ms(all.ValueAtQuantile(99)),
		P999Ms:  ms(all.ValueAtQuantile(99.9)),
		MaxMs:   ms(all.Max()),
		MeanMs:  all.Mean() / 1000,
		Clamped: r.clamped.Load(),
	}
}

// Latency is a latency distribution in milliseconds. Quantiles are the
// upper end of their HdrHistogram bucket.
type Latency struct {
	Count  int64   `json:"count"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p99_9_ms"`
	MaxMs  float64 `json:"max_ms"`
	MeanMs float64 `json:"mean_ms"`
	// Clamped counts latencies above one hour, recorded as one hour.
	Clamped int64 `json:"clamped,omitempty"`
}

// String formats the distribution on one line.
func (l Latency) String() string {
	if l.Count == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (%d samples)",
		fmtMs(l.P50Ms), fmtMs(l.P90Ms), fmtMs(l.P99Ms), fmtMs(l.P999Ms), fmtMs(l.MaxMs), l.Count)
}

// fmtMs formats milliseconds with a precision that suits their size.
func fmtMs(ms float64) string {
	switch {
	case ms >= 10_000:
		return fmt.Sprintf("%.1fs", ms/1000)
	case ms >= 100:
		return fmt.Sprintf("%.0fms", ms)
	case ms >= 10:
		return fmt.Sprintf("%.1fms", ms)
	default:
		return fmt.Sprintf("%.2fms", ms)
	}
}
