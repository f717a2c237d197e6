package storetest

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// agentCases cover the records an agent writes about an SOS during a hub
// outage (local acknowledgements and notifications it sent) and the
// redelivery of a press already counted.
var agentCases = []testCase{
	{"LocalAckAcknowledgesOpenIncident", testLocalAckOpen},
	{"LocalAckAfterOpenAddsNote", testLocalAckNote},
	{"AgentRecordsUnmatchedOrInvalid", testAgentRecordsSkipped},
	{"AgentNotifiedRecordsNotification", testAgentNotified},
	{"AgentNotifiedFailureKeepsHubSending", testAgentNotifiedFailure},
	{"AgentRecordResendIsSkipped", testAgentRecordResend},
	{"RedeliveredSOSIsNotAPress", testRedelivered},
	{"RedeliveryAfterCloseOpensNothing", testRedeliveredAfterClose},
}

// AckRecord returns a local acknowledgement of the vehicle's SOS sosID by
// actor at at, received by the agent at the same time.
func AckRecord(seq uint64, vehicle, sosID, actor string, at time.Time) protocol.Record {
	return protocol.Record{
		Seq:        seq,
		Kind:       protocol.KindSOSAck,
		VehicleID:  vehicle,
		ReceivedAt: at,
		Ack:        &protocol.LocalAck{SOSID: sosID, Actor: actor, At: at},
	}
}

// NotifiedRecord returns the agent's report that it sent a notification
// about the vehicle's SOS sosID at at, or failed to when errText is set.
func NotifiedRecord(seq uint64, vehicle, sosID string, ch store.Channel, address, providerID, errText string, at time.Time) protocol.Record {
	return protocol.Record{
		Seq:        seq,
		Kind:       protocol.KindSOSNotified,
		VehicleID:  vehicle,
		ReceivedAt: at,
		Notified: &protocol.AgentNotified{
			SOSID: sosID, Channel: string(ch), Address: address, ProviderID: providerID, At: at, Error: errText,
		},
	}
}

// agentActor is the actor of the suite agent's notification events.
const agentActor = "agent:" + Agent

