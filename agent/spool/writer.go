package spool

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/xpress-ops/tower/protocol"
)

// opKind is the kind of change a write request makes.
type opKind int

const (
	opAppend opKind = iota
	opDelete
	opReject
	opFlush
)

// request is one caller's write, applied by the writer goroutine.
type request struct {
	op opKind
	// records are the encoded records of an append.
	records []encodedRecord
	// lane and through name the records a delete or reject removes.
	lane    protocol.Lane
	through uint64
	// done receives exactly one result; it has a buffer of one so the
	// writer never blocks on a caller that gave up.
	done chan result
}

type encodedRecord struct {
	lane       protocol.Lane
	receivedAt time.Time
	value      []byte
}

type result struct {
	err error
	// seqs are the sequence numbers assigned to an append's records, in order.
	seqs []uint64
	// removed counts the records a delete or reject removed.
	removed int
}

// size is the number of records a request adds to a group.
func (r *request) size() int {
	if r.op == opAppend {
		return len(r.records)
	}
	return 1
}

// Append stores recs durably. It assigns each record the next sequence
// number of its lane (protocol.RecordKind.Lane), writes the numbers into
// recs, and returns only after the transaction holding them is committed
// and fsynced. Records of one call are committed together or not at all.
//
// If ctx ends first, Append returns ctx.Err(); the records may then have
// been stored anyway, because a request the writer took is not withdrawn.
// Append is safe for concurrent use; concurrent calls share commits.
func (s *Spool) Append(ctx context.Context, recs []protocol.Record) error {
	if len(recs) == 0 {
		return nil
	}
	encoded := make([]encodedRecord, len(recs))
	for i := range recs {
		rec := recs[i]
		switch rec.Kind {
		case protocol.KindFix, protocol.KindSOS, protocol.KindSOSCancel, protocol.KindStatus:
		default:
			return fmt.Errorf("append record %d of %d: unknown kind %q", i+1, len(recs), rec.Kind)
		}
		// The key carries the sequence number, so the value never does.
		rec.Seq = 0
		value, err := json.Marshal(&rec)
		if err != nil {
			return fmt.Errorf("encode record %d of %d: %w", i+1, len(recs), err)
		}
		encoded[i] = encodedRecord{lane: rec.Kind.Lane(), receivedAt: rec.ReceivedAt, value: value}
	}

	res, err := s.submit(ctx, &request{op: opAppend, records: encoded})
	if err != nil {
		return fmt.Errorf("append %d records: %w", len(recs), err)
	}
	for i := range recs {
		recs[i].Seq = res.seqs[i]
	}
	return nil
}

// DeleteThrough deletes every record of lane with a sequence number up to
// and including seq, durably. Deleting records that are already gone is
// not an error.
func (s *Spool) DeleteThrough(lane protocol.Lane, seq uint64) error {
	if err := checkLane(lane); err != nil {
		return err
	}
	if _, err := s.submit(context.Background(), &request{op: opDelete, lane: lane, through: seq}); err != nil {
		return fmt.Errorf("delete %s records through %d: %w", lane, seq, err)
	}
	return nil
}

// RejectThrough moves every record of lane up to and including seq into
// the rejected bucket, where ReadRejected finds them, and returns how many
// it moved. The uplink uses it when the hub rejects a batch permanently,
// so one bad batch cannot block its lane.
func (s *Spool) RejectThrough(lane protocol.Lane, seq uint64) (int, error) {
	if err := checkLane(lane); err != nil {
		return 0, err
	}
	res, err := s.submit(context.Background(), &request{op: opReject, lane: lane, through: seq})
	if err != nil {
		return 0, fmt.Errorf("reject %s records through %d: %w", lane, seq, err)
	}
	return res.removed, nil
}

// Flush returns after every write the writer took before this call is
// committed.
func (s *Spool) Flush(ctx context.Context) error {
	if _, err := s.submit(ctx, &request{op: opFlush}); err != nil {
		return fmt.Errorf("flush spool: %w", err)
	}
	return nil
}

