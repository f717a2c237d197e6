package storetest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// sosCases cover how CommitBatch turns SOS and cancel records into
// incidents.
var sosCases = []testCase{
	{"SOSOpensOneIncident", testSOSOpensIncident},
	{"SOSDefaultsAndFlags", testSOSDefaults},
	{"SameSOSIDAttaches", testSameSOSIDAttaches},
	{"SameSOSIDTwiceInOneBatch", testSameSOSIDInOneBatch},
	{"NewSOSIDWithinWindowAttaches", testNewSOSWithinWindow},
	{"RepeatPressKeepsItsDetails", testRepeatPressKeepsDetails},
	{"NewSOSIDAtWindowEdgesAttaches", testNewSOSAtWindowEdges},
	{"NewSOSIDAfterWindowOpensIncident", testNewSOSAfterWindow},
	{"NewSOSIDAttachesToNewestIncident", testNewSOSAttachesToNewest},
	{"CancelSetsCancelRequested", testCancel},
	{"CancelOfUnknownSOSIsSkipped", testCancelUnknown},
}

func testSOSOpensIncident(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
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
	if inc.Note != "driver pressed the button" {
		t.Errorf("note = %q, want the SOS note", inc.Note)
	}
	if inc.Presses != 1 {
		t.Errorf("presses = %d, want 1", inc.Presses)
	}
	if inc.CancelRequested || inc.Historical {
		t.Errorf("cancel requested, historical = %v, %v, want false, false", inc.CancelRequested, inc.Historical)
	}
	if !inc.HasLocation || inc.Lat != 14.5995 || inc.Lon != 120.9842 {
		t.Errorf("location = %v %v %v", inc.HasLocation, inc.Lat, inc.Lon)
	}
	if !inc.OpenedAt.Equal(Epoch) || !inc.UpdatedAt.Equal(Epoch) {
		t.Errorf("opened, updated at %s, %s, want the hub clock %s", inc.OpenedAt, inc.UpdatedAt, Epoch)
	}
	if !inc.ReceivedAt.Equal(rec.ReceivedAt) || !inc.PressedAt.Equal(rec.SOS.Time) {
		t.Errorf("received, pressed = %s, %s, want %s", inc.ReceivedAt, inc.PressedAt, rec.ReceivedAt)
	}
	if change.Event.Type != store.EventOpened || change.Event.Actor != "vehicle:veh-1" || change.Event.IncidentID != inc.ID {
		t.Errorf("event = %+v, want opened by vehicle:veh-1", change.Event)
	}
	if change.Event.ID == 0 || !change.Event.At.Equal(Epoch) {
		t.Errorf("event id, at = %d, %s, want a non-zero id at %s", change.Event.ID, change.Event.At, Epoch)
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
		t.Fatalf("incident changes = %+v, want one without location", res.Incidents)
	}
	stored, _ := mustIncident(t, s, res.Incidents[0].Incident.ID)
	if stored.HasLocation || stored.Lat != 0 || stored.Lon != 0 {
		t.Errorf("stored location = %v %v %v, want none", stored.HasLocation, stored.Lat, stored.Lon)
	}
}

func testSOSDefaults(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	rec := SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-time.Hour))
	rec.SOS.Kind = ""
	rec.SOS.Time = time.Time{}
	rec.SOS.IDAssigned = true
	rec.SOS.TimeError = "ts is more than 5m0s ahead"
	rec.Historical = true
	res := mustCommit(t, s, NewBatch(rec))

	inc := res.Incidents[0].Incident
	if inc.Kind != protocol.SOSPanic {
		t.Errorf("kind = %q, want panic for an SOS without a kind", inc.Kind)
	}
	if !inc.PressedAt.Equal(rec.ReceivedAt) {
		t.Errorf("pressed at %s, want the receive time %s for an SOS without a time", inc.PressedAt, rec.ReceivedAt)
	}
	if !inc.Historical {
		t.Error("Historical = false, want true for an SOS sent as catch-up data")
	}
	detail := res.Incidents[0].Event.Detail
	for _, want := range []string{"sos-1", "panic", "id assigned by the agent", "device time replaced by receive time: ts is more than 5m0s ahead"} {
		if !strings.Contains(detail, want) {
			t.Errorf("opened event detail %q does not mention %q", detail, want)
		}
	}
	stored, events := mustIncident(t, s, inc.ID)
	if stored != inc {
		t.Errorf("stored incident %+v differs from the commit result %+v", stored, inc)
	}
	if len(events) != 1 || events[0].Detail != detail {
		t.Errorf("stored events = %+v, want the opened event with detail %q", events, detail)
	}

	// A repeat press of a historical incident does not clear the flag.
	again := mustCommit(t, s, NewBatch(SOSRecord(2, "veh-1", "sos-1", Epoch)))
	if !again.Incidents[0].Incident.Historical {
		t.Error("a live repeat press cleared Historical")
	}
}

