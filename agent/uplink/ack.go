package uplink

import (
	"github.com/xpress-ops/tower/protocol"
)

// ackResult is the outcome of one Ack.
type ackResult struct {
	// progressed is set when the Ack acknowledged new records or moved a
	// rejected batch to the rejected bucket.
	progressed bool
	// done is set when the uplink stops waiting for the in-flight batch.
	done bool
	// retry is set when the hub rejected the in-flight batch transiently.
	// retryAttempt counts such rejections in a row, from 0.
	retry        bool
	retryAttempt int
}

// applyAck applies one Ack from the hub. inflight is the batch waiting
// for it, or nil. An Ack is ignored when it names another agent or spool
// (a stale spool id) or acknowledges nothing new. Otherwise records
// through Ack.Through are deleted from the spool, but never past the
// highest sequence number sent. An error Ack for the in-flight batch's
// lane either moves the batch to the spool's rejected bucket (Permanent,
// except in the SOS lane) or requests a retry after backoff.
func (u *Uplink) applyAck(ack protocol.Ack, inflight *protocol.Batch) ackResult {
	var res ackResult
	log := u.log.With("lane", ack.Lane, "through", ack.Through)
	if ack.AgentID != u.cfg.AgentID || ack.SpoolID != u.cfg.Spool.SpoolID() {
		u.metrics.acksIgnored.WithLabelValues("other_spool").Inc()
		log.Warn("ack for another agent or spool ignored", "ack_agent", ack.AgentID, "ack_spool", ack.SpoolID,
			"spool", u.cfg.Spool.SpoolID())
		return res
	}

	lane := ack.Lane
	through := ack.Through
	u.ackedMu.Lock()
	acked, sent := u.acked[lane], u.sent[lane]
	u.ackedMu.Unlock()
	if through > sent {
		log.Warn("ack beyond the records sent; deleting only what was sent", "sent", sent)
		through = sent
	}

	if through > acked {
		// The hub has the records, so this process never sends them again,
		// even if the delete fails. A later delete or a restart cleans them
		// up, and the hub skips the duplicates a restart sends.
		u.setAcked(lane, through)
		if err := u.cfg.Spool.DeleteThrough(lane, through); err != nil {
			log.Error("delete acknowledged records from the spool failed", "error", err)
		}
		acked = through
		res.progressed = true
		u.transientErrors = 0
	} else if ack.Error == "" {
		u.metrics.acksIgnored.WithLabelValues("stale").Inc()
		log.Debug("ack acknowledges nothing new; ignored", "acked", acked)
	}

	if inflight == nil || inflight.Lane != lane {
		return res
	}
	if ack.Error == "" {
		res.done = acked >= inflight.Last()
		if res.done {
			u.transientErrors = 0
		}
		return res
	}

	batchLog := log.With("first", inflight.First(), "last", inflight.Last(), "hub_error", ack.Error)
	if !ack.Permanent {
		u.metrics.batchErrors.WithLabelValues("transient").Inc()
		res.retry, res.retryAttempt = true, u.transientErrors
		u.transientErrors++
		batchLog.Warn("hub rejected batch transiently; retrying after backoff", "attempt", res.retryAttempt+1)
		return res
	}

	u.metrics.batchErrors.WithLabelValues("permanent").Inc()
	if lane == protocol.LaneSOS {
		// An SOS is never set aside: keep the batch at the head of its lane
		// and retry with backoff until an operator fixes the hub or agent.
		res.retry, res.retryAttempt = true, u.transientErrors
		u.transientErrors++
		batchLog.Error("hub rejected SOS batch permanently; keeping it in the spool and retrying, check the hub's logs",
			"attempt", res.retryAttempt+1)
		return res
	}
	moved, err := u.cfg.Spool.RejectThrough(lane, inflight.Last())
	if err != nil {
		// Retrying keeps the batch in the lane; the hub will reject it
		// again and the move is tried again.
		batchLog.Error("hub rejected batch permanently, and moving it to the rejected bucket failed; retrying", "error", err)
		res.retry, res.retryAttempt = true, u.transientErrors
		u.transientErrors++
		return res
	}
	u.metrics.rejectedRecords.WithLabelValues(string(lane)).Add(float64(moved))
	u.setAcked(lane, max(acked, inflight.Last()))
	batchLog.Error("hub rejected batch permanently; records moved to the spool's rejected bucket for inspection",
		"records", moved)
	res.progressed, res.done = true, true
	u.transientErrors = 0
	return res
}
