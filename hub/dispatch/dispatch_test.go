package dispatch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/dispatch"
	"github.com/xpress-ops/tower/hub/dispatch/dispatchtest"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/testlog"
	"github.com/xpress-ops/tower/notify"
)

func TestOpenedNotifiesEveryoneOnce(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, options{})
		h.addStandardContacts()
		inc := h.openIncident(testRegion, testVehicle, "sos-1")

		h.scan()
		got, evs := h.incident(inc.ID)
		if got.EscalationLevel != dispatch.LevelOpened {
			t.Fatalf("escalation level after the first scan = %d, want %d", got.EscalationLevel, dispatch.LevelOpened)
		}
		if len(eventsMatching(evs, store.EventEscalated, "level 1")) != 1 {
			t.Errorf("events %+v: want one escalated event of level 1", evs)
		}
		// Ana: SMS and email; Ben: SMS; Carla: SMS; one webhook. The
		// supervisor waits for level 2.
		if n := len(h.notifications(inc.ID)); n != 5 {
			t.Fatalf("queued %d notifications, want 5: %+v", n, h.notifications(inc.ID))
		}
		if h.hasNotification(inc.ID, store.ChannelSMS, phoneSupe) {
			t.Error("supervisor notified at level 1")
		}

		// The scan and the outbox run several times at once, then again.
		var wg sync.WaitGroup
		for range 3 {
			wg.Add(2)
			go func() { defer wg.Done(); _ = h.d.Scan(context.Background()) }()
			go func() { defer wg.Done(); _, _ = h.d.SendDue(context.Background()) }()
		}
		wg.Wait()
		h.scan()
		h.sendDue()
		if n := h.sendDue(); n != 0 {
			t.Errorf("an outbox pass after everything was sent started %d sends", n)
		}

		for _, phone := range []string{phoneAna, phoneBen, phoneCarla} {
			msgs := h.twilio.MessagesTo(phone)
			if len(msgs) != 1 {
				t.Errorf("SMS to %s: %d, want 1", phone, len(msgs))
				continue
			}
			n := h.notification(inc.ID, store.ChannelSMS, phone)
			if n.State != store.NotificationSent || n.ProviderID != msgs[0].SID || n.Attempts != 1 {
				t.Errorf("SMS notification to %s = state %s, provider id %q, attempts %d; want sent, %s, 1", phone, n.State, n.ProviderID, n.Attempts, msgs[0].SID)
			}
			if msgs[0].StatusCallback != publicURL+dispatch.TwilioStatusPath {
				t.Errorf("SMS to %s has status callback %q", phone, msgs[0].StatusCallback)
			}
		}
		if body := h.twilio.MessagesTo(phoneAna); len(body) == 1 && !strings.Contains(body[0].Body, "Paki-acknowledge") {
			t.Errorf("SMS to Ana, whose language is Filipino, reads %q", body[0].Body)
		}
		if body := h.twilio.MessagesTo(phoneCarla); len(body) == 1 && !strings.Contains(body[0].Body, "Our operations team is responding") {
			t.Errorf("SMS to the emergency contact reads %q, want the contacts' wording", body[0].Body)
		}
		if len(h.twilio.MessagesTo(phoneSupe)) != 0 {
			t.Error("supervisor got an SMS at level 1")
		}

		mails := h.smtp.MailsTo(emailAna)
		if len(mails) != 1 {
			t.Fatalf("emails to Ana: %d, want 1", len(mails))
		}
		if !strings.Contains(mails[0].Data, "Dashboard: "+publicURL+"/") {
			t.Errorf("email lacks the dashboard link:\n%s", mails[0].Data)
		}

		deliveries := h.hook.Deliveries()
		if len(deliveries) != 1 {
			t.Fatalf("webhook deliveries: %d, want 1", len(deliveries))
		}
		if h.hook.BadSignatures() != 0 {
			t.Errorf("webhook receiver saw %d bad signatures", h.hook.BadSignatures())
		}
		var payload dispatch.WebhookPayload
		if err := json.Unmarshal(deliveries[0].Body, &payload); err != nil {
			t.Fatalf("webhook body is not JSON: %v", err)
		}
		if payload.Type != dispatch.WebhookEventType || payload.Incident.ID != inc.ID || payload.Incident.VehicleID != testVehicle {
			t.Errorf("webhook payload = %+v, want incident %d of %s", payload, inc.ID, testVehicle)
		}
		if deliveries[0].Key != payload.Key || !strings.HasPrefix(payload.Key, "incident-") {
			t.Errorf("idempotency key header %q, body %q", deliveries[0].Key, payload.Key)
		}
		if strings.Contains(payload.Key, "secret-token") {
			t.Errorf("idempotency key %q contains the webhook URL's secret path", payload.Key)
		}

		_, evs = h.incident(inc.ID)
		if n := len(eventsMatching(evs, store.EventNotification, "attempt 1: sent")); n != 5 {
			t.Errorf("%d sent attempt events, want 5: %+v", n, evs)
		}
		if n := len(eventsMatching(evs, store.EventNotification, "queued")); n != 5 {
			t.Errorf("%d queued events, want 5", n)
		}
		// One event for the escalation and one per recorded attempt.
		if n := h.updatedEvents(); n != 6 {
			t.Errorf("incident.updated events = %d, want 6", n)
		}
		if v := h.metric("xpress_dispatch_notifications_total", map[string]string{"channel": "sms", "outcome": "sent"}); v != 3 {
			t.Errorf("sent SMS metric = %v, want 3", v)
		}
		if v := h.metric("xpress_dispatch_escalations_total", map[string]string{"level": "1"}); v != 1 {
			t.Errorf("level 1 escalations metric = %v, want 1", v)
		}
	})
}