func testSameSOSIDAttaches(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	first := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-time.Hour))))
	// The same id an hour later is still the same emergency: the id decides, not the window.
	clock.Set(Epoch.Add(time.Minute))
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
	if !change.Incident.UpdatedAt.Equal(Epoch.Add(time.Minute)) || !change.Incident.OpenedAt.Equal(Epoch) {
		t.Errorf("opened, updated at %s, %s, want %s, %s", change.Incident.OpenedAt, change.Incident.UpdatedAt, Epoch, Epoch.Add(time.Minute))
	}
	if change.Event.Type != store.EventRepeatPress || change.Event.Actor != "vehicle:veh-1" {
		t.Errorf("event = %+v, want %s by vehicle:veh-1", change.Event, store.EventRepeatPress)
	}
	_, events := mustIncident(t, s, change.Incident.ID)
	if got := eventTypes(events); len(got) != 2 || got[0] != store.EventOpened || got[1] != store.EventRepeatPress {
		t.Errorf("events = %v, want [opened repeat_press]", got)
	}
	if len(events) == 2 && (events[1] != change.Event || events[0].ID >= events[1].ID) {
		t.Errorf("events = %+v, want the opened event, then %+v", events, change.Event)
	}
	if all := mustIncidents(t, s, store.IncidentFilter{}); len(all) != 1 {
		t.Errorf("%d incidents, want 1", len(all))
	}
}

func testSameSOSIDInOneBatch(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	res := mustCommit(t, s, NewBatch(
		SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-20*time.Second)),
		SOSRecord(2, "veh-1", "sos-1", Epoch.Add(-10*time.Second)),
		CancelRecord(3, "veh-1", "sos-1", "safe now", Epoch),
	))
	if len(res.Incidents) != 3 {
		t.Fatalf("%d incident changes, want 3 (opened, repeat press, cancel)", len(res.Incidents))
	}
	id := res.Incidents[0].Incident.ID
	wantTypes := []string{store.EventOpened, store.EventRepeatPress, store.EventCancelRequested}
	wantPresses := []int{1, 2, 2}
	for i, change := range res.Incidents {
		if change.Incident.ID != id {
			t.Errorf("change %d is of incident %d, want %d", i, change.Incident.ID, id)
		}
		if change.Event.Type != wantTypes[i] || change.Incident.Presses != wantPresses[i] {
			t.Errorf("change %d: event %s, presses %d, want %s and %d", i, change.Event.Type, change.Incident.Presses, wantTypes[i], wantPresses[i])
		}
		if change.Opened != (i == 0) {
			t.Errorf("change %d: Opened = %v", i, change.Opened)
		}
	}
	inc, events := mustIncident(t, s, id)
	if inc.Presses != 2 || !inc.CancelRequested {
		t.Errorf("stored presses, cancel requested = %d, %v, want 2, true", inc.Presses, inc.CancelRequested)
	}
	if got := eventTypes(events); strings.Join(got, " ") != strings.Join(wantTypes, " ") {
		t.Errorf("events = %v, want %v", got, wantTypes)
	}
}

