package uplink

import (
	"fmt"
	"time"

	"github.com/xpress-ops/tower/protocol"
)

// flight is a batch that was published and is not yet settled by an Ack.
type flight struct {
	first, last uint64
	records     int
	// full is set when the batch reached the GPS size target, so a fast
	// Ack of it is a reason to grow the target.
	full   bool
	sentAt time.Time
	// bytes is the encoded size of the batch.
	bytes int
	// delivered, deliveredAt and probe are the GPS budget's state when the
	// batch was sent (see gpsBudget.sent).
	delivered   int64
	deliveredAt time.Time
	probe       bool
}

// laneState is one lane's sending state within a session.
type laneState struct {
	lane protocol.Lane
	// window is how many batches of the lane may be in flight at once.
	window int
	// next is the last sequence number read for sending in this session.
	// The lane's next batch starts after it, or after the acknowledged
	// sequence number when that is higher.
	next uint64
	// flights are the lane's batches in flight, in send order.
	flights []flight
	// budget bounds the bytes in flight of the GPS lane; nil for the others.
	budget *gpsBudget

	// retrying is set after the hub failed a batch of the lane. The lane
	// sends nothing until retryAt has passed and its other batches in
	// flight are settled; then it resends from the oldest unacknowledged
	// record.
	retrying bool
	retryAt  time.Time
	// failed spans the batches the hub failed since the lane began
	// retrying, kept to detect a later batch committed over them.
	failed flight
}

// session is the sending state of one connection. Only the run goroutine uses it.
type session struct {
	u     *Uplink
	c     *conn
	lanes []*laneState
	// headSince is when the oldest batch in flight started waiting for its
	// Ack: when it was sent, or when the Ack that settled the batch before
	// it arrived. AckTimeout counts from here.
	headSince  time.Time
	progressed bool
}

func newSession(u *Uplink, c *conn) *session {
	s := &session{u: u, c: c}
	for _, lane := range c.link.lanes {
		window := 1
		if lane == protocol.LaneGPS {
			window = u.cfg.MaxInflightBatches
		}
		// A new connection resends from the oldest unacknowledged record.
		ls := &laneState{lane: lane, window: window, next: u.ackedThrough(lane)}
		if lane == protocol.LaneGPS {
			// A new connection may take another path, so it measures anew.
			ls.budget = newGPSBudget(u.cfg.MaxBatchBytes, window)
			u.metrics.gpsInflight.Set(0)
			u.metrics.gpsLimit.Set(float64(ls.budget.limit(time.Now())))
		}
		s.lanes = append(s.lanes, ls)
	}
	return s
}

// run sends batches and handles Acks until the link fails or Close.
func (s *session) run() error {
	// Nothing is in flight once the connection is gone.
	defer s.u.metrics.gpsInflight.Set(0)
	for {
		if err := s.fill(); err != nil {
			return err
		}
		var timer *time.Timer
		var wake <-chan time.Time
		if at, ok := s.nextWake(); ok {
			timer = time.NewTimer(time.Until(at))
			wake = timer.C
		}
		err := s.wait(wake)
		if timer != nil {
			timer.Stop()
		}
		if err != nil {
			return err
		}
	}
}

// wait handles one event: new records, an Ack, a timer, a lost link or Close.
func (s *session) wait(wake <-chan time.Time) error {
	u := s.u
	select {
	case <-s.c.link.notify:
		return nil
	case ack := <-s.c.acks:
		s.handleAck(ack)
		return nil
	case <-wake:
		return s.checkAckTimeout()
	case err := <-s.c.lost:
		return u.linkLost(err)
	case <-u.stop:
		return errStopped
	}
}