func TestTransientErrorsRetryWithBackoff(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, options{})
		h.addContact(store.Contact{Name: "Ana Reyes", Role: store.RoleResponder, Region: testRegion, Phone: phoneAna, Email: emailAna})
		h.twilio.Script(phoneAna,
			dispatchtest.Reply{Status: 429, Code: 20429, RetryAfter: "7"},
			dispatchtest.Reply{Status: 500, Code: 20500},
		)
		h.smtp.Reject(emailAna, 451)
		h.hook.Script(503)
		inc := h.openIncident(testRegion, testVehicle, "sos-retry")

		h.scan()
		h.sendDue()
		sms := h.notification(inc.ID, store.ChannelSMS, phoneAna)
		if sms.State != store.NotificationPending || !sms.NextAttemptAt.Equal(t0.Add(7*time.Second)) {
			t.Fatalf("SMS after 429 with Retry-After 7: state %s, next attempt %s; want pending at %s", sms.State, sms.NextAttemptAt, t0.Add(7*time.Second))
		}
		mail := h.notification(inc.ID, store.ChannelEmail, emailAna)
		if mail.State != store.NotificationPending || !mail.NextAttemptAt.After(t0) || mail.NextAttemptAt.After(t0.Add(notify.BackoffBase)) {
			t.Errorf("email after 451: state %s, next attempt %s; want pending within %s", mail.State, mail.NextAttemptAt, notify.BackoffBase)
		}
		hook := h.notification(inc.ID, store.ChannelWebhook, h.hook.URL())
		if hook.State != store.NotificationPending {
			t.Errorf("webhook after 503: state %s, want pending", hook.State)
		}

		// Before Retry-After ends, nothing is sent to Ana.
		h.clock.Advance(6 * time.Second)
		h.sendDue()
		if n := h.twilio.Creates(phoneAna); n != 1 {
			t.Fatalf("create requests for Ana before Retry-After ended: %d, want 1", n)
		}

		// The second attempt gets 500: its outcome is unknown, Twilio has
		// no such message, and the retry comes within Backoff(2).
		h.clock.Advance(time.Second)
		h.sendDue()
		sms = h.notification(inc.ID, store.ChannelSMS, phoneAna)
		if sms.State != store.NotificationPending || sms.Attempts != 2 {
			t.Fatalf("SMS after 500: state %s, attempts %d; want pending, 2", sms.State, sms.Attempts)
		}
		if sms.NextAttemptAt.After(h.clock.Now().Add(2 * notify.BackoffBase)) {
			t.Errorf("SMS retry at %s, later than Backoff(2) allows after %s", sms.NextAttemptAt, h.clock.Now())
		}
		if !strings.Contains(sms.LastError, "outcome unknown") {
			t.Errorf("SMS last error %q does not mark the unknown outcome", sms.LastError)
		}

		h.clock.Advance(2 * notify.BackoffBase)
		h.sendDue()
		sms = h.notification(inc.ID, store.ChannelSMS, phoneAna)
		msgs := h.twilio.MessagesTo(phoneAna)
		if len(msgs) != 1 || sms.State != store.NotificationSent || sms.ProviderID != msgs[0].SID || sms.Attempts != 3 {
			t.Fatalf("SMS after the third attempt: state %s, attempts %d, provider id %q, messages %d; want sent once on attempt 3",
				sms.State, sms.Attempts, sms.ProviderID, len(msgs))
		}
		if n := h.twilio.Creates(phoneAna); n != 3 {
			t.Errorf("create requests for Ana: %d, want 3", n)
		}
		if got := h.notification(inc.ID, store.ChannelEmail, emailAna); got.State != store.NotificationSent || len(h.smtp.MailsTo(emailAna)) != 1 {
			t.Errorf("email after retry: state %s, mails %d; want sent once", got.State, len(h.smtp.MailsTo(emailAna)))
		}
		if h.smtp.RcptAttempts(emailAna) != 2 {
			t.Errorf("RCPT attempts for Ana: %d, want 2", h.smtp.RcptAttempts(emailAna))
		}
		if got := h.notification(inc.ID, store.ChannelWebhook, h.hook.URL()); got.State != store.NotificationSent || len(h.hook.Deliveries()) != 1 {
			t.Errorf("webhook after retry: state %s, deliveries %d; want sent once", got.State, len(h.hook.Deliveries()))
		}

		_, evs := h.incident(inc.ID)
		for _, want := range []string{"sms to " + phoneAna + " attempt 1: not sent", "sms to " + phoneAna + " attempt 2: not sent", "sms to " + phoneAna + " attempt 3: sent"} {
			if len(eventsMatching(evs, store.EventNotification, want)) != 1 {
				t.Errorf("no event %q among %+v", want, evs)
			}
		}
		if v := h.metric("xpress_dispatch_notifications_total", map[string]string{"channel": "sms", "outcome": "retry"}); v != 2 {
			t.Errorf("SMS retry metric = %v, want 2", v)
		}
	})
}