func testLocalAckOpen(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	first := openOneIncident(t, s, 1, "veh-1", "sos-1")

	clock.Set(Epoch.Add(10 * time.Minute))
	res := mustCommit(t, s, NewBatch(AckRecord(2, "veh-1", "sos-1", "Maria Santos", Epoch.Add(2*time.Minute))))
	if len(res.Incidents) != 1 || res.Unmatched != 0 {
		t.Fatalf("changes %+v, unmatched %d, want one change", res.Incidents, res.Unmatched)
	}
	change := res.Incidents[0]
	inc := change.Incident
	if inc.ID != first.ID || change.Opened {
		t.Errorf("acknowledgement changed incident %d (opened %v), want %d", inc.ID, change.Opened, first.ID)
	}
	if inc.State != store.StateAcknowledged || !inc.AcknowledgedAt.Equal(Epoch.Add(2*time.Minute)) {
		t.Errorf("state %s acknowledged at %s, want acknowledged at the agent's time %s", inc.State, inc.AcknowledgedAt, Epoch.Add(2*time.Minute))
	}
	if !inc.UpdatedAt.Equal(Epoch.Add(10 * time.Minute)) {
		t.Errorf("updated at %s, want the hub clock %s", inc.UpdatedAt, Epoch.Add(10*time.Minute))
	}
	ev := change.Event
	if ev.Type != store.EventAcknowledged || ev.Actor != "Maria Santos (at agent "+Agent+")" {
		t.Errorf("event %+v, want acknowledged by %q", ev, "Maria Santos (at agent "+Agent+")")
	}
	if !strings.Contains(ev.Detail, Agent) || !strings.Contains(ev.Detail, "2026-03-10T02:02:00Z") || !ev.At.Equal(Epoch.Add(10*time.Minute)) {
		t.Errorf("event detail %q at %s, want the agent and the local time, at the hub clock", ev.Detail, ev.At)
	}
	stored, events := mustIncident(t, s, inc.ID)
	if stored != inc || events[len(events)-1] != ev {
		t.Errorf("stored incident %+v with last event %+v, want %+v and %+v", stored, events[len(events)-1], inc, ev)
	}
	_, err := s.AcknowledgeIncident(ctx(t), inc.ID, Operator)
	wantConflict(t, "operator acknowledge after the local one", err)

	// An agent clock behind the press is clamped to the agent's receipt
	// of the SOS, so time to acknowledge never goes negative.
	second := openOneIncident(t, s, 3, "veh-2", "sos-2")
	res = mustCommit(t, s, NewBatch(AckRecord(4, "veh-2", "sos-2", "Jo", second.ReceivedAt.Add(-time.Hour))))
	if got := res.Incidents[0].Incident; !got.AcknowledgedAt.Equal(second.ReceivedAt) {
		t.Errorf("acknowledged before the receipt: AcknowledgedAt %s, want the receipt %s", got.AcknowledgedAt, second.ReceivedAt)
	}
	// An agent clock ahead of the hub is clamped to the hub's clock.
	openOneIncident(t, s, 5, "veh-3", "sos-3")
	res = mustCommit(t, s, NewBatch(AckRecord(6, "veh-3", "sos-3", "Jo", Epoch.Add(5*time.Hour))))
	if got := res.Incidents[0].Incident; !got.AcknowledgedAt.Equal(Epoch.Add(10 * time.Minute)) {
		t.Errorf("acknowledged in the future: AcknowledgedAt %s, want the hub clock %s", got.AcknowledgedAt, Epoch.Add(10*time.Minute))
	}

	// The staff name is cleaned and capped; an empty one is named.
	openOneIncident(t, s, 7, "veh-4", "sos-4")
	openOneIncident(t, s, 8, "veh-5", "sos-5")
	res = mustCommit(t, s, NewBatch(
		AckRecord(9, "veh-4", "sos-4", "  Ana\x00\n\xffReyes "+strings.Repeat("x", 300), Epoch),
		AckRecord(10, "veh-5", "sos-5", " ", Epoch),
	))
	if len(res.Incidents) != 2 {
		t.Fatalf("%d changes, want 2", len(res.Incidents))
	}
	actor := res.Incidents[0].Event.Actor
	if !strings.HasPrefix(actor, "Ana") || strings.ContainsAny(actor, "\x00\n") || len(actor) > store.MaxActor+len(" (at agent "+Agent+")") {
		t.Errorf("cleaned actor %q (%d bytes), want a cleaned name of at most %d bytes and the agent", actor, len(actor), store.MaxActor)
	}
	if got, want := res.Incidents[1].Event.Actor, "unnamed staff (at agent "+Agent+")"; got != want {
		t.Errorf("actor of an unnamed acknowledgement = %q, want %q", got, want)
	}
}

