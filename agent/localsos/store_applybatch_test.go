package localsos

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/protocol"
)

// applySequence is a run of hub states that exercises each rule of Apply,
// with several states of one SOS back to back: each must see the effect
// of the one before it.
func applySequence() []protocol.SOSStateUpdate {
	return []protocol.SOSStateUpdate{
		// sos-1 is recorded as received before the batch.
		update("sos-1", 5, protocol.SOSStateAcknowledged, epoch.Add(time.Minute)),
		update("sos-1", 5, protocol.SOSStateDispatched, epoch.Add(2*time.Minute)),
		// An older incident with the same SOS id, after the one above took 5.
		update("sos-1", 4, protocol.SOSStateResolved, epoch.Add(3*time.Minute)),
		// A repeated and a backwards state change nothing.
		update("sos-1", 5, protocol.SOSStateDispatched, epoch.Add(2*time.Minute)),
		update("sos-1", 5, protocol.SOSStateAcknowledged, epoch.Add(4*time.Minute)),
		update("sos-1", 5, protocol.SOSStateResolved, epoch.Add(5*time.Minute)),
		// sos-2 is unknown: the hub announces it.
		update("sos-2", 7, protocol.SOSStateDispatched, epoch.Add(time.Minute)),
		// A newer incident with the same SOS id supersedes the old one.
		update("sos-2", 8, protocol.SOSStateAcknowledged, epoch.Add(6*time.Minute)),
		// sos-3 is recorded after this final state of an earlier emergency.
		update("sos-3", 9, protocol.SOSStateResolved, epoch.Add(-time.Hour)),
		// Only the incident changes: stored, the vehicle's state is the same.
		update("sos-3", 10, protocol.SOSStateReceived, epoch.Add(time.Minute)),
	}
}

// ApplyBatch follows Apply's rules update by update: the same entries and
// the same changes as one Apply per update, in one write transaction.
func TestStore_ApplyBatchMatchesApply(t *testing.T) {
	clock := newClock(epoch.Add(time.Hour))
	single := openStore(t, "", clock, nil)
	batch := openStore(t, "", clock, nil)
	for _, s := range []*Store{single, batch} {
		mustRecord(t, s, "sos-1", epoch)
		mustRecord(t, s, "sos-3", epoch)
	}

	us := applySequence()
	before := writeTxID(t, batch)
	got, err := batch.ApplyBatch(us)
	if err != nil {
		t.Fatalf("ApplyBatch: %v", err)
	}
	if txs := writeTxID(t, batch) - before; txs != 1 {
		t.Errorf("ApplyBatch of %d states took %d write transactions, want 1", len(us), txs)
	}
	if len(got) != len(us) {
		t.Fatalf("ApplyBatch returned %d results for %d states", len(got), len(us))
	}
	var changes []bool
	for i, u := range us {
		e, changed := mustApply(t, single, u)
		changes = append(changes, changed)
		want := Applied{Entry: e, Changed: changed}
		if !reflect.DeepEqual(got[i], want) {
			t.Errorf("state %d (%s incident %d %s): ApplyBatch gave %+v, Apply %+v", i, u.SOSID, u.IncidentID, u.State.State, got[i], want)
		}
	}
	// The rules themselves, so the comparison cannot pass with both wrong.
	wantChanges := []bool{true, true, false, false, false, true, true, true, false, false}
	if !reflect.DeepEqual(changes, wantChanges) {
		t.Errorf("changes = %v, want %v", changes, wantChanges)
	}
	for sosID, want := range map[string]struct {
		state    string
		incident int64
	}{
		"sos-1": {protocol.SOSStateResolved, 5},
		"sos-2": {protocol.SOSStateAcknowledged, 8},
		"sos-3": {protocol.SOSStateReceived, 10},
	} {
		e, err := batch.Get("taxi-1", sosID)
		if err != nil {
			t.Fatal(err)
		}
		if e.State != want.state || e.IncidentID != want.incident {
			t.Errorf("stored %s = %s of incident %d, want %s of incident %d", sosID, e.State, e.IncidentID, want.state, want.incident)
		}
		if e2, _ := single.Get("taxi-1", sosID); !reflect.DeepEqual(e, e2) {
			t.Errorf("stored %s: ApplyBatch %+v, Apply %+v", sosID, e, e2)
		}
	}
}