func TestPermanentErrorsNotRetried(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, options{})
		h.addContact(store.Contact{Name: "Ana Reyes", Role: store.RoleResponder, Region: testRegion, Phone: phoneAna, Email: emailAna})
		h.addContact(store.Contact{Name: "Ben Cruz", Role: store.RoleResponder, Region: testRegion, Phone: phoneBen})
		h.twilio.Script(phoneAna, dispatchtest.Reply{Status: 400, Code: 21211})
		h.twilio.Script(phoneBen, dispatchtest.Reply{Status: 400, Code: 21610})
		h.smtp.Reject(emailAna, 550)
		h.hook.Script(410)
		inc := h.openIncident(testRegion, testVehicle, "sos-perm")

		h.scan()
		h.sendDue()
		for i := 0; i < 3; i++ {
			h.clock.Advance(10 * time.Minute)
			h.scan()
			h.sendDue()
		}

		for _, c := range []struct {
			ch      store.Channel
			address string
			code    string
		}{
			{store.ChannelSMS, phoneAna, "21211"},
			{store.ChannelSMS, phoneBen, "21610"},
			{store.ChannelEmail, emailAna, "550"},
			{store.ChannelWebhook, h.hook.URL(), "410"},
		} {
			n := h.notification(inc.ID, c.ch, c.address)
			if n.State != store.NotificationFailed || n.Attempts != 1 || !n.NextAttemptAt.IsZero() {
				t.Errorf("%s to %s: state %s, attempts %d, next %s; want failed after 1 attempt", c.ch, c.address, n.State, n.Attempts, n.NextAttemptAt)
			}
			if !strings.Contains(n.LastError, c.code) {
				t.Errorf("%s to %s: last error %q lacks %s", c.ch, c.address, n.LastError, c.code)
			}
		}
		if h.twilio.Creates(phoneAna) != 1 || h.twilio.Creates(phoneBen) != 1 {
			t.Errorf("create requests: Ana %d, Ben %d; want 1 each", h.twilio.Creates(phoneAna), h.twilio.Creates(phoneBen))
		}
		if h.smtp.RcptAttempts(emailAna) != 1 || h.hook.Requests() != 1 {
			t.Errorf("RCPT attempts %d, webhook requests %d; want 1 each", h.smtp.RcptAttempts(emailAna), h.hook.Requests())
		}
		_, evs := h.incident(inc.ID)
		if n := len(eventsMatching(evs, store.EventNotification, "failed, no more attempts")); n != 4 {
			t.Errorf("%d failed events, want 4", n)
		}
		if v := h.metric("xpress_dispatch_notifications_total", map[string]string{"channel": "sms", "outcome": "failed"}); v != 2 {
			t.Errorf("failed SMS metric = %v, want 2", v)
		}
	})
}