// submit hands req to the writer and waits for its result.
func (s *Spool) submit(ctx context.Context, req *request) (result, error) {
	if !s.running.Load() {
		return result{}, ErrClosed
	}
	req.done = make(chan result, 1)
	select {
	case s.requests <- req:
	case <-s.quit:
		return result{}, ErrClosed
	case <-ctx.Done():
		return result{}, ctx.Err()
	}
	select {
	case res := <-req.done:
		return res, res.err
	case <-ctx.Done():
		return result{}, ctx.Err()
	}
}

// run is the writer goroutine: it forms groups of requests and commits
// each group in one transaction. It stops when quit is closed, after the
// group in progress.
func (s *Spool) run() {
	defer close(s.stopped)
	for {
		var first *request
		select {
		case first = <-s.requests:
		case <-s.quit:
			return
		}
		s.commit(s.collect(first))
	}
}

// collect returns first plus the requests that join its group: those
// already waiting, and with a CommitInterval those arriving within it,
// up to MaxBatch records.
func (s *Spool) collect(first *request) []*request {
	group := []*request{first}
	records := first.size()

	var deadline <-chan time.Time
	if s.cfg.CommitInterval > 0 {
		timer := time.NewTimer(s.cfg.CommitInterval)
		defer timer.Stop()
		deadline = timer.C
	}
	for records < s.cfg.MaxBatch {
		if deadline == nil {
			select {
			case req := <-s.requests:
				group = append(group, req)
				records += req.size()
				continue
			default:
				return group
			}
		}
		select {
		case req := <-s.requests:
			group = append(group, req)
			records += req.size()
		case <-deadline:
			return group
		case <-s.quit:
			return group
		}
	}
	return group
}

// laneState is a lane's statistics as a transaction changes them; it
// replaces the shared state only after the commit succeeded.
type laneState struct {
	LaneStats
	// firstChanged is set when the lane's first record may have changed
	// and Oldest must be read again before commit.
	firstChanged bool
	appended     int
}

// commit applies group in one transaction, commits it and sends every
// request of the group its result.
func (s *Spool) commit(group []*request) {
	states := make(map[protocol.Lane]*laneState, len(protocol.Lanes))
	s.statsMu.RLock()
	for lane, st := range s.lanes {
		states[lane] = &laneState{LaneStats: *st}
	}
	s.statsMu.RUnlock()

	results := make([]result, len(group))
	err := s.apply(group, states, results)
	if err != nil {
		s.metrics.commitErrors.Inc()
		s.log.Error("spool group commit failed; every write of the group fails",
			"requests", len(group), "error", err)
		for _, req := range group {
			req.done <- result{err: err}
		}
		return
	}

	s.statsMu.Lock()
	for lane, st := range states {
		*s.lanes[lane] = st.LaneStats
	}
	s.statsMu.Unlock()

	appended := 0
	for lane, st := range states {
		if st.appended > 0 {
			s.metrics.appended.WithLabelValues(string(lane)).Add(float64(st.appended))
			appended += st.appended
		}
	}
	s.metrics.commits.Inc()
	s.metrics.groupRequests.Observe(float64(len(group)))
	s.metrics.groupRecords.Observe(float64(appended))

	// Notify first, so a caller that returns from Append finds the signal set.
	if appended > 0 {
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
	for i, req := range group {
		req.done <- results[i]
	}
}

// apply runs the group's writes in one read-write transaction and commits
// it. It fills results and states only for a successful commit.
func (s *Spool) apply(group []*request, states map[protocol.Lane]*laneState, results []result) error {
	tx, err := s.db.Begin(true)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	for i, req := range group {
		var err error
		switch req.op {
		case opAppend:
			results[i].seqs, err = appendRecords(tx, req.records, states)
		case opDelete:
			results[i].removed, err = removeThrough(tx, req.lane, req.through, states[req.lane], false)
		case opReject:
			results[i].removed, err = removeThrough(tx, req.lane, req.through, states[req.lane], true)
		case opFlush:
		}
		if err != nil {
			_ = tx.Rollback()
			return err
		}
	}

	meta := tx.Bucket(bucketMeta)
	for lane, st := range states {
		if st.appended > 0 {
			if err := meta.Put(nextSeqKey(lane), seqKey(st.NextSeq)); err != nil {
				_ = tx.Rollback()
				return fmt.Errorf("store next sequence number of lane %s: %w", lane, err)
			}
		}
		if st.firstChanged {
			oldest, err := firstReceivedAt(tx.Bucket([]byte(lane)))
			if err != nil {
				_ = tx.Rollback()
				return fmt.Errorf("lane %s: %w", lane, err)
			}
			st.Oldest = oldest
		}
	}

	// bbolt's Commit writes the dirty pages and fsyncs the file (NoSync is false).
	start := time.Now()
	if err := tx.Commit(); err != nil {
		if errors.Is(err, bolterrors.ErrMaxSizeReached) || errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("commit: %w: %w", ErrFull, err)
		}
		return fmt.Errorf("commit: %w", err)
	}
	s.metrics.fsyncSeconds.Observe(time.Since(start).Seconds())
	return nil
}

