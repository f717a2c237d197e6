package storetest

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
)

// dispatchCases cover the contact methods and the notification outbox:
// EscalateIncident, DueNotifications, ClaimNotification, RecordAttempt,
// UpdateDeliveryStatus and Notifications.
var dispatchCases = []testCase{
	{"ContactValidation", testContactValidation},
	{"ContactSaveReplaceDelete", testContactLifecycle},
	{"EscalateQueuesNotifications", testEscalateQueues},
	{"EscalateIsIdempotent", testEscalateIdempotent},
	{"EscalateConcurrentOneWins", testEscalateConcurrent},
	{"EscalateRules", testEscalateRules},
	{"EscalateOneNotificationPerKey", testEscalateOnePerKey},
	{"DueNotificationsOrderAndLimit", testDueNotifications},
	{"ClaimConflicts", testClaimConflicts},
	{"ClaimConcurrentOneWins", testClaimConcurrent},
	{"LeaseExpiryGivesUnknownOutcome", testLeaseExpiry},
	{"RecordAttemptTransitions", testRecordAttempt},
	{"DeliveryStatusTransitions", testDeliveryStatus},
	{"DeliveryStatusNeverBackwards", testDeliveryStatusFinal},
	{"NotificationsOfUnknownIncident", testNotificationsUnknownIncident},
	{"DispatchSurvivesRestart", testDispatchRestart},
	{"OperatorRetry", testOperatorRetry},
	{"NotificationByProvider", testNotificationByProvider},
}

// Phone numbers and addresses of the dispatch cases.
const (
	phoneAna   = "+639171234567"
	phoneBen   = "+639181234567"
	phoneCarla = "+639191234567"
	emailAna   = "ana@example.ph"
	webhookURL = "https://hooks.example.ph/services/T0/B0/secret-token"
)

// SMS returns a pending SMS notification to phone for reason.
func SMS(phone, reason string) store.Notification {
	return store.Notification{Channel: store.ChannelSMS, Address: phone, Reason: reason}
}

// openOneIncident commits one SOS of vehicle and returns its incident.
func openOneIncident(t *testing.T, s store.Store, seq uint64, vehicle, sosID string) store.Incident {
	t.Helper()
	res := mustCommit(t, s, NewBatch(SOSRecord(seq, vehicle, sosID, Epoch.Add(-time.Minute))))
	if len(res.Incidents) != 1 || !res.Incidents[0].Opened {
		t.Fatalf("SOS %s of %s: changes %+v, want one opened incident", sosID, vehicle, res.Incidents)
	}
	return res.Incidents[0].Incident
}

func mustEscalate(t *testing.T, s store.Store, e store.Escalation) (store.IncidentChange, []store.Notification) {
	t.Helper()
	change, queued, err := s.EscalateIncident(ctx(t), e)
	if err != nil {
		t.Fatalf("EscalateIncident(incident %d, level %d): %v", e.IncidentID, e.Level, err)
	}
	return change, queued
}

func mustNotifications(t *testing.T, s store.Store, incidentID int64) []store.Notification {
	t.Helper()
	list, err := s.Notifications(ctx(t), incidentID)
	if err != nil {
		t.Fatalf("Notifications(%d): %v", incidentID, err)
	}
	return list
}

func mustDue(t *testing.T, s store.Store, now time.Time, limit int) []store.Notification {
	t.Helper()
	due, err := s.DueNotifications(ctx(t), now, limit)
	if err != nil {
		t.Fatalf("DueNotifications(%s, %d): %v", now, limit, err)
	}
	return due
}

func mustClaim(t *testing.T, s store.Store, id int64, now, lease time.Time) (store.Notification, bool) {
	t.Helper()
	n, unknown, err := s.ClaimNotification(ctx(t), id, now, lease)
	if err != nil {
		t.Fatalf("ClaimNotification(%d, %s): %v", id, now, err)
	}
	return n, unknown
}

func mustRecord(t *testing.T, s store.Store, id int64, o store.AttemptOutcome) (store.Notification, store.IncidentChange) {
	t.Helper()
	n, change, err := s.RecordAttempt(ctx(t), id, o)
	if err != nil {
		t.Fatalf("RecordAttempt(%d, %s): %v", id, o.State, err)
	}
	return n, change
}

// queueOne escalates incident id to level 1 with one SMS to phone and
// returns the queued notification.
func queueOne(t *testing.T, s store.Store, id int64, phone string) store.Notification {
	t.Helper()
	_, queued := mustEscalate(t, s, store.Escalation{IncidentID: id, Level: 1, Notifications: []store.Notification{SMS(phone, "opened")}})
	if len(queued) != 1 {
		t.Fatalf("%d notifications queued, want 1", len(queued))
	}
	return queued[0]
}

// wantConflict checks that err is a *StateError wrapping ErrConflict.
func wantConflict(t *testing.T, what string, err error) {
	t.Helper()
	var se *store.StateError
	if !errors.Is(err, store.ErrConflict) || !errors.As(err, &se) {
		t.Errorf("%s: error %v, want a *store.StateError wrapping store.ErrConflict", what, err)
	}
}

func notificationIDs(list []store.Notification) []int64 {
	ids := make([]int64, len(list))
	for i, n := range list {
		ids[i] = n.ID
	}
	return ids
}