func TestTimeoutReconciledWithTwilio(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, options{twilioTimeout: time.Second})
		h.addContact(store.Contact{Name: "Ana Reyes", Role: store.RoleResponder, Region: testRegion, Phone: phoneAna})
		h.addContact(store.Contact{Name: "Ben Cruz", Role: store.RoleResponder, Region: testRegion, Phone: phoneBen})
		// Ana's message is created but its reply never comes in time; Ben's
		// request gets no reply and creates nothing.
		h.twilio.Script(phoneAna, dispatchtest.Reply{Hold: true})
		h.twilio.Script(phoneBen, dispatchtest.Reply{Hang: true})
		inc := h.openIncident(testRegion, testVehicle, "sos-timeout")

		h.scan()
		h.sendDue()

		ana := h.notification(inc.ID, store.ChannelSMS, phoneAna)
		msgs := h.twilio.MessagesTo(phoneAna)
		if len(msgs) != 1 || ana.State != store.NotificationSent || ana.ProviderID != msgs[0].SID {
			t.Fatalf("Ana after a timeout: state %s, provider id %q, messages %d; want sent with the created message's SID", ana.State, ana.ProviderID, len(msgs))
		}
		ben := h.notification(inc.ID, store.ChannelSMS, phoneBen)
		if ben.State != store.NotificationPending || !strings.Contains(ben.LastError, "outcome unknown") {
			t.Fatalf("Ben after a timeout with nothing created: state %s, last error %q; want pending with the unknown outcome marked", ben.State, ben.LastError)
		}

		h.clock.Advance(notify.BackoffBase)
		h.sendDue()
		ben = h.notification(inc.ID, store.ChannelSMS, phoneBen)
		if got := h.twilio.MessagesTo(phoneBen); len(got) != 1 || ben.State != store.NotificationSent || ben.ProviderID != got[0].SID {
			t.Errorf("Ben after the retry: state %s, messages %d; want sent once", ben.State, len(got))
		}
		if n := h.twilio.Creates(phoneAna); n != 1 {
			t.Errorf("create requests for Ana: %d, want 1", n)
		}
		_, evs := h.incident(inc.ID)
		if len(eventsMatching(evs, store.EventNotification, "reconciled")) != 1 {
			t.Errorf("no reconciled event among %+v", evs)
		}
		if v := h.metric("xpress_dispatch_notifications_total", map[string]string{"channel": "sms", "outcome": "reconciled"}); v != 1 {
			t.Errorf("reconciled metric = %v, want 1", v)
		}
	})
}

