package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// operatorCases cover the incident lifecycle methods: which state allows
// which action, what each action changes and records, input rules, the
// new list filters, and how closing an incident changes the SOS attach
// rules.
var operatorCases = []testCase{
	{"ActionsAllowedAndRefusedByState", testActionsByState},
	{"ActionEventsAndTimestamps", testActionEvents},
	{"CancelPathSetsOnlyCancelledAt", testCancelPath},
	{"DriverCancelNeedsOperatorConfirm", testDriverCancelConfirm},
	{"AssignAndReassign", testAssign},
	{"ActionInputValidation", testActionValidation},
	{"ActionOnMissingIncident", testActionNotFound},
	{"ConcurrentAcknowledgeOneWins", testConcurrentAcknowledge},
	{"ClosedIncidentTakesNoNewPress", testClosedIncidentNoAttach},
	{"ReusedSOSIDAfterCloseOpensIncident", testReusedSOSIDAfterClose},
	{"CloseRacingNewPress", testCloseRacingPress},
	{"IncidentsFilterAssignedTimeOffset", testIncidentsFilterLifecycle},
}

// Operator is the actor of the suite's lifecycle calls.
const Operator = "operator:alice"

// Act calls the lifecycle method of s for action a. text is the
// action's argument and is ignored for acknowledge.
func Act(ctx context.Context, s store.Store, id int64, a store.Action, actor, text string) (store.IncidentChange, error) {
	switch a {
	case store.ActionAcknowledge:
		return s.AcknowledgeIncident(ctx, id, actor)
	case store.ActionAssign:
		return s.AssignIncident(ctx, id, actor, text)
	case store.ActionDispatch:
		return s.DispatchIncident(ctx, id, actor, text)
	case store.ActionNote:
		return s.AddIncidentNote(ctx, id, actor, text)
	case store.ActionResolve:
		return s.ResolveIncident(ctx, id, actor, text)
	case store.ActionCancel:
		return s.CancelIncident(ctx, id, actor, text)
	}
	return store.IncidentChange{}, fmt.Errorf("unknown action %q", a)
}

// actionText is a valid argument of each action.
var actionText = map[store.Action]string{
	store.ActionAcknowledge: "",
	store.ActionAssign:      "bob",
	store.ActionDispatch:    "ambulance A-12 from PGH",
	store.ActionNote:        "called the driver, no answer",
	store.ActionResolve:     "driver safe at the hospital",
	store.ActionCancel:      "driver confirmed a false alarm by phone",
}

func mustAct(t *testing.T, s store.Store, id int64, a store.Action) store.IncidentChange {
	t.Helper()
	change, err := Act(ctx(t), s, id, a, Operator, actionText[a])
	if err != nil {
		t.Fatalf("%s incident %d: %v", a, id, err)
	}
	return change
}

// openIncidents commits one SOS for each of n vehicles, with sequence
// numbers from first on, and returns the incident ids in vehicle order.
func openIncidents(t *testing.T, s store.Store, first uint64, n int, at time.Time) []int64 {
	t.Helper()
	records := make([]protocol.Record, n)
	for i := range records {
		records[i] = SOSRecord(first+uint64(i), fmt.Sprintf("veh-op-%03d", first+uint64(i)), fmt.Sprintf("sos-op-%d", i), at)
	}
	res := mustCommit(t, s, NewBatch(records...))
	if len(res.Incidents) != n {
		t.Fatalf("%d incident changes, want %d", len(res.Incidents), n)
	}
	ids := make([]int64, n)
	for i, c := range res.Incidents {
		if !c.Opened {
			t.Fatalf("SOS %d attached to incident %d, want a new incident", i, c.Incident.ID)
		}
		ids[i] = c.Incident.ID
	}
	return ids
}

// reachState moves an open incident to st with the actions an operator
// would take.
func reachState(t *testing.T, s store.Store, id int64, st store.IncidentState) {
	t.Helper()
	switch st {
	case store.StateOpen:
	case store.StateAcknowledged:
		mustAct(t, s, id, store.ActionAcknowledge)
	case store.StateDispatched:
		mustAct(t, s, id, store.ActionDispatch)
	case store.StateResolved:
		mustAct(t, s, id, store.ActionResolve)
	case store.StateCancelled:
		mustAct(t, s, id, store.ActionCancel)
	default:
		t.Fatalf("unknown state %s", st)
	}
}

