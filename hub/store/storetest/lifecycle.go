package storetest

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// lifecycleCases cover Ping, Close, DeleteFixesBefore and reopening a
// store on the same data.
var lifecycleCases = []testCase{
	{"Ping", testPing},
	{"ClosedStoreIsUnavailable", testClosedStore},
	{"RetentionDeletesOnlyOldFixes", testRetention},
	{"RetentionOfEmptyStore", testRetentionEmpty},
	{"RestartKeepsEverything", testRestart},
}

func testPing(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	if err := s.Ping(ctx(t)); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

func testClosedStore(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	mustCommit(t, s, FixBatch(1, 1, "veh-1"))
	mustClose(t, s)
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	c := ctx(t)
	checks := map[string]error{}
	_, checks["CommitBatch"] = s.CommitBatch(c, FixBatch(2, 1, "veh-1"))
	_, checks["Cursor"] = s.Cursor(c, Agent, Spool, protocol.LaneGPS)
	_, checks["LatestPositions"] = s.LatestPositions(c)
	_, checks["Fixes"] = s.Fixes(c, "veh-1", Epoch.AddDate(-1, 0, 0), Epoch, 0)
	_, checks["Incidents"] = s.Incidents(c, store.IncidentFilter{})
	_, _, checks["Incident"] = s.Incident(c, 1)
	for _, a := range store.Actions {
		_, checks[string(a)] = Act(c, s, 1, a, Operator, actionText[a])
	}
	_, checks["SaveContact"] = s.SaveContact(c, store.Contact{Name: "Ana", Role: store.RoleResponder, Region: Region, Phone: phoneAna})
	checks["DeleteContact"] = s.DeleteContact(c, 1)
	_, checks["Contacts"] = s.Contacts(c, store.ContactFilter{})
	_, _, checks["EscalateIncident"] = s.EscalateIncident(c, store.Escalation{IncidentID: 1, Level: 1, Notifications: []store.Notification{SMS(phoneAna, "opened")}})
	_, checks["DueNotifications"] = s.DueNotifications(c, Epoch, 0)
	_, _, checks["ClaimNotification"] = s.ClaimNotification(c, 1, Epoch, Epoch.Add(time.Minute))
	_, _, checks["RecordAttempt"] = s.RecordAttempt(c, 1, store.AttemptOutcome{State: store.NotificationSent})
	_, _, checks["UpdateDeliveryStatus"] = s.UpdateDeliveryStatus(c, "SM-1", "delivered", "")
	_, checks["Notifications"] = s.Notifications(c, 1)
	_, checks["DeleteFixesBefore"] = s.DeleteFixesBefore(c, Epoch)
	checks["Ping"] = s.Ping(c)
	for method, err := range checks {
		if !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s after Close: error %v, want store.ErrUnavailable", method, err)
		}
	}
}

