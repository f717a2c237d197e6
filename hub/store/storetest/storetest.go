// Package storetest is the conformance suite every store.Store
// implementation passes. A store's own tests call Run with a function that
// opens a fresh, empty store.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// Factory opens a new, empty store whose clock is now, and registers its
// Close with t.Cleanup. It fails the test when the store cannot be opened.
type Factory func(t *testing.T, now func() time.Time) store.Store

// Epoch is the hub clock the suite runs at. Fix and receive times in the
// suite are offsets from it.
var Epoch = time.Date(2026, 3, 10, 2, 0, 0, 0, time.UTC)

// Names of the agent, spool and region the suite's batches come from.
const (
	Agent  = "agent-ncr-1"
	Spool  = "spool-a"
	Region = "NCR"
)

// Run runs the conformance suite as subtests of t, each on its own store.
func Run(t *testing.T, open Factory) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open Factory)
	}{
		{"CommitAndReadBack", testCommitAndReadBack},
		{"ResentBatchStoresNothingTwice", testResentBatch},
		{"OverlappingBatchStoresOnlyNewRecords", testOverlappingBatch},
		{"OlderFixKeepsLatestPosition", testOlderFixKeepsLatest},
		{"FutureFixStoredButNotLatest", testFutureFix},
		{"StatusNewestReceiveTimeWins", testStatusNewestWins},
		{"SOSOpensOneIncident", testSOSOpensIncident},
		{"SameSOSIDAttaches", testSameSOSIDAttaches},
		{"NewSOSIDWithinWindowAttaches", testNewSOSWithinWindow},
		{"NewSOSIDAfterWindowOpensIncident", testNewSOSAfterWindow},
		{"CancelSetsCancelRequested", testCancel},
		{"CancelOfUnknownSOSIsSkipped", testCancelUnknown},
		{"NewSpoolStartsFreshCursor", testNewSpool},
		{"LanesHaveSeparateCursors", testLaneCursors},
		{"ConcurrentCommitStoresOnce", testConcurrentCommit},
		{"InvalidBatchRejected", testInvalidBatch},
		{"IncidentNotFound", testIncidentNotFound},
		{"IncidentsFilter", testIncidentsFilter},
		{"FixesRangeAndLimit", testFixesRange},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, open)
		})
	}
}

// Clock is a settable hub clock, safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock set to t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// FixRecord returns a fix record of vehicle taken at ts and received by the
// agent one second later.
func FixRecord(seq uint64, vehicle string, ts time.Time, lat, lon float64) protocol.Record {
	return protocol.Record{
		Seq:        seq,
		Kind:       protocol.KindFix,
		VehicleID:  vehicle,
		ReceivedAt: ts.Add(time.Second),
		Fix:        &protocol.Fix{Time: ts, Lat: lat, Lon: lon},
	}
}

// SOSRecord returns an SOS record with a location, pressed and received at at.
func SOSRecord(seq uint64, vehicle, sosID string, at time.Time) protocol.Record {
	return protocol.Record{
		Seq:        seq,
		Kind:       protocol.KindSOS,
		VehicleID:  vehicle,
		ReceivedAt: at,
		SOS: &protocol.SOS{
			ID: sosID, Time: at, HasLocation: true, Lat: 14.5995, Lon: 120.9842,
			Kind: protocol.SOSPanic, Note: "driver pressed the button",
		},
	}
}

// CancelRecord returns an SOS cancel record received at at.
func CancelRecord(seq uint64, vehicle, sosID, reason string, at time.Time) protocol.Record {
	return protocol.Record{
		Seq:        seq,
		Kind:       protocol.KindSOSCancel,
		VehicleID:  vehicle,
		ReceivedAt: at,
		Cancel:     &protocol.SOSCancel{ID: sosID, Reason: reason},
	}
}

// StatusRecord returns a status record received at at.
func StatusRecord(seq uint64, vehicle string, online bool, at time.Time) protocol.Record {
	return protocol.Record{
		Seq:        seq,
		Kind:       protocol.KindStatus,
		VehicleID:  vehicle,
		ReceivedAt: at,
		Status:     &protocol.Status{Online: online},
	}
}

// NewBatch returns a batch of the suite's agent and spool in the lane of
// the first record.
func NewBatch(records ...protocol.Record) *protocol.Batch {
	return &protocol.Batch{
		AgentID: Agent,
		Region:  Region,
		SpoolID: Spool,
		Lane:    records[0].Kind.Lane(),
		Records: records,
		SentAt:  Epoch,
	}
}