func testActionsByState(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	states := []store.IncidentState{store.StateOpen, store.StateAcknowledged, store.StateDispatched, store.StateResolved, store.StateCancelled}
	actions := []store.Action{store.ActionAcknowledge, store.ActionAssign, store.ActionDispatch, store.ActionNote, store.ActionResolve, store.ActionCancel}
	// The state after each allowed action, by starting state; a missing
	// action is refused in that state.
	want := map[store.IncidentState]map[store.Action]store.IncidentState{
		store.StateOpen: {
			store.ActionAcknowledge: store.StateAcknowledged, store.ActionAssign: store.StateOpen,
			store.ActionDispatch: store.StateDispatched, store.ActionNote: store.StateOpen,
			store.ActionResolve: store.StateResolved, store.ActionCancel: store.StateCancelled,
		},
		store.StateAcknowledged: {
			store.ActionAssign: store.StateAcknowledged, store.ActionDispatch: store.StateDispatched,
			store.ActionNote: store.StateAcknowledged, store.ActionResolve: store.StateResolved,
			store.ActionCancel: store.StateCancelled,
		},
		store.StateDispatched: {
			store.ActionAssign: store.StateDispatched, store.ActionNote: store.StateDispatched,
			store.ActionResolve: store.StateResolved, store.ActionCancel: store.StateCancelled,
		},
		store.StateResolved:  {store.ActionNote: store.StateResolved},
		store.StateCancelled: {store.ActionNote: store.StateCancelled},
	}

	ids := openIncidents(t, s, 1, len(states)*len(actions), Epoch.Add(-time.Minute))
	clock.Set(Epoch.Add(time.Minute))
	for i, st := range states {
		for j := range actions {
			reachState(t, s, ids[i*len(actions)+j], st)
		}
	}
	clock.Set(Epoch.Add(2 * time.Minute))

	for i, st := range states {
		for j, a := range actions {
			id := ids[i*len(actions)+j]
			before, eventsBefore := mustIncident(t, s, id)
			if before.State != st {
				t.Fatalf("incident %d is %s, want %s before %s", id, before.State, st, a)
			}
			change, err := Act(ctx(t), s, id, a, Operator, actionText[a])
			after, eventsAfter := mustIncident(t, s, id)

			next, allowed := want[st][a]
			if !allowed {
				var stateErr *store.StateError
				if !errors.Is(err, store.ErrConflict) || !errors.As(err, &stateErr) {
					t.Errorf("%s on a %s incident: error %v, want a *store.StateError wrapping store.ErrConflict", a, st, err)
					continue
				}
				if stateErr.State != st || stateErr.Action != a || stateErr.IncidentID != id {
					t.Errorf("%s on a %s incident: StateError %+v, want incident %d, state %s, action %s", a, st, stateErr, id, st, a)
				}
				if !strings.Contains(err.Error(), string(st)) {
					t.Errorf("%s on a %s incident: message %q does not name the state", a, st, err)
				}
				if after != before || len(eventsAfter) != len(eventsBefore) {
					t.Errorf("%s on a %s incident changed it: %+v with %d events, want %+v with %d", a, st, after, len(eventsAfter), before, len(eventsBefore))
				}
				continue
			}

			if err != nil {
				t.Errorf("%s on a %s incident: %v, want it allowed", a, st, err)
				continue
			}
			if change.Incident.State != next {
				t.Errorf("%s on a %s incident: state %s, want %s", a, st, change.Incident.State, next)
			}
			if change.Opened {
				t.Errorf("%s on a %s incident: Opened = true", a, st)
			}
			if after != change.Incident {
				t.Errorf("%s on a %s incident: stored %+v differs from the result %+v", a, st, after, change.Incident)
			}
			if len(eventsAfter) != len(eventsBefore)+1 || eventsAfter[len(eventsAfter)-1] != change.Event {
				t.Errorf("%s on a %s incident: events %+v, want the old ones and then %+v", a, st, eventsAfter, change.Event)
			}
		}
	}
}

