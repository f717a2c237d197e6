package uplink

import (
	"testing"
	"time"
)

// link is a simulated WAN link for the GPS budget: a bottleneck of rate
// bytes per second that sends one batch after another, and a fixed delay
// (the rest of the round trip, the hub's commit included) until the Ack.
// perBatch, when set, is a fixed time the bottleneck spends on every
// batch besides its bytes, like the hub's transaction per batch.
type link struct {
	rate     float64
	delay    time.Duration
	perBatch time.Duration
	linkFree time.Time
}

// ackTime returns when the Ack of a batch of size bytes published at now arrives.
func (l *link) ackTime(now time.Time, size int) time.Time {
	start := now
	if l.linkFree.After(start) {
		start = l.linkFree
	}
	l.linkFree = start.Add(l.perBatch + time.Duration(float64(size)/l.rate*float64(time.Second)))
	return l.linkFree.Add(l.delay)
}

// budgetSim drives a gpsBudget over a link as the session does, with an
// endless GPS backlog, on a virtual clock.
type budgetSim struct {
	budget *gpsBudget
	link   *link
	now    time.Time
	queue  []pendingAck
}

// pendingAck is a batch in flight and when its Ack arrives.
type pendingAck struct {
	f     flight
	ackAt time.Time
}

// run publishes batches as far as budget and window allow and settles
// each at its Ack, for d of virtual time. It returns the most GPS bytes in
// flight and the bytes delivered meanwhile.
func (s *budgetSim) run(d time.Duration) (maxInflight, delivered int64) {
	end := s.now.Add(d)
	for s.now.Before(end) {
		for len(s.queue) < s.budget.window && s.budget.allows(s.now) {
			size := s.budget.batchBytes(s.now)
			f := flight{bytes: size, sentAt: s.now}
			s.budget.sent(&f)
			s.queue = append(s.queue, pendingAck{f, s.link.ackTime(s.now, size)})
			maxInflight = max(maxInflight, s.budget.inflight)
		}
		next := s.queue[0]
		s.queue = s.queue[1:]
		s.now = next.ackAt
		s.budget.settled(next.f, s.now)
		delivered += int64(next.f.bytes)
	}
	return maxInflight, delivered
}

func newBudgetSim(rate float64, delay time.Duration) *budgetSim {
	return &budgetSim{
		budget: newGPSBudget(DefaultMaxBatchBytes, DefaultMaxInflightBatches),
		link:   &link{rate: rate, delay: delay},
		now:    time.Unix(0, 0),
	}
}

func TestGPSBudget_BoundsQueueAndKeepsLinkBusy(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rate  float64
		delay time.Duration
	}{
		{"slow regional link", 128 << 10, 40 * time.Millisecond},
		{"fast long link", 10 << 20, 100 * time.Millisecond},
		{"satellite link", 256 << 10, 600 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := newBudgetSim(tc.rate, tc.delay)
			sim.run(30 * time.Second) // warm-up
			// Ten minutes: twenty expiries of the minimum round trip.
			start := sim.now
			maxInflight, delivered := sim.run(10 * time.Minute)

			// The limit is floor + pipe + batch cap, where the pipe is what
			// the link drains in the round trip of one floor-sized batch.
			floor := int64(gpsBudgetFloor)
			pipe := int64(tc.rate*tc.delay.Seconds()) + floor
			batchCap := max(floor, (floor+pipe)/(DefaultMaxInflightBatches-1))
			if bound := floor + pipe + batchCap + pipe/100; maxInflight > bound {
				t.Errorf("GPS bytes in flight reached %d, want at most %d: the floor, the link's pipe of %d bytes and a batch of %d",
					maxInflight, bound, pipe, batchCap)
			}
			rate := float64(delivered) / sim.now.Sub(start).Seconds()
			if rate < 0.9*tc.rate {
				t.Errorf("delivered %.0f bytes/s, want at least 90%% of the link's %.0f", rate, tc.rate)
			}
		})
	}
}

// On loopback the bottleneck is the hub, which spends a fixed time on
// every batch (its transaction) besides the bytes. The budget must let
// batches grow so that fixed time does not dominate, while it still
// bounds the hub's work queued ahead of an SOS.
func TestGPSBudget_GrowsBatchesWhenHubBound(t *testing.T) {
	const (
		rate     = 20 << 20
		perBatch = 4 * time.Millisecond
	)
	sim := newBudgetSim(rate, 200*time.Microsecond)
	sim.link.perBatch = perBatch
	sim.run(30 * time.Second)
	start := sim.now
	maxInflight, delivered := sim.run(5 * time.Minute)
	got := float64(delivered) / sim.now.Sub(start).Seconds()

	// Batches of 256 KiB, about 1000 fixes (the default record cap), would
	// reach rate × size / (size + rate × perBatch). Without minPipeTime the
	// batches stayed at the floor and reached less than a quarter of it.
	full := float64(256 << 10)
	best := rate * full / (full + rate*perBatch.Seconds())
	if got < 0.7*best {
		t.Errorf("delivered %.0f bytes/s, want at least 70%% of the %.0f that batches of 256 KiB reach", got, best)
	}
	// The work queued ahead of an SOS stays within minPipeTime and a batch.
	queued := time.Duration(float64(maxInflight) / got * float64(time.Second))
	if bound := minPipeTime + perBatch + time.Duration(full/rate*float64(time.Second)); queued > bound {
		t.Errorf("GPS in flight reached %d bytes, %s of the hub's work, want at most %s", maxInflight, queued, bound)
	}
}