func appendRecords(tx *bolt.Tx, records []encodedRecord, states map[protocol.Lane]*laneState) ([]uint64, error) {
	seqs := make([]uint64, len(records))
	for i, rec := range records {
		st := states[rec.lane]
		seq := st.NextSeq
		if err := tx.Bucket([]byte(rec.lane)).Put(seqKey(seq), rec.value); err != nil {
			return nil, fmt.Errorf("store %s record %d: %w", rec.lane, seq, err)
		}
		if st.Records == 0 {
			st.Oldest = rec.receivedAt.UTC()
		}
		st.NextSeq++
		st.Records++
		st.Bytes += int64(len(rec.value))
		st.appended++
		seqs[i] = seq
	}
	return seqs, nil
}

// removeThrough deletes the lane's records up to and including through,
// copying them to the rejected bucket first when reject is set.
func removeThrough(tx *bolt.Tx, lane protocol.Lane, through uint64, st *laneState, reject bool) (int, error) {
	b := tx.Bucket([]byte(lane))
	var target *bolt.Bucket
	if reject {
		target = tx.Bucket(bucketRejected).Bucket([]byte(lane))
	}

	// Collect first: deleting while a cursor walks the bucket can skip keys.
	var keys [][]byte
	var bytes int64
	c := b.Cursor()
	for k, v := c.First(); k != nil && binary.BigEndian.Uint64(k) <= through; k, v = c.Next() {
		key := append([]byte(nil), k...)
		keys = append(keys, key)
		bytes += int64(len(v))
		if target != nil {
			if err := target.Put(key, append([]byte(nil), v...)); err != nil {
				return 0, fmt.Errorf("move %s record %d to rejected: %w", lane, binary.BigEndian.Uint64(k), err)
			}
		}
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return 0, fmt.Errorf("delete %s record %d: %w", lane, binary.BigEndian.Uint64(k), err)
		}
	}

	if len(keys) > 0 {
		st.Records -= len(keys)
		st.Bytes -= bytes
		st.firstChanged = true
		if reject {
			st.Rejected += len(keys)
		}
	}
	return len(keys), nil
}

// firstReceivedAt returns the receive time of the bucket's first record,
// or zero for an empty bucket.
func firstReceivedAt(b *bolt.Bucket) (time.Time, error) {
	k, v := b.Cursor().First()
	if k == nil {
		return time.Time{}, nil
	}
	var head struct {
		ReceivedAt time.Time `json:"received_at"`
	}
	if err := json.Unmarshal(v, &head); err != nil {
		return time.Time{}, fmt.Errorf("%w: decode record %d: %v", ErrCorrupt, binary.BigEndian.Uint64(k), err)
	}
	return head.ReceivedAt.UTC(), nil
}
