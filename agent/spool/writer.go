package spool

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

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
	// bytes is the encoded size of records. sosOnly is set when every
	// record goes to the SOS lane, so the append may use the SOS reserve.
	// sos is set when any record does, which makes the append urgent.
	bytes   int64
	sosOnly bool
	sos     bool
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

// lanes names the lanes of an append's records, for error messages.
func (r *request) lanes() string {
	seen := map[protocol.Lane]bool{}
	var names []string
	for _, rec := range r.records {
		if !seen[rec.lane] {
			seen[rec.lane] = true
			names = append(names, string(rec.lane))
		}
	}
	return strings.Join(names, "+")
}

// urgent reports whether the request appends an SOS-lane record. The
// writer commits a group holding an urgent request without waiting for
// more requests, and keeps deletes out of it (see deleteHold).
func (r *request) urgent() bool { return r.op == opAppend && r.sos }

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
// Append fails with an error matching ErrFull when the records do not fit
// under Config.MaxBytes even after evicting GPS and status records. On a
// full disk the error matches ErrNoSpace too. The package comment has the
// details.
//
// If ctx ends first, Append returns ctx.Err(); the records may then have
// been stored anyway, because a request the writer took is not withdrawn.
// Append is safe for concurrent use; concurrent calls share commits.
func (s *Spool) Append(ctx context.Context, recs []protocol.Record) error {
	if len(recs) == 0 {
		return nil
	}
	encoded := make([]encodedRecord, len(recs))
	req := &request{op: opAppend, records: encoded, sosOnly: true}
	for i := range recs {
		rec := recs[i]
		switch rec.Kind {
		case protocol.KindFix, protocol.KindSOS, protocol.KindSOSCancel, protocol.KindStatus,
			protocol.KindSOSAck, protocol.KindSOSNotified:
		default:
			return fmt.Errorf("append record %d of %d: unknown kind %q", i+1, len(recs), rec.Kind)
		}
		// The key carries the sequence number, so the value never does.
		rec.Seq = 0
		value, err := protocol.AppendRecordJSON(nil, &rec)
		if err != nil {
			return fmt.Errorf("encode record %d of %d: %w", i+1, len(recs), err)
		}
		encoded[i] = encodedRecord{lane: rec.Kind.Lane(), receivedAt: rec.ReceivedAt, value: value}
		req.bytes += int64(len(value))
		req.sosOnly = req.sosOnly && encoded[i].lane == protocol.LaneSOS
		req.sos = req.sos || encoded[i].lane == protocol.LaneSOS
	}

	res, err := s.submit(ctx, req)
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
//
// The writer may hold the delete back, so that deletes do not keep it
// busy when an SOS arrives (see "Writes" in the package comment). It
// commits a held delete at most 100 ms after the previous commit of
// deletes alone, or sooner with a group that appends GPS or status
// records, rejects records or flushes.
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
// group in progress and the deletes it holds.
func (s *Spool) run() {
	defer close(s.stopped)
	for {
		first, ok := s.next()
		if !ok {
			s.commitHeldDeletes()
			return
		}
		if first == nil {
			s.commitHeldDeletes()
			continue
		}
		group, deletesOnly := s.deletes.arrange(s.collect(first), time.Now())
		switch {
		case len(group) == 0:
		case deletesOnly:
			s.commitDeletes(group)
		default:
			s.commit(group)
		}
	}
}

// next returns the next request, nil when the held deletes are due, or
// false when the spool closes.
func (s *Spool) next() (*request, bool) {
	if s.deletes.empty() {
		select {
		case req := <-s.requests:
			return req, true
		case <-s.quit:
			return nil, false
		}
	}
	wait := time.Until(s.deletes.due())
	if wait <= 0 {
		return nil, true
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case req := <-s.requests:
		return req, true
	case <-timer.C:
		return nil, true
	case <-s.quit:
		return nil, false
	}
}

// commitHeldDeletes commits the deletes the writer holds, if any.
func (s *Spool) commitHeldDeletes() {
	if group := s.deletes.take(); len(group) > 0 {
		s.commitDeletes(group)
	}
}

// commitDeletes commits a group of deletes alone and times it, which
// spaces out the next delete-only commit.
func (s *Spool) commitDeletes(group []*request) {
	start := time.Now()
	s.commit(group)
	s.deletes.committed(start, time.Now())
}

// collect returns first plus the requests that join its group: those
// already waiting, then those arriving within CommitInterval, or, when
// it is zero, those the pacer waits for (see groupPacer), up to MaxBatch
// records. A group holding an urgent request (an SOS-lane append) does
// not wait: it stops waiting when one arrives.
func (s *Spool) collect(first *request) []*request {
	start := time.Now()
	g := &gathering{maxRecords: s.cfg.MaxBatch}
	g.add(first)
	g.takeWaiting(s.requests)
	switch {
	case g.urgent:
	case s.cfg.CommitInterval > 0:
		g.wait(s, s.cfg.CommitInterval-time.Since(start))
	case !s.noPacing:
		if target, wait, gap := s.pacer.plan(len(g.group), s.cfg.MaxBatch); wait > 0 {
			g.waitPaced(s, wait, gap, target)
		}
	}
	s.pacer.collected(start, len(g.group))
	return g.group
}

// gathering is a group of requests being collected. urgent is set once
// it holds an urgent request.
type gathering struct {
	group      []*request
	records    int
	maxRecords int
	urgent     bool
}

func (g *gathering) add(req *request) {
	g.group = append(g.group, req)
	g.records += req.size()
	g.urgent = g.urgent || req.urgent()
}

// takeWaiting adds the requests already waiting.
func (g *gathering) takeWaiting(requests <-chan *request) {
	for g.records < g.maxRecords {
		select {
		case req := <-requests:
			g.add(req)
		default:
			return
		}
	}
}

// wait adds arriving requests for up to d, until the group holds
// maxRecords records or an urgent request, or the spool closes.
func (g *gathering) wait(s *Spool, d time.Duration) {
	if d <= 0 {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	for g.records < g.maxRecords && !g.urgent {
		select {
		case req := <-s.requests:
			g.add(req)
		case <-timer.C:
			return
		case <-s.quit:
			return
		}
	}
}

// waitPaced adds arriving requests for up to d, until the group holds
// target requests, maxRecords records or an urgent request, no request
// arrived for gap, or the spool closes.
func (g *gathering) waitPaced(s *Spool, d, gap time.Duration, target int) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	idle := time.NewTimer(gap)
	defer idle.Stop()
	for g.records < g.maxRecords && len(g.group) < target && !g.urgent {
		select {
		case req := <-s.requests:
			g.add(req)
			idle.Reset(gap)
		case <-idle.C:
			return
		case <-deadline.C:
			return
		case <-s.quit:
			return
		}
	}
}

// laneState is a lane's statistics as a transaction changes them; it
// replaces the shared state only after the commit succeeded.
type laneState struct {
	LaneStats
	// firstChanged is set when the lane's first record may have changed
	// and Oldest must be read again before commit.
	firstChanged bool
	appended     int
	// evicted and evictedBytes count the records evicted for space, and
	// evictedOldest is the receive time of the first of them.
	evicted       int
	evictedBytes  int64
	evictedOldest time.Time
}

// groupCommit is the outcome of a committed group.
type groupCommit struct {
	states  map[protocol.Lane]*laneState
	results []result
	// refused are the appends that did not fit (their results hold
	// ErrFull), and refusedReason names the cap each one hit.
	refused       []*request
	refusedReason []string
	// sosStored and removed are set when the group stored SOS-lane records
	// or deleted records on request (DeleteThrough, RejectThrough).
	sosStored, removed bool
}

// snapshotStates copies the lane statistics for a transaction to change.
func (s *Spool) snapshotStates() map[protocol.Lane]*laneState {
	states := make(map[protocol.Lane]*laneState, len(protocol.Lanes))
	s.statsMu.RLock()
	for lane, st := range s.lanes {
		states[lane] = &laneState{LaneStats: *st}
	}
	s.statsMu.RUnlock()
	return states
}

// storeStates publishes the statistics of a committed transaction.
func (s *Spool) storeStates(states map[protocol.Lane]*laneState) {
	s.statsMu.Lock()
	for lane, st := range states {
		*s.lanes[lane] = st.LaneStats
	}
	s.statsMu.Unlock()
}

// commit applies group in one transaction, commits it and sends every
// request of the group its result. When the file cannot grow, it sets the
// disk limit, evicts old records in a separate commit and retries the
// group; see the package comment.
func (s *Spool) commit(group []*request) {
	s.maybeLiftDiskLimit()
	for attempt := 0; ; attempt++ {
		start := time.Now()
		gc, err := s.apply(group)
		s.pacer.committed(time.Since(start))
		if err == nil {
			s.finish(group, gc)
			return
		}
		s.metrics.commitErrors.Inc()
		if !isNoSpace(err) {
			s.log.Error("spool group commit failed; every write of the group fails",
				"requests", len(group), "error", err)
			failAll(group, err)
			return
		}

		err = fmt.Errorf("%w: %w", ErrNoSpace, err)
		s.log.Error("spool group commit failed: the file cannot grow", "requests", len(group),
			"attempt", attempt+1, "error", err)
		if attempt == maxReliefAttempts {
			s.failNoSpace(group, err)
			return
		}
		if rerr := s.relieve(attempt); rerr != nil {
			s.log.Error("disk full: could not free space in the spool file", "error", rerr)
			s.failNoSpace(group, errors.Join(err, rerr))
			return
		}
	}
}

// failNoSpace fails requests that could not be stored on a full disk.
func (s *Spool) failNoSpace(group []*request, err error) {
	for _, req := range group {
		if req.op == opAppend {
			s.refuse(req, fullDisk)
		}
		req.done <- result{err: err}
	}
}

func failAll(group []*request, err error) {
	for _, req := range group {
		req.done <- result{err: err}
	}
}

// finish publishes a committed group's statistics, metrics and results.
func (s *Spool) finish(group []*request, gc *groupCommit) {
	s.storeStates(gc.states)

	appended := 0
	for lane, st := range gc.states {
		if st.appended > 0 {
			s.metrics.appended.WithLabelValues(string(lane)).Add(float64(st.appended))
			appended += st.appended
		}
	}
	s.metrics.commits.Inc()
	s.metrics.groupRequests.Observe(float64(len(group)))
	s.metrics.groupRecords.Observe(float64(appended))
	s.countEvictions(gc.states)
	if gc.sosStored || gc.removed {
		s.clearFull()
	}
	for i, req := range gc.refused {
		s.refuse(req, gc.refusedReason[i])
	}

	// Notify first, so a caller that returns from Append finds the signal set.
	if appended > 0 {
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
	for i, req := range group {
		req.done <- gc.results[i]
	}

	if gc.removed {
		s.maybeCompact("drain")
	}
}

// apply runs the group's writes in one read-write transaction and
// commits it. An append that does not fit fails alone, with ErrFull in
// its result; any other error fails the whole group and is returned.
func (s *Spool) apply(group []*request) (*groupCommit, error) {
	gc := &groupCommit{states: s.snapshotStates(), results: make([]result, len(group))}
	states := gc.states
	tx, err := s.db.Begin(true)
	if err != nil {
		return nil, fmt.Errorf("begin transaction: %w", err)
	}
	for i, req := range group {
		var err error
		switch req.op {
		case opAppend:
			if err = s.makeRoom(tx, req, states); errors.Is(err, ErrFull) {
				reason := fullMaxBytes
				if errors.Is(err, ErrNoSpace) {
					reason = fullDisk
				}
				gc.results[i].err = err
				gc.refused = append(gc.refused, req)
				gc.refusedReason = append(gc.refusedReason, reason)
				continue
			}
			if err == nil {
				gc.results[i].seqs, err = appendRecords(tx, req.records, states)
				gc.sosStored = gc.sosStored || req.sosOnly
			}
		case opDelete:
			gc.results[i].removed, err = removeThrough(tx, req.lane, req.through, states[req.lane], false)
			gc.removed = gc.removed || gc.results[i].removed > 0
		case opReject:
			gc.results[i].removed, err = removeThrough(tx, req.lane, req.through, states[req.lane], true)
			gc.removed = gc.removed || gc.results[i].removed > 0
		case opFlush:
		}
		if err != nil {
			_ = tx.Rollback()
			return nil, err
		}
	}

	meta := tx.Bucket(bucketMeta)
	for lane, st := range states {
		if st.appended > 0 {
			if err := meta.Put(nextSeqKey(lane), seqKey(st.NextSeq)); err != nil {
				_ = tx.Rollback()
				return nil, fmt.Errorf("store next sequence number of lane %s: %w", lane, err)
			}
		}
	}
	if err := refreshOldest(tx, states); err != nil {
		_ = tx.Rollback()
		return nil, err
	}

	// bbolt's Commit writes the dirty pages and fsyncs the file (NoSync is false).
	start := time.Now()
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	s.metrics.fsyncSeconds.Observe(time.Since(start).Seconds())
	return gc, nil
}

// refreshOldest reads Oldest again for the lanes whose first record changed.
func refreshOldest(tx *bolt.Tx, states map[protocol.Lane]*laneState) error {
	for lane, st := range states {
		if !st.firstChanged {
			continue
		}
		oldest, err := firstReceivedAt(tx.Bucket([]byte(lane)))
		if err != nil {
			return fmt.Errorf("lane %s: %w", lane, err)
		}
		st.Oldest = oldest
	}
	return nil
}

// laneBucket returns the lane's bucket, set to fill pages completely: keys
// only grow, so a split page never gets more records, and bbolt's default
// of half-full pages would double the file.
func laneBucket(tx *bolt.Tx, lane protocol.Lane) *bolt.Bucket {
	b := tx.Bucket([]byte(lane))
	b.FillPercent = 1.0
	return b
}

func appendRecords(tx *bolt.Tx, records []encodedRecord, states map[protocol.Lane]*laneState) ([]uint64, error) {
	seqs := make([]uint64, len(records))
	for i, rec := range records {
		st := states[rec.lane]
		seq := st.NextSeq
		if err := laneBucket(tx, rec.lane).Put(seqKey(seq), rec.value); err != nil {
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
	b := laneBucket(tx, lane)
	var target *bolt.Bucket
	if reject {
		target = tx.Bucket(bucketRejected).Bucket([]byte(lane))
		target.FillPercent = 1.0
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
	return receivedAt(k, v)
}

// receivedAt decodes the receive time of the record stored as k, v.
func receivedAt(k, v []byte) (time.Time, error) {
	var head struct {
		ReceivedAt time.Time `json:"received_at"`
	}
	if err := json.Unmarshal(v, &head); err != nil {
		return time.Time{}, fmt.Errorf("%w: decode record %d: %v", ErrCorrupt, seqOf(k), err)
	}
	return head.ReceivedAt.UTC(), nil
}

func seqOf(k []byte) uint64 { return binary.BigEndian.Uint64(k) }