// FixBatch returns a GPS batch of n fixes of vehicle, seq first to
// first+n-1, one fix time per second counting back from Epoch.
func FixBatch(first uint64, n int, vehicle string) *protocol.Batch {
	records := make([]protocol.Record, n)
	for i := range records {
		seq := first + uint64(i)
		ts := Epoch.Add(-time.Hour + time.Duration(seq)*time.Second)
		records[i] = FixRecord(seq, vehicle, ts, 14.5+float64(seq)/1e4, 121.0)
	}
	return NewBatch(records...)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func mustCommit(t *testing.T, s store.Store, b *protocol.Batch) store.CommitResult {
	t.Helper()
	res, err := s.CommitBatch(ctx(t), b)
	if err != nil {
		t.Fatalf("CommitBatch(seq %d-%d): %v", b.First(), b.Last(), err)
	}
	return res
}

func mustFixes(t *testing.T, s store.Store, vehicle string) []store.StoredFix {
	t.Helper()
	fixes, err := s.Fixes(ctx(t), vehicle, Epoch.AddDate(-2, 0, 0), Epoch.AddDate(2, 0, 0), 0)
	if err != nil {
		t.Fatalf("Fixes(%s): %v", vehicle, err)
	}
	return fixes
}

func mustLatest(t *testing.T, s store.Store, vehicle string) (store.Position, bool) {
	t.Helper()
	positions, err := s.LatestPositions(ctx(t))
	if err != nil {
		t.Fatalf("LatestPositions: %v", err)
	}
	for _, p := range positions {
		if p.VehicleID == vehicle {
			return p, true
		}
	}
	return store.Position{}, false
}

func mustIncident(t *testing.T, s store.Store, id int64) (store.Incident, []store.IncidentEvent) {
	t.Helper()
	inc, events, err := s.Incident(ctx(t), id)
	if err != nil {
		t.Fatalf("Incident(%d): %v", id, err)
	}
	return inc, events
}

func mustIncidents(t *testing.T, s store.Store, f store.IncidentFilter) []store.Incident {
	t.Helper()
	incidents, err := s.Incidents(ctx(t), f)
	if err != nil {
		t.Fatalf("Incidents(%+v): %v", f, err)
	}
	return incidents
}

func mustCursor(t *testing.T, s store.Store, spool string, lane protocol.Lane) uint64 {
	t.Helper()
	seq, err := s.Cursor(ctx(t), Agent, spool, lane)
	if err != nil {
		t.Fatalf("Cursor(%s, %s, %s): %v", Agent, spool, lane, err)
	}
	return seq
}

func eventTypes(events []store.IncidentEvent) []string {
	types := make([]string, len(events))
	for i, ev := range events {
		types[i] = ev.Type
	}
	return types
}

func float(v float64) *float64 { return &v }

func equalFloatPtr(a, b *float64) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func testCommitAndReadBack(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)

	ts := Epoch.Add(-10 * time.Minute).Add(123456789 * time.Nanosecond)
	full := FixRecord(1, "veh-1", ts, 14.5995, 120.9842)
	full.Fix.SpeedKmh, full.Fix.HeadingDeg, full.Fix.AccuracyM = float(32.5), float(181), float(5)
	full.Fix.AltM, full.Fix.BatteryPct = float(12), float(80)
	full.Historical = true
	bare := FixRecord(2, "veh-2", ts.Add(time.Second), 10.3157, 123.8854)

	res := mustCommit(t, s, NewBatch(full, bare))
	if res.Through != 2 {
		t.Errorf("Through = %d, want 2", res.Through)
	}
	if res.Duplicates != 0 {
		t.Errorf("Duplicates = %d, want 0", res.Duplicates)
	}
	if len(res.Fixes) != 2 {
		t.Fatalf("result has %d fixes, want 2", len(res.Fixes))
	}

	fixes := mustFixes(t, s, "veh-1")
	if len(fixes) != 1 {
		t.Fatalf("veh-1 has %d stored fixes, want 1", len(fixes))
	}
	got := fixes[0]
	if !sameFix(got, res.Fixes[0]) {
		t.Errorf("stored fix %+v differs from the commit result %+v", got, res.Fixes[0])
	}
	if !got.Fix.Time.Equal(ts.Truncate(time.Microsecond)) {
		t.Errorf("fix time = %s, want %s", got.Fix.Time, ts.Truncate(time.Microsecond))
	}
	if got.Fix.Time.Location() != time.UTC {
		t.Errorf("fix time location = %s, want UTC", got.Fix.Time.Location())
	}
	if got.AgentID != Agent || got.Region != Region {
		t.Errorf("agent, region = %q, %q, want %q, %q", got.AgentID, got.Region, Agent, Region)
	}
	if !got.Historical {
		t.Error("historical flag was lost")
	}
	if !equalFloatPtr(got.Fix.SpeedKmh, float(32.5)) || !equalFloatPtr(got.Fix.BatteryPct, float(80)) ||
		!equalFloatPtr(got.Fix.HeadingDeg, float(181)) || !equalFloatPtr(got.Fix.AccuracyM, float(5)) ||
		!equalFloatPtr(got.Fix.AltM, float(12)) {
		t.Errorf("optional fields = %v %v %v %v %v, want 32.5 181 5 12 80", deref(got.Fix.SpeedKmh),
			deref(got.Fix.HeadingDeg), deref(got.Fix.AccuracyM), deref(got.Fix.AltM), deref(got.Fix.BatteryPct))
	}
	if bareFixes := mustFixes(t, s, "veh-2"); len(bareFixes) != 1 || bareFixes[0].Fix.SpeedKmh != nil || bareFixes[0].Fix.BatteryPct != nil {
		t.Errorf("veh-2 fixes = %+v, want one fix without optional fields", bareFixes)
	}

	p, ok := mustLatest(t, s, "veh-1")
	if !ok {
		t.Fatal("veh-1 has no latest position")
	}
	if p.Fix.Lat != 14.5995 || p.Fix.Lon != 120.9842 {
		t.Errorf("latest position = %v, %v, want 14.5995, 120.9842", p.Fix.Lat, p.Fix.Lon)
	}
	if p.Online != nil {
		t.Errorf("Online = %v, want nil before any status", *p.Online)
	}
	if got := mustCursor(t, s, Spool, protocol.LaneGPS); got != 2 {
		t.Errorf("cursor = %d, want 2", got)
	}

	status := mustCommit(t, s, NewBatch(StatusRecord(1, "veh-1", true, Epoch.Add(-time.Minute))))
	if len(status.Statuses) != 1 || !status.Statuses[0].Online || status.Statuses[0].AgentID != Agent {
		t.Errorf("status result = %+v, want one online status from %s", status.Statuses, Agent)
	}
	p, _ = mustLatest(t, s, "veh-1")
	if p.Online == nil || !*p.Online {
		t.Errorf("Online = %v, want true", p.Online)
	}

	sos := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-30*time.Second))))
	if len(sos.Incidents) != 1 {
		t.Fatalf("SOS result has %d incident changes, want 1", len(sos.Incidents))
	}
	change := sos.Incidents[0]
	inc, events := mustIncident(t, s, change.Incident.ID)
	if inc != change.Incident {
		t.Errorf("stored incident %+v differs from the commit result %+v", inc, change.Incident)
	}
	if len(events) != 1 || events[0] != change.Event {
		t.Errorf("events = %+v, want only %+v", events, change.Event)
	}
}