func testNewSOSWithinWindow(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
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
	if change.Incident.SOSID != "sos-1" {
		t.Errorf("incident SOS id = %s, want the first id sos-1", change.Incident.SOSID)
	}
	if change.Event.Type != store.EventRepeatPress || !strings.Contains(change.Event.Detail, "sos-2") {
		t.Errorf("event = %+v, want a repeat press naming sos-2", change.Event)
	}

	// The attached id now maps to the incident: its redelivery attaches too.
	third := mustCommit(t, s, NewBatch(SOSRecord(3, "veh-1", "sos-2", Epoch.Add(time.Hour))))
	if third.Incidents[0].Incident.ID != first.Incidents[0].Incident.ID || third.Incidents[0].Incident.Presses != 3 {
		t.Errorf("redelivered attached id: incident %d presses %d, want %d and 3",
			third.Incidents[0].Incident.ID, third.Incidents[0].Incident.Presses, first.Incidents[0].Incident.ID)
	}

	// A cancel of the attached id reaches the incident.
	cancel := mustCommit(t, s, NewBatch(CancelRecord(4, "veh-1", "sos-2", "", Epoch.Add(time.Hour))))
	if len(cancel.Incidents) != 1 || cancel.Incidents[0].Incident.ID != first.Incidents[0].Incident.ID {
		t.Errorf("cancel of the attached id changed %+v, want incident %d", cancel.Incidents, first.Incidents[0].Incident.ID)
	}

	// Another vehicle's SOS never attaches.
	other := mustCommit(t, s, NewBatch(SOSRecord(5, "veh-2", "sos-3", Epoch.Add(-2*time.Minute))))
	if !other.Incidents[0].Opened {
		t.Error("another vehicle's SOS attached to veh-1's incident")
	}
	// Nor does another vehicle's SOS with an id that veh-1 used.
	sameID := mustCommit(t, s, NewBatch(SOSRecord(6, "veh-3", "sos-1", Epoch.Add(time.Hour))))
	if !sameID.Incidents[0].Opened {
		t.Error("veh-3's SOS with veh-1's SOS id attached to veh-1's incident")
	}
}

func testNewSOSAtWindowEdges(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	opened := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-10*time.Minute))))
	id := opened.Incidents[0].Incident.ID

	// Exactly RepeatWindow after the first SOS still attaches.
	late := mustCommit(t, s, NewBatch(SOSRecord(2, "veh-1", "sos-2", Epoch.Add(-10*time.Minute+store.RepeatWindow))))
	if late.Incidents[0].Opened || late.Incidents[0].Incident.ID != id {
		t.Errorf("SOS exactly %s after: opened=%v incident=%d, want attached to %d", store.RepeatWindow, late.Incidents[0].Opened, late.Incidents[0].Incident.ID, id)
	}

	// An SOS received before the first one, delivered late, attaches when
	// within the window, up to exactly RepeatWindow before.
	early := mustCommit(t, s, NewBatch(SOSRecord(3, "veh-1", "sos-3", Epoch.Add(-10*time.Minute-store.RepeatWindow))))
	if early.Incidents[0].Opened || early.Incidents[0].Incident.ID != id {
		t.Errorf("SOS exactly %s before: opened=%v incident=%d, want attached to %d", store.RepeatWindow, early.Incidents[0].Opened, early.Incidents[0].Incident.ID, id)
	}
	tooEarly := mustCommit(t, s, NewBatch(SOSRecord(4, "veh-1", "sos-4", Epoch.Add(-10*time.Minute-store.RepeatWindow-time.Second))))
	if !tooEarly.Incidents[0].Opened {
		t.Errorf("SOS %s before the first one attached to incident %d, want a new incident", store.RepeatWindow+time.Second, tooEarly.Incidents[0].Incident.ID)
	}
	if inc, _ := mustIncident(t, s, id); inc.Presses != 3 {
		t.Errorf("presses = %d, want 3", inc.Presses)
	}
}

