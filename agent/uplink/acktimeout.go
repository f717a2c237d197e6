package uplink

import (
	"time"

	"github.com/xpress-ops/tower/protocol"
)

// ackTimeoutRaiseAfter is how many Ack timeouts in a row of batches that
// cannot be made smaller double the Ack timeout in force.
const ackTimeoutRaiseAfter = 2

// ackTimeoutState is the Ack timeout in force, which outlives sessions.
// It starts at Config.AckTimeout. An Ack timeout first halves the GPS
// batch target, so the resent batch takes less time to send. When a batch
// that cannot be made smaller times out ackTimeoutRaiseAfter times in a
// row, the link's round trip itself is longer than the timeout, and
// resending would time out forever: the timeout doubles, up to
// MaxAckTimeout. A batch acknowledged within half of Config.AckTimeout
// shows that the link is fast again and halves the timeout, down to
// Config.AckTimeout.
type ackTimeoutState struct {
	base, current, ceiling time.Duration
	// stuck counts the Ack timeouts in a row of batches that could not be
	// made smaller.
	stuck int
}

func newAckTimeoutState(base time.Duration) ackTimeoutState {
	return ackTimeoutState{base: base, current: base, ceiling: max(base, MaxAckTimeout)}
}

// timedOut records an Ack timeout of a batch and reports whether the
// timeout doubled. shrinkable is whether the next batch will be smaller
// than the one that timed out.
func (a *ackTimeoutState) timedOut(shrinkable bool) (raised bool) {
	if shrinkable {
		a.stuck = 0
		return false
	}
	a.stuck++
	if a.stuck < ackTimeoutRaiseAfter || a.current >= a.ceiling {
		return false
	}
	a.stuck = 0
	a.current = min(2*a.current, a.ceiling)
	return true
}

// acknowledged records an Ack that came rtt after its batch was sent and
// reports whether the timeout went down.
func (a *ackTimeoutState) acknowledged(rtt time.Duration) (lowered bool) {
	a.stuck = 0
	if a.current > a.base && rtt <= a.base/2 {
		a.current = max(a.base, a.current/2)
		return true
	}
	return false
}

// ackTimedOut applies an Ack timeout of f, the oldest batch in flight on
// l, in lane. On the link that carries GPS it halves the GPS batch target.
// On either link it doubles the link's Ack timeout when even batches that
// cannot shrink keep timing out. Only GPS batches are sized,
// so an SOS or status batch, and a GPS batch at the smallest target,
// count as unable to shrink.
func (u *Uplink) ackTimedOut(l *hubLink, lane protocol.Lane, f flight) {
	shrinkable := lane == protocol.LaneGPS && f.records > u.sizer.min
	if l.carries(protocol.LaneGPS) {
		u.sizer.decrease()
		u.metrics.batchTarget.Set(float64(u.sizer.target))
	}

	previous := l.ackWait.current
	if l.ackWait.timedOut(shrinkable) {
		u.noteAckTimeout(l)
		u.log.Warn("even the smallest batches got no Ack in time: the link's round trip is longer than the Ack timeout; doubling it",
			"link", l.name, "lane", lane, "first", f.first, "last", f.last, "records", f.records,
			"ack_timeout", previous.String(), "new_ack_timeout", l.ackWait.current.String())
	}
}

// ackArrived applies an Ack that came rtt after its batch was sent on l to
// the link's Ack timeout in force.
func (u *Uplink) ackArrived(l *hubLink, rtt time.Duration) {
	previous := l.ackWait.current
	if l.ackWait.acknowledged(rtt) {
		u.noteAckTimeout(l)
		u.log.Info("Acks are fast again; lowering the Ack timeout",
			"link", l.name, "round_trip", rtt.String(), "ack_timeout", previous.String(), "new_ack_timeout", l.ackWait.current.String())
	}
}