func testContactValidation(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	valid := []store.Contact{
		{Name: "Ana Reyes", Role: store.RoleResponder, Region: Region, Phone: phoneAna},
		{Name: "Ben Cruz", Role: store.RoleSupervisor, Region: "Cebu", Email: "ben.cruz@example.ph", Language: store.LangFilipino},
		{Name: "Carla", Role: store.RoleEmergency, VehicleID: "veh-1", Phone: phoneCarla, Email: "carla@example.com"},
		{Name: "Dong", Role: store.RoleDriver, VehicleID: "veh-1", Language: store.LangFilipino},
		{Name: strings.Repeat("é", store.MaxContactName/2), Role: store.RoleResponder, Region: Region, Email: emailAna},
	}
	for _, c := range valid {
		if err := store.ValidateContact(c); err != nil {
			t.Errorf("ValidateContact(%+v): %v, want valid", c, err)
		}
		if _, err := s.SaveContact(ctx(t), c); err != nil {
			t.Errorf("SaveContact(%+v): %v", c, err)
		}
	}

	base := store.Contact{Name: "Ana Reyes", Role: store.RoleResponder, Region: Region, Phone: phoneAna}
	invalid := []struct {
		name   string
		mutate func(c *store.Contact)
	}{
		{"empty name", func(c *store.Contact) { c.Name = "" }},
		{"blank name", func(c *store.Contact) { c.Name = "   " }},
		{"name too long", func(c *store.Contact) { c.Name = strings.Repeat("a", store.MaxContactName+1) }},
		{"name invalid UTF-8", func(c *store.Contact) { c.Name = "Ana \xff" }},
		{"name with control character", func(c *store.Contact) { c.Name = "Ana\x00Reyes" }},
		{"unknown role", func(c *store.Contact) { c.Role = "janitor" }},
		{"empty role", func(c *store.Contact) { c.Role = "" }},
		{"responder without region", func(c *store.Contact) { c.Region = "" }},
		{"responder with vehicle", func(c *store.Contact) { c.VehicleID = "veh-1" }},
		{"region with surrounding space", func(c *store.Contact) { c.Region = " NCR" }},
		{"emergency without vehicle", func(c *store.Contact) { c.Role, c.Region = store.RoleEmergency, "" }},
		{"emergency with invalid vehicle", func(c *store.Contact) { c.Role, c.Region, c.VehicleID = store.RoleEmergency, "", "veh 1" }},
		{"driver with region", func(c *store.Contact) { c.Role, c.VehicleID = store.RoleDriver, "veh-1" }},
		{"phone without plus", func(c *store.Contact) { c.Phone = "09171234567" }},
		{"phone with spaces", func(c *store.Contact) { c.Phone = "+63 917 123 4567" }},
		{"phone with leading zero country code", func(c *store.Contact) { c.Phone = "+0639171234567" }},
		{"phone too short", func(c *store.Contact) { c.Phone = "+12345" }},
		{"phone too long", func(c *store.Contact) { c.Phone = "+1234567890123456" }},
		{"email without at", func(c *store.Contact) { c.Email = "ana.example.ph" }},
		{"email with display name", func(c *store.Contact) { c.Email = "Ana <ana@example.ph>" }},
		{"email in angle brackets", func(c *store.Contact) { c.Email = "<ana@example.ph>" }},
		{"email too long", func(c *store.Contact) { c.Email = strings.Repeat("a", store.MaxEmail) + "@example.ph" }},
		{"neither phone nor email", func(c *store.Contact) { c.Phone = "" }},
		{"emergency without phone or email", func(c *store.Contact) {
			c.Role, c.Region, c.VehicleID, c.Phone = store.RoleEmergency, "", "veh-1", ""
		}},
		{"unknown language", func(c *store.Contact) { c.Language = "es" }},
	}
	for _, tc := range invalid {
		c := base
		tc.mutate(&c)
		if err := store.ValidateContact(c); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: ValidateContact error %v, want store.ErrInvalid", tc.name, err)
		}
		if _, err := s.SaveContact(ctx(t), c); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: SaveContact error %v, want store.ErrInvalid", tc.name, err)
		}
	}
	if all, err := s.Contacts(ctx(t), store.ContactFilter{}); err != nil || len(all) != len(valid) {
		t.Errorf("Contacts = %d contacts, %v; want the %d valid ones only", len(all), err, len(valid))
	}
}

func testContactLifecycle(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	ana, err := s.SaveContact(ctx(t), store.Contact{Name: "  Ana Reyes ", Role: store.RoleResponder, Region: Region, Phone: phoneAna})
	if err != nil {
		t.Fatalf("SaveContact: %v", err)
	}
	if ana.ID <= 0 {
		t.Errorf("new contact id = %d, want > 0", ana.ID)
	}
	if ana.Name != "Ana Reyes" {
		t.Errorf("name = %q, want it trimmed to %q", ana.Name, "Ana Reyes")
	}
	if ana.Language != store.LangEnglish {
		t.Errorf("language = %q, want %q for an empty language", ana.Language, store.LangEnglish)
	}
	if !ana.CreatedAt.Equal(Epoch) || !ana.UpdatedAt.Equal(Epoch) {
		t.Errorf("created, updated at %s, %s, want %s", ana.CreatedAt, ana.UpdatedAt, Epoch)
	}

	clock.Set(Epoch.Add(time.Minute))
	contacts := []store.Contact{
		{Name: "Ben", Role: store.RoleSupervisor, Region: Region, Email: "ben@example.ph"},
		{Name: "Carla", Role: store.RoleResponder, Region: "Cebu", Phone: phoneCarla},
		{Name: "Dong", Role: store.RoleDriver, VehicleID: "veh-1", Language: store.LangFilipino},
		{Name: "Ella", Role: store.RoleEmergency, VehicleID: "veh-1", Phone: phoneBen},
		{Name: "Fe", Role: store.RoleEmergency, VehicleID: "veh-2", Phone: phoneBen},
	}
	ids := map[string]int64{"Ana Reyes": ana.ID}
	for _, c := range contacts {
		saved, err := s.SaveContact(ctx(t), c)
		if err != nil {
			t.Fatalf("SaveContact(%s): %v", c.Name, err)
		}
		if saved.ID <= ids["Ana Reyes"] {
			t.Errorf("contact %s id %d, want ids increasing from %d", c.Name, saved.ID, ana.ID)
		}
		ids[c.Name] = saved.ID
	}

	names := func(f store.ContactFilter) string {
		t.Helper()
		list, err := s.Contacts(ctx(t), f)
		if err != nil {
			t.Fatalf("Contacts(%+v): %v", f, err)
		}
		var out []string
		for i, c := range list {
			out = append(out, c.Name)
			if i > 0 && c.ID <= list[i-1].ID {
				t.Errorf("Contacts(%+v) not in id order: %d after %d", f, c.ID, list[i-1].ID)
			}
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		filter store.ContactFilter
		want   string
	}{
		{store.ContactFilter{}, "Ana Reyes,Ben,Carla,Dong,Ella,Fe"},
		{store.ContactFilter{Role: store.RoleResponder}, "Ana Reyes,Carla"},
		{store.ContactFilter{Region: Region}, "Ana Reyes,Ben"},
		{store.ContactFilter{Role: store.RoleResponder, Region: "Cebu"}, "Carla"},
		{store.ContactFilter{VehicleID: "veh-1"}, "Dong,Ella"},
		{store.ContactFilter{Role: store.RoleEmergency, VehicleID: "veh-1"}, "Ella"},
		{store.ContactFilter{Role: store.RoleSupervisor, Region: "Davao"}, ""},
	} {
		if got := names(tc.filter); got != tc.want {
			t.Errorf("Contacts(%+v) = %q, want %q", tc.filter, got, tc.want)
		}
	}

	// Replace keeps CreatedAt and moves UpdatedAt.
	clock.Set(Epoch.Add(time.Hour))
	ana.Phone, ana.Email, ana.Language = "", emailAna, store.LangFilipino
	replaced, err := s.SaveContact(ctx(t), ana)
	if err != nil {
		t.Fatalf("SaveContact(replace): %v", err)
	}
	if replaced.ID != ana.ID || replaced.Phone != "" || replaced.Email != emailAna || replaced.Language != store.LangFilipino {
		t.Errorf("replaced contact = %+v, want id %d with only the email", replaced, ana.ID)
	}
	if !replaced.CreatedAt.Equal(Epoch) || !replaced.UpdatedAt.Equal(Epoch.Add(time.Hour)) {
		t.Errorf("replaced created, updated at %s, %s, want %s, %s", replaced.CreatedAt, replaced.UpdatedAt, Epoch, Epoch.Add(time.Hour))
	}
	stored, err := s.Contacts(ctx(t), store.ContactFilter{Role: store.RoleResponder, Region: Region})
	if err != nil || len(stored) != 1 || stored[0] != replaced {
		t.Errorf("stored contact = %+v, %v, want %+v", stored, err, replaced)
	}

	missing := replaced
	missing.ID = 9999
	if _, err := s.SaveContact(ctx(t), missing); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SaveContact of a missing id: error %v, want store.ErrNotFound", err)
	}
	if err := s.DeleteContact(ctx(t), ids["Carla"]); err != nil {
		t.Fatalf("DeleteContact: %v", err)
	}
	if got := names(store.ContactFilter{}); got != "Ana Reyes,Ben,Dong,Ella,Fe" {
		t.Errorf("contacts after delete = %q", got)
	}
	if err := s.DeleteContact(ctx(t), ids["Carla"]); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteContact: error %v, want store.ErrNotFound", err)
	}
	if err := s.DeleteContact(ctx(t), 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteContact(0): error %v, want store.ErrNotFound", err)
	}
	// A new contact never reuses a deleted id.
	again, err := s.SaveContact(ctx(t), store.Contact{Name: "Carla", Role: store.RoleResponder, Region: "Cebu", Phone: phoneCarla})
	if err != nil || again.ID <= ids["Fe"] {
		t.Errorf("contact saved after a delete: id %d, %v, want an id above %d", again.ID, err, ids["Fe"])
	}
}