func TestGPSBudget_FollowsLongerPath(t *testing.T) {
	const rate = 4 << 20
	sim := newBudgetSim(rate, 20*time.Millisecond)
	sim.run(30 * time.Second)

	// The path gets ten times longer: the old minimum round trip would
	// keep the budget at a tenth of what the link needs.
	sim.link.delay = 200 * time.Millisecond
	sim.run(2 * minRTTLifetime)
	start := sim.now
	_, delivered := sim.run(30 * time.Second)

	if got := float64(delivered) / sim.now.Sub(start).Seconds(); got < 0.9*rate {
		t.Errorf("after the path grew longer, delivered %.0f bytes/s, want at least 90%% of the link's %d", got, rate)
	}
	if sim.budget.minRTT < sim.link.delay {
		t.Errorf("minimum round trip = %s, want at least the new path's %s", sim.budget.minRTT, sim.link.delay)
	}
}

func TestGPSBudget_StartsAtFloor(t *testing.T) {
	b := newGPSBudget(DefaultMaxBatchBytes, DefaultMaxInflightBatches)
	now := time.Unix(0, 0)

	if got := b.limit(now); got != gpsBudgetFloor {
		t.Errorf("limit before any Ack = %d, want the floor %d", got, gpsBudgetFloor)
	}
	if got := b.batchBytes(now); got != gpsBudgetFloor {
		t.Errorf("first batch cap = %d, want the floor %d", got, gpsBudgetFloor)
	}
	if !b.allows(now) {
		t.Error("an empty budget refuses the first batch")
	}
	f := flight{bytes: 2 * gpsBudgetFloor, sentAt: now}
	b.sent(&f)
	if b.allows(now) {
		t.Error("the budget allows a second batch while one larger than the floor is in flight")
	}
	b.dropped(f)
	if b.inflight != 0 || !b.allows(now) {
		t.Errorf("after the batch failed, in flight = %d and allows = %v, want 0 and true", b.inflight, b.allows(now))
	}
	if small := newGPSBudget(MinBatchBytes, 4); small.floor != MinBatchBytes {
		t.Errorf("floor with MaxBatchBytes %d = %d, want MaxBatchBytes", MinBatchBytes, small.floor)
	}
}

func TestAckTimeoutState_DoublesForStuckBatches(t *testing.T) {
	a := newAckTimeoutState(time.Second)

	for i := range 5 {
		if a.timedOut(true) {
			t.Fatalf("timeout %d of a batch that can shrink raised the Ack timeout", i+1)
		}
	}
	if a.timedOut(false) {
		t.Error("the first timeout of a batch that cannot shrink raised the Ack timeout")
	}
	if !a.timedOut(false) || a.current != 2*time.Second {
		t.Errorf("after two timeouts of a batch that cannot shrink, Ack timeout = %s, want 2s", a.current)
	}

	// An Ack in between starts the count again.
	a.timedOut(false)
	a.acknowledged(1500 * time.Millisecond)
	if a.timedOut(false) || a.current != 2*time.Second {
		t.Errorf("a timeout after an Ack raised the Ack timeout to %s, want 2s kept", a.current)
	}

	// A slow Ack keeps the raised timeout; a fast one halves it.
	if a.acknowledged(1200*time.Millisecond) || a.current != 2*time.Second {
		t.Errorf("after an Ack in 1.2s, Ack timeout = %s, want 2s kept", a.current)
	}
	if !a.acknowledged(100*time.Millisecond) || a.current != time.Second {
		t.Errorf("after an Ack in 100ms, Ack timeout = %s, want back to 1s", a.current)
	}
	if a.acknowledged(100*time.Millisecond) || a.current != time.Second {
		t.Errorf("Ack timeout went below the configured 1s: %s", a.current)
	}

	for range 40 {
		a.timedOut(false)
	}
	if a.current != MaxAckTimeout {
		t.Errorf("after many timeouts, Ack timeout = %s, want the cap %s", a.current, MaxAckTimeout)
	}
}