func testRetention(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	cutoff := Epoch.AddDate(0, 0, -30)
	kept := []time.Time{cutoff, cutoff.Add(time.Microsecond), cutoff.AddDate(0, 0, 1), Epoch.Add(-time.Minute)}
	gps := NewBatch(
		FixRecord(1, "veh-1", cutoff.AddDate(0, 0, -10), 14.1, 121.0),
		FixRecord(2, "veh-1", cutoff.AddDate(0, 0, -1), 14.2, 121.0),
		FixRecord(3, "veh-1", cutoff.Add(-time.Microsecond), 14.3, 121.0),
		FixRecord(4, "veh-1", kept[0], 14.4, 121.0),
		FixRecord(5, "veh-1", kept[1], 14.5, 121.0),
		FixRecord(6, "veh-1", kept[2], 14.6, 121.0),
		FixRecord(7, "veh-1", kept[3], 14.7, 121.0),
		FixRecord(8, "veh-2", cutoff.AddDate(0, 0, -5), 10.3, 123.9),
		FixRecord(9, "veh-3", Epoch.AddDate(0, 0, 2), 10.4, 123.9),
	)
	mustCommit(t, s, gps)
	mustCommit(t, s, NewBatch(StatusRecord(1, "veh-2", false, cutoff.AddDate(0, 0, -5))))
	opened := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-2", "sos-1", cutoff.AddDate(0, 0, -5))))
	latestBefore := mustPositions(t, s)

	n, err := s.DeleteFixesBefore(ctx(t), cutoff)
	if err != nil {
		t.Fatalf("DeleteFixesBefore: %v", err)
	}
	if n != 4 && n != store.CountUnknown {
		t.Errorf("DeleteFixesBefore removed %d fixes, want 4 (or store.CountUnknown)", n)
	}

	if got := fixTimes(mustFixes(t, s, "veh-1")); !reflect.DeepEqual(got, kept) {
		t.Errorf("veh-1 fixes after retention at %v, want %v: fixes from the cutoff on stay", got, kept)
	}
	if got := mustFixes(t, s, "veh-2"); len(got) != 0 {
		t.Errorf("veh-2 has %d fixes after retention, want 0", len(got))
	}
	if got := mustFixes(t, s, "veh-3"); len(got) != 1 {
		t.Errorf("veh-3 has %d fixes after retention, want its 1 future fix", len(got))
	}

	// Latest positions, statuses, incidents and cursors stay.
	if got := mustPositions(t, s); !reflect.DeepEqual(got, latestBefore) {
		t.Errorf("latest positions after retention = %+v, want unchanged %+v", got, latestBefore)
	}
	if p, ok := mustLatest(t, s, "veh-2"); !ok || p.Online == nil || *p.Online {
		t.Errorf("veh-2 latest = %+v (found %v), want its last known position, offline", p, ok)
	}
	inc, events := mustIncident(t, s, opened.Incidents[0].Incident.ID)
	if inc != opened.Incidents[0].Incident || len(events) != 1 {
		t.Errorf("incident after retention = %+v with %d events, want unchanged with 1 event", inc, len(events))
	}
	if got := mustCursor(t, s, Spool, protocol.LaneGPS); got != 9 {
		t.Errorf("GPS cursor after retention = %d, want 9", got)
	}

	// The removed fixes do not come back when their batch is resent.
	if res := mustCommit(t, s, gps); res.Duplicates != len(gps.Records) || len(res.Fixes) != 0 {
		t.Errorf("resent batch after retention: duplicates %d, fixes %d, want %d and 0", res.Duplicates, len(res.Fixes), len(gps.Records))
	}
	if got := mustFixes(t, s, "veh-2"); len(got) != 0 {
		t.Errorf("veh-2 has %d fixes after the resend, want 0", len(got))
	}

	// Nothing is left to remove.
	if n, err := s.DeleteFixesBefore(ctx(t), cutoff); err != nil || n != 0 {
		t.Errorf("second DeleteFixesBefore = %d, %v, want 0", n, err)
	}
	// New old fixes are stored, then removed by the next run.
	mustCommit(t, s, NewBatch(FixRecord(10, "veh-2", cutoff.AddDate(0, 0, -2), 10.3, 123.9)))
	if got := mustFixes(t, s, "veh-2"); len(got) != 1 {
		t.Errorf("veh-2 has %d fixes after a new old fix, want 1", len(got))
	}
	if n, err := s.DeleteFixesBefore(ctx(t), cutoff); err != nil || (n != 1 && n != store.CountUnknown) {
		t.Errorf("third DeleteFixesBefore = %d, %v, want 1", n, err)
	}
	if got := mustFixes(t, s, "veh-2"); len(got) != 0 {
		t.Errorf("veh-2 has %d fixes after the third run, want 0", len(got))
	}
}