func testActionEvents(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	id := openIncidents(t, s, 1, 1, Epoch)[0]
	opened, _ := mustIncident(t, s, id)
	for _, at := range []time.Time{opened.AcknowledgedAt, opened.DispatchedAt, opened.ResolvedAt, opened.CancelledAt} {
		if !at.IsZero() {
			t.Errorf("new incident has a lifecycle time %s, want all zero", at)
		}
	}
	if opened.AssignedTo != "" {
		t.Errorf("new incident assigned to %q, want nobody", opened.AssignedTo)
	}

	steps := []struct {
		action     store.Action
		text       string
		eventType  string
		detail     string
		state      store.IncidentState
		assignedTo string
	}{
		{store.ActionAcknowledge, "", store.EventAcknowledged, "", store.StateAcknowledged, ""},
		{store.ActionAssign, "  bob ", store.EventAssigned, "assigned to bob", store.StateAcknowledged, "bob"},
		{store.ActionDispatch, "ambulance A-12\nfrom PGH ", store.EventDispatched, "ambulance A-12\nfrom PGH", store.StateDispatched, "bob"},
		{store.ActionNote, "\tpolice on scene", store.EventNote, "police on scene", store.StateDispatched, "bob"},
		{store.ActionResolve, "driver safe", store.EventResolved, "driver safe", store.StateResolved, "bob"},
		{store.ActionNote, "follow-up call done", store.EventNote, "follow-up call done", store.StateResolved, "bob"},
	}
	var changes []store.IncidentChange
	for i, step := range steps {
		at := Epoch.Add(time.Duration(i+1) * time.Minute)
		clock.Set(at)
		change, err := Act(ctx(t), s, id, step.action, Operator, step.text)
		if err != nil {
			t.Fatalf("step %d, %s: %v", i, step.action, err)
		}
		changes = append(changes, change)
		inc, ev := change.Incident, change.Event
		if inc.State != step.state || inc.AssignedTo != step.assignedTo {
			t.Errorf("after %s: state %s, assigned to %q, want %s and %q", step.action, inc.State, inc.AssignedTo, step.state, step.assignedTo)
		}
		if !inc.UpdatedAt.Equal(at) || !inc.OpenedAt.Equal(Epoch) {
			t.Errorf("after %s: opened, updated at %s, %s, want %s, %s", step.action, inc.OpenedAt, inc.UpdatedAt, Epoch, at)
		}
		if ev.Type != step.eventType || ev.Actor != Operator || ev.Detail != step.detail || !ev.At.Equal(at) || ev.IncidentID != id {
			t.Errorf("%s event = %+v, want type %s by %s at %s with detail %q", step.action, ev, step.eventType, Operator, at, step.detail)
		}
		if i > 0 && ev.ID <= changes[i-1].Event.ID {
			t.Errorf("%s event id %d is not after the previous event's id %d", step.action, ev.ID, changes[i-1].Event.ID)
		}
	}

	final, events := mustIncident(t, s, id)
	times := map[string][2]time.Time{
		"AcknowledgedAt": {final.AcknowledgedAt, Epoch.Add(time.Minute)},
		"DispatchedAt":   {final.DispatchedAt, Epoch.Add(3 * time.Minute)},
		"ResolvedAt":     {final.ResolvedAt, Epoch.Add(5 * time.Minute)},
		"CancelledAt":    {final.CancelledAt, {}},
		"UpdatedAt":      {final.UpdatedAt, Epoch.Add(6 * time.Minute)},
	}
	for name, got := range times {
		if !got[0].Equal(got[1]) {
			t.Errorf("%s = %s, want %s", name, got[0], got[1])
		}
	}
	if final != changes[len(changes)-1].Incident {
		t.Errorf("stored incident %+v differs from the last result %+v", final, changes[len(changes)-1].Incident)
	}
	if len(events) != len(steps)+1 || events[0].Type != store.EventOpened {
		t.Fatalf("events = %v, want opened and one per step", eventTypes(events))
	}
	for i, c := range changes {
		if events[i+1] != c.Event {
			t.Errorf("stored event %d = %+v, want %+v", i+1, events[i+1], c.Event)
		}
	}
	// Presses, note and location are the SOS's and stay.
	if final.Presses != 1 || final.Note != opened.Note || final.Lat != opened.Lat || final.Kind != opened.Kind {
		t.Errorf("lifecycle changed SOS fields: %+v, was %+v", final, opened)
	}
}