func sameFix(a, b store.StoredFix) bool {
	return a.VehicleID == b.VehicleID && a.AgentID == b.AgentID && a.Region == b.Region &&
		a.Fix.Time.Equal(b.Fix.Time) && a.Fix.Lat == b.Fix.Lat && a.Fix.Lon == b.Fix.Lon &&
		equalFloatPtr(a.Fix.SpeedKmh, b.Fix.SpeedKmh) && equalFloatPtr(a.Fix.HeadingDeg, b.Fix.HeadingDeg) &&
		equalFloatPtr(a.Fix.AccuracyM, b.Fix.AccuracyM) && equalFloatPtr(a.Fix.AltM, b.Fix.AltM) &&
		equalFloatPtr(a.Fix.BatteryPct, b.Fix.BatteryPct) && a.ReceivedAt.Equal(b.ReceivedAt) &&
		a.Historical == b.Historical
}

func deref(p *float64) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprint(*p)
}

func testResentBatch(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	b := FixBatch(1, 5, "veh-1")
	mustCommit(t, s, b)

	res := mustCommit(t, s, b)
	if res.Duplicates != 5 {
		t.Errorf("Duplicates = %d, want 5", res.Duplicates)
	}
	if len(res.Fixes) != 0 {
		t.Errorf("resent batch stored %d fixes, want 0", len(res.Fixes))
	}
	if res.Through != 5 {
		t.Errorf("Through = %d, want 5", res.Through)
	}
	if n := len(mustFixes(t, s, "veh-1")); n != 5 {
		t.Errorf("%d fixes stored, want 5", n)
	}

	// A batch entirely below the cursor reports the cursor, not its own last seq.
	res = mustCommit(t, s, FixBatch(2, 2, "veh-1"))
	if res.Through != 5 {
		t.Errorf("Through for an old batch = %d, want 5", res.Through)
	}
}

