package localsos

import (
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/protocol"
)

var epoch = time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)

// testClock is a settable agent clock, safe for concurrent use.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock(t time.Time) *testClock { return &testClock{now: t} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// openStore opens a store on path (a new file when empty) with clock and
// closes it on cleanup.
func openStore(t *testing.T, path string, clock *testClock, mutate func(*Config)) *Store {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), File)
	}
	cfg := Config{Path: path, Now: clock.Now}
	if mutate != nil {
		mutate(&cfg)
	}
	s := New(cfg)
	if err := s.Open(); err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

func testSOS(id string) *protocol.SOS {
	return &protocol.SOS{ID: id, Time: epoch, Kind: protocol.SOSCrash, HasLocation: true, Lat: 10.3157, Lon: 123.8854, Note: "tunnel"}
}

func update(sosID string, incident int64, state string, at time.Time) protocol.SOSStateUpdate {
	return protocol.SOSStateUpdate{
		VehicleID: "taxi-1", SOSID: sosID, IncidentID: incident,
		State: protocol.SOSState{State: state, TS: at, Message: "hub text for " + state},
	}
}

func mustRecord(t *testing.T, s *Store, sosID string, at time.Time) (Entry, bool) {
	t.Helper()
	e, changed, err := s.Record("taxi-1", testSOS(sosID), at)
	if err != nil {
		t.Fatalf("Record %s: %v", sosID, err)
	}
	return e, changed
}

func mustApply(t *testing.T, s *Store, u protocol.SOSStateUpdate) (Entry, bool) {
	t.Helper()
	e, changed, err := s.Apply(u)
	if err != nil {
		t.Fatalf("Apply %s of incident %d: %v", u.State.State, u.IncidentID, err)
	}
	return e, changed
}

func TestStore_RecordSurvivesRestart(t *testing.T) {
	clock := newClock(epoch)
	path := filepath.Join(t.TempDir(), File)
	s := openStore(t, path, clock, nil)
	e, changed := mustRecord(t, s, "sos-1", epoch)
	if !changed || e.State != protocol.SOSStateReceived || !e.StateAt.Equal(epoch) {
		t.Fatalf("Record = %+v, changed %v; want a new received entry at %v", e, changed, epoch)
	}
	if e.Message != protocol.DefaultSOSStateMessage(protocol.SOSStateReceived) {
		t.Errorf("message = %q, want the built-in English text", e.Message)
	}
	mustApply(t, s, update("sos-1", 7, protocol.SOSStateAcknowledged, epoch.Add(time.Minute)))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, path, clock, nil)
	got, err := s.Get("taxi-1", "sos-1")
	if err != nil {
		t.Fatalf("Get after reopen: %v", err)
	}
	if got.State != protocol.SOSStateAcknowledged || got.IncidentID != 7 || got.Kind != protocol.SOSCrash ||
		!got.HasLocation || got.Note != "tunnel" || !got.ReceivedAt.Equal(epoch) || got.Message != "hub text for acknowledged" {
		t.Errorf("entry after reopen = %+v", got)
	}
	active, err := s.ListActive()
	if err != nil {
		t.Fatal(err)
	}
	if len(active) != 1 || active[0].SOSID != "sos-1" {
		t.Errorf("ListActive = %+v, want sos-1", active)
	}
}

func TestStore_ApplyNeverMovesBackwards(t *testing.T) {
	s := openStore(t, "", newClock(epoch), nil)
	mustRecord(t, s, "sos-1", epoch)
	steps := []struct {
		u           protocol.SOSStateUpdate
		wantChanged bool
		wantState   string
	}{
		{update("sos-1", 7, protocol.SOSStateReceived, epoch), false, protocol.SOSStateReceived},
		{update("sos-1", 7, protocol.SOSStateDispatched, epoch.Add(2*time.Minute)), true, protocol.SOSStateDispatched},
		{update("sos-1", 7, protocol.SOSStateAcknowledged, epoch.Add(time.Minute)), false, protocol.SOSStateDispatched},
		{update("sos-1", 6, protocol.SOSStateResolved, epoch.Add(3*time.Minute)), false, protocol.SOSStateDispatched},
		{update("sos-1", 7, protocol.SOSStateResolved, epoch.Add(4*time.Minute)), true, protocol.SOSStateResolved},
		{update("sos-1", 7, protocol.SOSStateCancelled, epoch.Add(5*time.Minute)), false, protocol.SOSStateResolved},
		{update("sos-1", 7, protocol.SOSStateDispatched, epoch.Add(6*time.Minute)), false, protocol.SOSStateResolved},
	}
	for i, step := range steps {
		e, changed := mustApply(t, s, step.u)
		if changed != step.wantChanged || e.State != step.wantState {
			t.Errorf("step %d (%s of incident %d): state %s, changed %v; want %s, changed %v",
				i, step.u.State.State, step.u.IncidentID, e.State, changed, step.wantState, step.wantChanged)
		}
	}
	e, err := s.Get("taxi-1", "sos-1")
	if err != nil {
		t.Fatal(err)
	}
	if !e.StateAt.Equal(epoch.Add(4*time.Minute)) || e.Message != "hub text for resolved" {
		t.Errorf("final entry = %+v, want resolved at %v with the hub's text", e, epoch.Add(4*time.Minute))
	}
}