func TestExpiredLeaseReconciledWithTwilio(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, options{})
		h.addContact(store.Contact{Name: "Ana Reyes", Role: store.RoleResponder, Region: testRegion, Phone: phoneAna})
		h.addContact(store.Contact{Name: "Ben Cruz", Role: store.RoleResponder, Region: testRegion, Phone: phoneBen})
		inc := h.openIncident(testRegion, testVehicle, "sos-lease")
		h.scan()

		// A hub claims both SMS and crashes: it had sent Ana's, not Ben's.
		now := h.clock.Now()
		for _, phone := range []string{phoneAna, phoneBen} {
			n := h.notification(inc.ID, store.ChannelSMS, phone)
			claimed, unknown, err := h.store.ClaimNotification(h.ctx(), n.ID, now, now.Add(45*time.Second))
			if err != nil || unknown {
				t.Fatalf("claim %s: unknown %v, error %v", phone, unknown, err)
			}
			if phone == phoneAna {
				msg := notify.Message{Channel: notify.ChannelSMS, To: phone, Text: "XPRESS SOS", Key: dispatch.NotificationKey(claimed, inc)}
				if _, err := h.sender.Send(h.ctx(), msg); err != nil {
					t.Fatalf("send as the crashed hub: %v", err)
				}
			}
		}

		// While the lease holds, no SMS goes out.
		h.clock.Advance(30 * time.Second)
		h.sendDue()
		if h.twilio.Creates(phoneBen) != 0 {
			t.Fatal("Ben's SMS sent before the lease expired")
		}

		h.clock.Advance(20 * time.Second)
		h.sendDue()
		ana := h.notification(inc.ID, store.ChannelSMS, phoneAna)
		msgs := h.twilio.MessagesTo(phoneAna)
		if len(msgs) != 1 || ana.State != store.NotificationSent || ana.ProviderID != msgs[0].SID {
			t.Errorf("Ana: state %s, provider id %q, messages %d; want sent once with the crashed attempt's SID", ana.State, ana.ProviderID, len(msgs))
		}
		ben := h.notification(inc.ID, store.ChannelSMS, phoneBen)
		if got := h.twilio.MessagesTo(phoneBen); len(got) != 1 || ben.State != store.NotificationSent || ben.Attempts != 2 {
			t.Errorf("Ben: state %s, attempts %d, messages %d; want sent once on attempt 2", ben.State, ben.Attempts, len(got))
		}
	})
}

func TestEscalationTimers(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, options{})
		h.addStandardContacts()
		inc := h.openIncident(testRegion, testVehicle, "sos-esc")
		acked := h.openIncident(testRegion, "taxi-0918", "sos-acked")
		h.scan()
		h.sendDue()

		h.clock.Advance(10 * time.Second)
		if _, err := h.store.AcknowledgeIncident(h.ctx(), acked.ID, "operator:Ana"); err != nil {
			t.Fatal(err)
		}

		h.clock.Advance(19 * time.Second)
		h.scan()
		h.sendDue()
		if got, _ := h.incident(inc.ID); got.EscalationLevel != dispatch.LevelOpened {
			t.Fatalf("level at 29 s = %d, want %d", got.EscalationLevel, dispatch.LevelOpened)
		}
		if len(h.twilio.MessagesTo(phoneSupe)) != 0 || h.hasNotification(inc.ID, store.ChannelSMS, phoneSupe) {
			t.Fatal("supervisor alerted before 30 s")
		}

		h.clock.Advance(time.Second)
		h.scan()
		h.sendDue()
		got, evs := h.incident(inc.ID)
		if got.EscalationLevel != dispatch.LevelSupervisors {
			t.Fatalf("level at 30 s = %d, want %d", got.EscalationLevel, dispatch.LevelSupervisors)
		}
		if len(eventsMatching(evs, store.EventEscalated, "not acknowledged after 30s")) != 1 {
			t.Errorf("no level 2 event saying how long the incident waited: %+v", evs)
		}
		sms := h.twilio.MessagesTo(phoneSupe)
		if len(sms) != 1 || !strings.Contains(sms[0].Body, "ESCALATION") {
			t.Fatalf("supervisor SMS at 30 s: %+v, want one escalation SMS", sms)
		}
		if len(h.smtp.MailsTo(emailSupe)) != 1 {
			t.Errorf("supervisor emails at 30 s: %d, want 1", len(h.smtp.MailsTo(emailSupe)))
		}
		if len(h.twilio.CallsTo(phoneSupe)) != 0 {
			t.Error("supervisor called at 30 s")
		}

		h.clock.Advance(29 * time.Second)
		h.scan()
		h.sendDue()
		if len(h.twilio.CallsTo(phoneSupe)) != 0 {
			t.Fatal("supervisor called 29 s after the SMS")
		}
		h.clock.Advance(time.Second)
		h.scan()
		h.sendDue()
		if got, _ := h.incident(inc.ID); got.EscalationLevel != dispatch.LevelVoice {
			t.Fatalf("level at 60 s = %d, want %d", got.EscalationLevel, dispatch.LevelVoice)
		}
		calls := h.twilio.CallsTo(phoneSupe)
		if len(calls) != 1 || !strings.Contains(calls[0].Twiml, "not been acknowledged") {
			t.Fatalf("calls to the supervisor at 60 s: %+v, want one that says it is unacknowledged", calls)
		}

		// The acknowledged incident never escalates.
		h.clock.Advance(5 * time.Minute)
		h.scan()
		h.sendDue()
		if got, _ := h.incident(acked.ID); got.EscalationLevel != dispatch.LevelOpened {
			t.Errorf("acknowledged incident at level %d, want %d", got.EscalationLevel, dispatch.LevelOpened)
		}
		if h.hasNotification(acked.ID, store.ChannelSMS, phoneSupe) || h.hasNotification(acked.ID, store.ChannelVoice, phoneSupe) {
			t.Error("supervisor notified of the acknowledged incident")
		}
		if n := len(h.twilio.MessagesTo(phoneSupe)); n != 1 {
			t.Errorf("SMS to the supervisor: %d, want 1", n)
		}
		if v := h.metric("xpress_dispatch_escalations_total", map[string]string{"level": "3"}); v != 1 {
			t.Errorf("level 3 metric = %v, want 1", v)
		}
	})
}