func testOverlappingBatch(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	mustCommit(t, s, FixBatch(1, 5, "veh-1"))

	res := mustCommit(t, s, FixBatch(3, 6, "veh-1"))
	if res.Duplicates != 3 {
		t.Errorf("Duplicates = %d, want 3", res.Duplicates)
	}
	if len(res.Fixes) != 3 {
		t.Errorf("stored %d fixes, want 3 (seq 6 to 8)", len(res.Fixes))
	}
	if res.Through != 8 {
		t.Errorf("Through = %d, want 8", res.Through)
	}
	fixes := mustFixes(t, s, "veh-1")
	if len(fixes) != 8 {
		t.Fatalf("%d fixes stored, want 8", len(fixes))
	}
	for i := 1; i < len(fixes); i++ {
		if !fixes[i].Fix.Time.After(fixes[i-1].Fix.Time) {
			t.Errorf("fix %d at %s is not after fix %d at %s: a fix is stored twice or out of order",
				i, fixes[i].Fix.Time, i-1, fixes[i-1].Fix.Time)
		}
	}
}

func testOlderFixKeepsLatest(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	newer := FixRecord(1, "veh-1", Epoch.Add(-time.Minute), 14.6, 121.0)
	older := FixRecord(2, "veh-1", Epoch.Add(-time.Hour), 14.1, 121.1)
	older.Historical = true

	mustCommit(t, s, NewBatch(newer))
	mustCommit(t, s, NewBatch(older))

	p, ok := mustLatest(t, s, "veh-1")
	if !ok {
		t.Fatal("no latest position")
	}
	if !p.Fix.Time.Equal(newer.Fix.Time) || p.Fix.Lat != 14.6 {
		t.Errorf("latest = %s (%v), want the newer fix %s (14.6)", p.Fix.Time, p.Fix.Lat, newer.Fix.Time)
	}
	if n := len(mustFixes(t, s, "veh-1")); n != 2 {
		t.Errorf("%d fixes stored, want 2: the older fix must still be kept", n)
	}

	// Within one batch too, the newest fix time wins regardless of order.
	mustCommit(t, s, NewBatch(
		FixRecord(3, "veh-1", Epoch.Add(-10*time.Second), 14.7, 121.0),
		FixRecord(4, "veh-1", Epoch.Add(-30*time.Second), 14.8, 121.0),
	))
	p, _ = mustLatest(t, s, "veh-1")
	if p.Fix.Lat != 14.7 {
		t.Errorf("latest lat = %v, want 14.7 from the newest fix of the batch", p.Fix.Lat)
	}
}