func testRetentionEmpty(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	if n, err := s.DeleteFixesBefore(ctx(t), Epoch); err != nil || n != 0 {
		t.Errorf("DeleteFixesBefore on an empty store = %d, %v, want 0", n, err)
	}
	mustCommit(t, s, FixBatch(1, 3, "veh-1"))
	if n, err := s.DeleteFixesBefore(ctx(t), time.Time{}); err != nil || n != 0 {
		t.Errorf("DeleteFixesBefore(zero time) = %d, %v, want 0", n, err)
	}
	if got := len(mustFixes(t, s, "veh-1")); got != 3 {
		t.Errorf("%d fixes after retention at the zero time, want 3", got)
	}
}

// snapshot is everything a store returns through its read methods.
type snapshot struct {
	Fixes     map[string][]store.StoredFix
	Positions []store.Position
	Incidents []store.Incident
	Events    map[int64][]store.IncidentEvent
	Cursors   map[protocol.Lane]uint64
}

func takeSnapshot(t *testing.T, s store.Store, vehicles []string) snapshot {
	t.Helper()
	snap := snapshot{
		Fixes:     map[string][]store.StoredFix{},
		Positions: mustPositions(t, s),
		Incidents: mustIncidents(t, s, store.IncidentFilter{}),
		Events:    map[int64][]store.IncidentEvent{},
		Cursors:   map[protocol.Lane]uint64{},
	}
	for _, v := range vehicles {
		snap.Fixes[v] = mustFixes(t, s, v)
	}
	for _, inc := range snap.Incidents {
		_, snap.Events[inc.ID] = mustIncident(t, s, inc.ID)
	}
	for _, lane := range protocol.Lanes {
		snap.Cursors[lane] = mustCursor(t, s, Spool, lane)
	}
	return snap
}