func testCancelPath(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	ids := openIncidents(t, s, 1, 2, Epoch)

	clock.Set(Epoch.Add(time.Minute))
	cancelled := mustAct(t, s, ids[0], store.ActionCancel).Incident
	if cancelled.State != store.StateCancelled || !cancelled.CancelledAt.Equal(Epoch.Add(time.Minute)) {
		t.Errorf("cancelled incident: state %s, cancelled at %s, want cancelled at %s", cancelled.State, cancelled.CancelledAt, Epoch.Add(time.Minute))
	}
	if !cancelled.AcknowledgedAt.IsZero() || !cancelled.DispatchedAt.IsZero() || !cancelled.ResolvedAt.IsZero() {
		t.Errorf("incident cancelled from open has other lifecycle times: %+v", cancelled)
	}

	// Dispatch straight from open sets only DispatchedAt.
	dispatched := mustAct(t, s, ids[1], store.ActionDispatch).Incident
	if !dispatched.AcknowledgedAt.IsZero() || !dispatched.DispatchedAt.Equal(Epoch.Add(time.Minute)) {
		t.Errorf("incident dispatched from open: acknowledged at %s, dispatched at %s, want zero and %s", dispatched.AcknowledgedAt, dispatched.DispatchedAt, Epoch.Add(time.Minute))
	}
	clock.Set(Epoch.Add(2 * time.Minute))
	later := mustAct(t, s, ids[1], store.ActionCancel)
	if !later.Incident.DispatchedAt.Equal(Epoch.Add(time.Minute)) || !later.Incident.CancelledAt.Equal(Epoch.Add(2*time.Minute)) {
		t.Errorf("dispatched, then cancelled: %+v, want dispatch time kept and cancel time set", later.Incident)
	}
	if later.Event.Type != store.EventCancelled || later.Event.Detail != actionText[store.ActionCancel] {
		t.Errorf("cancel event = %+v, want type cancelled with the reason", later.Event)
	}
}

func testDriverCancelConfirm(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	opened := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch)))
	id := opened.Incidents[0].Incident.ID
	requested := mustCommit(t, s, NewBatch(CancelRecord(2, "veh-1", "sos-1", "all fine", Epoch)))
	if inc := requested.Incidents[0].Incident; inc.State != store.StateOpen || !inc.CancelRequested {
		t.Fatalf("after the driver's cancel: state %s, cancel requested %v, want open and true", inc.State, inc.CancelRequested)
	}

	// An acknowledged incident keeps the request too; an operator confirms it.
	mustAct(t, s, id, store.ActionAcknowledge)
	clock.Set(Epoch.Add(time.Minute))
	change, err := s.CancelIncident(ctx(t), id, "operator:carol", "called the driver: safe, pressed by mistake")
	if err != nil {
		t.Fatalf("CancelIncident: %v", err)
	}
	if change.Incident.State != store.StateCancelled || !change.Incident.CancelRequested {
		t.Errorf("confirmed cancel: state %s, cancel requested %v, want cancelled and true", change.Incident.State, change.Incident.CancelRequested)
	}
	_, events := mustIncident(t, s, id)
	want := []string{store.EventOpened, store.EventCancelRequested, store.EventAcknowledged, store.EventCancelled}
	if got := eventTypes(events); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("events = %v, want %v", got, want)
	}
	if last := events[len(events)-1]; last.Actor != "operator:carol" || last.Detail != "called the driver: safe, pressed by mistake" {
		t.Errorf("cancelled event = %+v, want carol's reason", last)
	}
}