func testFutureFix(t *testing.T, open Factory) {
	clock := NewClock(Epoch)
	s := open(t, clock.Now)
	current := FixRecord(1, "veh-1", Epoch.Add(-time.Minute), 14.6, 121.0)
	future := FixRecord(2, "veh-1", Epoch.AddDate(1, 0, 0), 14.9, 121.0)
	mustCommit(t, s, NewBatch(current, future))

	fixes, err := s.Fixes(ctx(t), "veh-1", Epoch.AddDate(0, 11, 0), Epoch.AddDate(1, 1, 0), 0)
	if err != nil {
		t.Fatalf("Fixes: %v", err)
	}
	if len(fixes) != 1 {
		t.Errorf("future fix stored %d times, want 1", len(fixes))
	}
	p, _ := mustLatest(t, s, "veh-1")
	if p.Fix.Lat != 14.6 {
		t.Errorf("latest lat = %v, want 14.6: a fix a year ahead must not become latest", p.Fix.Lat)
	}

	// Later fixes keep moving the latest position.
	clock.Set(Epoch.Add(time.Hour))
	mustCommit(t, s, NewBatch(FixRecord(3, "veh-1", Epoch.Add(59*time.Minute), 14.65, 121.0)))
	p, _ = mustLatest(t, s, "veh-1")
	if p.Fix.Lat != 14.65 {
		t.Errorf("latest lat = %v, want 14.65 after a newer real fix", p.Fix.Lat)
	}

	// A fix slightly ahead, within the allowed clock skew, becomes latest.
	mustCommit(t, s, NewBatch(FixRecord(4, "veh-1", Epoch.Add(time.Hour+2*time.Minute), 14.66, 121.0)))
	p, _ = mustLatest(t, s, "veh-1")
	if p.Fix.Lat != 14.66 {
		t.Errorf("latest lat = %v, want 14.66 from a fix 2 minutes ahead", p.Fix.Lat)
	}
}

func testStatusNewestWins(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	mustCommit(t, s, NewBatch(FixRecord(1, "veh-1", Epoch.Add(-time.Minute), 14.6, 121.0)))

	res := mustCommit(t, s, NewBatch(
		StatusRecord(1, "veh-1", true, Epoch.Add(-50*time.Second)),
		StatusRecord(2, "veh-1", false, Epoch.Add(-40*time.Second)),
	))
	if len(res.Statuses) != 2 {
		t.Errorf("stored %d statuses, want 2", len(res.Statuses))
	}
	p, _ := mustLatest(t, s, "veh-1")
	if p.Online == nil || *p.Online {
		t.Errorf("Online = %v, want false from the last status", p.Online)
	}

	// A status received before the stored one is superseded.
	res = mustCommit(t, s, NewBatch(StatusRecord(3, "veh-1", true, Epoch.Add(-45*time.Second))))
	if len(res.Statuses) != 0 {
		t.Errorf("stale status reported as stored: %+v", res.Statuses)
	}
	p, _ = mustLatest(t, s, "veh-1")
	if p.Online == nil || *p.Online {
		t.Errorf("Online = %v, want false: an older status must not win", p.Online)
	}
}

func testSOSOpensIncident(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	rec := SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-10*time.Second))
	rec.SOS.Kind = protocol.SOSMedical
	res := mustCommit(t, s, NewBatch(rec))

	if len(res.Incidents) != 1 {
		t.Fatalf("%d incident changes, want 1", len(res.Incidents))
	}
	change := res.Incidents[0]
	if !change.Opened {
		t.Error("Opened = false, want true")
	}
	inc := change.Incident
	if inc.ID == 0 {
		t.Error("incident id is 0")
	}
	if inc.SOSID != "sos-1" || inc.VehicleID != "veh-1" || inc.AgentID != Agent || inc.Region != Region {
		t.Errorf("incident ids = %q %q %q %q", inc.SOSID, inc.VehicleID, inc.AgentID, inc.Region)
	}
	if inc.State != store.StateOpen {
		t.Errorf("state = %s, want open", inc.State)
	}
	if inc.Kind != protocol.SOSMedical {
		t.Errorf("kind = %s, want medical", inc.Kind)
	}
	if inc.Presses != 1 {
		t.Errorf("presses = %d, want 1", inc.Presses)
	}
	if !inc.HasLocation || inc.Lat != 14.5995 || inc.Lon != 120.9842 {
		t.Errorf("location = %v %v %v", inc.HasLocation, inc.Lat, inc.Lon)
	}
	if !inc.OpenedAt.Equal(Epoch) {
		t.Errorf("opened at %s, want the hub clock %s", inc.OpenedAt, Epoch)
	}
	if !inc.ReceivedAt.Equal(rec.ReceivedAt) || !inc.PressedAt.Equal(rec.SOS.Time) {
		t.Errorf("received, pressed = %s, %s, want %s", inc.ReceivedAt, inc.PressedAt, rec.ReceivedAt)
	}
	if change.Event.Type != store.EventOpened || change.Event.Actor != "vehicle:veh-1" || change.Event.IncidentID != inc.ID {
		t.Errorf("event = %+v, want opened by vehicle:veh-1", change.Event)
	}
	if all := mustIncidents(t, s, store.IncidentFilter{}); len(all) != 1 {
		t.Errorf("%d incidents, want 1", len(all))
	}

	// An SOS without a location opens an incident without one.
	noLoc := SOSRecord(2, "veh-2", "sos-2", Epoch)
	noLoc.SOS.HasLocation, noLoc.SOS.Lat, noLoc.SOS.Lon = false, 0, 0
	noLoc.SOS.LocationError = "no position sent"
	res = mustCommit(t, s, NewBatch(noLoc))
	if len(res.Incidents) != 1 || res.Incidents[0].Incident.HasLocation {
		t.Errorf("incident changes = %+v, want one without location", res.Incidents)
	}
}