func TestStore_ReusedSOSIDStartsOver(t *testing.T) {
	s := openStore(t, "", newClock(epoch), nil)
	mustRecord(t, s, "sos-1", epoch)
	mustApply(t, s, update("sos-1", 7, protocol.SOSStateResolved, epoch.Add(time.Minute)))

	// A late copy of the first press changes nothing.
	if e, changed := mustRecord(t, s, "sos-1", epoch.Add(30*time.Second)); changed || e.State != protocol.SOSStateResolved {
		t.Errorf("late copy: state %s, changed %v; want resolved unchanged", e.State, changed)
	}
	// A press after the close is a new emergency.
	e, changed := mustRecord(t, s, "sos-1", epoch.Add(time.Hour))
	if !changed || e.State != protocol.SOSStateReceived || e.IncidentID != 0 {
		t.Fatalf("new press: %+v, changed %v; want received without an incident", e, changed)
	}
	// The hub's old final state, redelivered on a reconnect, is ignored.
	if e, changed := mustApply(t, s, update("sos-1", 7, protocol.SOSStateResolved, epoch.Add(time.Minute))); changed || e.State != protocol.SOSStateReceived {
		t.Errorf("old resolved: state %s, changed %v; want received unchanged", e.State, changed)
	}
	// The new incident's states apply.
	if e, changed := mustApply(t, s, update("sos-1", 9, protocol.SOSStateAcknowledged, epoch.Add(61*time.Minute))); !changed || e.IncidentID != 9 {
		t.Errorf("new incident: %+v, changed %v; want acknowledged of incident 9", e, changed)
	}
	// A later state of the old incident is ignored.
	if _, changed := mustApply(t, s, update("sos-1", 7, protocol.SOSStateResolved, epoch.Add(2*time.Hour))); changed {
		t.Error("a state of the older incident changed the entry")
	}
}

func TestStore_HubAnnouncesUnknownSOS(t *testing.T) {
	s := openStore(t, "", newClock(epoch), nil)
	e, changed := mustApply(t, s, update("sos-1", 3, protocol.SOSStateAcknowledged, epoch))
	if !changed || e.State != protocol.SOSStateAcknowledged || !e.ReceivedAt.IsZero() {
		t.Fatalf("Apply to an unknown SOS = %+v, changed %v", e, changed)
	}
	// The vehicle's copy fills in the details without moving the state back.
	e, changed = mustRecord(t, s, "sos-1", epoch.Add(time.Second))
	if changed || e.State != protocol.SOSStateAcknowledged || e.Kind != protocol.SOSCrash || !e.ReceivedAt.Equal(epoch.Add(time.Second)) {
		t.Errorf("Record after the hub's state = %+v, changed %v", e, changed)
	}
}