// fill publishes batches while the lanes' windows have room. Before each
// batch it looks at the lanes in protocol.Lanes order again, so a record
// appended to the SOS lane meanwhile goes out before the next GPS batch.
func (s *session) fill() error {
	for {
		sent := false
		for _, ls := range s.lanes {
			if !s.canSend(ls) {
				continue
			}
			batch, full, err := s.readBatch(ls)
			if err != nil {
				return err
			}
			if batch == nil {
				continue
			}
			if err := s.publish(ls, batch, full); err != nil {
				return err
			}
			sent = true
			break
		}
		if !sent {
			return nil
		}
	}
}

// canSend reports whether the lane may publish another batch now. A lane
// that is retrying resumes, from its oldest unacknowledged record, once
// its backoff passed and its other batches in flight are settled. The GPS
// lane also needs room in its byte budget.
func (s *session) canSend(ls *laneState) bool {
	if ls.retrying {
		if len(ls.flights) > 0 || time.Now().Before(ls.retryAt) {
			return false
		}
		ls.retrying = false
		ls.next = s.u.ackedThrough(ls.lane)
	}
	if ls.budget != nil && !ls.budget.allows(time.Now()) {
		return false
	}
	return len(ls.flights) < ls.window
}

// lastSeqer is implemented by a spool that can tell the sequence number
// of its newest record in a lane (*spool.Spool does).
type lastSeqer interface {
	LastSeq(lane protocol.Lane) uint64
}

// readBatch reads the lane's next batch, or nil when the lane has nothing
// unsent. full reports whether the batch reached the GPS size target.
func (s *session) readBatch(ls *laneState) (batch *protocol.Batch, full bool, err error) {
	u := s.u
	limit, maxBytes := u.cfg.MaxBatchRecords, u.cfg.MaxBatchBytes
	if ls.lane == protocol.LaneGPS {
		limit = u.sizer.target
		maxBytes = ls.budget.batchBytes(time.Now())
	}
	after := max(ls.next, u.ackedThrough(ls.lane))
	recs, err := u.cfg.Spool.Read(ls.lane, after, limit, maxBytes)
	if err != nil {
		return nil, false, fmt.Errorf("read spool: %w", err)
	}
	if len(recs) == 0 {
		return nil, false, nil
	}
	for i := range recs {
		// Queued while the link was down: catch-up data.
		recs[i].Historical = recs[i].ReceivedAt.Before(s.c.up)
	}
	// Prev names the batch still in flight before this one, so the hub
	// refuses this batch if that one failed rather than skip its records.
	var prev uint64
	if n := len(ls.flights); n > 0 {
		prev = ls.flights[n-1].last
	}
	// More marks the lane as still catching up. With a spool that does
	// not report its newest sequence number, a full batch counts as more.
	full = len(recs) == limit
	more := full
	if h, ok := u.cfg.Spool.(lastSeqer); ok {
		more = recs[len(recs)-1].Seq < h.LastSeq(ls.lane)
	}
	return &protocol.Batch{
		AgentID: u.cfg.AgentID,
		Region:  u.cfg.Region,
		SpoolID: u.cfg.Spool.SpoolID(),
		Lane:    ls.lane,
		Prev:    prev,
		More:    more,
		Records: recs,
		SentAt:  u.cfg.Now().UTC(),
	}, full, nil
}

// publish hands the batch to paho and records it as in flight. paho
// completes the token later, so only an error that paho reports at once
// is checked here. A later failure also drops the connection, which paho
// reports on conn.lost.
func (s *session) publish(ls *laneState, batch *protocol.Batch, full bool) error {
	u := s.u
	payload, err := protocol.EncodeBatch(batch)
	if err != nil {
		return err
	}
	lane := string(batch.Lane)
	u.noteSent(batch.Lane, batch.Last())
	u.metrics.batchesSent.WithLabelValues(lane).Inc()
	u.metrics.recordsSent.WithLabelValues(lane).Add(float64(len(batch.Records)))
	u.metrics.batchRecords.WithLabelValues(lane).Observe(float64(len(batch.Records)))
	u.metrics.batchBytes.Observe(float64(len(payload)))

	now := time.Now()
	if !s.anyInFlight() {
		s.headSince = now
	}
	tok := s.c.client.Publish(protocol.BatchTopic(u.cfg.AgentID), 1, false, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			u.metrics.linkDead.WithLabelValues(causeTCPError).Inc()
			return fmt.Errorf("%w (%s): publish %s batch %d-%d: %v", ErrConnectionLost, causeTCPError, lane, batch.First(), batch.Last(), err)
		}
	default:
	}

	ls.next = batch.Last()
	f := flight{
		first: batch.First(), last: batch.Last(), records: len(batch.Records), full: full, sentAt: now, bytes: len(payload),
	}
	if ls.budget != nil {
		ls.budget.sent(&f)
		u.metrics.gpsInflight.Set(float64(ls.budget.inflight))
	}
	ls.flights = append(ls.flights, f)
	u.metrics.inflight.WithLabelValues(lane).Set(float64(len(ls.flights)))
	return nil
}