func testLocalAckNote(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	acked := mustAct(t, s, inc.ID, store.ActionAcknowledge)
	other := openOneIncident(t, s, 2, "veh-2", "sos-2")
	mustAct(t, s, other.ID, store.ActionResolve)

	clock.Set(Epoch.Add(time.Minute))
	res := mustCommit(t, s, NewBatch(
		AckRecord(3, "veh-1", "sos-1", "Maria Santos", Epoch.Add(30*time.Second)),
		AckRecord(4, "veh-2", "sos-2", "Jo", Epoch.Add(30*time.Second)),
	))
	if len(res.Incidents) != 2 {
		t.Fatalf("%d changes, want 2", len(res.Incidents))
	}
	for i, want := range []store.IncidentState{store.StateAcknowledged, store.StateResolved} {
		c := res.Incidents[i]
		if c.Incident.State != want || c.Event.Type != store.EventNote {
			t.Errorf("change %d: state %s event %s, want %s and a note", i, c.Incident.State, c.Event.Type, want)
		}
		for _, part := range []string{"also acknowledged", Agent, "2026-03-10T02:00:30Z"} {
			if !strings.Contains(c.Event.Detail, part) {
				t.Errorf("change %d: note %q does not mention %q", i, c.Event.Detail, part)
			}
		}
	}
	got := res.Incidents[0]
	if !got.Incident.AcknowledgedAt.Equal(acked.Incident.AcknowledgedAt) {
		t.Errorf("AcknowledgedAt moved from %s to %s", acked.Incident.AcknowledgedAt, got.Incident.AcknowledgedAt)
	}
	if !strings.Contains(got.Event.Detail, "Maria Santos") || !strings.Contains(got.Event.Actor, "Maria Santos") {
		t.Errorf("note %+v does not name who acknowledged", got.Event)
	}
	if !got.Incident.UpdatedAt.Equal(Epoch.Add(time.Minute)) {
		t.Errorf("updated at %s, want %s", got.Incident.UpdatedAt, Epoch.Add(time.Minute))
	}
}

func testAgentRecordsSkipped(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	res := mustCommit(t, s, NewBatch(
		AckRecord(2, "veh-1", "sos-unknown", "Jo", Epoch),
		NotifiedRecord(3, "veh-1", "sos-unknown", store.ChannelSMS, phoneAna, "SM-1", "", Epoch),
		// veh-1's SOS id under another vehicle matches nothing.
		AckRecord(4, "veh-2", "sos-1", "Jo", Epoch),
		CancelRecord(5, "veh-1", "sos-unknown", "", Epoch),
		NotifiedRecord(6, "veh-1", "sos-1", "pager", phoneAna, "P-1", "", Epoch),
		NotifiedRecord(7, "veh-1", "sos-1", store.ChannelSMS, "0917 123 4567", "SM-2", "", Epoch),
		NotifiedRecord(8, "veh-1", "sos-1", store.ChannelEmail, "", "", "", Epoch),
		AckRecord(9, "veh-1", "sos-1", "Jo", Epoch),
	))
	if res.Unmatched != 4 {
		t.Errorf("Unmatched = %d, want 4 (two agent records, one of another vehicle, one cancel)", res.Unmatched)
	}
	if res.Invalid != 3 {
		t.Errorf("Invalid = %d, want 3 (an unknown channel, a phone not in E.164, an empty address)", res.Invalid)
	}
	if res.Through != 9 {
		t.Errorf("Through = %d, want 9: skipped records must not block the SOS lane", res.Through)
	}
	if len(res.Incidents) != 1 || res.Incidents[0].Incident.State != store.StateAcknowledged {
		t.Errorf("changes = %+v, want only the valid acknowledgement", res.Incidents)
	}
	if list := mustNotifications(t, s, inc.ID); len(list) != 0 {
		t.Errorf("skipped records stored notifications %+v", list)
	}
	if all := mustIncidents(t, s, store.IncidentFilter{}); len(all) != 1 {
		t.Errorf("%d incidents, want 1", len(all))
	}
}