func testEscalateQueues(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	if inc.EscalationLevel != 0 {
		t.Errorf("new incident escalation level = %d, want 0", inc.EscalationLevel)
	}

	clock.Set(Epoch.Add(time.Second))
	later := Epoch.Add(time.Minute)
	change, queued := mustEscalate(t, s, store.Escalation{
		IncidentID: inc.ID, Level: 1, Detail: "responders of NCR notified",
		Notifications: []store.Notification{
			{Channel: store.ChannelSMS, Address: phoneAna, ContactID: 7, Language: store.LangFilipino, Reason: "opened"},
			{Channel: store.ChannelEmail, Address: emailAna, Reason: "opened", NextAttemptAt: later},
			{Channel: store.ChannelWebhook, Address: webhookURL, Reason: "opened"},
		},
	})
	if change.Incident.EscalationLevel != 1 || change.Incident.ID != inc.ID {
		t.Errorf("changed incident %d at level %d, want %d at level 1", change.Incident.ID, change.Incident.EscalationLevel, inc.ID)
	}
	if !change.Incident.UpdatedAt.Equal(Epoch.Add(time.Second)) || change.Incident.State != store.StateOpen {
		t.Errorf("incident updated at %s in state %s, want %s and open", change.Incident.UpdatedAt, change.Incident.State, Epoch.Add(time.Second))
	}
	ev := change.Event
	if ev.Type != store.EventEscalated || ev.Actor != store.ActorDispatcher || ev.ID == 0 || !ev.At.Equal(Epoch.Add(time.Second)) {
		t.Errorf("event = %+v, want escalated by %s at %s", ev, store.ActorDispatcher, Epoch.Add(time.Second))
	}
	if !strings.Contains(ev.Detail, "level 1") || !strings.Contains(ev.Detail, "responders of NCR notified") {
		t.Errorf("escalated detail = %q, want the level and the escalation's detail", ev.Detail)
	}

	if len(queued) != 3 {
		t.Fatalf("%d notifications queued, want 3", len(queued))
	}
	sms, email, hook := queued[0], queued[1], queued[2]
	for _, n := range queued {
		if n.ID <= 0 || n.IncidentID != inc.ID || n.State != store.NotificationPending || n.Attempts != 0 {
			t.Errorf("queued %+v, want an id, incident %d, pending, no attempts", n, inc.ID)
		}
		if n.SentBy != "" || n.ProviderID != "" || n.LastError != "" {
			t.Errorf("queued %+v has a sender, provider id or error", n)
		}
		if !n.CreatedAt.Equal(Epoch.Add(time.Second)) || !n.UpdatedAt.Equal(n.CreatedAt) {
			t.Errorf("queued created, updated at %s, %s, want %s", n.CreatedAt, n.UpdatedAt, Epoch.Add(time.Second))
		}
	}
	if sms.ContactID != 7 || sms.Language != store.LangFilipino || sms.Reason != "opened" || sms.Channel != store.ChannelSMS || sms.Address != phoneAna {
		t.Errorf("queued SMS = %+v, want contact 7, Filipino, reason opened, to %s", sms, phoneAna)
	}
	if !sms.NextAttemptAt.Equal(Epoch.Add(time.Second)) {
		t.Errorf("SMS next attempt at %s, want now (%s) for a zero NextAttemptAt", sms.NextAttemptAt, Epoch.Add(time.Second))
	}
	if email.Language != store.LangEnglish || email.ContactID != 0 || !email.NextAttemptAt.Equal(later) {
		t.Errorf("queued email = %+v, want English, no contact, due at %s", email, later)
	}
	if sms.ID >= email.ID || email.ID >= hook.ID {
		t.Errorf("ids %d, %d, %d, want increasing in list order", sms.ID, email.ID, hook.ID)
	}

	if got := mustNotifications(t, s, inc.ID); !reflect.DeepEqual(got, queued) {
		t.Errorf("Notifications = %+v, want %+v", got, queued)
	}
	stored, events := mustIncident(t, s, inc.ID)
	if stored.EscalationLevel != 1 || stored != change.Incident {
		t.Errorf("stored incident %+v, want %+v", stored, change.Incident)
	}
	wantTypes := []string{store.EventOpened, store.EventEscalated, store.EventNotification, store.EventNotification, store.EventNotification}
	if got := eventTypes(events); strings.Join(got, " ") != strings.Join(wantTypes, " ") {
		t.Fatalf("events = %v, want %v", got, wantTypes)
	}
	if events[1] != change.Event {
		t.Errorf("stored escalated event %+v, want %+v", events[1], change.Event)
	}
	for i, want := range []string{"queued sms to " + phoneAna, "queued email to " + emailAna, "queued webhook to https://hooks.example.ph"} {
		ev := events[2+i]
		if !strings.Contains(ev.Detail, want) || !strings.Contains(ev.Detail, "opened") || ev.Actor != store.ActorDispatcher {
			t.Errorf("queued event %d = %+v, want detail with %q and the reason, by %s", i, ev, want, store.ActorDispatcher)
		}
	}
	if strings.Contains(events[4].Detail, "secret-token") {
		t.Errorf("webhook event detail %q shows the URL's secret path", events[4].Detail)
	}

	// An escalation without notifications still raises the level.
	change, queued = mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 3})
	if change.Incident.EscalationLevel != 3 || len(queued) != 0 || change.Event.Detail != "level 3" {
		t.Errorf("escalation to 3 without notifications: level %d, %d queued, detail %q", change.Incident.EscalationLevel, len(queued), change.Event.Detail)
	}
}

func testEscalateIdempotent(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	e := store.Escalation{IncidentID: inc.ID, Level: 1, OnlyIfOpen: true, Notifications: []store.Notification{SMS(phoneAna, "opened"), SMS(phoneBen, "opened")}}
	mustEscalate(t, s, e)
	_, events := mustIncident(t, s, inc.ID)

	// A restarted dispatcher repeats the step: it is rejected, and nothing is queued twice.
	for range 2 {
		_, queued, err := s.EscalateIncident(ctx(t), e)
		wantConflict(t, "repeated escalation", err)
		if len(queued) != 0 {
			t.Errorf("repeated escalation queued %d notifications", len(queued))
		}
	}
	if _, _, err := s.EscalateIncident(ctx(t), e); err == nil || !strings.Contains(err.Error(), "level 1") {
		t.Errorf("conflict message %v does not name the current level 1", err)
	}
	if got := mustNotifications(t, s, inc.ID); len(got) != 2 {
		t.Errorf("%d notifications after repeats, want 2", len(got))
	}
	if _, after := mustIncident(t, s, inc.ID); len(after) != len(events) {
		t.Errorf("%d events after rejected repeats, want %d", len(after), len(events))
	}
}