func TestStore_MarkLocalAck(t *testing.T) {
	clock := newClock(epoch)
	s := openStore(t, "", clock, func(c *Config) {
		c.Language = "fil"
		c.Message = func(lang, state string) string { return lang + ":" + state }
	})
	mustRecord(t, s, "sos-1", epoch)
	at := epoch.Add(time.Minute)
	e, changed, err := s.MarkLocalAck("taxi-1", "sos-1", "Ana Reyes", at)
	if err != nil {
		t.Fatal(err)
	}
	if !changed || e.State != protocol.SOSStateAcknowledged || e.LocalAckBy != "Ana Reyes" || !e.LocalAckAt.Equal(at) || e.Message != "fil:acknowledged" {
		t.Errorf("MarkLocalAck = %+v, changed %v", e, changed)
	}
	if _, changed, err := s.MarkLocalAck("taxi-1", "sos-1", "Ben Cruz", at.Add(time.Minute)); err != nil || changed {
		t.Errorf("second MarkLocalAck: changed %v, error %v; want no change", changed, err)
	}
	if e, err := s.Get("taxi-1", "sos-1"); err != nil || e.LocalAckBy != "Ana Reyes" {
		t.Errorf("after second MarkLocalAck: %+v, %v; want the first actor kept", e, err)
	}

	// The hub's acknowledgement repeats what the vehicle heard; dispatched moves on.
	if _, changed := mustApply(t, s, update("sos-1", 4, protocol.SOSStateAcknowledged, at)); changed {
		t.Error("hub acknowledged after a local acknowledgement changed the state")
	}
	if e, changed := mustApply(t, s, update("sos-1", 4, protocol.SOSStateDispatched, at.Add(time.Minute))); !changed || e.LocalAckBy != "Ana Reyes" {
		t.Errorf("dispatched after local acknowledgement = %+v, changed %v", e, changed)
	}

	mustApply(t, s, update("sos-1", 4, protocol.SOSStateCancelled, at.Add(2*time.Minute)))
	if _, _, err := s.MarkLocalAck("taxi-1", "sos-1", "Ana Reyes", at); !errors.Is(err, ErrSOSClosed) {
		t.Errorf("MarkLocalAck on a cancelled SOS: error %v, want ErrSOSClosed", err)
	}
	if _, _, err := s.MarkLocalAck("taxi-1", "sos-404", "Ana Reyes", at); !errors.Is(err, ErrNotFound) {
		t.Errorf("MarkLocalAck on an unknown SOS: error %v, want ErrNotFound", err)
	}
	for _, actor := range []string{"", strings.Repeat("x", MaxActor+1), "bad\x00name", "\xff"} {
		if _, _, err := s.MarkLocalAck("taxi-1", "sos-1", actor, at); !errors.Is(err, ErrInvalid) {
			t.Errorf("MarkLocalAck by %q: error %v, want ErrInvalid", actor, err)
		}
	}
}

func TestStore_PruneClosedEntries(t *testing.T) {
	clock := newClock(epoch)
	path := filepath.Join(t.TempDir(), File)
	s := openStore(t, path, clock, nil)
	mustRecord(t, s, "old-closed", epoch)
	mustApply(t, s, update("old-closed", 1, protocol.SOSStateResolved, epoch))
	mustRecord(t, s, "old-active", epoch)

	clock.Set(epoch.Add(6 * 24 * time.Hour))
	mustRecord(t, s, "new-closed", clock.Now())
	mustApply(t, s, update("new-closed", 2, protocol.SOSStateCancelled, clock.Now()))

	n, err := s.Prune(epoch.Add(DefaultKeepClosed + time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("pruned %d entries, want 1", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path, clock, nil)
	if _, err := s.Get("taxi-1", "old-closed"); !errors.Is(err, ErrNotFound) {
		t.Errorf("closed entry older than KeepClosed: Get error %v, want ErrNotFound", err)
	}
	for _, id := range []string{"old-active", "new-closed"} {
		if _, err := s.Get("taxi-1", id); err != nil {
			t.Errorf("entry %s pruned: %v", id, err)
		}
	}
}

func TestStore_RejectsInvalidInput(t *testing.T) {
	clock := newClock(epoch)
	closed := New(Config{Path: filepath.Join(t.TempDir(), File)})
	if _, _, err := closed.Record("taxi-1", testSOS("sos-1"), epoch); !errors.Is(err, ErrNotOpen) {
		t.Errorf("Record before Open: error %v, want ErrNotOpen", err)
	}
	if _, err := closed.ListActive(); !errors.Is(err, ErrNotOpen) {
		t.Errorf("ListActive before Open: error %v, want ErrNotOpen", err)
	}

	path := filepath.Join(t.TempDir(), File)
	s := openStore(t, path, clock, nil)
	bad := update("sos-1", 0, protocol.SOSStateAcknowledged, epoch)
	if _, _, err := s.Apply(bad); !errors.Is(err, ErrInvalid) || !errors.Is(err, protocol.ErrOutOfRange) {
		t.Errorf("Apply with incident 0: error %v, want ErrInvalid wrapping ErrOutOfRange", err)
	}
	if _, _, err := s.Record("taxi/1", testSOS("sos-1"), epoch); !errors.Is(err, ErrInvalid) {
		t.Errorf("Record with an invalid vehicle id: error %v, want ErrInvalid", err)
	}
	if err := s.Open(); err == nil {
		t.Error("second Open succeeded")
	}
	other := New(Config{Path: path, Timeout: 50 * time.Millisecond})
	if err := other.Open(); err == nil {
		other.Close()
		t.Error("a second store opened the locked file")
	}
}