func testAgentNotified(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")

	// Nothing queued yet: the agent's notification is inserted as sent.
	clock.Set(Epoch.Add(time.Minute))
	res := mustCommit(t, s, NewBatch(NotifiedRecord(2, "veh-1", "sos-1", store.ChannelSMS, phoneAna, "SM-agent", "", Epoch.Add(10*time.Second))))
	if len(res.Incidents) != 1 {
		t.Fatalf("%d changes, want 1", len(res.Incidents))
	}
	ev := res.Incidents[0].Event
	if ev.Type != store.EventNotification || ev.Actor != agentActor {
		t.Errorf("event %+v, want a notification event by %s", ev, agentActor)
	}
	for _, part := range []string{"sms", phoneAna, "sent by agent " + Agent, "SM-agent", "2026-03-10T02:00:10Z"} {
		if !strings.Contains(ev.Detail, part) {
			t.Errorf("event detail %q does not mention %q", ev.Detail, part)
		}
	}
	list := mustNotifications(t, s, inc.ID)
	if len(list) != 1 {
		t.Fatalf("%d notifications, want 1", len(list))
	}
	n := list[0]
	if n.State != store.NotificationSent || n.SentBy != Agent || n.ProviderID != "SM-agent" || n.Attempts != 1 ||
		n.Reason != store.ReasonAgent || n.Language != store.LangEnglish || !n.NextAttemptAt.IsZero() {
		t.Errorf("agent's notification = %+v, want sent by %s as SM-agent, 1 attempt, reason %s", n, Agent, store.ReasonAgent)
	}
	if !n.CreatedAt.Equal(Epoch.Add(time.Minute)) {
		t.Errorf("created at %s, want the hub clock %s", n.CreatedAt, Epoch.Add(time.Minute))
	}

	// The dispatcher's escalation skips it: the hub never sends it again.
	_, queued := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{
		SMS(phoneAna, "opened"), SMS(phoneBen, "opened"), {Channel: store.ChannelVoice, Address: phoneCarla, Reason: "opened"},
	}})
	if len(queued) != 2 || queued[0].Address != phoneBen {
		t.Fatalf("queued %+v, want the SMS to %s and the call, not the SMS the agent sent", queued, phoneBen)
	}
	if due := mustDue(t, s, Epoch.Add(time.Hour), 0); !reflect.DeepEqual(notificationIDs(due), notificationIDs(queued)) {
		t.Errorf("due = %v, want %v", notificationIDs(due), notificationIDs(queued))
	}

	// A pending one the agent sent becomes sent by the agent.
	ben, carla := queued[0], queued[1]
	mustClaim(t, s, carla.ID, Epoch.Add(time.Minute), Epoch.Add(2*time.Minute))
	mustRecord(t, s, carla.ID, store.AttemptOutcome{State: store.NotificationSent, ProviderID: "CA-hub"})
	res = mustCommit(t, s, NewBatch(
		NotifiedRecord(3, "veh-1", "sos-1", store.ChannelSMS, phoneBen, "SM-agent-ben", "", Epoch.Add(20*time.Second)),
		NotifiedRecord(4, "veh-1", "sos-1", store.ChannelVoice, phoneCarla, "CA-agent", "", Epoch.Add(20*time.Second)),
	))
	if len(res.Incidents) != 2 {
		t.Fatalf("%d changes, want 2", len(res.Incidents))
	}
	list = mustNotifications(t, s, inc.ID)
	byID := map[int64]store.Notification{}
	for _, n := range list {
		byID[n.ID] = n
	}
	if got := byID[ben.ID]; got.State != store.NotificationSent || got.SentBy != Agent || got.ProviderID != "SM-agent-ben" ||
		!got.NextAttemptAt.IsZero() || got.Attempts != 1 || got.Reason != "opened" {
		t.Errorf("pending SMS after the agent sent it = %+v, want sent by %s as SM-agent-ben, reason kept", got, Agent)
	}
	if !strings.Contains(res.Incidents[0].Event.Detail, "sent by agent") {
		t.Errorf("event detail %q, want it to say the agent sent it", res.Incidents[0].Event.Detail)
	}
	_, _, err := s.ClaimNotification(ctx(t), ben.ID, Epoch.Add(time.Hour), Epoch.Add(2*time.Hour))
	wantConflict(t, "claim of a notification the agent sent", err)

	// One the hub had sent only gets the event.
	if got := byID[carla.ID]; got.State != store.NotificationSent || got.SentBy != store.SentByHub || got.ProviderID != "CA-hub" {
		t.Errorf("hub's call after the agent's report = %+v, want it unchanged, sent by the hub as CA-hub", got)
	}
	if d := res.Incidents[1].Event.Detail; !strings.Contains(d, "also sent by agent "+Agent) {
		t.Errorf("event detail %q, want %q", d, "also sent by agent "+Agent)
	}
	if due := mustDue(t, s, Epoch.Add(time.Hour), 0); len(due) != 0 {
		t.Errorf("due = %v, want none", notificationIDs(due))
	}

	// Status callbacks find the agent's messages by their provider id.
	if got, _, err := s.UpdateDeliveryStatus(ctx(t), "SM-agent", "delivered", ""); err != nil || got.State != store.NotificationDelivered || got.Address != phoneAna {
		t.Errorf("status of the agent's SMS = %+v, %v, want delivered", got, err)
	}
}