func testEscalateConcurrent(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	const n = 6
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, _, errs[i] = s.EscalateIncident(ctx(t), store.Escalation{
				IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{SMS(phoneAna, "opened"), SMS(phoneBen, "opened")},
			})
		})
	}
	wg.Wait()

	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, store.ErrConflict):
			t.Errorf("concurrent escalation: %v, want success or store.ErrConflict", err)
		}
	}
	if won != 1 {
		t.Errorf("%d concurrent escalations to one level succeeded, want 1", won)
	}
	if got := mustNotifications(t, s, inc.ID); len(got) != 2 {
		t.Errorf("%d notifications, want 2", len(got))
	}

	_, events := mustIncident(t, s, inc.ID)
	escalated := 0
	for _, ev := range events {
		if ev.Type == store.EventEscalated {
			escalated++
		}
	}
	if escalated != 1 {
		t.Errorf("%d escalated events, want 1", escalated)
	}
}

func testEscalateRules(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")

	// Invalid escalations change nothing.
	invalid := []store.Escalation{
		{IncidentID: inc.ID, Level: 0},
		{IncidentID: inc.ID, Level: -1},
		{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{SMS("09171234567", "opened")}},
		{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{{Channel: "pager", Address: phoneAna, Reason: "opened"}}},
		{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{{Channel: store.ChannelEmail, Address: "Ana <ana@example.ph>", Reason: "opened"}}},
		{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{{Channel: store.ChannelWebhook, Address: "ftp://example.ph/x", Reason: "opened"}}},
		{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{SMS(phoneAna, "")}},
		{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{SMS(phoneAna, strings.Repeat("r", store.MaxReason+1))}},
		{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{{Channel: store.ChannelSMS, Address: phoneAna, Reason: "opened", Language: "de"}}},
		{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{SMS(phoneAna, "opened"), {Channel: store.ChannelVoice, Address: "+63", Reason: "x"}}},
	}
	for i, e := range invalid {
		if _, _, err := s.EscalateIncident(ctx(t), e); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("invalid escalation %d: error %v, want store.ErrInvalid", i, err)
		}
	}
	if got := mustNotifications(t, s, inc.ID); len(got) != 0 {
		t.Errorf("invalid escalations queued %d notifications", len(got))
	}
	if stored, _ := mustIncident(t, s, inc.ID); stored.EscalationLevel != 0 {
		t.Errorf("invalid escalations set level %d", stored.EscalationLevel)
	}

	if _, _, err := s.EscalateIncident(ctx(t), store.Escalation{IncidentID: 9999, Level: 1}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("escalation of a missing incident: error %v, want store.ErrNotFound", err)
	}

	mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 2})
	_, _, err := s.EscalateIncident(ctx(t), store.Escalation{IncidentID: inc.ID, Level: 1})
	wantConflict(t, "escalation to a lower level", err)

	// OnlyIfOpen stops at acknowledge; a plain escalation goes on.
	mustAct(t, s, inc.ID, store.ActionAcknowledge)
	_, _, err = s.EscalateIncident(ctx(t), store.Escalation{IncidentID: inc.ID, Level: 3, OnlyIfOpen: true, Notifications: []store.Notification{SMS(phoneAna, "x")}})
	wantConflict(t, "OnlyIfOpen escalation of an acknowledged incident", err)
	if err != nil && !strings.Contains(err.Error(), "acknowledged") {
		t.Errorf("conflict message %q does not name the state", err)
	}
	if got := mustNotifications(t, s, inc.ID); len(got) != 0 {
		t.Errorf("a rejected escalation queued %d notifications", len(got))
	}
	change, _ := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 3})
	if change.Incident.State != store.StateAcknowledged || change.Incident.EscalationLevel != 3 {
		t.Errorf("escalated acknowledged incident: state %s level %d, want acknowledged at 3", change.Incident.State, change.Incident.EscalationLevel)
	}

	// A closed incident takes no escalation.
	mustAct(t, s, inc.ID, store.ActionResolve)
	_, _, err = s.EscalateIncident(ctx(t), store.Escalation{IncidentID: inc.ID, Level: 4})
	wantConflict(t, "escalation of a resolved incident", err)
	if stored, _ := mustIncident(t, s, inc.ID); stored.EscalationLevel != 3 {
		t.Errorf("level %d after the rejected escalation, want 3", stored.EscalationLevel)
	}
}

func testEscalateOnePerKey(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	other := openOneIncident(t, s, 2, "veh-2", "sos-2")
	_, first := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{
		SMS(phoneAna, "opened"),
		SMS(phoneAna, "opened twice in one list"),
	}})
	if len(first) != 1 {
		t.Fatalf("%d queued from a list with one key twice, want 1", len(first))
	}
	_, second := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 2, Notifications: []store.Notification{
		SMS(phoneAna, "escalation:supervisors"),
		{Channel: store.ChannelVoice, Address: phoneAna, Reason: "escalation:voice"},
		SMS(phoneBen, "escalation:supervisors"),
	}})
	if len(second) != 2 || second[0].Channel != store.ChannelVoice || second[1].Address != phoneBen {
		t.Errorf("second escalation queued %+v, want the voice call to %s and the SMS to %s", second, phoneAna, phoneBen)
	}
	// Another incident has its own keys.
	_, third := mustEscalate(t, s, store.Escalation{IncidentID: other.ID, Level: 1, Notifications: []store.Notification{SMS(phoneAna, "opened")}})
	if len(third) != 1 {
		t.Errorf("another incident's SMS to the same number: %d queued, want 1", len(third))
	}

	list := mustNotifications(t, s, inc.ID)
	if len(list) != 3 {
		t.Fatalf("%d notifications of the incident, want 3", len(list))
	}
	if list[0].Reason != "opened" {
		t.Errorf("first SMS reason = %q, want the first queued one kept", list[0].Reason)
	}
	seen := map[store.NotificationKey]bool{}
	for _, n := range list {
		if seen[n.Key()] {
			t.Errorf("two notifications with key %+v", n.Key())
		}
		seen[n.Key()] = true
	}
}