func testAssign(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	id := openIncidents(t, s, 1, 1, Epoch)[0]

	first, err := s.AssignIncident(ctx(t), id, Operator, "alice")
	if err != nil {
		t.Fatalf("assign to alice: %v", err)
	}
	if first.Incident.AssignedTo != "alice" || first.Incident.State != store.StateOpen || first.Event.Detail != "assigned to alice" {
		t.Errorf("assign to alice: assigned to %q, state %s, detail %q", first.Incident.AssignedTo, first.Incident.State, first.Event.Detail)
	}
	second, err := s.AssignIncident(ctx(t), id, "operator:carol", "José Rizal")
	if err != nil {
		t.Fatalf("reassign: %v", err)
	}
	if second.Incident.AssignedTo != "José Rizal" || second.Event.Detail != "assigned to José Rizal, was alice" || second.Event.Actor != "operator:carol" {
		t.Errorf("reassign: assigned to %q, event %+v", second.Incident.AssignedTo, second.Event)
	}
	again, err := s.AssignIncident(ctx(t), id, "operator:carol", "José Rizal")
	if err != nil || again.Event.Detail != "assigned to José Rizal" {
		t.Errorf("assign to the same operator again: %+v, %v, want a recorded assignment", again.Event, err)
	}

	for _, bad := range []string{"", "   ", strings.Repeat("n", store.MaxOperatorName+1), "two\nlines", "tab\there", "nul\x00", "\xff\xfe"} {
		if _, err := s.AssignIncident(ctx(t), id, Operator, bad); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("assign to %q: error %v, want store.ErrInvalid", bad, err)
		}
	}
	if _, err := s.AssignIncident(ctx(t), id, Operator, strings.Repeat("ñ", store.MaxOperatorName)); err != nil {
		t.Errorf("assign to a name of %d two-byte characters: %v", store.MaxOperatorName, err)
	}

	mustAct(t, s, id, store.ActionResolve)
	if inc, _ := mustIncident(t, s, id); inc.AssignedTo != strings.Repeat("ñ", store.MaxOperatorName) {
		t.Errorf("resolving changed the assignee to %q", inc.AssignedTo)
	}
}

func testActionValidation(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	id := openIncidents(t, s, 1, 1, Epoch)[0]
	_, before := mustIncident(t, s, id)

	invalid := []string{
		"",
		" \t\n ",
		strings.Repeat("x", store.MaxActionText+1),
		strings.Repeat("é", store.MaxActionText/2) + "x", // one byte over in two-byte characters
		"bad \xff byte",
		"nul \x00 inside",
		"bell \a inside",
		"escape \x1b[31m inside",
	}
	for _, a := range []store.Action{store.ActionDispatch, store.ActionNote, store.ActionResolve, store.ActionCancel} {
		for _, text := range invalid {
			if _, err := Act(ctx(t), s, id, a, Operator, text); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("%s with text %.40q: error %v, want store.ErrInvalid", a, text, err)
			}
		}
	}
	for _, actor := range []string{"", " operator:alice", "operator:\nalice", "operator:\x00", strings.Repeat("a", store.MaxActor+1), "\xff"} {
		for _, a := range store.Actions {
			if _, err := Act(ctx(t), s, id, a, actor, actionText[a]); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("%s by actor %.40q: error %v, want store.ErrInvalid", a, actor, err)
			}
		}
	}
	if inc, after := mustIncident(t, s, id); len(after) != len(before) || inc.State != store.StateOpen {
		t.Fatalf("rejected calls changed the incident: state %s, events %v", inc.State, eventTypes(after))
	}

	// The longest text, multi-line text and any language are stored as sent, trimmed.
	for _, text := range []string{
		strings.Repeat("x", store.MaxActionText),
		strings.Repeat("é", store.MaxActionText/2),
		"line one\r\nline two\twith a tab",
		"Tinawagan ang drayber; ligtas siya. 🚑",
	} {
		change, err := s.AddIncidentNote(ctx(t), id, Operator, "  "+text+"\n")
		if err != nil {
			t.Errorf("note of %d bytes: %v", len(text), err)
			continue
		}
		if change.Event.Detail != text || change.Event.Type != store.EventNote {
			t.Errorf("note event = %.60q (%s), want %.60q", change.Event.Detail, change.Event.Type, text)
		}
	}
	_, events := mustIncident(t, s, id)
	if got := events[len(events)-1].Detail; got != "Tinawagan ang drayber; ligtas siya. 🚑" {
		t.Errorf("stored note = %q", got)
	}
}

