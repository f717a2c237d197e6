package uplink

import (
	"log/slog"
	"time"

	"github.com/xpress-ops/tower/protocol"
)

// handleAck applies one Ack from the hub.
//
// An Ack is ignored when it names another agent or spool (a stale spool
// id). Otherwise the records through Ack.Through are released for
// deletion from the spool (see releaser), but never past the highest
// sequence number sent, and every
// batch of the lane that the Ack covers is settled: one Ack may settle
// several batches. An Ack that carries an error belongs to the lane's
// oldest batch still in flight, because the hub acknowledges a
// connection's batches in order. A permanent error moves that batch to the spool's rejected
// bucket, except in the SOS lane. Any other error makes the lane resend
// from its oldest unacknowledged record after a backoff.
func (s *session) handleAck(ack protocol.Ack) {
	u := s.u
	log := u.log.With("lane", ack.Lane, "through", ack.Through)
	if ack.AgentID != u.cfg.AgentID || ack.SpoolID != u.cfg.Spool.SpoolID() {
		u.metrics.acksIgnored.WithLabelValues("other_spool").Inc()
		log.Warn("ack for another agent or spool ignored", "ack_agent", ack.AgentID, "ack_spool", ack.SpoolID,
			"spool", u.cfg.Spool.SpoolID())
		return
	}
	ls := s.lane(ack.Lane)
	if ls == nil {
		u.metrics.acksIgnored.WithLabelValues("invalid").Inc()
		log.Warn("ack for an unknown lane ignored")
		return
	}

	through := ack.Through
	u.ackedMu.Lock()
	acked, sent := u.acked[ack.Lane], u.sent[ack.Lane]
	u.ackedMu.Unlock()
	if through > sent {
		log.Warn("ack beyond the records sent; deleting only what was sent", "sent", sent)
		through = sent
	}

	if through > acked {
		// The hub has the records, so this process never sends them again,
		// even before the releaser deleted them or if the delete fails. A
		// later delete or a restart cleans them up, and the hub skips the
		// duplicates a restart sends.
		s.checkSkipped(ls, acked, through, log)
		u.setAcked(ack.Lane, through)
		u.releaser.release(ack.Lane, through)
		acked = through
		s.progressed = true
		if !ls.retrying {
			s.c.link.transientErrors = 0
		}
	} else if ack.Error == "" {
		u.metrics.acksIgnored.WithLabelValues("stale").Inc()
		log.Debug("ack acknowledges nothing new; ignored", "acked", acked)
	}

	settled := s.settleThrough(ls, acked)
	if ack.Error != "" && s.failOldest(ls, ack, log) {
		settled = true
	}
	if settled {
		s.headSince = time.Now()
	}
	u.metrics.inflight.WithLabelValues(string(ls.lane)).Set(float64(len(ls.flights)))
}

// settleThrough removes the lane's batches in flight that end at or
// before acked. It records their round trip, which adjusts the GPS batch
// size, the GPS byte budget and the Ack timeout in force. It reports
// whether it removed any.
func (s *session) settleThrough(ls *laneState, acked uint64) bool {
	u := s.u
	n := 0
	now := time.Now()
	for n < len(ls.flights) && ls.flights[n].last <= acked {
		f := ls.flights[n]
		rtt := now.Sub(f.sentAt)
		u.metrics.roundTrip.WithLabelValues(string(ls.lane)).Observe(rtt.Seconds())
		if ls.lane == protocol.LaneGPS {
			u.sizer.acknowledged(f.full, rtt, s.c.link.ackWait.current)
			u.metrics.batchTarget.Set(float64(u.sizer.target))
		}
		if ls.budget != nil {
			ls.budget.settled(f, now)
		}
		u.ackArrived(s.c.link, rtt)
		n++
	}
	ls.flights = ls.flights[n:]
	if ls.budget != nil {
		u.metrics.gpsInflight.Set(float64(ls.budget.inflight))
		u.metrics.gpsLimit.Set(float64(ls.budget.limit(now)))
	}
	return n > 0
}