// An invalid update is reported on its own and the others are stored.
func TestStore_ApplyBatchReportsInvalidUpdate(t *testing.T) {
	s := openStore(t, "", newClock(epoch), nil)
	bad := update("sos-2", 0, protocol.SOSStateDispatched, epoch)
	badID := update("sos/3", 1, protocol.SOSStateDispatched, epoch)
	got, err := s.ApplyBatch([]protocol.SOSStateUpdate{
		update("sos-1", 1, protocol.SOSStateAcknowledged, epoch), bad, badID,
		update("sos-1", 1, protocol.SOSStateDispatched, epoch.Add(time.Minute)),
	})
	if err != nil {
		t.Fatalf("ApplyBatch: %v", err)
	}
	for i, wantInvalid := range []bool{false, true, true, false} {
		if gotInvalid := errors.Is(got[i].Err, ErrInvalid); gotInvalid != wantInvalid {
			t.Errorf("result %d: error %v, want ErrInvalid %v", i, got[i].Err, wantInvalid)
		}
	}
	if !got[3].Changed || got[3].Entry.State != protocol.SOSStateDispatched {
		t.Errorf("last result = %+v, want dispatched and changed", got[3])
	}
	if _, err := s.Get("taxi-1", "sos-2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("invalid update stored: Get error %v, want ErrNotFound", err)
	}
}

// A damaged entry fails the whole transaction, and nothing is stored.
func TestStore_ApplyBatchFailsWhole(t *testing.T) {
	s := openStore(t, "", newClock(epoch), nil)
	mustRecord(t, s, "sos-bad", epoch)
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(entriesBucket).Put(entryKey("taxi-1", "sos-bad"), []byte("{not json"))
	}); err != nil {
		t.Fatal(err)
	}
	_, err := s.ApplyBatch([]protocol.SOSStateUpdate{
		update("sos-1", 1, protocol.SOSStateAcknowledged, epoch),
		update("sos-bad", 2, protocol.SOSStateAcknowledged, epoch),
	})
	if err == nil {
		t.Fatal("ApplyBatch over a damaged entry succeeded")
	}
	if _, err := s.Get("taxi-1", "sos-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("state before the damaged entry stored: Get error %v, want ErrNotFound", err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ApplyBatch([]protocol.SOSStateUpdate{update("sos-1", 1, protocol.SOSStateAcknowledged, epoch)}); !errors.Is(err, ErrNotOpen) {
		t.Errorf("ApplyBatch on a closed store: %v, want ErrNotOpen", err)
	}
}

// burstUpdates returns n hub states, one per SOS, as in a burst.
func burstUpdates(n int) []protocol.SOSStateUpdate {
	us := make([]protocol.SOSStateUpdate, n)
	for i := range us {
		us[i] = update(fmt.Sprintf("sos-%05d", i), int64(i+1), protocol.SOSStateAcknowledged, epoch)
	}
	return us
}

// BenchmarkStore_Apply stores a burst of hub states one transaction each,
// as HubState does; ns/op is per state.
func BenchmarkStore_Apply(b *testing.B) {
	s := New(Config{Path: b.TempDir() + "/" + File})
	if err := s.Open(); err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	us := burstUpdates(b.N)
	b.ResetTimer()
	for i := range us {
		if _, _, err := s.Apply(us[i]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStore_ApplyBatch stores the same burst in groups of
// maxStateGroup, as the relay's goroutine does; ns/op is per state.
func BenchmarkStore_ApplyBatch(b *testing.B) {
	s := New(Config{Path: b.TempDir() + "/" + File})
	if err := s.Open(); err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	us := burstUpdates(b.N)
	b.ResetTimer()
	for len(us) > 0 {
		n := min(len(us), maxStateGroup)
		if _, err := s.ApplyBatch(us[:n]); err != nil {
			b.Fatal(err)
		}
		us = us[n:]
	}
}
