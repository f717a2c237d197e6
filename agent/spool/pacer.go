package spool

import "time"

// minPacingWait and maxPacingWait bound the wait groupPacer adds before
// a commit, and a group of pacedGroupLimit requests or more commits at
// once, since its commit's cost is already shared.
const (
	minPacingWait   = time.Millisecond
	maxPacingWait   = 2 * time.Millisecond
	pacedGroupLimit = 8
)

// groupPacer sizes group commits when Config.CommitInterval is zero.
//
// The writer commits the requests waiting when it is free, so a group
// holds what arrived during the previous commit. Vehicles have one
// message each in flight (the broker waits for the spool before it reads
// a vehicle's next packet), so when a commit is short next to the gaps
// between arrivals, each group holds one or two records. Commits, each
// with its page writes and fsync, then took a fifth of an agent's CPU at
// a few thousand messages per second.
//
// The pacer therefore estimates the arrival rate and the commit duration.
// Its wait is the commit duration, within [minPacingWait, maxPacingWait].
// When at least one request is expected to arrive within the wait, the
// writer waits for the requests expected within a commit duration plus
// the wait, but no more than pacedGroupLimit in all, for at most the
// wait, and stops early when no request arrives for twice the mean time
// between arrivals. A request thus waits
// at most about 2 ms more under load, and an idle spool commits at once. The fsync
// still precedes every result, so a PUBACK still follows the fsync.
//
// The writer goroutine owns the pacer.
type groupPacer struct {
	// commit is the moving average of commit durations, and rate that of
	// requests per second.
	commit time.Duration
	rate   float64
	// cycleStart is when the previous group started collecting.
	cycleStart time.Time
}

// pacerWeight is the weight of a new sample in the moving averages.
const pacerWeight = 0.25

// committed records the duration of one group commit.
func (p *groupPacer) committed(d time.Duration) {
	if p.commit == 0 {
		p.commit = d
		return
	}
	p.commit += time.Duration(pacerWeight * float64(d-p.commit))
}

// collected records that a group collected requests, starting at start.
// They arrived since the previous group started collecting.
func (p *groupPacer) collected(start time.Time, requests int) {
	if !p.cycleStart.IsZero() {
		if cycle := start.Sub(p.cycleStart).Seconds(); cycle > 0 {
			p.rate += pacerWeight * (float64(requests)/cycle - p.rate)
		}
	}
	p.cycleStart = start
}

// plan returns how many requests a group of waiting requests should wait
// for, how long at most, and the longest gap between two arrivals before
// it stops waiting; a zero wait means commit now. The gap, twice the mean
// time between arrivals, ends the wait early when the callers have no
// more requests to send, such as when every caller already waits in
// this group.
func (p *groupPacer) plan(waiting, maxRequests int) (target int, wait, gap time.Duration) {
	wait = min(max(p.commit, minPacingWait), maxPacingWait)
	if p.rate*wait.Seconds() < 1 {
		return 0, 0, 0
	}
	target = min(int(p.rate*(p.commit+wait).Seconds()+0.5), maxRequests, pacedGroupLimit)
	if waiting >= target {
		return 0, 0, 0
	}
	gap = min(time.Duration(2/p.rate*float64(time.Second)), wait)
	return target, wait, gap
}