func testAgentNotifiedFailure(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	_, queued := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{SMS(phoneBen, "opened")}})
	ben := queued[0]

	clock.Set(Epoch.Add(time.Minute))
	res := mustCommit(t, s, NewBatch(
		// The agent failed where the hub still has a pending notification.
		NotifiedRecord(2, "veh-1", "sos-1", store.ChannelSMS, phoneBen, "", "modem has no signal", Epoch.Add(10*time.Second)),
		// The agent failed where the hub has none.
		NotifiedRecord(3, "veh-1", "sos-1", store.ChannelEmail, emailAna, "", "SMTP 421 try again later", Epoch.Add(10*time.Second)),
	))
	if len(res.Incidents) != 2 {
		t.Fatalf("%d changes, want 2", len(res.Incidents))
	}
	for i, part := range []string{"modem has no signal", "SMTP 421"} {
		if d := res.Incidents[i].Event.Detail; !strings.Contains(d, "could not send") || !strings.Contains(d, part) {
			t.Errorf("event %d detail %q, want the agent's failure %q", i, d, part)
		}
	}
	list := mustNotifications(t, s, inc.ID)
	if len(list) != 2 {
		t.Fatalf("%d notifications, want 2", len(list))
	}
	if got := list[0]; got.ID != ben.ID || got != ben {
		t.Errorf("hub's pending SMS after the agent's failure = %+v, want it unchanged %+v", got, ben)
	}
	email := list[1]
	if email.State != store.NotificationFailed || email.SentBy != Agent || email.LastError != "SMTP 421 try again later" || email.Attempts != 1 {
		t.Errorf("agent's failed email = %+v, want failed by %s with its error", email, Agent)
	}

	// A later escalation queues what the agent could not send.
	change, requeued := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 2, Notifications: []store.Notification{
		{Channel: store.ChannelEmail, Address: emailAna, Reason: "escalation:supervisors", ContactID: 3},
	}})
	if len(requeued) != 1 || requeued[0].ID != email.ID {
		t.Fatalf("escalation queued %+v, want notification %d again", requeued, email.ID)
	}
	got := requeued[0]
	if got.State != store.NotificationPending || got.SentBy != "" || got.Reason != "escalation:supervisors" || got.ContactID != 3 ||
		!got.NextAttemptAt.Equal(Epoch.Add(time.Minute)) || got.Attempts != 1 {
		t.Errorf("queued again = %+v, want pending now with the new reason and contact, attempts kept", got)
	}
	if change.Incident.EscalationLevel != 2 {
		t.Errorf("level = %d, want 2", change.Incident.EscalationLevel)
	}
	_, events := mustIncident(t, s, inc.ID)
	if last := events[len(events)-1]; last.Type != store.EventNotification || !strings.Contains(last.Detail, "again") || !strings.Contains(last.Detail, "SMTP 421") {
		t.Errorf("last event %+v, want the email queued again with the agent's error", last)
	}
	if due := mustDue(t, s, Epoch.Add(time.Minute), 0); len(due) != 2 {
		t.Errorf("due = %v, want the pending SMS and the email queued again", notificationIDs(due))
	}
	// A failure of the hub's own attempts is final: no escalation revives it.
	mustClaim(t, s, ben.ID, Epoch.Add(time.Minute), Epoch.Add(2*time.Minute))
	mustRecord(t, s, ben.ID, store.AttemptOutcome{State: store.NotificationFailed, Error: "21610: recipient replied STOP"})
	_, again := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 3, Notifications: []store.Notification{SMS(phoneBen, "escalation:supervisors")}})
	if len(again) != 0 {
		t.Errorf("escalation queued %+v again after the hub's own permanent failure, want nothing", again)
	}
}

