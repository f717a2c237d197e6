package uplink

import (
	"testing"
	"time"
)

func TestUplink_BackoffFullJitter(t *testing.T) {
	r := 0.0
	u := New(Config{MinBackoff: 100 * time.Millisecond, MaxBackoff: 30 * time.Second, Rand: func() float64 { return r }})

	for _, tc := range []struct {
		attempt int
		rand    float64
		want    time.Duration
	}{
		{0, 0, 0},
		{0, 0.5, 50 * time.Millisecond},
		{1, 0.5, 100 * time.Millisecond},
		{3, 0.5, 400 * time.Millisecond},
		{8, 0.5, 12800 * time.Millisecond},
		{9, 0.5, 15 * time.Second},  // ceiling 51.2 s capped at 30 s
		{63, 0.5, 15 * time.Second}, // no overflow for large attempts
		{1000, 0.999, 29970 * time.Millisecond},
	} {
		r = tc.rand
		if got := u.backoff(tc.attempt); got != tc.want {
			t.Errorf("backoff(attempt %d, rand %v) = %s, want %s", tc.attempt, tc.rand, got, tc.want)
		}
	}
}

func TestUplink_DefaultsFilled(t *testing.T) {
	u := New(Config{})

	if u.cfg.HubURL != DefaultHubURL || u.cfg.AckTimeout != DefaultAckTimeout || u.cfg.MaxBatchRecords != DefaultMaxBatchRecords ||
		u.cfg.MaxBatchBytes != DefaultMaxBatchBytes || u.cfg.MinBackoff != DefaultMinBackoff || u.cfg.MaxBackoff != DefaultMaxBackoff {
		t.Errorf("defaults not filled: %+v", u.cfg)
	}
}