func testSameSOSIDAttaches(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	first := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-time.Hour))))
	// The same id an hour later is still the same emergency: the id decides, not the window.
	again := mustCommit(t, s, NewBatch(SOSRecord(2, "veh-1", "sos-1", Epoch)))

	if len(again.Incidents) != 1 {
		t.Fatalf("%d incident changes, want 1", len(again.Incidents))
	}
	change := again.Incidents[0]
	if change.Opened {
		t.Error("a repeat of the same SOS id opened an incident")
	}
	if change.Incident.ID != first.Incidents[0].Incident.ID {
		t.Errorf("repeat attached to incident %d, want %d", change.Incident.ID, first.Incidents[0].Incident.ID)
	}
	if change.Incident.Presses != 2 {
		t.Errorf("presses = %d, want 2", change.Incident.Presses)
	}
	if change.Event.Type != store.EventRepeatPress {
		t.Errorf("event type = %s, want %s", change.Event.Type, store.EventRepeatPress)
	}
	_, events := mustIncident(t, s, change.Incident.ID)
	if got := eventTypes(events); len(got) != 2 || got[0] != store.EventOpened || got[1] != store.EventRepeatPress {
		t.Errorf("events = %v, want [opened repeat_press]", got)
	}
	if all := mustIncidents(t, s, store.IncidentFilter{}); len(all) != 1 {
		t.Errorf("%d incidents, want 1", len(all))
	}
}

func testNewSOSWithinWindow(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	first := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-2*time.Minute))))
	second := mustCommit(t, s, NewBatch(SOSRecord(2, "veh-1", "sos-2", Epoch.Add(-2*time.Minute+store.RepeatWindow-time.Second))))

	change := second.Incidents[0]
	if change.Opened || change.Incident.ID != first.Incidents[0].Incident.ID {
		t.Errorf("second SOS id within the window: opened=%v incident=%d, want attached to %d",
			change.Opened, change.Incident.ID, first.Incidents[0].Incident.ID)
	}
	if change.Incident.Presses != 2 {
		t.Errorf("presses = %d, want 2", change.Incident.Presses)
	}

	// The attached id now maps to the incident: its redelivery attaches too.
	third := mustCommit(t, s, NewBatch(SOSRecord(3, "veh-1", "sos-2", Epoch.Add(time.Hour))))
	if third.Incidents[0].Incident.ID != first.Incidents[0].Incident.ID || third.Incidents[0].Incident.Presses != 3 {
		t.Errorf("redelivered attached id: incident %d presses %d, want %d and 3",
			third.Incidents[0].Incident.ID, third.Incidents[0].Incident.Presses, first.Incidents[0].Incident.ID)
	}

	// Another vehicle's SOS never attaches.
	other := mustCommit(t, s, NewBatch(SOSRecord(4, "veh-2", "sos-3", Epoch.Add(-2*time.Minute))))
	if !other.Incidents[0].Opened {
		t.Error("another vehicle's SOS attached to veh-1's incident")
	}
}

func testNewSOSAfterWindow(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	first := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-5*time.Minute))))
	second := mustCommit(t, s, NewBatch(SOSRecord(2, "veh-1", "sos-2", Epoch.Add(-5*time.Minute+store.RepeatWindow+time.Second))))

	change := second.Incidents[0]
	if !change.Opened {
		t.Error("an SOS after the repeat window attached instead of opening an incident")
	}
	if change.Incident.ID == first.Incidents[0].Incident.ID {
		t.Errorf("new incident has the first incident's id %d", change.Incident.ID)
	}
	if all := mustIncidents(t, s, store.IncidentFilter{VehicleID: "veh-1"}); len(all) != 2 {
		t.Errorf("%d incidents, want 2", len(all))
	}
}