func testDueNotifications(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	at := func(d time.Duration) store.Notification {
		n := SMS(fmt.Sprintf("+6391700000%02d", int(d/time.Minute)), "opened")
		n.NextAttemptAt = Epoch.Add(d)
		return n
	}
	// Queued out of time order, so the result order is by time, not id.
	_, queued := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{
		at(3 * time.Minute), at(time.Minute), at(5 * time.Minute), at(2 * time.Minute), at(0),
	}})
	if len(queued) != 5 {
		t.Fatalf("%d queued, want 5", len(queued))
	}
	byMinute := map[int]int64{3: queued[0].ID, 1: queued[1].ID, 5: queued[2].ID, 2: queued[3].ID, 0: queued[4].ID}

	if due := mustDue(t, s, Epoch.Add(-time.Second), 0); len(due) != 0 {
		t.Errorf("due before the first time: %v, want none", notificationIDs(due))
	}
	due := mustDue(t, s, Epoch.Add(2*time.Minute), 0)
	want := []int64{byMinute[0], byMinute[1], byMinute[2]}
	if !reflect.DeepEqual(notificationIDs(due), want) {
		t.Errorf("due at +2m = %v, want %v (oldest NextAttemptAt first, the bound included)", notificationIDs(due), want)
	}
	if limited := mustDue(t, s, Epoch.Add(time.Hour), 2); !reflect.DeepEqual(notificationIDs(limited), want[:2]) {
		t.Errorf("due with limit 2 = %v, want %v", notificationIDs(limited), want[:2])
	}

	// Sending with a running lease is not due, sent is never due, and a
	// sending one with an expired lease is due at its lease time.
	mustClaim(t, s, byMinute[0], Epoch, Epoch.Add(10*time.Minute))
	mustClaim(t, s, byMinute[1], Epoch.Add(time.Minute), Epoch.Add(4*time.Minute))
	mustRecord(t, s, byMinute[1], store.AttemptOutcome{State: store.NotificationSent, ProviderID: "SM-1"})
	mustClaim(t, s, byMinute[2], Epoch.Add(2*time.Minute), Epoch.Add(4*time.Minute))
	due = mustDue(t, s, Epoch.Add(4*time.Minute), 0)
	want = []int64{byMinute[3], byMinute[2]}
	if !reflect.DeepEqual(notificationIDs(due), want) {
		t.Errorf("due at +4m = %v, want %v", notificationIDs(due), want)
	}
	if len(due) == 2 && (due[1].State != store.NotificationSending || !due[1].NextAttemptAt.Equal(Epoch.Add(4*time.Minute))) {
		t.Errorf("expired sending notification = %+v, want sending with lease %s", due[1], Epoch.Add(4*time.Minute))
	}
	due = mustDue(t, s, Epoch.Add(time.Hour), 0)
	want = []int64{byMinute[3], byMinute[2], byMinute[5], byMinute[0]}
	if !reflect.DeepEqual(notificationIDs(due), want) {
		t.Errorf("due in an hour = %v, want %v", notificationIDs(due), want)
	}
}

func testClaimConflicts(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	_, queued := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{
		SMS(phoneAna, "opened"),
		{Channel: store.ChannelSMS, Address: phoneBen, Reason: "opened", NextAttemptAt: Epoch.Add(time.Minute)},
	}})
	now, lease := queued[0], queued[1]

	// Not yet due.
	_, _, err := s.ClaimNotification(ctx(t), lease.ID, Epoch, Epoch.Add(time.Minute))
	wantConflict(t, "claim before NextAttemptAt", err)
	// The lease must end after now.
	for _, until := range []time.Time{Epoch, Epoch.Add(-time.Second)} {
		if _, _, err := s.ClaimNotification(ctx(t), now.ID, Epoch, until); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("claim with lease until %s: error %v, want store.ErrInvalid", until, err)
		}
	}
	if _, _, err := s.ClaimNotification(ctx(t), 9999, Epoch, Epoch.Add(time.Minute)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("claim of a missing notification: error %v, want store.ErrNotFound", err)
	}

	clock.Set(Epoch.Add(time.Second))
	claimed, unknown := mustClaim(t, s, now.ID, Epoch, Epoch.Add(30*time.Second))
	if unknown {
		t.Error("first claim reported an unknown outcome")
	}
	if claimed.State != store.NotificationSending || claimed.Attempts != 1 || !claimed.NextAttemptAt.Equal(Epoch.Add(30*time.Second)) {
		t.Errorf("claimed = %+v, want sending, attempt 1, lease %s", claimed, Epoch.Add(30*time.Second))
	}
	if !claimed.UpdatedAt.Equal(Epoch.Add(time.Second)) {
		t.Errorf("claimed updated at %s, want the hub clock %s", claimed.UpdatedAt, Epoch.Add(time.Second))
	}
	if list := mustNotifications(t, s, inc.ID); list[0] != claimed {
		t.Errorf("stored %+v, want %+v", list[0], claimed)
	}
	// Claimed again while the lease runs.
	_, _, err = s.ClaimNotification(ctx(t), now.ID, Epoch.Add(29*time.Second), Epoch.Add(time.Minute))
	wantConflict(t, "claim during the lease", err)

	mustRecord(t, s, now.ID, store.AttemptOutcome{State: store.NotificationSent, ProviderID: "SM-1"})
	_, _, err = s.ClaimNotification(ctx(t), now.ID, Epoch.Add(time.Hour), Epoch.Add(2*time.Hour))
	wantConflict(t, "claim of a sent notification", err)
	if err != nil && !strings.Contains(err.Error(), "sent") {
		t.Errorf("conflict message %q does not name the state", err)
	}
	if list := mustNotifications(t, s, inc.ID); list[0].Attempts != 1 {
		t.Errorf("attempts = %d after rejected claims, want 1", list[0].Attempts)
	}
}

func testClaimConcurrent(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	n := queueOne(t, s, inc.ID, phoneAna)
	const workers = 6
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() { _, _, errs[i] = s.ClaimNotification(ctx(t), n.ID, Epoch, Epoch.Add(time.Minute)) })
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, store.ErrConflict):
			t.Errorf("concurrent claim: %v, want success or store.ErrConflict", err)
		}
	}
	if won != 1 {
		t.Errorf("%d concurrent claims succeeded, want 1", won)
	}
	if list := mustNotifications(t, s, inc.ID); list[0].Attempts != 1 {
		t.Errorf("attempts = %d, want 1", list[0].Attempts)
	}
}

func testLeaseExpiry(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	n := queueOne(t, s, inc.ID, phoneAna)
	mustClaim(t, s, n.ID, Epoch, Epoch.Add(time.Minute))

	// The worker died: its lease expires and the notification is due again.
	if due := mustDue(t, s, Epoch.Add(time.Minute-time.Microsecond), 0); len(due) != 0 {
		t.Errorf("due before the lease expired: %v", notificationIDs(due))
	}
	due := mustDue(t, s, Epoch.Add(time.Minute), 0)
	if len(due) != 1 || due[0].ID != n.ID || due[0].State != store.NotificationSending {
		t.Fatalf("due at the lease's end = %+v, want notification %d sending", due, n.ID)
	}
	again, unknown := mustClaim(t, s, n.ID, Epoch.Add(time.Minute), Epoch.Add(2*time.Minute))
	if !unknown {
		t.Error("claim after an expired lease did not report the unknown outcome")
	}
	if again.Attempts != 2 || again.State != store.NotificationSending || !again.NextAttemptAt.Equal(Epoch.Add(2*time.Minute)) {
		t.Errorf("reclaimed = %+v, want attempt 2 sending until %s", again, Epoch.Add(2*time.Minute))
	}

	// The first worker's late outcome is rejected; the second's is kept.
	_, _, err := s.RecordAttempt(ctx(t), n.ID, store.AttemptOutcome{State: store.NotificationSent, ProviderID: "SM-late", Attempt: 1})
	wantConflict(t, "outcome of a superseded attempt", err)
	sent, change := mustRecord(t, s, n.ID, store.AttemptOutcome{
		State: store.NotificationSent, ProviderID: "SM-2", Attempt: 2, Detail: "reconciled: no earlier message found at the provider",
	})
	if sent.State != store.NotificationSent || sent.ProviderID != "SM-2" || sent.Attempts != 2 {
		t.Errorf("recorded = %+v, want sent as SM-2 on attempt 2", sent)
	}
	if !strings.Contains(change.Event.Detail, "attempt 2") || !strings.Contains(change.Event.Detail, "reconciled") {
		t.Errorf("event detail %q, want the attempt number and the outcome's detail", change.Event.Detail)
	}
}

