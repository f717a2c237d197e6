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
		u.cfg.MaxBatchBytes != DefaultMaxBatchBytes || u.cfg.MinBackoff != DefaultMinBackoff || u.cfg.MaxBackoff != DefaultMaxBackoff ||
		u.cfg.MaxInflightBatches != DefaultMaxInflightBatches || u.cfg.KeepAlive != DefaultKeepAlive || u.cfg.PingTimeout != DefaultPingTimeout {
		t.Errorf("defaults not filled: %+v", u.cfg)
	}
}

func TestUplink_KeepAliveRoundedUpToSeconds(t *testing.T) {
	u := New(Config{KeepAlive: 1500 * time.Millisecond})
	if u.cfg.KeepAlive != 2*time.Second {
		t.Errorf("KeepAlive 1.5 s became %s, want 2s", u.cfg.KeepAlive)
	}
	u = New(Config{KeepAlive: 200 * time.Millisecond})
	if u.cfg.KeepAlive != time.Second {
		t.Errorf("KeepAlive 200 ms became %s, want 1s", u.cfg.KeepAlive)
	}
}

func TestBatchSizer_AIMD(t *testing.T) {
	const ackTimeout = 10 * time.Second
	b := newBatchSizer(1000)
	if b.target != 1000 || b.min != 31 || b.step != 125 {
		t.Fatalf("new sizer = %+v, want target 1000, min 31, step 125", b)
	}

	b.acknowledged(true, 6*time.Second, ackTimeout)
	if b.target != 500 {
		t.Errorf("after a slow Ack, target = %d, want 500", b.target)
	}
	b.acknowledged(true, time.Second, ackTimeout)
	if b.target != 625 {
		t.Errorf("after a fast full Ack, target = %d, want 625", b.target)
	}
	b.acknowledged(false, time.Second, ackTimeout)
	if b.target != 625 {
		t.Errorf("after a fast Ack of a partial batch, target = %d, want 625 (unchanged)", b.target)
	}
	b.acknowledged(true, 4*time.Second, ackTimeout)
	if b.target != 625 {
		t.Errorf("after an Ack between AckTimeout/4 and AckTimeout/2, target = %d, want 625 (unchanged)", b.target)
	}
	for range 10 {
		b.decrease()
	}
	if b.target != 31 {
		t.Errorf("after many timeouts, target = %d, want the minimum 31", b.target)
	}
	for range 20 {
		b.acknowledged(true, time.Millisecond, ackTimeout)
	}
	if b.target != 1000 {
		t.Errorf("after many fast Acks, target = %d, want the maximum 1000", b.target)
	}

	if single := newBatchSizer(1); single.min != 1 || single.step != 1 || single.target != 1 {
		t.Errorf("sizer for 1 record = %+v, want min, step and target 1", single)
	}
}