func TestEscalationSkippedWhenAcknowledgedBeforeSend(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, options{})
		h.addStandardContacts()
		inc := h.openIncident(testRegion, testVehicle, "sos-late-ack")
		h.scan()
		h.sendDue()
		h.clock.Advance(30 * time.Second)
		h.scan()
		if !h.hasNotification(inc.ID, store.ChannelSMS, phoneSupe) {
			t.Fatal("supervisor SMS not queued at 30 s")
		}
		if _, err := h.store.AcknowledgeIncident(h.ctx(), inc.ID, "operator:Ben"); err != nil {
			t.Fatal(err)
		}
		h.sendDue()
		if n := len(h.twilio.MessagesTo(phoneSupe)); n != 0 {
			t.Errorf("supervisor got %d SMS after the acknowledgement", n)
		}
		n := h.notification(inc.ID, store.ChannelSMS, phoneSupe)
		if n.State != store.NotificationFailed || !strings.Contains(n.LastError, "no longer needed") {
			t.Errorf("supervisor SMS: state %s, last error %q; want failed as no longer needed", n.State, n.LastError)
		}
	})
}

func TestAlertsSkippedOnceIncidentClosed(t *testing.T) {
	h := newHarness(t, "embedded", options{})
	h.addStandardContacts()
	inc := h.openIncident(testRegion, testVehicle, "sos-closed")
	h.scan()
	if _, err := h.store.CancelIncident(h.ctx(), inc.ID, "operator:Ben", "pressed by mistake"); err != nil {
		t.Fatal(err)
	}
	h.sendDue()
	if n := len(h.twilio.Messages()); n != 0 {
		t.Errorf("SMS sent for a cancelled incident: %d", n)
	}
	sms := h.notification(inc.ID, store.ChannelSMS, phoneCarla)
	if sms.State != store.NotificationFailed || !strings.Contains(sms.LastError, "is cancelled") {
		t.Errorf("emergency contact SMS: state %s, last error %q; want failed as no longer needed", sms.State, sms.LastError)
	}
	if n := len(h.hook.Deliveries()); n != 1 {
		t.Errorf("webhook deliveries: %d, want 1, since webhooks follow incidents to their end", n)
	}
	if v := h.metric("xpress_dispatch_notifications_total", map[string]string{"channel": "sms", "outcome": "skipped"}); v != 3 {
		t.Errorf("skipped SMS metric = %v, want 3", v)
	}
}

func TestRestartKeepsEscalationTimers(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, options{})
		h.addStandardContacts()
		inc := h.openIncident(testRegion, testVehicle, "sos-restart")
		h.scan()
		h.sendDue()
		level1 := len(h.notifications(inc.ID))

		h.clock.Advance(20 * time.Second)
		h.restart()
		h.scan()
		h.sendDue()
		if got, _ := h.incident(inc.ID); got.EscalationLevel != dispatch.LevelOpened {
			t.Fatalf("level at 20 s after the restart = %d, want %d", got.EscalationLevel, dispatch.LevelOpened)
		}
		if n := len(h.notifications(inc.ID)); n != level1 {
			t.Fatalf("notifications after the restart: %d, want the %d of level 1", n, level1)
		}

		h.clock.Advance(10 * time.Second)
		h.scan()
		h.sendDue()
		got, evs := h.incident(inc.ID)
		if got.EscalationLevel != dispatch.LevelSupervisors {
			t.Fatalf("level at 30 s after the restart = %d, want %d", got.EscalationLevel, dispatch.LevelSupervisors)
		}
		if n := len(eventsMatching(evs, store.EventEscalated, "level 1")); n != 1 {
			t.Errorf("level 1 events: %d, want 1", n)
		}
		for _, phone := range []string{phoneAna, phoneBen, phoneCarla, phoneSupe} {
			if n := len(h.twilio.MessagesTo(phone)); n != 1 {
				t.Errorf("SMS to %s: %d, want 1", phone, n)
			}
		}
	})
}