func testRecordAttempt(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	_, queued := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{
		SMS(phoneAna, "opened"), SMS(phoneBen, "opened"),
	}})
	a, b := queued[0], queued[1]
	_, events := mustIncident(t, s, inc.ID)

	// Only a sending notification takes an outcome.
	_, _, err := s.RecordAttempt(ctx(t), a.ID, store.AttemptOutcome{State: store.NotificationSent})
	wantConflict(t, "outcome of a pending notification", err)
	if _, _, err := s.RecordAttempt(ctx(t), 9999, store.AttemptOutcome{State: store.NotificationSent}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("outcome of a missing notification: error %v, want store.ErrNotFound", err)
	}
	mustClaim(t, s, a.ID, Epoch, Epoch.Add(time.Minute))
	for _, o := range []store.AttemptOutcome{
		{State: store.NotificationPending},
		{State: store.NotificationDelivered},
		{State: store.NotificationSending},
		{State: ""},
	} {
		if _, _, err := s.RecordAttempt(ctx(t), a.ID, o); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("outcome %+v: error %v, want store.ErrInvalid", o, err)
		}
	}

	// A transient failure: retry later.
	clock.Set(Epoch.Add(time.Second))
	retryAt := Epoch.Add(30 * time.Second)
	retried, change := mustRecord(t, s, a.ID, store.AttemptOutcome{State: store.NotificationPending, NextAttemptAt: retryAt, Error: "HTTP 503 from provider"})
	if retried.State != store.NotificationPending || !retried.NextAttemptAt.Equal(retryAt) || retried.LastError != "HTTP 503 from provider" || retried.Attempts != 1 {
		t.Errorf("after a retry outcome = %+v, want pending until %s with the error", retried, retryAt)
	}
	if change.Event.Type != store.EventNotification || change.Event.Actor != store.ActorDispatcher || change.Incident.ID != inc.ID {
		t.Errorf("event = %+v, want a notification event by %s on incident %d", change.Event, store.ActorDispatcher, inc.ID)
	}
	for _, want := range []string{"sms", phoneAna, "attempt 1", "retry", "HTTP 503"} {
		if !strings.Contains(change.Event.Detail, want) {
			t.Errorf("retry event detail %q does not mention %q", change.Event.Detail, want)
		}
	}
	if !change.Incident.UpdatedAt.Equal(Epoch.Add(time.Second)) {
		t.Errorf("incident updated at %s, want %s", change.Incident.UpdatedAt, Epoch.Add(time.Second))
	}
	if due := mustDue(t, s, retryAt.Add(-time.Microsecond), 0); len(due) != 1 || due[0].ID != b.ID {
		t.Errorf("due before the retry = %v, want only %d", notificationIDs(due), b.ID)
	}

	// The retry succeeds.
	mustClaim(t, s, a.ID, retryAt, retryAt.Add(time.Minute))
	sent, change := mustRecord(t, s, a.ID, store.AttemptOutcome{State: store.NotificationSent, ProviderID: "SM-a"})
	if sent.State != store.NotificationSent || sent.ProviderID != "SM-a" || sent.SentBy != store.SentByHub || sent.Attempts != 2 {
		t.Errorf("sent = %+v, want sent by the hub as SM-a after 2 attempts", sent)
	}
	if sent.LastError != "" || !sent.NextAttemptAt.IsZero() {
		t.Errorf("sent keeps error %q and next attempt %s, want both cleared", sent.LastError, sent.NextAttemptAt)
	}
	if !strings.Contains(change.Event.Detail, "attempt 2") || !strings.Contains(change.Event.Detail, "sent") || !strings.Contains(change.Event.Detail, "SM-a") {
		t.Errorf("sent event detail %q, want the attempt, the outcome and the provider id", change.Event.Detail)
	}
	_, _, err = s.RecordAttempt(ctx(t), a.ID, store.AttemptOutcome{State: store.NotificationFailed})
	wantConflict(t, "second outcome of one attempt", err)

	// A permanent failure.
	mustClaim(t, s, b.ID, Epoch, Epoch.Add(time.Minute))
	failed, change := mustRecord(t, s, b.ID, store.AttemptOutcome{State: store.NotificationFailed, Error: "Twilio 21211: invalid 'To' number"})
	if failed.State != store.NotificationFailed || failed.LastError != "Twilio 21211: invalid 'To' number" || !failed.NextAttemptAt.IsZero() || failed.SentBy != "" {
		t.Errorf("failed = %+v, want failed with the error, no next attempt, not sent", failed)
	}
	if !strings.Contains(change.Event.Detail, "failed") || !strings.Contains(change.Event.Detail, "21211") {
		t.Errorf("failed event detail %q, want the outcome and the error", change.Event.Detail)
	}
	if due := mustDue(t, s, Epoch.Add(time.Hour), 0); len(due) != 0 {
		t.Errorf("due after sent and failed = %v, want none", notificationIDs(due))
	}

	// Error text is cleaned and capped.
	c := openOneIncident(t, s, 2, "veh-2", "sos-2")
	n := queueOne(t, s, c.ID, phoneCarla)
	mustClaim(t, s, n.ID, clock.Now(), clock.Now().Add(time.Minute))
	long, _ := mustRecord(t, s, n.ID, store.AttemptOutcome{State: store.NotificationFailed, Error: "bad\x00\n" + strings.Repeat("x", 2*store.MaxNotificationError) + "\xff"})
	if len(long.LastError) > store.MaxNotificationError || strings.ContainsAny(long.LastError, "\x00\n") || !strings.HasPrefix(long.LastError, "bad") {
		t.Errorf("stored error of %d bytes starting %q, want at most %d bytes of cleaned text", len(long.LastError), long.LastError[:min(10, len(long.LastError))], store.MaxNotificationError)
	}

	// Three outcomes were recorded (retry, sent, failed); the rejected ones added no event.
	_, after := mustIncident(t, s, inc.ID)
	if got := len(after) - len(events); got != 3 {
		t.Errorf("%d events added to incident %d, want 3: %v", got, inc.ID, eventTypes(after))
	}
}

