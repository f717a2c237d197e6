package localsos

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/protocol"
)

// appendSOS stores an SOS of testVehicle in the spool, as the broker does
// before the PUBACK, and returns the record with its sequence number.
func appendSOS(t *testing.T, a *agentSide, sosID string) protocol.Record {
	t.Helper()
	recs := []protocol.Record{{
		Kind: protocol.KindSOS, VehicleID: testVehicle, ReceivedAt: time.Now().UTC(),
		SOS: &protocol.SOS{ID: sosID, Kind: protocol.SOSPanic, HasLocation: true, Lat: 14.5995, Lon: 120.9842},
	}}
	if err := a.spool.Append(context.Background(), recs); err != nil {
		t.Fatalf("append SOS %s to the spool: %v", sosID, err)
	}
	return recs[0]
}

// spoolRecords returns the records of kind in the spool's SOS lane.
func spoolRecords(t *testing.T, a *agentSide, kind protocol.RecordKind) []protocol.Record {
	t.Helper()
	recs, err := a.spool.Read(protocol.LaneSOS, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []protocol.Record
	for _, rec := range recs {
		if rec.Kind == kind {
			out = append(out, rec)
		}
	}
	return out
}

// waitEntry polls the store until cond holds for the SOS's entry.
func waitEntry(t *testing.T, s *Store, sosID, what string, cond func(Entry) bool) Entry {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		e, err := s.Get(testVehicle, sosID)
		if err == nil && cond(e) {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("SOS %s: %s did not happen within %s; entry %+v, error %v", sosID, what, waitTimeout, e, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A full queue never blocks the broker's PUBACK path: SOSStored counts
// the record it could not queue, and the relay records it from the spool
// once the queue drains.
func TestRelay_FullQueueBackfillsFromSpool(t *testing.T) {
	a := startAgentSideWith(t, t.TempDir(), func(c *RelayConfig) { c.QueueSize = 1 }, nil)
	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")

	// Holding the relay's lock stalls its goroutine, so the queue fills.
	a.relay.mu.Lock()
	ids := []string{"sos-1", "sos-2", "sos-3", "sos-4"}
	for _, id := range ids {
		a.relay.SOSStored(appendSOS(t, a, id))
	}
	full := testutil.ToFloat64(a.relay.metrics.queueFull)
	a.relay.mu.Unlock()
	if full < 2 {
		t.Errorf("queue_full = %v after 4 records into a queue of 1 behind a stalled relay, want at least 2", full)
	}

	heard := map[string]bool{}
	for len(heard) < len(ids) {
		m := v.next()
		heard[m.topic] = true
	}
	for _, id := range ids {
		if !heard[protocol.SOSStateTopic(testVehicle, id)] {
			t.Errorf("vehicle heard no state of %s", id)
		}
		e := waitEntry(t, a.store, id, "recording", func(Entry) bool { return true })
		if e.State != protocol.SOSStateReceived || e.SpoolSeq == 0 || e.SpoolID != a.spool.SpoolID() {
			t.Errorf("entry of %s = %+v, want received with its place in the spool", id, e)
		}
	}
	// The backfill delivers the states before it counts them, so the
	// count may lag what the vehicle heard.
	deadline := time.Now().Add(waitTimeout)
	for testutil.ToFloat64(a.relay.metrics.backfilled) < 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := testutil.ToFloat64(a.relay.metrics.backfilled); got < 1 {
		t.Errorf("backfilled = %v, want the records the full queue missed", got)
	}
}

// An SOS the spool stored but the relay never recorded (the agent
// crashed between the spool commit and the relay's record) is recorded
// at the next start, and the vehicle hears "received".
func TestRelay_StartBackfillsFromSpool(t *testing.T) {
	dir := t.TempDir()
	var stored protocol.Record
	a := startAgentSideWith(t, dir, nil, func(a *agentSide) {
		stored = appendSOS(t, a, "sos-lost")
		// This one the store has, with no place in the spool yet.
		if _, _, err := a.store.Record(testVehicle, &protocol.SOS{ID: "sos-known", Kind: protocol.SOSCrash}, time.Now()); err != nil {
			t.Fatal(err)
		}
		appendSOS(t, a, "sos-known")
	})
	e := waitEntry(t, a.store, "sos-lost", "the backfill", func(Entry) bool { return true })
	if e.State != protocol.SOSStateReceived || e.SpoolSeq != stored.Seq || e.Kind != protocol.SOSPanic || !e.HasLocation {
		t.Errorf("backfilled entry = %+v, want received panic SOS at spool seq %d", e, stored.Seq)
	}
	known := waitEntry(t, a.store, "sos-known", "its spool position", func(e Entry) bool { return e.SpoolSeq != 0 })
	if known.Kind != protocol.SOSCrash {
		t.Errorf("known entry = %+v, want its own details kept", known)
	}
	// The relay counts a backfilled SOS after it delivered its state, so
	// the count may follow the entry by a moment.
	deadline := time.Now().Add(waitTimeout)
	for testutil.ToFloat64(a.relay.metrics.backfilled) < 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := testutil.ToFloat64(a.relay.metrics.backfilled); got != 1 {
		t.Errorf("backfilled = %v, want 1", got)
	}

	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.SOSStateTopic(testVehicle, "sos-lost"))
	if got := v.nextState("sos-lost"); got != protocol.SOSStateReceived {
		t.Errorf("retained state of the backfilled SOS = %q, want received", got)
	}
}

// A local acknowledgement appends one KindSOSAck record, however often
// staff acknowledge, and the vehicle hears acknowledged once.
func TestRelay_LocalAckAppendsOneRecord(t *testing.T) {
	a := startAgentSide(t, t.TempDir())
	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")
	pressSOS(v, "sos-1")
	if got := v.nextState("sos-1"); got != protocol.SOSStateReceived {
		t.Fatalf("state = %q, want received", got)
	}

	e, err := a.relay.AcknowledgeLocally(testVehicle, "sos-1", "Ana Reyes")
	if err != nil {
		t.Fatal(err)
	}
	if !e.LocalAckReported || e.LocalAckBy != "Ana Reyes" {
		t.Errorf("entry = %+v, want acknowledged by Ana Reyes and reported", e)
	}
	if got := v.nextState("sos-1"); got != protocol.SOSStateAcknowledged {
		t.Fatalf("state = %q, want acknowledged", got)
	}
	again, err := a.relay.AcknowledgeLocally(testVehicle, "sos-1", "Ben Cruz")
	if err != nil || again.LocalAckBy != "Ana Reyes" {
		t.Errorf("second acknowledgement = %+v, %v; want the first one kept", again, err)
	}

	acks := spoolRecords(t, a, protocol.KindSOSAck)
	if len(acks) != 1 {
		t.Fatalf("spool holds %d acknowledgement records, want 1", len(acks))
	}
	ack := acks[0]
	if ack.VehicleID != testVehicle || ack.Ack.SOSID != "sos-1" || ack.Ack.Actor != "Ana Reyes" || !ack.Ack.At.Equal(e.LocalAckAt) {
		t.Errorf("acknowledgement record = %+v (%+v), want sos-1 by Ana Reyes at %v", ack, ack.Ack, e.LocalAckAt)
	}
	if err := ack.Validate(); err != nil {
		t.Errorf("acknowledgement record invalid: %v", err)
	}
	if got := testutil.ToFloat64(a.relay.metrics.localAcks); got != 1 {
		t.Errorf("local_acks = %v, want 1", got)
	}
	// The vehicle hears nothing more for the second acknowledgement.
	v.expectNoRetainedState("sos-none")
}

// Local acknowledgements a crash left out of the spool are appended at
// the next start; one already in the spool is only marked.
func TestRelay_StartReportsPendingLocalAcks(t *testing.T) {
	now := time.Now().UTC()
	a := startAgentSideWith(t, t.TempDir(), nil, func(a *agentSide) {
		for _, id := range []string{"sos-unsent", "sos-unmarked"} {
			appendSOS(t, a, id)
			if _, _, err := a.store.Record(testVehicle, &protocol.SOS{ID: id}, now); err != nil {
				t.Fatal(err)
			}
			if _, _, err := a.store.MarkLocalAck(testVehicle, id, "Ana Reyes", now); err != nil {
				t.Fatal(err)
			}
		}
		// The crash came after this record was appended.
		if err := a.spool.Append(context.Background(), []protocol.Record{{
			Kind: protocol.KindSOSAck, VehicleID: testVehicle, ReceivedAt: now,
			Ack: &protocol.LocalAck{SOSID: "sos-unmarked", Actor: "Ana Reyes", At: now},
		}}); err != nil {
			t.Fatal(err)
		}
	})
	for _, id := range []string{"sos-unsent", "sos-unmarked"} {
		waitEntry(t, a.store, id, "the report", func(e Entry) bool { return e.LocalAckReported })
	}
	perSOS := map[string]int{}
	for _, rec := range spoolRecords(t, a, protocol.KindSOSAck) {
		perSOS[rec.Ack.SOSID]++
	}
	if perSOS["sos-unsent"] != 1 || perSOS["sos-unmarked"] != 1 {
		t.Errorf("acknowledgement records per SOS = %v, want one each", perSOS)
	}
}

// SOS records queued while the relay is busy are recorded together in one
// transaction of the store, and each vehicle still hears "received".
func TestRelay_QueuedSOSRecordedTogether(t *testing.T) {
	a := startAgentSide(t, t.TempDir())
	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")

	// Holding the relay's lock stalls its goroutine, so the records queue.
	a.relay.mu.Lock()
	var ids []string
	for i := range 40 {
		id := fmt.Sprintf("sos-%02d", i)
		ids = append(ids, id)
		a.relay.SOSStored(appendSOS(t, a, id))
	}
	before := writeTxID(t, a.store)
	a.relay.mu.Unlock()

	heard := map[string]bool{}
	for len(heard) < len(ids) {
		heard[v.next().topic] = true
	}
	for _, id := range ids {
		if !heard[protocol.SOSStateTopic(testVehicle, id)] {
			t.Errorf("vehicle heard no state of %s", id)
		}
		e := waitEntry(t, a.store, id, "recording", func(Entry) bool { return true })
		if e.State != protocol.SOSStateReceived || e.SpoolSeq == 0 {
			t.Errorf("entry of %s = %+v, want received with its place in the spool", id, e)
		}
	}
	// The goroutine took the first record before the lock stalled it, so
	// at most two groups: that record, and the other 39 together.
	if txs := writeTxID(t, a.store) - before; txs > 2 {
		t.Errorf("recording 40 queued SOS took %d write transactions, want at most 2", txs)
	}
}

// writeTxID returns the id of the store's last write transaction; bbolt
// numbers them one after the other.
func writeTxID(t *testing.T, s *Store) int {
	t.Helper()
	var id int
	if err := s.db.View(func(tx *bolt.Tx) error {
		id = tx.ID()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return id
}