func testActionNotFound(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	existing := openIncidents(t, s, 1, 1, Epoch)[0]
	for _, id := range []int64{existing + 1, 424242, 0, -1} {
		for _, a := range store.Actions {
			if _, err := Act(ctx(t), s, id, a, Operator, actionText[a]); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("%s incident %d: error %v, want store.ErrNotFound", a, id, err)
			}
		}
	}
}

func testConcurrentAcknowledge(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	id := openIncidents(t, s, 1, 1, Epoch)[0]

	const operators = 6
	errs := make([]error, operators)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = s.AcknowledgeIncident(ctx(t), id, fmt.Sprintf("operator:op%d", i))
		})
	}
	wg.Wait()

	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, store.ErrConflict):
			t.Errorf("operator %d: error %v, want nil or store.ErrConflict", i, err)
		}
	}
	if won != 1 {
		t.Errorf("%d of %d concurrent acknowledgements succeeded, want exactly 1", won, operators)
	}
	_, events := mustIncident(t, s, id)
	acks := 0
	for _, ev := range events {
		if ev.Type == store.EventAcknowledged {
			acks++
		}
	}
	if acks != 1 {
		t.Errorf("%d acknowledged events, want 1", acks)
	}
}

func testClosedIncidentNoAttach(t *testing.T, f Factory) {
	for i, closing := range []store.Action{store.ActionResolve, store.ActionCancel} {
		s := newStore(t, f, NewClock(Epoch).Now)
		vehicle := fmt.Sprintf("veh-%d", i)
		first := mustCommit(t, s, NewBatch(SOSRecord(1, vehicle, "sos-1", Epoch.Add(-time.Minute))))
		id := first.Incidents[0].Incident.ID

		// Acknowledged and dispatched incidents still take repeat presses.
		mustAct(t, s, id, store.ActionAcknowledge)
		ack := mustCommit(t, s, NewBatch(SOSRecord(2, vehicle, "sos-2", Epoch.Add(-50*time.Second))))
		mustAct(t, s, id, store.ActionDispatch)
		disp := mustCommit(t, s, NewBatch(SOSRecord(3, vehicle, "sos-3", Epoch.Add(-40*time.Second))))
		for name, res := range map[string]store.CommitResult{"acknowledged": ack, "dispatched": disp} {
			if c := res.Incidents[0]; c.Opened || c.Incident.ID != id {
				t.Errorf("new SOS id within the window of a %s incident: opened=%v incident=%d, want attached to %d", name, c.Opened, c.Incident.ID, id)
			}
		}

		mustAct(t, s, id, closing)
		closed, closedEvents := mustIncident(t, s, id)
		next := mustCommit(t, s, NewBatch(SOSRecord(4, vehicle, "sos-4", Epoch.Add(-30*time.Second))))
		if c := next.Incidents[0]; !c.Opened || c.Incident.ID == id {
			t.Errorf("new SOS id within the window of a %s incident: opened=%v incident=%d, want a new incident", closed.State, c.Opened, c.Incident.ID)
		}
		if inc, events := mustIncident(t, s, id); inc.Presses != closed.Presses || len(events) != len(closedEvents) {
			t.Errorf("%s incident took a press: presses %d, %d events, want %d, %d", closed.State, inc.Presses, len(events), closed.Presses, len(closedEvents))
		}
		// A press after that attaches to the new incident, not the closed one.
		after := mustCommit(t, s, NewBatch(SOSRecord(5, vehicle, "sos-5", Epoch.Add(-20*time.Second))))
		if c := after.Incidents[0]; c.Opened || c.Incident.ID != next.Incidents[0].Incident.ID {
			t.Errorf("press after the new incident opened: opened=%v incident=%d, want attached to %d", c.Opened, c.Incident.ID, next.Incidents[0].Incident.ID)
		}

		// A resent SOS id received before the close stays with its incident.
		again := mustCommit(t, s, NewBatch(SOSRecord(6, vehicle, "sos-1", Epoch)))
		if c := again.Incidents[0]; c.Opened || c.Incident.ID != id || c.Incident.State != closed.State {
			t.Errorf("resent SOS id of a %s incident: opened=%v incident=%d state %s, want it on %d, still %s", closed.State, c.Opened, c.Incident.ID, c.Incident.State, id, closed.State)
		}
		// The same id received after the close is a new press: it joins the
		// active incident instead of disappearing into the closed one.
		later := mustCommit(t, s, NewBatch(SOSRecord(7, vehicle, "sos-1", Epoch.Add(time.Minute))))
		if c := later.Incidents[0]; c.Incident.ID != next.Incidents[0].Incident.ID || !c.Incident.State.Active() {
			t.Errorf("SOS id of a %s incident pressed after the close: incident %d (%s), want the active incident %d",
				closed.State, c.Incident.ID, c.Incident.State, next.Incidents[0].Incident.ID)
		}
	}
}