// failOldest applies an error Ack to the lane's oldest batch in flight
// and reports whether there was one.
func (s *session) failOldest(ls *laneState, ack protocol.Ack, log *slog.Logger) bool {
	u := s.u
	if len(ls.flights) == 0 {
		u.metrics.acksIgnored.WithLabelValues("stale").Inc()
		log.Warn("error ack from hub with no batch of its lane in flight; ignored", "hub_error", ack.Error)
		return false
	}
	f := ls.flights[0]
	ls.flights = ls.flights[1:]
	if ls.budget != nil {
		ls.budget.dropped(f)
		u.metrics.gpsInflight.Set(float64(ls.budget.inflight))
	}
	batchLog := log.With("first", f.first, "last", f.last, "hub_error", ack.Error)

	kind := "transient"
	if ack.Permanent {
		kind = "permanent"
	}
	u.metrics.batchErrors.WithLabelValues(kind).Inc()

	switch {
	case ls.retrying:
		// An earlier batch of the lane failed; this one is resent with it.
		batchLog.Warn("hub rejected a batch behind a failed one; resending both after backoff", "permanent", ack.Permanent)
		if ls.failed.records > 0 {
			ls.failed.last = f.last
			ls.failed.records += f.records
		}
		return true
	case ack.Permanent && ls.lane == protocol.LaneSOS:
		// An SOS is never set aside: keep the batch at the head of its lane
		// and retry with backoff until an operator fixes the hub or agent.
		batchLog.Error("hub rejected SOS batch permanently; keeping it in the spool and retrying, check the hub's logs",
			"attempt", s.c.link.transientErrors+1)
	case ack.Permanent:
		// Acknowledged records still waiting for their delete must not move.
		u.releaser.flushLane(ls.lane)
		moved, err := u.cfg.Spool.RejectThrough(ls.lane, f.last)
		if err == nil {
			u.metrics.rejectedRecords.WithLabelValues(string(ls.lane)).Add(float64(moved))
			u.setAcked(ls.lane, max(u.ackedThrough(ls.lane), f.last))
			batchLog.Error("hub rejected batch permanently; records moved to the spool's rejected bucket for inspection",
				"records", moved)
			s.progressed = true
			s.c.link.transientErrors = 0
			return true
		}
		// Retrying keeps the batch in the lane; the hub will reject it
		// again and the move is tried again.
		batchLog.Error("hub rejected batch permanently, and moving it to the rejected bucket failed; retrying", "error", err)
	default:
		batchLog.Warn("hub rejected batch transiently; retrying after backoff", "attempt", s.c.link.transientErrors+1)
	}

	ls.retrying = true
	ls.retryAt = time.Now().Add(u.backoff(s.c.link.transientErrors))
	ls.failed = f
	s.c.link.transientErrors++
	return true
}

// checkSkipped detects an Ack that moves the lane's acknowledged sequence
// number from acked to through across the batch the hub failed, before
// the uplink resent it. That happens when the hub commits a batch
// pipelined behind a failed one, with a gap: the hub then never stores
// the failed batch's records, and they are counted and logged here. An
// Ack that ends exactly at the failed batch means the hub committed it
// after all, for example on an earlier connection.
func (s *session) checkSkipped(ls *laneState, acked, through uint64, log *slog.Logger) {
	if !ls.retrying || ls.failed.first <= acked || through < ls.failed.first {
		return
	}
	f := ls.failed
	ls.failed = flight{}
	if through <= f.last {
		return
	}
	s.u.metrics.hubSkipped.WithLabelValues(string(ls.lane)).Add(float64(f.records))
	log.Error("hub committed later records over a batch it had failed; the failed batch's records are lost at the hub",
		"first", f.first, "last", f.last, "records", f.records)
}

// lane returns the session state of a lane, or nil for an unknown lane.
func (s *session) lane(lane protocol.Lane) *laneState {
	for _, ls := range s.lanes {
		if ls.lane == lane {
			return ls
		}
	}
	return nil
}