func testAgentRecordResend(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	b := NewBatch(
		SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-time.Minute)),
		AckRecord(2, "veh-1", "sos-1", "Maria", Epoch),
		NotifiedRecord(3, "veh-1", "sos-1", store.ChannelSMS, phoneAna, "SM-1", "", Epoch),
	)
	res := mustCommit(t, s, b)
	if len(res.Incidents) != 3 {
		t.Fatalf("%d changes, want 3", len(res.Incidents))
	}
	id := res.Incidents[0].Incident.ID
	before, events := mustIncident(t, s, id)
	notifications := mustNotifications(t, s, id)

	clock.Set(Epoch.Add(time.Minute))
	again := mustCommit(t, s, b)
	if again.Duplicates != 3 || len(again.Incidents) != 0 || again.Unmatched != 0 || again.Through != 3 {
		t.Errorf("resent batch: duplicates %d, changes %d, unmatched %d, through %d, want 3, 0, 0, 3",
			again.Duplicates, len(again.Incidents), again.Unmatched, again.Through)
	}
	after, afterEvents := mustIncident(t, s, id)
	if after != before || !reflect.DeepEqual(afterEvents, events) {
		t.Errorf("resent batch changed the incident or its %d events", len(events))
	}
	if got := mustNotifications(t, s, id); !reflect.DeepEqual(got, notifications) {
		t.Errorf("resent batch changed notifications: %+v, want %+v", got, notifications)
	}
}

