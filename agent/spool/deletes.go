package spool

import (
	"sync/atomic"
	"time"

	"github.com/xpress-ops/tower/protocol"
)

// deleteSpacingFactor and maxDeleteSpacing space out delete-only commits.
// The next one waits deleteSpacingFactor times the duration of the
// previous one after it ended, but no longer than maxDeleteSpacing. So
// commits of deletes alone take at most about a tenth of the writer's time.
const (
	deleteSpacingFactor = 9
	maxDeleteSpacing    = 100 * time.Millisecond
)

// deleteHold keeps the writer's deletes (DeleteThrough) away from SOS
// appends.
//
// During a drain the uplink deletes each acknowledged batch. In two drains
// of a million fixes (bench drain), commits of deletes alone kept the
// writer busy for 20 % and 80 % of the drain, timed per commit. An SOS
// append that arrived meanwhile waited for that commit before its own. So deletes wait: a group holding an
// urgent request (an SOS-lane append) leaves out its GPS and status
// deletes, and deletes that arrive alone are committed together, spaced
// out as deleteSpacingFactor describes. Held deletes join the next group
// without an urgent request, which costs them no commit of their own.
// SOS-lane deletes are never left out of a group, as they may free the
// space an SOS append of the group needs; GPS and status records do not
// limit SOS appends, which evict them.
//
// Holding a delete does not change what the spool stores: the records
// are deleted later, and the uplink never reads acknowledged records
// again. A reject (RejectThrough) or a flush commits every held delete
// first, so records are rejected only after the earlier deletes.
//
// The writer goroutine owns deleteHold, except held, which tests read.
type deleteHold struct {
	requests []*request
	// lastEnd is when the previous delete-only commit ended. spacing is
	// how long after it the next may start, and minSpacing its lower
	// bound, zero except in tests.
	lastEnd    time.Time
	spacing    time.Duration
	minSpacing time.Duration
	// held is the number of held deletes, for tests.
	held atomic.Int64
}

// empty reports whether no delete is held.
func (h *deleteHold) empty() bool { return len(h.requests) == 0 }

// due returns when the held deletes may be committed alone.
func (h *deleteHold) due() time.Time { return h.lastEnd.Add(h.spacing) }

// hold adds a delete to the held ones.
func (h *deleteHold) hold(req *request) {
	h.requests = append(h.requests, req)
	h.held.Store(int64(len(h.requests)))
}

// take returns the held deletes and holds none.
func (h *deleteHold) take() []*request {
	group := h.requests
	h.requests = nil
	h.held.Store(0)
	return group
}

// committed records that a commit of deletes alone ran from start to end.
func (h *deleteHold) committed(start, end time.Time) {
	h.lastEnd = end
	h.spacing = max(min(deleteSpacingFactor*end.Sub(start), maxDeleteSpacing), h.minSpacing)
}

// arrange decides which requests of a collected group to commit now, at
// now. It returns the group to commit, nil if none, and whether it holds
// only deletes, whose commit must then be timed (see committed).
func (h *deleteHold) arrange(group []*request, now time.Time) ([]*request, bool) {
	urgent, ordered, deletesOnly := false, false, true
	for _, req := range group {
		switch req.op {
		case opAppend:
			deletesOnly = false
			urgent = urgent || req.sos
		case opReject, opFlush:
			deletesOnly = false
			ordered = true
		}
	}
	switch {
	case ordered:
		// The held deletes arrived before every request of the group.
		return append(h.take(), group...), false
	case urgent:
		var commitNow, later []*request
		for _, req := range h.take() {
			if req.lane == protocol.LaneSOS {
				commitNow = append(commitNow, req)
			} else {
				later = append(later, req)
			}
		}
		for _, req := range group {
			if req.op == opDelete && req.lane != protocol.LaneSOS {
				later = append(later, req)
			} else {
				commitNow = append(commitNow, req)
			}
		}
		for _, req := range later {
			h.hold(req)
		}
		return commitNow, false
	case deletesOnly:
		for _, req := range group {
			h.hold(req)
		}
		if now.Before(h.due()) {
			return nil, false
		}
		return h.take(), true
	default:
		return append(h.take(), group...), false
	}
}
