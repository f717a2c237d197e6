package ingest

import (
	"context"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/xpress-ops/tower/protocol"
)

// commitQueueLength is how many decoded batches of one connection may
// wait for its committer. The uplink keeps at most a few GPS batches and
// one status batch in flight, so a full queue means the store is behind.
// OnPublish then blocks, which stops mochi reading the connection: the
// same back-pressure as a commit inside the hook.
const commitQueueLength = 8

// link names the agent a batch came from and where its Acks go.
type link struct {
	agentID  string
	ackTopic string
}

// queued is a decoded batch waiting for its connection's committer.
type queued struct {
	b *protocol.Batch
	// bytes is the size of the batch's payload.
	bytes int
}

// committer commits the batches of one connection of an agent's main
// link, in the order the connection delivered them (see the package doc,
// Commit order). Consecutive GPS batches that continue each other are
// committed in one store transaction (group commit).
type committer struct {
	s     *Server
	link  link
	queue chan queued
	// done is closed when run has returned.
	done chan struct{}
	// disconnected is set once the connection has closed. A failed commit
	// then sends no error Acks: they would reach the agent's next
	// connection, which shares the Ack topic, and fail its batches there,
	// while that connection resends these records anyway.
	disconnected atomic.Bool
}

// enqueue hands b, decoded from a payload of size bytes, to the committer
// of cl, starting it with the connection's first batch. It blocks while
// the committer's queue is full.
func (s *Server) enqueue(cl *mqtt.Client, l link, b *protocol.Batch, bytes int) {
	s.committersMu.Lock()
	c := s.committers[cl]
	if c == nil {
		c = &committer{s: s, link: l, queue: make(chan queued, commitQueueLength), done: make(chan struct{})}
		s.committers[cl] = c
		s.committerWG.Add(1)
		go c.run()
	}
	s.committersMu.Unlock()
	// mochi calls OnDisconnect, which closes the queue, only after the
	// connection's last OnPublish returned, so this send never meets a
	// closed queue.
	c.queue <- queued{b: b, bytes: bytes}
}

// stopCommitter closes the queue of cl's committer, if it has one: the
// committer commits what is queued and ends. mochi calls it from
// OnDisconnect, after the connection's last OnPublish.
func (s *Server) stopCommitter(cl *mqtt.Client) {
	s.committersMu.Lock()
	c := s.committers[cl]
	delete(s.committers, cl)
	s.committersMu.Unlock()
	if c != nil {
		c.disconnected.Store(true)
		close(c.queue)
	}
}

// run commits the queued batches until the queue is closed and empty.
func (c *committer) run() {
	defer c.s.committerWG.Done()
	defer close(c.done)
	var carry *queued
	for {
		var first queued
		if carry != nil {
			first, carry = *carry, nil
		} else {
			q, ok := <-c.queue
			if !ok {
				return
			}
			first = q
		}
		var group []queued
		group, carry = c.collect(first)
		// commit sends the error Acks of a failed commit while the
		// connection is up. The batches after it are still committed, and
		// the store's Prev check rejects those that continue the failed
		// ones.
		_ = c.s.commit(c.link, group, c)
	}
}

// collect returns first and the batches queued right behind it that
// continue it (see continues), up to protocol.MaxBatchRecords records
// and protocol.MaxBatchBytes payload bytes. It does not wait for more
// batches to arrive. It returns the batch it took from the queue that
// cannot join as carry, to commit next.
func (c *committer) collect(first queued) (group []queued, carry *queued) {
	group = []queued{first}
	if first.b.Lane != protocol.LaneGPS {
		return group, nil
	}
	records, bytes := len(first.b.Records), first.bytes
	for {
		var next queued
		select {
		case q, ok := <-c.queue:
			if !ok {
				return group, nil
			}
			next = q
		default:
			return group, nil
		}
		last := group[len(group)-1].b
		if !continues(last, next.b) || records+len(next.b.Records) > protocol.MaxBatchRecords || bytes+next.bytes > protocol.MaxBatchBytes {
			return group, &next
		}
		group = append(group, next)
		records += len(next.b.Records)
		bytes += next.bytes
	}
}

// continues reports whether next, queued right behind cur, may be
// committed in one transaction with it. Both must be GPS-lane batches of
// the same agent, region and spool. next must name cur's last record as
// its Prev or, without Prev, start right after that record. The merged
// records then still increase strictly, and the merged commit stores what
// the two commits one after the other would have stored.
func continues(cur, next *protocol.Batch) bool {
	if cur.Lane != protocol.LaneGPS || next.Lane != protocol.LaneGPS ||
		cur.AgentID != next.AgentID || cur.Region != next.Region || cur.SpoolID != next.SpoolID {
		return false
	}
	if next.Prev != 0 {
		return next.Prev == cur.Last()
	}
	return next.First() == cur.Last()+1
}

// merge returns the batches of group as one batch: their records in
// order, the Prev of the first batch, and More and SentAt of the last.
// A group of one is returned as it is.
func merge(group []queued) *protocol.Batch {
	if len(group) == 1 {
		return group[0].b
	}
	n := 0
	for _, q := range group {
		n += len(q.b.Records)
	}
	first, last := group[0].b, group[len(group)-1].b
	m := *first
	m.Records = make([]protocol.Record, 0, n)
	for _, q := range group {
		m.Records = append(m.Records, q.b.Records...)
	}
	m.More, m.SentAt = last.More, last.SentAt
	return &m
}

// commit commits group, batches of one connection in queue order, in one
// store transaction. It calls OnCommit and sends one Ack through the
// lane's new cursor, which settles every batch of the group. For a failed
// commit it sends error Acks (see commitFailed), unless from, the
// committer that commits the group (nil on the SOS link), has lost its
// connection by then, and returns the error.
func (s *Server) commit(l link, group []queued, from *committer) error {
	b := merge(group)
	start := time.Now()
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.CommitTimeout)
	res, err := s.cfg.Store.CommitBatch(ctx, b)
	cancel()
	s.metrics.commitSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		s.commitFailed(l.agentID, l.ackTopic, b, group, err, from == nil || !from.disconnected.Load())
		return err
	}

	s.metrics.batchesCommitted.Add(float64(len(group)))
	s.metrics.batchesMerged.Add(float64(len(group) - 1))
	s.metrics.recordsCommitted.WithLabelValues(string(b.Lane)).Add(float64(len(b.Records) - res.Duplicates))
	s.metrics.recordsDuplicate.Add(float64(res.Duplicates))
	s.log.Debug("batch committed", "agent", l.agentID, "spool", b.SpoolID, "lane", b.Lane, "seq", b.First(),
		"through", res.Through, "duplicates", res.Duplicates, "batches", len(group))
	s.noteCatchUp(b)
	if s.cfg.OnCommit != nil {
		s.cfg.OnCommit(b, res)
	}
	s.sendAck(l.ackTopic, &protocol.Ack{AgentID: l.agentID, SpoolID: b.SpoolID, Lane: b.Lane, Through: res.Through})
	return nil
}