func (s *session) anyInFlight() bool {
	for _, ls := range s.lanes {
		if len(ls.flights) > 0 {
			return true
		}
	}
	return false
}

// nextWake returns when the session must look at its timers again: the
// Ack deadline of the oldest batch in flight, or the end of a lane's
// retry backoff.
func (s *session) nextWake() (time.Time, bool) {
	var at time.Time
	if s.anyInFlight() {
		at = s.headSince.Add(s.c.link.ackWait.current)
	}
	for _, ls := range s.lanes {
		// A lane with batches in flight resumes on their Acks, not on a timer.
		if ls.retrying && len(ls.flights) == 0 && (at.IsZero() || ls.retryAt.Before(at)) {
			at = ls.retryAt
		}
	}
	return at, !at.IsZero()
}

// checkAckTimeout returns ErrAckTimeout when the oldest batch in flight
// waited the Ack timeout in force for its Ack (see ackTimeoutState).
func (s *session) checkAckTimeout() error {
	waited := s.c.link.ackWait.current
	if !s.anyInFlight() || time.Since(s.headSince) < waited {
		return nil
	}
	u := s.u
	u.metrics.ackTimeouts.Inc()
	u.metrics.linkDead.WithLabelValues(causeAckTimeout).Inc()

	var oldest *flight
	var lane protocol.Lane
	for _, ls := range s.lanes {
		if len(ls.flights) > 0 && (oldest == nil || ls.flights[0].sentAt.Before(oldest.sentAt)) {
			oldest, lane = &ls.flights[0], ls.lane
		}
	}
	u.ackTimedOut(s.c.link, lane, *oldest)
	return fmt.Errorf("%w: %s batch %d-%d, waited %s", ErrAckTimeout, lane, oldest.first, oldest.last, waited)
}

// batchSizer sets the record count of GPS batches by additive increase,
// multiplicative decrease; see the package doc, Batch sizing.
type batchSizer struct {
	min, max, step int
	// target is the record count of the next GPS batch.
	target int
}

func newBatchSizer(maxRecords int) batchSizer {
	maxRecords = max(maxRecords, 1)
	return batchSizer{
		min:    max(1, maxRecords/32),
		max:    maxRecords,
		step:   max(1, maxRecords/8),
		target: maxRecords,
	}
}

// acknowledged adjusts the target after the hub acknowledged a GPS batch
// rtt after it was sent. Only a batch that reached the target can show
// that a larger one would also be fast.
func (b *batchSizer) acknowledged(full bool, rtt, ackTimeout time.Duration) {
	switch {
	case rtt > ackTimeout/2:
		b.decrease()
	case full && rtt <= ackTimeout/4:
		b.target = min(b.max, b.target+b.step)
	}
}

// decrease halves the target, down to the minimum.
func (b *batchSizer) decrease() {
	b.target = max(b.min, b.target/2)
}

func (u *Uplink) noteSent(lane protocol.Lane, seq uint64) {
	u.ackedMu.Lock()
	defer u.ackedMu.Unlock()
	u.sent[lane] = max(u.sent[lane], seq)
}