// A device that reuses an SOS id after its incident was closed, with no
// other incident active, opens a new incident: the new emergency alerts
// operators instead of counting as a press on the closed one.
func testReusedSOSIDAfterClose(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	first := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-time.Minute))))
	id := first.Incidents[0].Incident.ID
	mustAct(t, s, id, store.ActionResolve)

	clock.Set(Epoch.Add(time.Hour))
	reused := mustCommit(t, s, NewBatch(SOSRecord(2, "veh-1", "sos-1", Epoch.Add(time.Hour))))
	c := reused.Incidents[0]
	if !c.Opened || c.Incident.ID == id {
		t.Fatalf("reused SOS id an hour after the resolve: opened=%v incident=%d, want a new incident", c.Opened, c.Incident.ID)
	}
	if c.Incident.SOSID != "sos-1" || c.Incident.State != store.StateOpen {
		t.Errorf("new incident = %s %s, want sos-1 open", c.Incident.SOSID, c.Incident.State)
	}
	// The id now belongs to the new incident: its next press attaches there.
	repeat := mustCommit(t, s, NewBatch(SOSRecord(3, "veh-1", "sos-1", Epoch.Add(time.Hour+time.Second))))
	if rc := repeat.Incidents[0]; rc.Opened || rc.Incident.ID != c.Incident.ID || rc.Incident.Presses != 2 {
		t.Errorf("repeat of the reused id: opened=%v incident=%d presses %d, want on %d with 2 presses",
			rc.Opened, rc.Incident.ID, rc.Incident.Presses, c.Incident.ID)
	}
	if old, _ := mustIncident(t, s, id); old.Presses != 1 || old.State != store.StateResolved {
		t.Errorf("the resolved incident changed: presses %d, state %s", old.Presses, old.State)
	}
}

// testCloseRacingPress resolves incidents while new SOS ids of their
// vehicles commit. Whichever comes first, a press never attaches to an
// incident after it was resolved.
func testCloseRacingPress(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	const rounds = 8
	ids := openIncidents(t, s, 1, rounds, Epoch.Add(-time.Minute))
	for i, id := range ids {
		inc, _ := mustIncident(t, s, id)
		var wg sync.WaitGroup
		var resolveErr, commitErr error
		var res store.CommitResult
		wg.Go(func() { _, resolveErr = s.ResolveIncident(ctx(t), id, Operator, "handled") })
		wg.Go(func() {
			res, commitErr = s.CommitBatch(ctx(t), NewBatch(SOSRecord(uint64(rounds+1+i), inc.VehicleID, "race", Epoch)))
		})
		wg.Wait()
		if resolveErr != nil || commitErr != nil {
			t.Fatalf("round %d: resolve %v, commit %v", i, resolveErr, commitErr)
		}

		_, events := mustIncident(t, s, id)
		resolvedAt := -1
		for j, ev := range events {
			switch {
			case ev.Type == store.EventResolved:
				resolvedAt = j
			case ev.Type == store.EventRepeatPress && resolvedAt >= 0:
				t.Errorf("round %d: a press attached to incident %d after it was resolved: %v", i, id, eventTypes(events))
			}
		}
		attached := !res.Incidents[0].Opened
		if attached && res.Incidents[0].Incident.ID != id {
			t.Errorf("round %d: press attached to incident %d, want %d or a new one", i, res.Incidents[0].Incident.ID, id)
		}
		if want := 2; attached && len(events) != want+1 {
			t.Errorf("round %d: events %v, want opened, repeat_press, resolved", i, eventTypes(events))
		}
	}
}

