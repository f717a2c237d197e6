package ingest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/protocol"
)

// gateStore is the harness's PostgreSQL store behind a gate: CommitBatch
// records each batch it is given, reports it on entered and waits until
// the gate opens, so batches queue up behind a held commit. The calls
// numbered in fail (from 1) run on a cancelled context, so the real store
// fails them.
type gateStore struct {
	store.Store
	entered chan *protocol.Batch
	pass    chan struct{}
	once    sync.Once
	fail    map[int]bool

	mu    sync.Mutex
	calls []*protocol.Batch
}

func newGateStore(failCalls ...int) *gateStore {
	g := &gateStore{entered: make(chan *protocol.Batch, 64), pass: make(chan struct{}), fail: map[int]bool{}}
	for _, n := range failCalls {
		g.fail[n] = true
	}
	return g
}

// install puts g in front of the harness's store. It is a configure
// function for newHarness.
func (g *gateStore) install(c *Config) {
	g.Store = c.Store
	c.Store = g
}

func (g *gateStore) CommitBatch(ctx context.Context, b *protocol.Batch) (store.CommitResult, error) {
	g.mu.Lock()
	g.calls = append(g.calls, b)
	fail := g.fail[len(g.calls)]
	g.mu.Unlock()
	select {
	case g.entered <- b:
	default:
	}
	select {
	case <-g.pass:
	case <-ctx.Done():
		return store.CommitResult{}, ctx.Err()
	}
	if fail {
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		ctx = cancelled
	}
	return g.Store.CommitBatch(ctx, b)
}

// open lets every commit through, now and later.
func (g *gateStore) open() { g.once.Do(func() { close(g.pass) }) }

// waitEntered waits until a commit reached the gate.
func (g *gateStore) waitEntered(t *testing.T) *protocol.Batch {
	t.Helper()
	select {
	case b := <-g.entered:
		return b
	case <-time.After(waitTimeout):
		t.Fatalf("no batch reached the store within %s", waitTimeout)
		return nil
	}
}

// callRanges returns the first and last sequence number of each batch
// CommitBatch was given, in call order.
func (g *gateStore) callRanges() [][2]uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([][2]uint64, len(g.calls))
	for i, b := range g.calls {
		out[i] = [2]uint64{b.First(), b.Last()}
	}
	return out
}

func (g *gateStore) call(i int) *protocol.Batch {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.calls[i]
}

// committerOf returns the committer of the live connection with client
// id clientID, or nil when it has none.
func (s *Server) committerOf(clientID string) *committer {
	s.committersMu.Lock()
	defer s.committersMu.Unlock()
	for cl, c := range s.committers {
		if cl.ID == clientID {
			return c
		}
	}
	return nil
}

// gpsBatch returns FixBatch(first, n, vehicle) naming prev as its Prev.
func gpsBatch(first uint64, n int, vehicle string, prev uint64) *protocol.Batch {
	b := storetest.FixBatch(first, n, vehicle)
	b.Prev = prev
	return b
}

// wantAck reads the agent's next Ack and checks its lane, Through and
// whether it carries an error.
func (a *agent) wantAck(t *testing.T, lane protocol.Lane, through uint64, failed bool) *protocol.Ack {
	t.Helper()
	ack := a.nextAck(t)
	if ack.Lane != lane || ack.Through != through || (ack.Error != "") != failed || ack.Permanent {
		t.Errorf("Ack = %+v, want lane %s through %d with error %v, not permanent", ack, lane, through, failed)
	}
	return ack
}