func testRedelivered(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	pressed := Epoch.Add(-time.Minute)
	first := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", pressed)))
	id := first.Incidents[0].Incident.ID

	// The agent stored the device's resend of the same message twice: same
	// SOS id and press time, received later.
	clock.Set(Epoch.Add(time.Second))
	copyRec := SOSRecord(2, "veh-1", "sos-1", pressed)
	copyRec.ReceivedAt = pressed.Add(3 * time.Second)
	res := mustCommit(t, s, NewBatch(copyRec))
	if len(res.Incidents) != 1 {
		t.Fatalf("%d changes, want 1", len(res.Incidents))
	}
	c := res.Incidents[0]
	if c.Opened || c.Incident.ID != id || c.Incident.Presses != 1 {
		t.Errorf("redelivery: opened %v incident %d presses %d, want incident %d with 1 press", c.Opened, c.Incident.ID, c.Incident.Presses, id)
	}
	if c.Event.Type != store.EventRedelivered || c.Event.Actor != "vehicle:veh-1" || !strings.Contains(c.Event.Detail, "sos-1") {
		t.Errorf("redelivery event %+v, want %s by vehicle:veh-1 naming sos-1", c.Event, store.EventRedelivered)
	}
	if !c.Incident.UpdatedAt.Equal(Epoch.Add(time.Second)) {
		t.Errorf("updated at %s, want %s", c.Incident.UpdatedAt, Epoch.Add(time.Second))
	}

	// A new press time with the same id is a repeat press; its own redelivery is not.
	second := SOSRecord(3, "veh-1", "sos-1", pressed.Add(20*time.Second))
	secondCopy := SOSRecord(4, "veh-1", "sos-1", pressed.Add(20*time.Second))
	// A new SOS id attached within the window, then redelivered in the same batch.
	third := SOSRecord(5, "veh-1", "sos-2", pressed.Add(40*time.Second))
	thirdCopy := SOSRecord(6, "veh-1", "sos-2", pressed.Add(40*time.Second))
	res = mustCommit(t, s, NewBatch(second, secondCopy, third, thirdCopy))
	wantTypes := []string{store.EventRepeatPress, store.EventRedelivered, store.EventRepeatPress, store.EventRedelivered}
	wantPresses := []int{2, 2, 3, 3}
	if len(res.Incidents) != 4 {
		t.Fatalf("%d changes, want 4", len(res.Incidents))
	}
	for i, c := range res.Incidents {
		if c.Incident.ID != id || c.Event.Type != wantTypes[i] || c.Incident.Presses != wantPresses[i] {
			t.Errorf("change %d: incident %d event %s presses %d, want %d, %s, %d", i, c.Incident.ID, c.Event.Type, c.Incident.Presses, id, wantTypes[i], wantPresses[i])
		}
	}
	// Two copies in one batch count once.
	both := mustCommit(t, s, NewBatch(SOSRecord(7, "veh-2", "sos-9", Epoch), SOSRecord(8, "veh-2", "sos-9", Epoch)))
	if len(both.Incidents) != 2 || !both.Incidents[0].Opened || both.Incidents[1].Event.Type != store.EventRedelivered || both.Incidents[1].Incident.Presses != 1 {
		t.Errorf("two copies in one batch: %+v, want opened, then redelivered with 1 press", both.Incidents)
	}
	// The same id and press time from another vehicle is another emergency.
	other := mustCommit(t, s, NewBatch(SOSRecord(9, "veh-3", "sos-1", pressed)))
	if !other.Incidents[0].Opened {
		t.Error("another vehicle's SOS with the same id and time did not open an incident")
	}

	inc, events := mustIncident(t, s, id)
	if inc.Presses != 3 {
		t.Errorf("presses = %d, want 3", inc.Presses)
	}
	redelivered := 0
	for _, ev := range events {
		if ev.Type == store.EventRedelivered {
			redelivered++
		}
	}
	if redelivered != 3 {
		t.Errorf("%d redelivered events, want 3", redelivered)
	}
}

func testRedeliveredAfterClose(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	pressed := Epoch.Add(-time.Minute)
	id := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", pressed))).Incidents[0].Incident.ID
	mustAct(t, s, id, store.ActionResolve)

	// The copy arrives after the resolve, from a device that kept it.
	clock.Set(Epoch.Add(time.Hour))
	late := SOSRecord(2, "veh-1", "sos-1", pressed)
	late.ReceivedAt = Epoch.Add(time.Hour)
	res := mustCommit(t, s, NewBatch(late))
	if len(res.Incidents) != 1 || res.Incidents[0].Opened || res.Incidents[0].Incident.ID != id {
		t.Fatalf("late copy: %+v, want a change of incident %d without opening one", res.Incidents, id)
	}
	if c := res.Incidents[0]; c.Event.Type != store.EventRedelivered || c.Incident.State != store.StateResolved || c.Incident.Presses != 1 {
		t.Errorf("late copy: event %s state %s presses %d, want redelivered on the resolved incident with 1 press", c.Event.Type, c.Incident.State, c.Incident.Presses)
	}
	if all := mustIncidents(t, s, store.IncidentFilter{}); len(all) != 1 {
		t.Errorf("%d incidents, want 1", len(all))
	}

	// A new press with the reused id still opens a new incident.
	reused := mustCommit(t, s, NewBatch(SOSRecord(3, "veh-1", "sos-1", Epoch.Add(time.Hour))))
	if !reused.Incidents[0].Opened {
		t.Error("a new press of a reused id after the close did not open an incident")
	}
	_, err := s.AcknowledgeIncident(ctx(t), id, Operator)
	if !errors.Is(err, store.ErrConflict) {
		t.Errorf("acknowledge of the resolved incident: %v, want store.ErrConflict", err)
	}
}
