package spool

import (
	"testing"
	"time"
)

func TestGroupPacer_WaitsOnlyUnderLoad(t *testing.T) {
	var p groupPacer
	now := time.Unix(0, 0)

	// Idle: one request every 100 ms, commits of 1 ms.
	for range 20 {
		p.committed(time.Millisecond)
		p.collected(now, 1)
		now = now.Add(100 * time.Millisecond)
	}
	if target, wait, _ := p.plan(1, 4096); wait != 0 {
		t.Errorf("idle spool: plan waits %s for %d requests, want no wait", wait, target)
	}

	// Busy: 4 requests per 1.5 ms cycle, commits of 1.5 ms.
	for range 40 {
		p.committed(1500 * time.Microsecond)
		p.collected(now, 4)
		now = now.Add(1500 * time.Microsecond)
	}
	target, wait, gap := p.plan(2, 4096)
	if target != 8 {
		t.Errorf("busy spool: target %d requests, want 8 (the arrivals of two commits)", target)
	}
	if wait < 1490*time.Microsecond || wait > 1510*time.Microsecond {
		t.Errorf("busy spool: wait %s, want one commit duration, 1.5ms", wait)
	}
	if gap < 700*time.Microsecond || gap > 800*time.Microsecond {
		t.Errorf("busy spool: gap %s, want twice the 375µs between arrivals", gap)
	}

	// Fast disk: commits of 0.2 ms at 4,000 requests per second; the wait
	// is at least minPacingWait.
	var fast groupPacer
	for range 40 {
		fast.committed(200 * time.Microsecond)
		fast.collected(now, 2)
		now = now.Add(500 * time.Microsecond)
	}
	if target, wait, _ := fast.plan(1, 4096); wait != minPacingWait || target < 4 || target > 6 {
		t.Errorf("fast disk: plan waits %s for %d requests, want %s for about 5", wait, target, minPacingWait)
	}
	if _, wait, _ := p.plan(target, 4096); wait != 0 {
		t.Errorf("a group already at its target waits %s, want no wait", wait)
	}
	if target, _, _ := p.plan(1, 5); target != 5 {
		t.Errorf("target %d with room for 5 requests, want 5", target)
	}
	if _, wait, _ := p.plan(pacedGroupLimit, 4096); wait != 0 {
		t.Errorf("a group of %d requests waits %s, want no wait", pacedGroupLimit, wait)
	}

	// Slow disk: commits of 20 ms; the wait stays bounded.
	for range 40 {
		p.committed(20 * time.Millisecond)
		p.collected(now, 80)
		now = now.Add(20 * time.Millisecond)
	}
	if _, wait, _ := p.plan(1, 4096); wait != maxPacingWait {
		t.Errorf("slow disk: wait %s, want the bound %s", wait, maxPacingWait)
	}
}