// Three contiguous GPS batches: the first is held in the store, the other
// two queue behind it and are committed in one transaction, acknowledged
// by one Ack through the last.
func TestServer_MergesQueuedGPSBatches(t *testing.T) {
	t.Parallel()
	g := newGateStore()
	h := newHarness(t, g.install)
	t.Cleanup(g.open)
	a := connectAgent(t, h, storetest.Agent)

	a.publishBatch(t, gpsBatch(1, 5, "veh-1", 0))
	g.waitEntered(t)
	second := gpsBatch(6, 5, "veh-1", 5)
	third := gpsBatch(11, 5, "veh-1", 10)
	third.More = true
	third.SentAt = storetest.Epoch.Add(time.Minute)
	// A PUBACK means the hook queued the batch.
	a.publishBatch(t, second)
	a.publishBatch(t, third)
	g.open()

	a.wantAck(t, protocol.LaneGPS, 5, false)
	a.wantAck(t, protocol.LaneGPS, 15, false)

	calls := g.callRanges()
	if len(calls) != 2 || calls[0] != [2]uint64{1, 5} || calls[1] != [2]uint64{6, 15} {
		t.Fatalf("CommitBatch calls %v, want [1 5] then the merged [6 15]", calls)
	}
	merged := g.call(1)
	if len(merged.Records) != 10 || merged.Prev != 5 || !merged.More || !merged.SentAt.Equal(third.SentAt) {
		t.Errorf("merged batch: %d records, prev %d, more %v, sent %s; want 10 records, the first's prev 5, the last's more true and sent %s",
			len(merged.Records), merged.Prev, merged.More, merged.SentAt, third.SentAt)
	}
	if n := h.fixCount(t, "veh-1"); n != 15 {
		t.Errorf("%d fixes stored, want 15", n)
	}
	<-h.commits
	if c := <-h.commits; c.batch.Last() != 15 || len(c.result.Fixes) != 10 {
		t.Errorf("OnCommit of the merged batch: through %d with %d fixes, want 15 with 10", c.batch.Last(), len(c.result.Fixes))
	}
	if got := testutil.ToFloat64(h.server.metrics.batchesCommitted); got != 3 {
		t.Errorf("batches committed = %v, want 3: agent batches, not transactions", got)
	}
	if got := testutil.ToFloat64(h.server.metrics.batchesMerged); got != 1 {
		t.Errorf("batches merged = %v, want 1", got)
	}
	if got := testutil.ToFloat64(h.server.metrics.recordsCommitted.WithLabelValues("gps")); got != 15 {
		t.Errorf("records committed = %v, want 15", got)
	}
}

// Batches that do not continue the one before them (a gap without Prev,
// another spool, a status batch in between) are committed alone, in the
// order they were sent.
func TestServer_CommitsNonContinuingBatchesAloneInOrder(t *testing.T) {
	t.Parallel()
	g := newGateStore()
	h := newHarness(t, g.install)
	t.Cleanup(g.open)
	a := connectAgent(t, h, storetest.Agent)

	a.publishBatch(t, gpsBatch(1, 5, "veh-1", 0))
	g.waitEntered(t)
	otherSpool := gpsBatch(30, 3, "veh-2", 0)
	otherSpool.SpoolID = "spool-b"
	for _, b := range []*protocol.Batch{
		gpsBatch(6, 5, "veh-1", 5),
		storetest.NewBatch(storetest.StatusRecord(1, "veh-1", true, storetest.Epoch)),
		gpsBatch(11, 5, "veh-1", 10), // continues 6-10, but the status batch is between
		gpsBatch(20, 5, "veh-1", 0),  // no Prev and a gap after 15
		gpsBatch(25, 5, "veh-1", 24), // continues 20-24
		otherSpool,                   // starts right after 29, in another spool
	} {
		a.publishBatch(t, b)
	}
	g.open()

	a.wantAck(t, protocol.LaneGPS, 5, false)
	a.wantAck(t, protocol.LaneGPS, 10, false)
	a.wantAck(t, protocol.LaneStatus, 1, false)
	a.wantAck(t, protocol.LaneGPS, 15, false)
	a.wantAck(t, protocol.LaneGPS, 29, false)
	if ack := a.wantAck(t, protocol.LaneGPS, 32, false); ack.SpoolID != "spool-b" {
		t.Errorf("last Ack for spool %s, want spool-b", ack.SpoolID)
	}

	want := [][2]uint64{{1, 5}, {6, 10}, {1, 1}, {11, 15}, {20, 29}, {30, 32}}
	calls := g.callRanges()
	if len(calls) != len(want) {
		t.Fatalf("CommitBatch calls %v, want %v", calls, want)
	}
	for i := range want {
		if calls[i] != want[i] {
			t.Errorf("CommitBatch calls %v, want %v", calls, want)
			break
		}
	}
	if lane := g.call(2).Lane; lane != protocol.LaneStatus {
		t.Errorf("third commit in lane %s, want the status batch", lane)
	}
	if n := h.fixCount(t, "veh-1"); n != 25 {
		t.Errorf("%d fixes of veh-1 stored, want 25", n)
	}
	if n := h.fixCount(t, "veh-2"); n != 3 {
		t.Errorf("%d fixes of veh-2 stored, want 3", n)
	}
	if got := testutil.ToFloat64(h.server.metrics.batchesMerged); got != 1 {
		t.Errorf("batches merged = %v, want 1", got)
	}
}