func testCancel(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	opened := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-time.Minute))))
	res := mustCommit(t, s, NewBatch(CancelRecord(2, "veh-1", "sos-1", "pressed by mistake", Epoch)))

	if len(res.Incidents) != 1 {
		t.Fatalf("%d incident changes, want 1", len(res.Incidents))
	}
	change := res.Incidents[0]
	if change.Incident.ID != opened.Incidents[0].Incident.ID {
		t.Errorf("cancel changed incident %d, want %d", change.Incident.ID, opened.Incidents[0].Incident.ID)
	}
	if !change.Incident.CancelRequested {
		t.Error("CancelRequested = false, want true")
	}
	if change.Incident.State != store.StateOpen {
		t.Errorf("state = %s, want open: an operator must confirm a cancel", change.Incident.State)
	}
	if change.Event.Type != store.EventCancelRequested || change.Event.Actor != "vehicle:veh-1" {
		t.Errorf("event = %+v, want cancel_requested by vehicle:veh-1", change.Event)
	}
	inc, events := mustIncident(t, s, change.Incident.ID)
	if !inc.CancelRequested {
		t.Error("stored CancelRequested = false")
	}
	if got := eventTypes(events); len(got) != 2 || got[1] != store.EventCancelRequested {
		t.Errorf("events = %v, want [opened cancel_requested]", got)
	}
}

func testCancelUnknown(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	res := mustCommit(t, s, NewBatch(CancelRecord(1, "veh-1", "sos-unknown", "", Epoch)))
	if len(res.Incidents) != 0 {
		t.Errorf("cancel of an unknown SOS changed incidents: %+v", res.Incidents)
	}
	if res.Through != 1 {
		t.Errorf("Through = %d, want 1: the cancel must not block the lane", res.Through)
	}
}

func testNewSpool(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	mustCommit(t, s, FixBatch(1, 5, "veh-1"))

	b := FixBatch(1, 2, "veh-1")
	b.SpoolID = "spool-b"
	for i := range b.Records {
		b.Records[i].Fix.Time = b.Records[i].Fix.Time.Add(time.Minute)
	}
	res := mustCommit(t, s, b)
	if res.Duplicates != 0 || len(res.Fixes) != 2 || res.Through != 2 {
		t.Errorf("new spool: duplicates %d, fixes %d, through %d, want 0, 2, 2", res.Duplicates, len(res.Fixes), res.Through)
	}
	if got := mustCursor(t, s, Spool, protocol.LaneGPS); got != 5 {
		t.Errorf("old spool cursor = %d, want 5", got)
	}
	if got := mustCursor(t, s, "spool-b", protocol.LaneGPS); got != 2 {
		t.Errorf("new spool cursor = %d, want 2", got)
	}
	if got := mustCursor(t, s, "spool-never-seen", protocol.LaneGPS); got != 0 {
		t.Errorf("unknown spool cursor = %d, want 0", got)
	}
}

func testLaneCursors(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	mustCommit(t, s, FixBatch(1, 7, "veh-1"))
	res := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch)))
	if res.Duplicates != 0 || len(res.Incidents) != 1 {
		t.Errorf("SOS seq 1 after GPS seq 7: duplicates %d, incidents %d, want 0 and 1", res.Duplicates, len(res.Incidents))
	}
	if gps, sos := mustCursor(t, s, Spool, protocol.LaneGPS), mustCursor(t, s, Spool, protocol.LaneSOS); gps != 7 || sos != 1 {
		t.Errorf("cursors gps, sos = %d, %d, want 7, 1", gps, sos)
	}
}

func testConcurrentCommit(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	for round := 0; round < 5; round++ {
		b := FixBatch(uint64(round*50+1), 50, "veh-1")
		results := make([]store.CommitResult, 2)
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i := range results {
			wg.Go(func() {
				results[i], errs[i] = s.CommitBatch(context.Background(), b)
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: commit %d: %v", round, i, err)
			}
		}
		stored := len(results[0].Fixes) + len(results[1].Fixes)
		if stored != 50 {
			t.Errorf("round %d: the two commits stored %d fixes in all, want 50", round, stored)
		}
		if results[0].Through != b.Last() || results[1].Through != b.Last() {
			t.Errorf("round %d: Through = %d and %d, want %d", round, results[0].Through, results[1].Through, b.Last())
		}
	}
	if n := len(mustFixes(t, s, "veh-1")); n != 250 {
		t.Errorf("%d fixes stored, want 250", n)
	}

	// The same SOS committed from two goroutines opens one incident with one press.
	b := NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch))
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = s.CommitBatch(context.Background(), b)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent SOS commit: %v", err)
	}
	incidents := mustIncidents(t, s, store.IncidentFilter{})
	if len(incidents) != 1 || incidents[0].Presses != 1 {
		t.Errorf("incidents = %+v, want one with one press", incidents)
	}
}