func testDeliveryStatus(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	_, queued := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{
		SMS(phoneAna, "opened"), SMS(phoneBen, "opened"),
		{Channel: store.ChannelVoice, Address: phoneCarla, Reason: "escalation:voice"},
		{Channel: store.ChannelVoice, Address: phoneAna, Reason: "escalation:voice"},
	}})
	send := func(n store.Notification, providerID string) {
		t.Helper()
		mustClaim(t, s, n.ID, Epoch, Epoch.Add(time.Minute))
		mustRecord(t, s, n.ID, store.AttemptOutcome{State: store.NotificationSent, ProviderID: providerID})
	}
	send(queued[0], "SM-ana")
	send(queued[1], "SM-ben")
	send(queued[2], "CA-carla")
	send(queued[3], "CA-ana")

	status := func(providerID, st, errText string) (store.Notification, store.IncidentChange) {
		t.Helper()
		n, change, err := s.UpdateDeliveryStatus(ctx(t), providerID, st, errText)
		if err != nil {
			t.Fatalf("UpdateDeliveryStatus(%s, %s): %v", providerID, st, err)
		}
		return n, change
	}

	// Intermediate statuses add an event only.
	clock.Set(Epoch.Add(time.Minute))
	for _, st := range []string{"queued", "sent", "ringing"} {
		n, change := status("SM-ana", st, "")
		if n.State != store.NotificationSent {
			t.Errorf("status %s: state %s, want sent", st, n.State)
		}
		if change.Event.Type != store.EventNotification || !strings.Contains(change.Event.Detail, st) || change.Incident.ID != inc.ID {
			t.Errorf("status %s: event %+v, want a notification event naming it", st, change.Event)
		}
		if !change.Incident.UpdatedAt.Equal(Epoch.Add(time.Minute)) || !n.UpdatedAt.Equal(Epoch.Add(time.Minute)) {
			t.Errorf("status %s: incident, notification updated at %s, %s, want %s", st, change.Incident.UpdatedAt, n.UpdatedAt, Epoch.Add(time.Minute))
		}
	}
	if n, _ := status("SM-ana", "delivered", ""); n.State != store.NotificationDelivered || n.ID != queued[0].ID {
		t.Errorf("delivered: notification %d state %s, want %d delivered", n.ID, n.State, queued[0].ID)
	}
	if n, change := status("SM-ben", "undelivered", "30003: unreachable handset"); n.State != store.NotificationFailed || n.LastError != "30003: unreachable handset" {
		t.Errorf("undelivered: state %s error %q, want failed with the provider's error", n.State, n.LastError)
	} else if !strings.Contains(change.Event.Detail, "30003") {
		t.Errorf("undelivered event detail %q, want the error", change.Event.Detail)
	}
	if n, _ := status("CA-carla", "completed", ""); n.State != store.NotificationDelivered {
		t.Errorf("call completed: state %s, want delivered", n.State)
	}
	if n, _ := status("CA-ana", "no-answer", ""); n.State != store.NotificationFailed || n.LastError == "" {
		t.Errorf("call no-answer: state %s error %q, want failed with an error", n.State, n.LastError)
	}

	// A failed status while the hub retries keeps the retry.
	c := openOneIncident(t, s, 2, "veh-2", "sos-2")
	n := queueOne(t, s, c.ID, phoneCarla)
	mustClaim(t, s, n.ID, clock.Now(), clock.Now().Add(time.Minute))
	retryAt := clock.Now().Add(2 * time.Minute)
	mustRecord(t, s, n.ID, store.AttemptOutcome{State: store.NotificationPending, NextAttemptAt: retryAt, ProviderID: "SM-retry", Error: "no status yet"})
	if got, _ := status("SM-retry", "failed", "30008"); got.State != store.NotificationPending || !got.NextAttemptAt.Equal(retryAt) {
		t.Errorf("failed status of a pending notification: %+v, want it still pending at %s", got, retryAt)
	}
	if got, _ := status("SM-retry", "DELIVERED", ""); got.State != store.NotificationDelivered || !got.NextAttemptAt.IsZero() {
		t.Errorf("delivered status of a pending notification: %+v, want delivered and no longer due", got)
	}
	if due := mustDue(t, s, Epoch.Add(time.Hour), 0); len(due) != 0 {
		t.Errorf("due after delivery = %v, want none", notificationIDs(due))
	}

	if _, _, err := s.UpdateDeliveryStatus(ctx(t), "SM-unknown", "delivered", ""); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown provider id: error %v, want store.ErrNotFound", err)
	}
	for _, args := range [][2]string{{"", "delivered"}, {"SM-ana", ""}, {"SM-ana", " \x00 "}} {
		if _, _, err := s.UpdateDeliveryStatus(ctx(t), args[0], args[1], ""); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("UpdateDeliveryStatus(%q, %q): error %v, want store.ErrInvalid", args[0], args[1], err)
		}
	}
}

func testDeliveryStatusFinal(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	_, queued := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{
		SMS(phoneAna, "opened"), SMS(phoneBen, "opened"),
	}})
	for i, id := range []string{"SM-1", "SM-2"} {
		mustClaim(t, s, queued[i].ID, Epoch, Epoch.Add(time.Minute))
		mustRecord(t, s, queued[i].ID, store.AttemptOutcome{State: store.NotificationSent, ProviderID: id})
	}
	if _, _, err := s.UpdateDeliveryStatus(ctx(t), "SM-1", "delivered", ""); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.UpdateDeliveryStatus(ctx(t), "SM-2", "failed", "30005: unknown destination"); err != nil {
		t.Fatal(err)
	}
	_, before := mustIncident(t, s, inc.ID)

	// Late or out-of-order callbacks never move a final state.
	for _, st := range []string{"failed", "undelivered", "sent", "queued"} {
		n, change, err := s.UpdateDeliveryStatus(ctx(t), "SM-1", st, "late")
		if err != nil || n.State != store.NotificationDelivered {
			t.Errorf("status %s after delivered: state %s, %v, want delivered", st, n.State, err)
		}
		if change.Event.Type != store.EventNotification || !strings.Contains(change.Event.Detail, st) {
			t.Errorf("status %s after delivered: event %+v, want one notification event", st, change.Event)
		}
	}
	n, _, err := s.UpdateDeliveryStatus(ctx(t), "SM-2", "delivered", "")
	if err != nil || n.State != store.NotificationFailed || n.LastError != "30005: unknown destination" {
		t.Errorf("delivered after failed: %+v, %v, want failed with the first error", n, err)
	}
	if _, after := mustIncident(t, s, inc.ID); len(after) != len(before)+5 {
		t.Errorf("%d events added by 5 late callbacks, want 5", len(after)-len(before))
	}
}

func testNotificationsUnknownIncident(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	if list := mustNotifications(t, s, 42); len(list) != 0 {
		t.Errorf("Notifications of an unknown incident = %+v, want none", list)
	}
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	if list := mustNotifications(t, s, inc.ID); len(list) != 0 {
		t.Errorf("Notifications of an incident never escalated = %+v, want none", list)
	}
}