// A merged commit that fails gets an error Ack for each batch in it. The
// GPS batch queued behind it is rejected for its Prev, while a status
// batch in between still commits. The agent's resend from its oldest
// unacknowledged record then stores every record.
func TestServer_FailedMergedCommitLosesNothing(t *testing.T) {
	t.Parallel()
	g := newGateStore(2)
	h := newHarness(t, g.install)
	t.Cleanup(g.open)
	a := connectAgent(t, h, storetest.Agent)

	a.publishBatch(t, gpsBatch(1, 5, "veh-1", 0))
	g.waitEntered(t)
	for _, b := range []*protocol.Batch{
		gpsBatch(6, 5, "veh-1", 5),
		gpsBatch(11, 5, "veh-1", 10),
		storetest.NewBatch(storetest.StatusRecord(1, "veh-1", true, storetest.Epoch)),
		gpsBatch(16, 5, "veh-1", 15),
	} {
		a.publishBatch(t, b)
	}
	g.open()

	a.wantAck(t, protocol.LaneGPS, 5, false)
	// The merged 6-15 failed: one error Ack for each of its two batches.
	a.wantAck(t, protocol.LaneGPS, 5, true)
	a.wantAck(t, protocol.LaneGPS, 5, true)
	a.wantAck(t, protocol.LaneStatus, 1, false)
	// 16-20 names 15 as its Prev, which the store has not committed.
	a.wantAck(t, protocol.LaneGPS, 5, true)

	calls := g.callRanges()
	if len(calls) != 4 || calls[1] != [2]uint64{6, 15} {
		t.Fatalf("CommitBatch calls %v, want [1 5], the merged [6 15], the status batch and [16 20]", calls)
	}
	if n := h.fixCount(t, "veh-1"); n != 5 {
		t.Errorf("%d fixes stored after the failed commit, want 5", n)
	}
	if got := testutil.ToFloat64(h.server.metrics.batchesRejected.WithLabelValues(reasonStoreError)); got != 2 {
		t.Errorf("rejected (store_error) = %v, want 2: both batches of the failed transaction", got)
	}
	if got := testutil.ToFloat64(h.server.metrics.batchesRejected.WithLabelValues(reasonPrevMissing)); got != 1 {
		t.Errorf("rejected (prev_missing) = %v, want 1", got)
	}

	// The agent resends from its oldest unacknowledged record, 6.
	a.publishBatch(t, gpsBatch(6, 10, "veh-1", 0))
	a.publishBatch(t, gpsBatch(16, 5, "veh-1", 15))
	for {
		ack := a.nextAck(t)
		if ack.Error != "" || ack.Lane != protocol.LaneGPS {
			t.Fatalf("Ack after the resend = %+v, want GPS Acks without error", ack)
		}
		if ack.Through == 20 {
			break
		}
	}
	if n := h.fixCount(t, "veh-1"); n != 20 {
		t.Errorf("%d fixes stored after the resend, want 20", n)
	}
}

// Close lets the committer commit the batches it has queued before it
// returns, and the committer ends.
func TestServer_CloseCommitsQueuedBatches(t *testing.T) {
	t.Parallel()
	g := newGateStore()
	h := newHarness(t, g.install)
	t.Cleanup(g.open)
	a := connectAgent(t, h, storetest.Agent)

	a.publishBatch(t, gpsBatch(1, 5, "veh-1", 0))
	g.waitEntered(t)
	a.publishBatch(t, gpsBatch(6, 5, "veh-1", 5))
	a.publishBatch(t, gpsBatch(11, 5, "veh-1", 10))
	c := h.server.committerOf(storetest.Agent)
	if c == nil {
		t.Fatal("the main link has no committer")
	}

	closed := make(chan error, 1)
	go func() { closed <- h.server.Close() }()
	select {
	case <-a.lost:
	case <-time.After(waitTimeout):
		t.Fatal("Close did not disconnect the agent")
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a commit was held", err)
	default:
	}
	g.open()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Close did not return after the store went on")
	}

	select {
	case <-c.done:
	default:
		t.Error("the committer still runs after Close returned")
	}
	if n := h.fixCount(t, "veh-1"); n != 15 {
		t.Errorf("%d fixes stored when Close returned, want 15", n)
	}
	if seq, err := h.store.Cursor(context.Background(), storetest.Agent, storetest.Spool, protocol.LaneGPS); err != nil || seq != 15 {
		t.Errorf("cursor after Close = %d, %v, want 15", seq, err)
	}
}