func testIncidentsFilterLifecycle(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	// Six incidents opened a minute apart by the hub clock.
	var ids []int64
	for i := range 6 {
		clock.Set(Epoch.Add(time.Duration(i) * time.Minute))
		ids = append(ids, openIncidents(t, s, uint64(i+1), 1, Epoch)[0])
	}
	if _, err := s.AssignIncident(ctx(t), ids[1], Operator, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AssignIncident(ctx(t), ids[4], Operator, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AssignIncident(ctx(t), ids[2], Operator, "bob"); err != nil {
		t.Fatal(err)
	}
	mustAct(t, s, ids[4], store.ActionResolve)

	listed := func(f store.IncidentFilter) []int64 {
		t.Helper()
		var out []int64
		for _, inc := range mustIncidents(t, s, f) {
			out = append(out, inc.ID)
		}
		return out
	}
	check := func(name string, f store.IncidentFilter, want ...int64) {
		t.Helper()
		if got := listed(f); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: incidents %v, want %v", name, got, want)
		}
	}
	check("assigned to alice", store.IncidentFilter{AssignedTo: "alice"}, ids[4], ids[1])
	check("assigned to al, a prefix", store.IncidentFilter{AssignedTo: "al"})
	check("alice's active", store.IncidentFilter{AssignedTo: "alice", States: []store.IncidentState{store.StateOpen}}, ids[1])
	check("resolved", store.IncidentFilter{States: []store.IncidentState{store.StateResolved}}, ids[4])
	check("since minute 2", store.IncidentFilter{Since: Epoch.Add(2 * time.Minute)}, ids[5], ids[4], ids[3], ids[2])
	check("until minute 2", store.IncidentFilter{Until: Epoch.Add(2 * time.Minute)}, ids[1], ids[0])
	check("minutes 1 to 4", store.IncidentFilter{Since: Epoch.Add(time.Minute), Until: Epoch.Add(4 * time.Minute)}, ids[3], ids[2], ids[1])
	check("since 1 µs after minute 1", store.IncidentFilter{Since: Epoch.Add(time.Minute + time.Microsecond), Until: Epoch.Add(4 * time.Minute)}, ids[3], ids[2])
	check("empty range", store.IncidentFilter{Since: Epoch.Add(3 * time.Minute), Until: Epoch.Add(3 * time.Minute)})
	check("before every incident", store.IncidentFilter{Until: Epoch})
	check("after every incident", store.IncidentFilter{Since: Epoch.Add(time.Hour)})
	check("range and assignee", store.IncidentFilter{Since: Epoch.Add(2 * time.Minute), AssignedTo: "alice"}, ids[4])

	// Pages of two cover every incident once, newest first.
	var paged []int64
	for offset := 0; ; offset += 2 {
		page := listed(store.IncidentFilter{Offset: offset, Limit: 2})
		paged = append(paged, page...)
		if len(page) < 2 {
			break
		}
	}
	if want := []int64{ids[5], ids[4], ids[3], ids[2], ids[1], ids[0]}; fmt.Sprint(paged) != fmt.Sprint(want) {
		t.Errorf("pages of 2 = %v, want %v", paged, want)
	}
	check("offset within a filter", store.IncidentFilter{Since: Epoch.Add(time.Minute), Offset: 1, Limit: 2}, ids[4], ids[3])
	check("offset past the end", store.IncidentFilter{Offset: 6})
	check("negative offset", store.IncidentFilter{Offset: -3, Limit: 1}, ids[5])
}