func testNewSOSAfterWindow(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	first := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-5*time.Minute))))
	second := mustCommit(t, s, NewBatch(SOSRecord(2, "veh-1", "sos-2", Epoch.Add(-5*time.Minute+store.RepeatWindow+time.Second))))

	change := second.Incidents[0]
	if !change.Opened {
		t.Error("an SOS after the repeat window attached instead of opening an incident")
	}
	if change.Incident.ID <= first.Incidents[0].Incident.ID {
		t.Errorf("new incident id %d is not after the first incident's id %d", change.Incident.ID, first.Incidents[0].Incident.ID)
	}
	if all := mustIncidents(t, s, store.IncidentFilter{VehicleID: "veh-1"}); len(all) != 2 {
		t.Errorf("%d incidents, want 2", len(all))
	}
	if inc, _ := mustIncident(t, s, first.Incidents[0].Incident.ID); inc.Presses != 1 {
		t.Errorf("first incident presses = %d, want 1", inc.Presses)
	}
}

func testNewSOSAttachesToNewest(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	base := Epoch.Add(-10 * time.Minute)
	older := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", base)))
	newer := mustCommit(t, s, NewBatch(SOSRecord(2, "veh-1", "sos-2", base.Add(store.RepeatWindow+30*time.Second))))
	if !newer.Incidents[0].Opened {
		t.Fatal("second SOS outside the window did not open an incident")
	}

	// Within the window of both incidents: the one received last takes it.
	between := mustCommit(t, s, NewBatch(SOSRecord(3, "veh-1", "sos-3", base.Add(store.RepeatWindow/2+15*time.Second))))
	if got, want := between.Incidents[0].Incident.ID, newer.Incidents[0].Incident.ID; got != want {
		t.Errorf("SOS within the window of incidents %d and %d attached to %d, want the newest %d",
			older.Incidents[0].Incident.ID, want, got, want)
	}
}

func testCancel(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	opened := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-time.Minute))))
	clock.Set(Epoch.Add(time.Minute))
	res := mustCommit(t, s, NewBatch(CancelRecord(2, "veh-1", "sos-1", "pressed by mistake", Epoch)))

	if len(res.Incidents) != 1 {
		t.Fatalf("%d incident changes, want 1", len(res.Incidents))
	}
	change := res.Incidents[0]
	if change.Incident.ID != opened.Incidents[0].Incident.ID {
		t.Errorf("cancel changed incident %d, want %d", change.Incident.ID, opened.Incidents[0].Incident.ID)
	}
	if change.Opened {
		t.Error("a cancel reported Opened")
	}
	if !change.Incident.CancelRequested {
		t.Error("CancelRequested = false, want true")
	}
	if change.Incident.State != store.StateOpen {
		t.Errorf("state = %s, want open: an operator must confirm a cancel", change.Incident.State)
	}
	if change.Incident.Presses != 1 {
		t.Errorf("presses = %d, want 1: a cancel is no press", change.Incident.Presses)
	}
	if !change.Incident.UpdatedAt.Equal(Epoch.Add(time.Minute)) {
		t.Errorf("updated at %s, want %s", change.Incident.UpdatedAt, Epoch.Add(time.Minute))
	}
	if change.Event.Type != store.EventCancelRequested || change.Event.Actor != "vehicle:veh-1" {
		t.Errorf("event = %+v, want cancel_requested by vehicle:veh-1", change.Event)
	}
	if want := "driver cancelled SOS sos-1: pressed by mistake"; change.Event.Detail != want {
		t.Errorf("event detail = %q, want %q", change.Event.Detail, want)
	}
	inc, events := mustIncident(t, s, change.Incident.ID)
	if inc != change.Incident {
		t.Errorf("stored incident %+v differs from the commit result %+v", inc, change.Incident)
	}
	if got := eventTypes(events); len(got) != 2 || got[1] != store.EventCancelRequested {
		t.Errorf("events = %v, want [opened cancel_requested]", got)
	}

	// A cancel without a reason is recorded without a trailing colon.
	again := mustCommit(t, s, NewBatch(CancelRecord(3, "veh-1", "sos-1", "", Epoch)))
	if want := "driver cancelled SOS sos-1"; len(again.Incidents) != 1 || again.Incidents[0].Event.Detail != want {
		t.Errorf("second cancel changes = %+v, want one event with detail %q", again.Incidents, want)
	}
}

