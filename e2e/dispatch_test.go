package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/dispatch"
	"github.com/xpress-ops/tower/hub/dispatch/dispatchtest"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/pgtest"
	"github.com/xpress-ops/tower/notify"
	"github.com/xpress-ops/tower/protocol"
)

// dispatchHub is an xpress hub subprocess that sends SMS through a fake
// Twilio in the test process.
type dispatchHub struct {
	*process
	agentAddr, httpAddr, dbURL, dataDir string
	twilio                              *dispatchtest.Twilio
}

// start runs the hub on h's addresses and waits until it is ready.
func (h *dispatchHub) start(t *testing.T) {
	t.Helper()
	env := []string{
		"XPRESS_DATABASE_URL=" + h.dbURL,
		"XPRESS_TWILIO_AUTH_TOKEN=" + h.twilio.AuthToken,
	}
	h.process = startProcess(t, "hub", env, "hub",
		"--agent-mqtt-addr", h.agentAddr, "--http-addr", h.httpAddr, "--data-dir", h.dataDir,
		"--twilio-account-sid", h.twilio.AccountSID, "--twilio-from", "+639170000001",
		"--twilio-api-url", h.twilio.URL(),
		"--public-url", "http://"+h.httpAddr,
		// A send cut off by the crash is taken over 15 s after this.
		"--notify-timeout", "3s",
		// No supervisor level during the test.
		"--escalate-after", "10m",
	)
	waitHTTP(t, h.process, "http://"+h.httpAddr+"/readyz")
}

// notifications returns an incident's notifications from the hub's API.
func (h *dispatchHub) notifications(t *testing.T, incidentID int64) []store.Notification {
	t.Helper()
	var body struct {
		Notifications []store.Notification `json:"notifications"`
	}
	getJSON(t, fmt.Sprintf("http://%s/api/v1/incidents/%d/notifications", h.httpAddr, incidentID), &body)
	return body.Notifications
}

// postStatus posts a Twilio status callback form with the given signature.
func (h *dispatchHub) postStatus(t *testing.T, form url.Values, signature string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+h.httpAddr+dispatch.TwilioStatusPath, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set(notify.TwilioSignatureHeader, signature)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("post status callback: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// A hub killed after Twilio created an SMS but before the hub recorded
// it sends no second SMS after its restart: it finds the message at
// Twilio and records it as sent with the message's SID. Status callbacks
// then reach the notification only with a valid signature.
func TestDispatch_SMSSurvivesHubKill(t *testing.T) {
	const phone = "+639171234567"
	h := &dispatchHub{
		agentAddr: freeAddr(t), httpAddr: freeAddr(t), dbURL: pgtest.NewDatabase(t), dataDir: t.TempDir(),
		twilio: dispatchtest.NewTwilio(t, nil),
	}
	// Twilio creates the first SMS but its reply waits until the hub is
	// dead.
	h.twilio.Script(phone, dispatchtest.Reply{Hold: true})
	h.start(t)

	req, err := http.NewRequest(http.MethodPost, "http://"+h.httpAddr+"/api/v1/contacts",
		strings.NewReader(`{"name":"Ana Reyes","role":"responder","region":"NCR-Manila","phone":"0917 123 4567"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	authorize(req)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create contact: %s", resp.Status)
	}

	a := startFaultAgent(t, "ncr-dispatch", h.agentAddr, h.dbURL, 2*time.Second)
	vehicle := connectVehicle(t, a.MQTTAddr().String(), "ncr-taxi-21")
	publish(t, vehicle, protocol.VehicleTopicFor("ncr-taxi-21", protocol.TopicSOS), sosPayload("dispatch-1"))

	select {
	case <-h.twilio.Held():
	case <-time.After(60 * time.Second):
		t.Fatalf("Twilio got no SMS within 60 s; hub output:\n%s", h.output())
	}
	h.kill(syscall.SIGKILL)
	msgs := h.twilio.MessagesTo(phone)
	if len(msgs) != 1 {
		t.Fatalf("SMS created before the kill: %d, want 1", len(msgs))
	}
	sid := msgs[0].SID

	h.start(t)
	var incidents struct {
		Incidents []store.Incident `json:"incidents"`
	}
	getJSON(t, "http://"+h.httpAddr+"/api/v1/incidents?vehicle=ncr-taxi-21", &incidents)
	if len(incidents.Incidents) != 1 {
		t.Fatalf("incidents of ncr-taxi-21: %+v, want 1", incidents.Incidents)
	}
	incidentID := incidents.Incidents[0].ID

	var sms store.Notification
	waitFor(t, 90*time.Second, "the restarted hub to record the SMS", func() bool {
		for _, n := range h.notifications(t, incidentID) {
			if n.Channel == store.ChannelSMS && n.Address == phone {
				sms = n
			}
		}
		return sms.State == store.NotificationSent
	})
	if sms.ProviderID != sid {
		t.Errorf("recorded provider id %q, want the SID %s of the SMS created before the kill", sms.ProviderID, sid)
	}
	if n := len(h.twilio.MessagesTo(phone)); n != 1 {
		t.Errorf("SMS to %s: %d, want 1", phone, n)
	}
	if n := h.twilio.Creates(phone); n != 1 {
		t.Errorf("create requests for %s: %d, want 1", phone, n)
	}
	var detail struct {
		Events []store.IncidentEvent `json:"events"`
	}
	getJSON(t, fmt.Sprintf("http://%s/api/v1/incidents/%d", h.httpAddr, incidentID), &detail)
	reconciled := false
	for _, ev := range detail.Events {
		if ev.Type == store.EventNotification && strings.Contains(ev.Detail, "reconciled") {
			reconciled = true
		}
	}
	if !reconciled {
		t.Errorf("no reconciled notification event among %+v", detail.Events)
	}

	// Status callbacks: a forged one is refused, a signed one applied.
	form := url.Values{"MessageSid": {sid}, "MessageStatus": {"delivered"}, "AccountSid": {h.twilio.AccountSID}}
	callbackURL := "http://" + h.httpAddr + dispatch.TwilioStatusPath
	if code, body := h.postStatus(t, form, dispatchtest.SignTwilio("forged"+h.twilio.AuthToken, callbackURL, form)); code != http.StatusForbidden {
		t.Errorf("forged callback = %d %s, want 403", code, body)
	}
	if got := metricValue(t, "http://"+h.httpAddr+"/metrics", "xpress_dispatch_status_callbacks_total", "result", "bad_signature"); got != 1 {
		t.Errorf("bad signature callbacks counted = %v, want 1", got)
	}
	for _, n := range h.notifications(t, incidentID) {
		if n.ID == sms.ID && n.State != store.NotificationSent {
			t.Errorf("SMS after the forged callback = %s, want sent", n.State)
		}
	}
	code, body := h.postStatus(t, form, dispatchtest.SignTwilio(h.twilio.AuthToken, callbackURL, form))
	if code != http.StatusOK {
		t.Fatalf("signed callback = %d %s, want 200", code, body)
	}
	var applied struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal([]byte(body), &applied); err != nil || applied.Status != "applied" {
		t.Errorf("signed callback body %s, want status applied", body)
	}
	for _, n := range h.notifications(t, incidentID) {
		if n.ID == sms.ID && n.State != store.NotificationDelivered {
			t.Errorf("SMS after the signed callback = %s, want delivered", n.State)
		}
	}
}
