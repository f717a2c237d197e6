package sim

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Latency recorder layout, in the manner of an HDR histogram: values in
// microseconds, linear below 2^subBits, and above that 2^subBits buckets
// per power of two, so a reported quantile is within 1/128 (0.8 %) of the
// true value. Values above maxRecordableMicros (about 50 days) are clamped.
const (
	subBits             = 7
	subBuckets          = 1 << subBits
	maxExponent         = 34
	latencyBuckets      = subBuckets + (maxExponent+1)*subBuckets
	maxRecordableMicros = 1<<(maxExponent+subBits+1) - 1
)

// LatencySummary is the distribution of message latencies: from a
// message's scheduled send time to its PUBACK.
type LatencySummary struct {
	// Count is the number of latencies recorded.
	Count uint64
	// P50, P90 and P99 are quantiles, each reported as the upper bound
	// of its bucket (at most 0.8 % above the true value) and never above Max.
	P50, P90, P99 time.Duration
	// Max is the largest latency recorded, to the microsecond.
	Max time.Duration
}

// latencyRecorder is a bucketed histogram of durations with lock-free
// recording. It is safe for concurrent use.
type latencyRecorder struct {
	counts    [latencyBuckets]atomic.Uint64
	total     atomic.Uint64
	maxMicros atomic.Uint64
}

func (r *latencyRecorder) record(d time.Duration) {
	us := uint64(max(d, 0) / time.Microsecond)
	us = min(us, maxRecordableMicros)
	r.counts[bucketOf(us)].Add(1)
	r.total.Add(1)
	for {
		cur := r.maxMicros.Load()
		if us <= cur || r.maxMicros.CompareAndSwap(cur, us) {
			break
		}
	}
}

// summary returns the quantiles of what was recorded so far. Records that
// race with it may be partly included.
func (r *latencyRecorder) summary() LatencySummary {
	var counts [latencyBuckets]uint64
	var total uint64
	for i := range counts {
		counts[i] = r.counts[i].Load()
		total += counts[i]
	}
	maxUs := r.maxMicros.Load()
	s := LatencySummary{Count: total, Max: time.Duration(maxUs) * time.Microsecond}
	if total == 0 {
		return s
	}
	quantile := func(q float64) time.Duration {
		rank := uint64(math.Ceil(q * float64(total)))
		rank = max(rank, 1)
		var seen uint64
		for i, c := range counts {
			seen += c
			if seen >= rank {
				return time.Duration(min(bucketUpper(i), maxUs)) * time.Microsecond
			}
		}
		return s.Max
	}
	s.P50, s.P90, s.P99 = quantile(0.50), quantile(0.90), quantile(0.99)
	return s
}

// bucketOf returns the bucket index of a value in microseconds.
func bucketOf(us uint64) int {
	if us < subBuckets {
		return int(us)
	}
	exp := bits.Len64(us) - subBits - 1
	return subBuckets + exp*subBuckets + int(us>>exp) - subBuckets
}

// bucketUpper returns the largest value, in microseconds, that falls in bucket i.
func bucketUpper(i int) uint64 {
	if i < subBuckets {
		return uint64(i)
	}
	exp := (i - subBuckets) / subBuckets
	mantissa := uint64((i-subBuckets)%subBuckets + subBuckets)
	return (mantissa+1)<<exp - 1
}
