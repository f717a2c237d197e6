package dispatch_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/dispatch"
	"github.com/xpress-ops/tower/hub/dispatch/dispatchtest"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/notify"
)

// channelHealth returns the Health entry of channel ch.
func channelHealth(t *testing.T, h *harness, ch string) dispatch.ChannelHealth {
	t.Helper()
	health, err := h.d.Health(h.ctx())
	if err != nil {
		t.Fatalf("Health: %v", err)
	}
	for _, c := range health.Channels {
		if c.Channel == ch {
			return c
		}
	}
	t.Fatalf("Health has no channel %s: %+v", ch, health.Channels)
	return dispatch.ChannelHealth{}
}

// TestTwilioCredentialsRejected makes Twilio reply 401 (error 20003, a
// wrong auth token) to two SMS. The SMS stay pending and are sent once
// Twilio accepts again. Meanwhile Health names the problem, the metric
// counts both rejections and the error is logged once per minute. The
// channel stays degraded for 5 minutes after the last failure, even
// though later sends succeed.
func TestTwilioCredentialsRejected(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		var logs syncBuffer
		h := newHarness(t, kind, options{logTo: &logs})
		h.addContact(store.Contact{Name: "Ana Reyes", Role: store.RoleResponder, Region: testRegion, Phone: phoneAna})
		h.addContact(store.Contact{Name: "Ben Cruz", Role: store.RoleResponder, Region: testRegion, Phone: phoneBen})
		h.twilio.Script(phoneAna, dispatchtest.Reply{Status: 401, Code: 20003})
		h.twilio.Script(phoneBen, dispatchtest.Reply{Status: 401, Code: 20003})
		inc := h.openIncident(testRegion, testVehicle, "sos-auth")
		h.scan()
		h.sendDue()

		for _, phone := range []string{phoneAna, phoneBen} {
			if n := h.notification(inc.ID, store.ChannelSMS, phone); n.State != store.NotificationPending {
				t.Errorf("SMS to %s after a 401: %s, want pending for a retry", phone, n.State)
			}
		}
		sms := channelHealth(t, h, "sms")
		if !sms.Degraded || sms.Problem != "twilio rejects the credentials" || sms.RecentFailures != 2 {
			t.Errorf("SMS health after two 401 = %+v, want degraded with the credentials problem", sms)
		}
		if v := h.metric("xpress_dispatch_provider_auth_failures_total", map[string]string{"channel": "sms"}); v != 2 {
			t.Errorf("auth failures metric = %v, want 2", v)
		}
		if n := strings.Count(logs.String(), "rejects the hub's credentials"); n != 1 {
			t.Errorf("credentials error logged %d times within a minute, want once:\n%s", n, logs.String())
		}

		// The account is fixed: the retries go out.
		h.clock.Advance(dispatch.PersonRetryCap)
		h.sendDue()
		for _, phone := range []string{phoneAna, phoneBen} {
			if n := h.notification(inc.ID, store.ChannelSMS, phone); n.State != store.NotificationSent || len(h.twilio.MessagesTo(phone)) != 1 {
				t.Errorf("SMS to %s after the account was fixed: %s, want sent once", phone, n.State)
			}
		}
		if sms := channelHealth(t, h, "sms"); !sms.Degraded {
			t.Errorf("SMS health right after a success following failures = %+v, want still degraded", sms)
		}
		h.clock.Advance(5 * time.Minute)
		if sms := channelHealth(t, h, "sms"); sms.Degraded || sms.Problem != "" || sms.RecentFailures != 0 {
			t.Errorf("SMS health 5 minutes after the last failure = %+v, want healthy", sms)
		}
	})
}

// TestWebhookSecretPathNotShown makes the webhook receiver, whose URL
// path holds a secret token, fail: neither the audit trail, the stored
// error, Health nor the logs show the path.
func TestWebhookSecretPathNotShown(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		var logs syncBuffer
		h := newHarness(t, kind, options{logTo: &logs})
		h.hook.Script(503)
		inc := h.openIncident(testRegion, testVehicle, "sos-hook")
		h.scan()
		h.sendDue()

		n := h.notification(inc.ID, store.ChannelWebhook, h.hook.URL())
		if n.State != store.NotificationPending || n.LastError == "" {
			t.Fatalf("webhook after 503: state %s, error %q; want pending with the error", n.State, n.LastError)
		}
		const secret = "secret-token"
		if strings.Contains(n.LastError, secret) {
			t.Errorf("stored error %q shows the webhook path", n.LastError)
		}
		_, evs := h.incident(inc.ID)
		for _, ev := range evs {
			if strings.Contains(ev.Detail, secret) {
				t.Errorf("event %q shows the webhook path", ev.Detail)
			}
		}
		if hook := channelHealth(t, h, "webhook"); strings.Contains(hook.LastError, secret) || hook.LastError == "" {
			t.Errorf("Health last error %q: want the error without the webhook path", hook.LastError)
		}
		if strings.Contains(logs.String(), secret) {
			t.Errorf("logs show the webhook path:\n%s", logs.String())
		}
	})
}

// TestEarlyStatusCallbackApplied delivers Twilio's "delivered" callback
// while the hub still waits for the reply to its send, before the SID is
// recorded: the callback is kept and applied once the attempt is
// recorded, so the notification ends delivered.
func TestEarlyStatusCallbackApplied(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, options{})
		h.addContact(store.Contact{Name: "Ana Reyes", Role: store.RoleResponder, Region: testRegion, Phone: phoneAna})
		h.twilio.Script(phoneAna, dispatchtest.Reply{Hold: true})
		inc := h.openIncident(testRegion, testVehicle, "sos-early")
		h.scan()

		done := make(chan struct{})
		go func() { defer close(done); _, _ = h.d.SendDue(context.Background()) }()
		select {
		case <-h.twilio.Held():
		case <-time.After(20 * time.Second):
			t.Fatal("the SMS never reached the fake Twilio")
		}
		sid := h.twilio.MessagesTo(phoneAna)[0].SID
		_, err := h.d.ApplyTwilioStatus(h.ctx(), notify.TwilioStatus{
			Channel: notify.ChannelSMS, ProviderID: sid, Status: "delivered", Final: true, AccountSID: h.twilio.AccountSID,
		})
		if !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("callback before the send was recorded: error %v, want store.ErrNotFound", err)
		}
		h.twilio.Release()
		<-done

		if n := h.notification(inc.ID, store.ChannelSMS, phoneAna); n.State != store.NotificationDelivered || n.ProviderID != sid {
			t.Errorf("SMS after the early callback: state %s, provider id %q; want delivered, %s", n.State, n.ProviderID, sid)
		}
	})
}