func TestRegionWithoutContacts(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, options{})
		h.addStandardContacts()
		inc := h.openIncident("Davao", "taxi-0920", "sos-davao")
		h.scan()
		got, evs := h.incident(inc.ID)
		if got.EscalationLevel != dispatch.LevelOpened {
			t.Fatalf("level = %d, want %d even though nobody is configured", got.EscalationLevel, dispatch.LevelOpened)
		}
		if len(eventsMatching(evs, store.EventEscalated, `nobody configured: region "Davao" has no responders`)) != 1 {
			t.Errorf("no escalated event saying nobody is configured: %+v", evs)
		}
		if v := h.metric("xpress_dispatch_regions_without_contacts_total", map[string]string{"role": "responder"}); v != 1 {
			t.Errorf("regions without responders metric = %v, want 1", v)
		}
		// Only the webhook goes out.
		list := h.notifications(inc.ID)
		if len(list) != 1 || list[0].Channel != store.ChannelWebhook {
			t.Errorf("notifications = %+v, want only the webhook", list)
		}

		h.clock.Advance(30 * time.Second)
		h.scan()
		got, evs = h.incident(inc.ID)
		if got.EscalationLevel != dispatch.LevelSupervisors {
			t.Errorf("level at 30 s = %d, want %d", got.EscalationLevel, dispatch.LevelSupervisors)
		}
		if len(eventsMatching(evs, store.EventEscalated, "has no supervisors")) != 1 {
			t.Errorf("no escalated event saying the region has no supervisors: %+v", evs)
		}
		if v := h.metric("xpress_dispatch_regions_without_contacts_total", map[string]string{"role": "supervisor"}); v != 1 {
			t.Errorf("regions without supervisors metric = %v, want 1", v)
		}
	})
}

func TestRegionWithoutContacts_LoggedOncePerInterval(t *testing.T) {
	var logs syncBuffer
	h := newHarness(t, "embedded", options{logTo: &logs})
	for i := range 3 {
		h.openIncident("Davao", fmt.Sprintf("taxi-%d", 930+i), fmt.Sprintf("sos-burst-%d", i))
	}
	h.scan()
	const line = "no responder contacts configured"
	if n := strings.Count(logs.String(), line); n != 1 {
		t.Errorf("log lines %q after 3 incidents = %d, want 1:\n%s", line, n, logs.String())
	}
	if v := h.metric("xpress_dispatch_regions_without_contacts_total", map[string]string{"role": "responder"}); v != 3 {
		t.Errorf("regions without responders metric = %v, want 3 (one per incident)", v)
	}

	h.clock.Advance(11 * time.Minute)
	h.openIncident("Davao", "taxi-0940", "sos-burst-later")
	h.scan()
	out := logs.String()
	if n := strings.Count(out, line); n != 2 {
		t.Errorf("log lines %q after the interval = %d, want 2:\n%s", line, n, out)
	}
	if !strings.Contains(out, "incidents_not_logged_since_last=2") {
		t.Errorf("second log line does not count the 2 incidents not logged:\n%s", out)
	}
}

// syncBuffer is a log sink safe for concurrent writes and reads.
type syncBuffer = testlog.Buffer

func TestAgentCatchingUp_HoldsNewIncident(t *testing.T) {
	var catchingUp atomic.Bool
	catchingUp.Store(true)
	h := newHarness(t, "embedded", options{catchingUp: func(string) bool { return catchingUp.Load() }})
	h.addStandardContacts()
	inc := h.openIncident(testRegion, testVehicle, "sos-backlog")

	h.scan()
	if got, _ := h.incident(inc.ID); got.EscalationLevel != 0 {
		t.Errorf("level while the agent sends its backlog = %d, want 0", got.EscalationLevel)
	}
	if list := h.notifications(inc.ID); len(list) != 0 {
		t.Errorf("notifications queued while the agent sends its backlog: %+v", list)
	}

	catchingUp.Store(false)
	h.scan()
	if got, _ := h.incident(inc.ID); got.EscalationLevel != dispatch.LevelOpened {
		t.Errorf("level after the backlog = %d, want %d", got.EscalationLevel, dispatch.LevelOpened)
	}
}