func testCancelUnknown(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	res := mustCommit(t, s, NewBatch(CancelRecord(1, "veh-1", "sos-unknown", "", Epoch)))
	if len(res.Incidents) != 0 {
		t.Errorf("cancel of an unknown SOS changed incidents: %+v", res.Incidents)
	}
	if res.Through != 1 {
		t.Errorf("Through = %d, want 1: the cancel must not block the lane", res.Through)
	}

	// A cancel names an SOS id of its own vehicle only.
	opened := mustCommit(t, s, NewBatch(SOSRecord(2, "veh-1", "sos-1", Epoch)))
	res = mustCommit(t, s, NewBatch(
		CancelRecord(3, "veh-2", "sos-1", "", Epoch),
		SOSRecord(4, "veh-2", "sos-2", Epoch),
	))
	if len(res.Incidents) != 1 || !res.Incidents[0].Opened || res.Incidents[0].Incident.VehicleID != "veh-2" {
		t.Errorf("changes = %+v, want only veh-2's new incident: the records after a skipped cancel still apply", res.Incidents)
	}
	if inc, _ := mustIncident(t, s, opened.Incidents[0].Incident.ID); inc.CancelRequested {
		t.Error("veh-2's cancel reached veh-1's incident")
	}
	if got := mustCursor(t, s, Spool, protocol.LaneSOS); got != 4 {
		t.Errorf("SOS cursor = %d, want 4", got)
	}
}

// A repeat press may carry what the first one lacked: a position, another
// kind, a note. None of it may be lost.
func testRepeatPressKeepsDetails(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	firstRec := SOSRecord(1, "veh-1", "rep-1", Epoch.Add(-time.Minute))
	firstRec.SOS.HasLocation, firstRec.SOS.Lat, firstRec.SOS.Lon = false, 0, 0
	firstRec.SOS.LocationError, firstRec.SOS.Note = "no position sent", ""
	first := mustCommit(t, s, NewBatch(firstRec))

	secondRec := SOSRecord(2, "veh-1", "rep-2", Epoch.Add(-30*time.Second))
	secondRec.SOS.Kind, secondRec.SOS.Lat, secondRec.SOS.Lon = protocol.SOSMedical, 14.55, 121.02
	secondRec.SOS.Note = "driver unconscious, white van plate ABC123"
	second := mustCommit(t, s, NewBatch(secondRec))

	inc := second.Incidents[0].Incident
	if inc.ID != first.Incidents[0].Incident.ID {
		t.Fatalf("second press opened incident %d, want it attached to %d", inc.ID, first.Incidents[0].Incident.ID)
	}
	if !inc.HasLocation || inc.Lat != 14.55 || inc.Lon != 121.02 {
		t.Errorf("incident position = %v (%v, %v), want the second press's (14.55, 121.02)", inc.HasLocation, inc.Lat, inc.Lon)
	}
	if !strings.Contains(inc.Note, "ABC123") {
		t.Errorf("incident note = %q, want the second press's note", inc.Note)
	}
	detail := second.Incidents[0].Event.Detail
	for _, want := range []string{"rep-2", "medical", "14.55000", "ABC123"} {
		if !strings.Contains(detail, want) {
			t.Errorf("repeat press event detail %q does not contain %q", detail, want)
		}
	}

	// A third press elsewhere keeps the first known position.
	thirdRec := SOSRecord(3, "veh-1", "rep-2", Epoch)
	thirdRec.SOS.Lat, thirdRec.SOS.Lon = 14.60, 121.10
	third := mustCommit(t, s, NewBatch(thirdRec))
	if got := third.Incidents[0].Incident; got.Lat != 14.55 || got.Lon != 121.02 {
		t.Errorf("position after a third press = (%v, %v), want the first known (14.55, 121.02)", got.Lat, got.Lon)
	}
	stored, _, err := s.Incident(context.Background(), inc.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stored.Note, "ABC123") || stored.Lat != 14.55 {
		t.Errorf("stored incident = %+v, want the note and position kept", stored)
	}
}