// A connection's committer starts with its first batch and ends when the
// connection ends.
func TestServer_CommitterEndsWithConnection(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := connectAgent(t, h, storetest.Agent)
	if h.server.committerOf(storetest.Agent) != nil {
		t.Fatal("committer before the first batch")
	}
	a.publishBatch(t, storetest.FixBatch(1, 3, "veh-1"))
	a.wantAck(t, protocol.LaneGPS, 3, false)
	c := h.server.committerOf(storetest.Agent)
	if c == nil {
		t.Fatal("no committer after the first batch")
	}

	a.client.Disconnect(100)
	select {
	case <-c.done:
	case <-time.After(waitTimeout):
		t.Fatal("the committer did not end after its connection ended")
	}
	if h.server.committerOf(storetest.Agent) != nil {
		t.Error("the ended connection's committer is still registered")
	}
}

func TestContinues(t *testing.T) {
	t.Parallel()
	cur := gpsBatch(1, 5, "veh-1", 0)
	with := func(change func(b *protocol.Batch)) *protocol.Batch {
		b := gpsBatch(6, 5, "veh-1", 5)
		change(b)
		return b
	}
	for _, tc := range []struct {
		name string
		next *protocol.Batch
		want bool
	}{
		{"prev is the last record", gpsBatch(6, 5, "veh-1", 5), true},
		{"prev is the last record, gap after it", gpsBatch(9, 5, "veh-1", 5), true},
		{"no prev, right after", gpsBatch(6, 5, "veh-1", 0), true},
		{"no prev, gap", gpsBatch(7, 5, "veh-1", 0), false},
		{"prev is another record", gpsBatch(6, 5, "veh-1", 4), false},
		{"another spool", with(func(b *protocol.Batch) { b.SpoolID = "spool-b" }), false},
		{"another region", with(func(b *protocol.Batch) { b.Region = "CAR" }), false},
		{"another agent", with(func(b *protocol.Batch) { b.AgentID = "agent-other" }), false},
		{"status lane", storetest.NewBatch(storetest.StatusRecord(6, "veh-1", true, storetest.Epoch)), false},
	} {
		if got := continues(cur, tc.next); got != tc.want {
			t.Errorf("%s: continues = %v, want %v", tc.name, got, tc.want)
		}
	}
	status := storetest.NewBatch(storetest.StatusRecord(1, "veh-1", true, storetest.Epoch))
	if continues(status, storetest.NewBatch(storetest.StatusRecord(2, "veh-1", false, storetest.Epoch))) {
		t.Error("a status batch continues a status batch; status batches commit alone")
	}
}