func TestAgentCatchingUp_HoldIsBounded(t *testing.T) {
	h := newHarness(t, "embedded", options{catchingUp: func(string) bool { return true }})
	h.addStandardContacts()
	inc := h.openIncident(testRegion, testVehicle, "sos-stuck-backlog")
	h.scan()
	h.clock.Advance(dispatch.MaxCatchUpHold)
	h.scan()
	if got, _ := h.incident(inc.ID); got.EscalationLevel < dispatch.LevelOpened {
		t.Errorf("level %s after the hold = %d, want at least %d", dispatch.MaxCatchUpHold, got.EscalationLevel, dispatch.LevelOpened)
	}
}

func TestDisabledChannelQueuesNothing(t *testing.T) {
	h := newHarness(t, "embedded", options{noEmail: true})
	h.addStandardContacts()
	inc := h.openIncident(testRegion, testVehicle, "sos-noemail")
	h.scan()
	for _, n := range h.notifications(inc.ID) {
		if n.Channel == store.ChannelEmail {
			t.Errorf("email queued while email is disabled: %+v", n)
		}
	}
	if !h.hasNotification(inc.ID, store.ChannelSMS, phoneAna) {
		t.Error("SMS to Ana not queued")
	}
	health, err := h.d.Health(h.ctx())
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range health.Channels {
		if want := ch.Channel != "email"; ch.Enabled != want {
			t.Errorf("channel %s enabled = %v, want %v", ch.Channel, ch.Enabled, want)
		}
	}
	if health.Pending != len(h.notifications(inc.ID)) {
		t.Errorf("health pending = %d, want %d", health.Pending, len(h.notifications(inc.ID)))
	}
}

func TestRunningLoopFollowsBusAndClock(t *testing.T) {
	h := newHarness(t, "embedded", options{})
	h.addStandardContacts()
	h.d.Start()
	inc := h.openIncident(testRegion, testVehicle, "sos-loop")
	// The hub publishes incident.opened after the commit; the event wakes
	// the scan without a tick.
	if _, err := h.bus.Publish(events.TypeIncidentOpened, store.IncidentChange{Incident: inc, Opened: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "level 1 SMS to Ana", func() bool { return len(h.twilio.MessagesTo(phoneAna)) == 1 })
	waitFor(t, "Ana's SMS recorded as sent", func() bool {
		return h.notification(inc.ID, store.ChannelSMS, phoneAna).State == store.NotificationSent
	})

	h.clock.Advance(30 * time.Second)
	waitFor(t, "supervisor SMS after the clock passed 30 s", func() bool { return len(h.twilio.MessagesTo(phoneSupe)) == 1 })
	if err := h.d.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(h.twilio.MessagesTo(phoneAna)); n != 1 {
		t.Errorf("SMS to Ana: %d, want 1", n)
	}
}

func TestDriverLanguageAndMessage(t *testing.T) {
	h := newHarness(t, "embedded", options{})
	lang := dispatch.DriverLanguage(h.store, nil)
	if got := lang(h.ctx(), testVehicle); got != "en" {
		t.Errorf("language without a driver contact = %q, want en", got)
	}
	h.addContact(store.Contact{Name: "Juan Driver", Role: store.RoleDriver, VehicleID: testVehicle, Language: store.LangFilipino})
	if got := lang(h.ctx(), testVehicle); got != "fil" {
		t.Errorf("language of a Filipino driver = %q, want fil", got)
	}
	if got := dispatch.DriverMessage("fil", "acknowledged"); !strings.Contains(got, "operator") || got == dispatch.DriverMessage("en", "acknowledged") {
		t.Errorf("Filipino acknowledged message = %q", got)
	}
	if got, want := dispatch.DriverMessage("en", "received"), notify.DriverStateMessage(notify.English, "received"); got != want {
		t.Errorf("English received message = %q, want %q", got, want)
	}
}

// waitFor polls cond with the real clock until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