func testRestart(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	open := f(t, clock.Now)
	s := open()

	gps := FixBatch(1, 20, "veh-1")
	gps.Records = append(gps.Records, FixRecord(21, "veh-2", Epoch.Add(-time.Minute), 10.3, 123.9))
	gps.Records[3].Historical = true
	speed := 42.0
	gps.Records[20].Fix.SpeedKmh = &speed
	mustCommit(t, s, gps)
	mustCommit(t, s, NewBatch(StatusRecord(1, "veh-1", true, Epoch)))
	sos := NewBatch(
		SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-time.Minute)),
		SOSRecord(2, "veh-1", "sos-1", Epoch.Add(-50*time.Second)),
		CancelRecord(3, "veh-1", "sos-1", "false alarm", Epoch.Add(-40*time.Second)),
		SOSRecord(4, "veh-2", "sos-9", Epoch.Add(-30*time.Second)),
	)
	opened := mustCommit(t, s, sos)
	// veh-2's incident goes through the lifecycle, so its assignee,
	// lifecycle times and events must survive the restart too.
	clock.Set(Epoch.Add(time.Second / 2))
	veh2 := opened.Incidents[3].Incident.ID
	for _, a := range []store.Action{store.ActionAcknowledge, store.ActionAssign, store.ActionDispatch, store.ActionNote} {
		mustAct(t, s, veh2, a)
	}
	vehicles := []string{"veh-1", "veh-2"}
	before := takeSnapshot(t, s, vehicles)
	if len(before.Fixes["veh-1"]) != 20 || len(before.Incidents) != 2 || before.Cursors[protocol.LaneSOS] != 4 {
		t.Fatalf("before the restart: %d veh-1 fixes, %d incidents, SOS cursor %d, want 20, 2, 4",
			len(before.Fixes["veh-1"]), len(before.Incidents), before.Cursors[protocol.LaneSOS])
	}
	for _, inc := range before.Incidents {
		if inc.ID == veh2 && (inc.State != store.StateDispatched || inc.AssignedTo != "bob" ||
			!inc.AcknowledgedAt.Equal(Epoch.Add(time.Second/2)) || !inc.DispatchedAt.Equal(Epoch.Add(time.Second/2)) || len(before.Events[veh2]) != 5) {
			t.Fatalf("before the restart: veh-2's incident %+v with %d events, want dispatched, assigned to bob, with 5 events", inc, len(before.Events[veh2]))
		}
	}
	mustClose(t, s)

	clock.Set(Epoch.Add(time.Second))
	s = open()
	if after := takeSnapshot(t, s, vehicles); !reflect.DeepEqual(after, before) {
		t.Errorf("after the restart the store returns\n%+v\nwant\n%+v", after, before)
	}

	// Resent batches are still skipped.
	if res := mustCommit(t, s, gps); res.Duplicates != len(gps.Records) || len(res.Fixes) != 0 || res.Through != 21 {
		t.Errorf("resent GPS batch: duplicates %d, fixes %d, through %d, want %d, 0, 21", res.Duplicates, len(res.Fixes), res.Through, len(gps.Records))
	}
	if res := mustCommit(t, s, sos); res.Duplicates != 4 || len(res.Incidents) != 0 {
		t.Errorf("resent SOS batch: duplicates %d, incident changes %d, want 4 and 0", res.Duplicates, len(res.Incidents))
	}
	if n := len(mustFixes(t, s, "veh-1")); n != 20 {
		t.Errorf("%d veh-1 fixes after the resend, want 20", n)
	}

	// SOS ids stay mapped, the repeat window still finds the open
	// incident, and new incidents get new ids.
	first := opened.Incidents[0].Incident.ID
	res := mustCommit(t, s, NewBatch(
		SOSRecord(5, "veh-1", "sos-1", Epoch),
		SOSRecord(6, "veh-1", "sos-2", Epoch),
		SOSRecord(7, "veh-3", "sos-3", Epoch),
	))
	if len(res.Incidents) != 3 {
		t.Fatalf("%d incident changes after the restart, want 3", len(res.Incidents))
	}
	if c := res.Incidents[0]; c.Opened || c.Incident.ID != first || c.Incident.Presses != 3 {
		t.Errorf("sos-1 after the restart: opened=%v incident=%d presses=%d, want attached to %d with 3 presses", c.Opened, c.Incident.ID, c.Incident.Presses, first)
	}
	if c := res.Incidents[1]; c.Opened || c.Incident.ID != first || c.Incident.Presses != 4 {
		t.Errorf("sos-2 within the window after the restart: opened=%v incident=%d presses=%d, want attached to %d with 4 presses", c.Opened, c.Incident.ID, c.Incident.Presses, first)
	}
	maxID := int64(0)
	for _, inc := range before.Incidents {
		maxID = max(maxID, inc.ID)
	}
	if c := res.Incidents[2]; !c.Opened || c.Incident.ID <= maxID {
		t.Errorf("new SOS after the restart: opened=%v incident=%d, want a new incident with an id after %d", c.Opened, c.Incident.ID, maxID)
	}
	maxEvent := int64(0)
	for _, events := range before.Events {
		for _, ev := range events {
			maxEvent = max(maxEvent, ev.ID)
		}
	}
	for _, c := range res.Incidents {
		if c.Event.ID <= maxEvent {
			t.Errorf("event %d after the restart reuses an id at or below %d", c.Event.ID, maxEvent)
		}
	}

	// New records go on from the cursor.
	more := FixBatch(22, 2, "veh-1")
	if res := mustCommit(t, s, more); res.Duplicates != 0 || len(res.Fixes) != 2 || res.Through != 23 {
		t.Errorf("next GPS batch: duplicates %d, fixes %d, through %d, want 0, 2, 23", res.Duplicates, len(res.Fixes), res.Through)
	}

	// A second restart keeps what the first reopened store wrote.
	want := takeSnapshot(t, s, append(vehicles, "veh-3"))
	mustClose(t, s)
	s = open()
	if got := takeSnapshot(t, s, append(vehicles, "veh-3")); !reflect.DeepEqual(got, want) {
		t.Errorf("after the second restart the store returns\n%+v\nwant\n%+v", got, want)
	}
}