// collect stops at protocol.MaxBatchRecords records and
// protocol.MaxBatchBytes bytes, and returns the batch it took that did
// not fit as carry.
func TestCommitter_CollectStopsAtLimits(t *testing.T) {
	t.Parallel()
	const n = protocol.MaxBatchRecords * 2 / 5
	c := &committer{queue: make(chan queued, commitQueueLength)}
	c.queue <- queued{b: gpsBatch(n+1, n, "veh-1", n), bytes: 1}
	c.queue <- queued{b: gpsBatch(2*n+1, n, "veh-1", 2*n), bytes: 1}
	group, carry := c.collect(queued{b: gpsBatch(1, n, "veh-1", 0), bytes: 1})
	if len(group) != 2 || carry == nil || carry.b.First() != 2*n+1 {
		t.Fatalf("collect by records: %d batches, carry %v; want 2 batches and the third as carry", len(group), carry)
	}
	if m := merge(group); len(m.Records) != 2*n || m.First() != 1 || m.Last() != 2*n {
		t.Errorf("merged %d records %d-%d, want %d records 1-%d", len(m.Records), m.First(), m.Last(), 2*n, 2*n)
	}

	big := protocol.MaxBatchBytes/2 + 1
	c.queue <- queued{b: gpsBatch(6, 5, "veh-1", 5), bytes: big}
	group, carry = c.collect(queued{b: gpsBatch(1, 5, "veh-1", 0), bytes: big})
	if len(group) != 1 || carry == nil || carry.b.First() != 6 {
		t.Fatalf("collect by bytes: %d batches, carry %v; want 1 batch and the second as carry", len(group), carry)
	}

	// An empty queue ends a group without waiting, and so does a closed one.
	c.queue <- queued{b: gpsBatch(6, 5, "veh-1", 5), bytes: 1}
	close(c.queue)
	group, carry = c.collect(queued{b: gpsBatch(1, 5, "veh-1", 0), bytes: 1})
	if len(group) != 2 || carry != nil {
		t.Errorf("collect from a closed queue: %d batches, carry %v; want 2 and none", len(group), carry)
	}
}

// A commit that fails after its connection was taken over sends no error
// Ack: the new connection shares the Ack topic and would fail its own
// batch on it, while it resends these records anyway.
func TestServer_TakenOverCommitterSendsNoErrorAck(t *testing.T) {
	t.Parallel()
	g := newGateStore(1)
	h := newHarness(t, g.install)
	t.Cleanup(g.open)
	old := connectAgent(t, h, storetest.Agent)

	old.publishBatch(t, gpsBatch(1, 5, "veh-1", 0))
	g.waitEntered(t)
	c := h.server.committerOf(storetest.Agent)
	if c == nil {
		t.Fatal("the main link has no committer")
	}
	// The agent reconnects with the same client id. mochi ends the old
	// connection, whose committer still holds the batch.
	fresh := connectAgent(t, h, storetest.Agent)
	deadline := time.Now().Add(waitTimeout)
	for !c.disconnected.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the old connection's committer was not told of the takeover")
		}
		time.Sleep(5 * time.Millisecond)
	}
	g.open() // the held commit fails

	fresh.publishBatch(t, gpsBatch(1, 5, "veh-1", 0))
	if ack := fresh.nextAck(t); ack.Error != "" || ack.Through != 5 {
		t.Errorf("first Ack on the new connection = %+v, want a success through 5 (no error Ack from the old committer)", ack)
	}
}

// Close with a store that hangs returns after about one commit timeout:
// it cancels the commits still queued instead of waiting a timeout for
// each.
func TestServer_CloseCancelsHungCommits(t *testing.T) {
	t.Parallel()
	g := newGateStore()
	h := newHarness(t, func(c *Config) {
		g.install(c)
		c.CommitTimeout = 300 * time.Millisecond
	})
	t.Cleanup(g.open)
	a := connectAgent(t, h, storetest.Agent)

	// Batches that do not continue each other commit one at a time.
	a.publishBatch(t, gpsBatch(1, 5, "veh-1", 0))
	g.waitEntered(t)
	a.publishBatch(t, gpsBatch(20, 5, "veh-1", 0))
	a.publishBatch(t, gpsBatch(40, 5, "veh-1", 0))

	closed := make(chan error, 1)
	go func() { closed <- h.server.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Close did not return with the store hung")
	}
	// Without the cancel each queued commit would run into its own
	// deadline (counted as store_unavailable). With it, a commit still
	// queued ends cancelled (counted as store_error).
	timedOut := testutil.ToFloat64(h.server.metrics.batchesRejected.WithLabelValues(reasonStoreUnavailable))
	cancelled := testutil.ToFloat64(h.server.metrics.batchesRejected.WithLabelValues(reasonStoreError))
	if timedOut+cancelled != 3 {
		t.Errorf("batches rejected = %v timed out + %v cancelled, want all 3 (none committed while the store hung)", timedOut, cancelled)
	}
	if cancelled == 0 {
		t.Errorf("no queued commit was cancelled: Close waited a commit timeout for each of the %v batches", timedOut)
	}
}