func testDispatchRestart(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	open := f(t, clock.Now)
	s := open()
	ana, err := s.SaveContact(ctx(t), store.Contact{Name: "Ana", Role: store.RoleSupervisor, Region: Region, Phone: phoneAna, Language: store.LangFilipino})
	if err != nil {
		t.Fatalf("SaveContact: %v", err)
	}
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	_, queued := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 2, Notifications: []store.Notification{
		{Channel: store.ChannelSMS, Address: phoneAna, ContactID: ana.ID, Language: store.LangFilipino, Reason: "escalation:supervisors"},
		{Channel: store.ChannelVoice, Address: phoneAna, ContactID: ana.ID, Reason: "escalation:voice"},
		{Channel: store.ChannelEmail, Address: emailAna, Reason: "opened", NextAttemptAt: Epoch.Add(time.Hour)},
	}})
	mustClaim(t, s, queued[0].ID, Epoch, Epoch.Add(time.Minute))
	mustRecord(t, s, queued[0].ID, store.AttemptOutcome{State: store.NotificationSent, ProviderID: "SM-restart"})
	// The hub dies during the voice call's attempt.
	mustClaim(t, s, queued[1].ID, Epoch, Epoch.Add(time.Minute))
	before := mustNotifications(t, s, inc.ID)
	beforeInc, beforeEvents := mustIncident(t, s, inc.ID)
	mustClose(t, s)

	clock.Set(Epoch.Add(2 * time.Minute))
	s = open()
	if after := mustNotifications(t, s, inc.ID); !reflect.DeepEqual(after, before) {
		t.Errorf("notifications after the restart\n%+v\nwant\n%+v", after, before)
	}
	afterInc, afterEvents := mustIncident(t, s, inc.ID)
	if afterInc != beforeInc || afterInc.EscalationLevel != 2 || !reflect.DeepEqual(afterEvents, beforeEvents) {
		t.Errorf("incident after the restart %+v with %d events, want %+v with %d", afterInc, len(afterEvents), beforeInc, len(beforeEvents))
	}
	if contacts, err := s.Contacts(ctx(t), store.ContactFilter{}); err != nil || len(contacts) != 1 || contacts[0] != ana {
		t.Errorf("contacts after the restart = %+v, %v, want [%+v]", contacts, err, ana)
	}

	// The level still makes a repeated step a no-op.
	_, _, err = s.EscalateIncident(ctx(t), store.Escalation{IncidentID: inc.ID, Level: 2, Notifications: []store.Notification{SMS(phoneBen, "x")}})
	wantConflict(t, "repeated escalation after the restart", err)
	// The interrupted attempt is due and reported as of unknown outcome.
	due := mustDue(t, s, Epoch.Add(2*time.Minute), 0)
	if len(due) != 1 || due[0].ID != queued[1].ID {
		t.Fatalf("due after the restart = %v, want the interrupted call %d", notificationIDs(due), queued[1].ID)
	}
	if _, unknown := mustClaim(t, s, queued[1].ID, Epoch.Add(2*time.Minute), Epoch.Add(3*time.Minute)); !unknown {
		t.Error("claim of the interrupted attempt after the restart did not report the unknown outcome")
	}
	// A status callback still finds the SMS by its provider id.
	if n, _, err := s.UpdateDeliveryStatus(ctx(t), "SM-restart", "delivered", ""); err != nil || n.ID != queued[0].ID || n.State != store.NotificationDelivered {
		t.Errorf("status callback after the restart: %+v, %v, want notification %d delivered", n, err, queued[0].ID)
	}
	// New rows get new ids.
	_, more := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 3, Notifications: []store.Notification{SMS(phoneBen, "escalation:supervisors")}})
	if len(more) != 1 || more[0].ID <= queued[2].ID {
		t.Errorf("notification queued after the restart = %+v, want an id above %d", more, queued[2].ID)
	}
	next, err := s.SaveContact(ctx(t), store.Contact{Name: "Ben", Role: store.RoleSupervisor, Region: Region, Phone: phoneBen})
	if err != nil || next.ID <= ana.ID {
		t.Errorf("contact saved after the restart: id %d, %v, want an id above %d", next.ID, err, ana.ID)
	}
}

func testOperatorRetry(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	other := openOneIncident(t, s, 2, "veh-2", "sos-2")
	_, queued := mustEscalate(t, s, store.Escalation{IncidentID: inc.ID, Level: 1, Notifications: []store.Notification{
		SMS(phoneAna, "opened"), SMS(phoneBen, "opened"),
	}})
	a, b := queued[0], queued[1]

	// A pending notification waiting for its backoff becomes due now.
	mustClaim(t, s, a.ID, Epoch, Epoch.Add(time.Minute))
	mustRecord(t, s, a.ID, store.AttemptOutcome{State: store.NotificationPending, NextAttemptAt: Epoch.Add(5 * time.Minute), Error: "HTTP 503"})
	clock.Set(Epoch.Add(10 * time.Second))
	n, change, err := s.RetryNotification(ctx(t), inc.ID, a.ID, "operator:Ana")
	if err != nil {
		t.Fatalf("retry a pending notification: %v", err)
	}
	if n.State != store.NotificationPending || !n.NextAttemptAt.Equal(Epoch.Add(10*time.Second)) || n.Attempts != 1 {
		t.Errorf("after retry = %+v, want pending, due at %s, 1 attempt", n, Epoch.Add(10*time.Second))
	}
	if change.Event.Type != store.EventNotification || change.Event.Actor != "operator:Ana" || !strings.Contains(change.Event.Detail, "operator:Ana asked to retry") {
		t.Errorf("event = %+v, want a notification event by operator:Ana", change.Event)
	}
	if due := mustDue(t, s, Epoch.Add(10*time.Second), 0); len(due) != 2 {
		t.Errorf("due after the retry = %v, want both", notificationIDs(due))
	}

	// A failed notification becomes pending again.
	mustClaim(t, s, b.ID, Epoch.Add(10*time.Second), Epoch.Add(time.Minute))
	mustRecord(t, s, b.ID, store.AttemptOutcome{State: store.NotificationFailed, Error: "HTTP 401"})
	n, change, err = s.RetryNotification(ctx(t), inc.ID, b.ID, "operator:Ben")
	if err != nil {
		t.Fatalf("retry a failed notification: %v", err)
	}
	if n.State != store.NotificationPending || n.Attempts != 1 || !strings.Contains(change.Event.Detail, "pending again") {
		t.Errorf("after retry of failed = %+v, event %q; want pending again", n, change.Event.Detail)
	}

	// Sending and sent notifications, another incident's notification and
	// a missing one are refused.
	mustClaim(t, s, b.ID, Epoch.Add(10*time.Second), Epoch.Add(time.Minute))
	_, _, err = s.RetryNotification(ctx(t), inc.ID, b.ID, "operator:Ana")
	wantConflict(t, "retry a sending notification", err)
	mustRecord(t, s, b.ID, store.AttemptOutcome{State: store.NotificationSent, ProviderID: "SM-b"})
	_, _, err = s.RetryNotification(ctx(t), inc.ID, b.ID, "operator:Ana")
	wantConflict(t, "retry a sent notification", err)
	if _, _, err := s.RetryNotification(ctx(t), other.ID, a.ID, "operator:Ana"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("retry through another incident: error %v, want store.ErrNotFound", err)
	}
	if _, _, err := s.RetryNotification(ctx(t), inc.ID, 9999, "operator:Ana"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("retry a missing notification: error %v, want store.ErrNotFound", err)
	}
}

func testNotificationByProvider(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	inc := openOneIncident(t, s, 1, "veh-1", "sos-1")
	a := queueOne(t, s, inc.ID, phoneAna)
	if _, err := s.NotificationByProvider(ctx(t), "CA-unknown"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown provider id: error %v, want store.ErrNotFound", err)
	}
	mustClaim(t, s, a.ID, Epoch, Epoch.Add(time.Minute))
	mustRecord(t, s, a.ID, store.AttemptOutcome{State: store.NotificationSent, ProviderID: "CA-a"})
	n, err := s.NotificationByProvider(ctx(t), "CA-a")
	if err != nil || n.ID != a.ID || n.ProviderID != "CA-a" {
		t.Errorf("NotificationByProvider(CA-a) = %+v, %v; want notification %d", n, err, a.ID)
	}
}