func testInvalidBatch(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	b := FixBatch(1, 3, "veh-1")
	b.Records[2].Seq = 1
	if _, err := s.CommitBatch(ctx(t), b); !errors.Is(err, protocol.ErrInvalidBatch) {
		t.Errorf("commit of a batch with decreasing seq: error %v, want protocol.ErrInvalidBatch", err)
	}
	if n := len(mustFixes(t, s, "veh-1")); n != 0 {
		t.Errorf("invalid batch stored %d fixes", n)
	}
}

func testIncidentNotFound(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	if _, _, err := s.Incident(ctx(t), 424242); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Incident of a missing id: error %v, want store.ErrNotFound", err)
	}
}

func testIncidentsFilter(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	mustCommit(t, s, NewBatch(
		SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-10*time.Minute)),
		SOSRecord(2, "veh-2", "sos-2", Epoch.Add(-5*time.Minute)),
		SOSRecord(3, "veh-3", "sos-3", Epoch),
	))
	other := NewBatch(SOSRecord(1, "veh-4", "sos-4", Epoch))
	other.AgentID, other.Region = "agent-cebu-1", "Cebu"
	mustCommit(t, s, other)

	if got := mustIncidents(t, s, store.IncidentFilter{}); len(got) != 4 {
		t.Errorf("no filter: %d incidents, want 4", len(got))
	}
	if got := mustIncidents(t, s, store.IncidentFilter{Region: "Cebu"}); len(got) != 1 || got[0].VehicleID != "veh-4" {
		t.Errorf("region Cebu: %+v, want veh-4's incident", got)
	}
	if got := mustIncidents(t, s, store.IncidentFilter{VehicleID: "veh-2"}); len(got) != 1 || got[0].SOSID != "sos-2" {
		t.Errorf("vehicle veh-2: %+v, want sos-2's incident", got)
	}
	if got := mustIncidents(t, s, store.IncidentFilter{States: []store.IncidentState{store.StateResolved}}); len(got) != 0 {
		t.Errorf("state resolved: %d incidents, want 0", len(got))
	}
	got := mustIncidents(t, s, store.IncidentFilter{Limit: 2})
	if len(got) != 2 {
		t.Fatalf("limit 2: %d incidents", len(got))
	}
	if got[0].OpenedAt.Before(got[1].OpenedAt) || (got[0].OpenedAt.Equal(got[1].OpenedAt) && got[0].ID < got[1].ID) {
		t.Errorf("incidents not newest first: %d then %d", got[0].ID, got[1].ID)
	}
}

func testFixesRange(t *testing.T, open Factory) {
	s := open(t, NewClock(Epoch).Now)
	b := FixBatch(1, 10, "veh-1")
	mustCommit(t, s, b)
	from, to := b.Records[2].Fix.Time, b.Records[6].Fix.Time

	fixes, err := s.Fixes(ctx(t), "veh-1", from, to, 0)
	if err != nil {
		t.Fatalf("Fixes: %v", err)
	}
	if len(fixes) != 4 {
		t.Fatalf("[from, to) holds %d fixes, want 4 (seq 3 to 6)", len(fixes))
	}
	if !fixes[0].Fix.Time.Equal(from) {
		t.Errorf("first fix at %s, want %s: from is inclusive", fixes[0].Fix.Time, from)
	}
	limited, err := s.Fixes(ctx(t), "veh-1", from, to, 3)
	if err != nil {
		t.Fatalf("Fixes with limit: %v", err)
	}
	if len(limited) != 3 || !limited[0].Fix.Time.Equal(from) {
		t.Errorf("limit 3 returned %d fixes, want the oldest 3", len(limited))
	}
	if other := mustFixes(t, s, "veh-2"); len(other) != 0 {
		t.Errorf("veh-2 has %d fixes, want 0", len(other))
	}
}
