package api_test

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/xpress-ops/tower/hub/dispatch"
	"github.com/xpress-ops/tower/hub/dispatch/dispatchtest"
	"github.com/xpress-ops/tower/hub/store"
)

// TestRetryNotification fails an SMS permanently, then has an operator
// retry it: the notification is pending and due again, the audit trail
// names the operator, and the next outbox pass sends it. A sent
// notification cannot be retried, and the operator header is required.
func TestRetryNotification(t *testing.T) {
	ds := newDispatchServer(t)
	code, body := ds.request(t, http.MethodPost, "/api/v1/contacts",
		`{"name":"Ana Reyes","role":"responder","region":"NCR-Manila","phone":"09171234567"}`, true)
	if code != http.StatusCreated {
		t.Fatalf("POST contact = %d %s", code, body)
	}
	ds.twilio.Script("+639171234567", dispatchtest.Reply{Status: 400, Code: 21211})
	inc := ds.openIncident(t, "sos-retry")
	if err := ds.d.Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.d.SendDue(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := notificationOf(t, ds, inc.ID)
	if n.State != store.NotificationFailed {
		t.Fatalf("SMS after Twilio error 21211 = %s, want failed", n.State)
	}
	path := "/api/v1/incidents/" + strconv.FormatInt(inc.ID, 10) + "/notifications/" + strconv.FormatInt(n.ID, 10) + "/retry"

	if code, body := ds.request(t, http.MethodPost, path, "", false); code != http.StatusUnauthorized || !strings.Contains(string(body), "sign in first") {
		t.Errorf("retry without a principal = %d %s, want 401", code, body)
	}
	if code, _ := ds.request(t, http.MethodPost, "/api/v1/incidents/"+strconv.FormatInt(inc.ID+1, 10)+"/notifications/"+strconv.FormatInt(n.ID, 10)+"/retry", "", true); code != http.StatusNotFound {
		t.Errorf("retry through another incident = %d, want 404", code)
	}
	code, body = ds.request(t, http.MethodPost, path, "", true)
	if code != http.StatusOK || !strings.Contains(string(body), `"state":"pending"`) {
		t.Fatalf("retry = %d %s, want 200 with the notification pending", code, body)
	}
	_, evs, err := ds.store.Incident(context.Background(), inc.ID)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range evs {
		if ev.Actor == "operator:admin" && strings.Contains(ev.Detail, "operator:admin asked to retry") {
			found = true
		}
	}
	if !found {
		t.Errorf("no audit event naming the operator among %+v", evs)
	}
	if _, err := ds.d.SendDue(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := notificationOf(t, ds, inc.ID); n.State != store.NotificationSent || len(ds.twilio.MessagesTo("+639171234567")) != 1 {
		t.Fatalf("after the retry the SMS is %s with %d messages, want sent once", n.State, len(ds.twilio.MessagesTo("+639171234567")))
	}
	if code, body := ds.request(t, http.MethodPost, path, "", true); code != http.StatusConflict {
		t.Errorf("retry of a sent notification = %d %s, want 409", code, body)
	}
}

// TestEmergencyHealthReportsRejectedCredentials makes Twilio reject the
// hub's credentials: /api/emergency/health is degraded with the problem
// named, and its last_error does not show the account SID.
func TestEmergencyHealthReportsRejectedCredentials(t *testing.T) {
	ds := newDispatchServer(t)
	code, body := ds.request(t, http.MethodPost, "/api/v1/contacts",
		`{"name":"Ana Reyes","role":"responder","region":"NCR-Manila","phone":"09171234567"}`, true)
	if code != http.StatusCreated {
		t.Fatalf("POST contact = %d %s", code, body)
	}
	ds.twilio.Script("+639171234567", dispatchtest.Reply{Status: 401, Code: 20003})
	inc := ds.openIncident(t, "sos-auth")
	if err := ds.d.Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.d.SendDue(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := notificationOf(t, ds, inc.ID); n.State != store.NotificationPending {
		t.Errorf("SMS after a 401 = %s, want pending", n.State)
	}
	code, body = ds.request(t, http.MethodGet, "/api/emergency/health", "", false)
	if code != http.StatusOK || !strings.Contains(string(body), `"status":"degraded"`) || !strings.Contains(string(body), "sms: twilio rejects the credentials") {
		t.Errorf("/api/emergency/health = %d %s, want degraded naming the rejected credentials", code, body)
	}
	if strings.Contains(string(body), ds.twilio.AccountSID) {
		t.Errorf("/api/emergency/health shows the Twilio account SID: %s", body)
	}
}

// TestTwilioCallbackForAnotherAccount signs a callback with the hub's
// token but names another account: it is rejected with 403, counted, and
// the notification keeps its state.
func TestTwilioCallbackForAnotherAccount(t *testing.T) {
	ds := newDispatchServer(t)
	inc, sid := sentSMS(t, ds)
	other := "AC" + strings.Repeat("0", 32)
	form := url.Values{"MessageSid": {sid}, "MessageStatus": {"delivered"}, "AccountSid": {other}}
	signed := dispatchtest.SignTwilio(ds.twilio.AuthToken, dispatchPublicURL+dispatch.TwilioStatusPath, form)
	if code, body := ds.postCallback(t, form, signed); code != http.StatusForbidden || !strings.Contains(string(body), "AccountSid") {
		t.Errorf("callback for another account = %d %s, want 403 naming AccountSid", code, body)
	}
	if n := notificationOf(t, ds, inc.ID); n.State != store.NotificationSent {
		t.Errorf("notification after the rejected callback = %s, want sent", n.State)
	}
	if v := metricValue(t, ds.reg, "xpress_dispatch_status_callbacks_total", map[string]string{"result": "wrong_account"}); v != 1 {
		t.Errorf("wrong account metric = %v, want 1", v)
	}
}
