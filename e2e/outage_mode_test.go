package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/dispatch/dispatchtest"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/faultproxy"
	"github.com/xpress-ops/tower/internal/pgtest"
	"github.com/xpress-ops/tower/protocol"
)

// agentLocalSOS is the part of the agent's GET /api/v1/local/sos the
// test reads.
type agentLocalSOS struct {
	Uplink struct {
		State              string  `json:"state"`
		UnreachableSeconds float64 `json:"unreachable_seconds"`
	} `json:"uplink"`
	SOS []struct {
		VehicleID        string `json:"vehicle"`
		SOSID            string `json:"sos_id"`
		Kind             string `json:"kind"`
		MapURL           string `json:"map_url"`
		ReceivedAtManila string `json:"received_at_manila"`
		State            string `json:"state"`
		IncidentID       int64  `json:"incident"`
		HubReceived      bool   `json:"hub_received"`
		LocalAckBy       string `json:"local_ack_by"`
		Notifications    []struct {
			Address    string `json:"address"`
			State      string `json:"state"`
			ProviderID string `json:"provider_id"`
		} `json:"notifications"`
	} `json:"sos"`
}

// authHeaderMap is authHeader of host as postJSON takes it.
func authHeaderMap(host string) map[string]string {
	out := map[string]string{}
	for k, v := range authHeader(host) {
		out[k] = v[0]
	}
	return out
}

// postJSON posts body to url as JSON and returns the status and body.
func postJSON(t *testing.T, url, body string, header map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// cookieHeader returns the page's cookies for url as a Cookie header.
func (p *agentPage) cookieHeader(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	for _, c := range p.client.Jar.Cookies(u) {
		parts = append(parts, c.String())
	}
	return strings.Join(parts, "; ")
}

// agentPage is a browser signed in on an agent's page: its cookie jar
// and the session's CSRF token.
type agentPage struct {
	client *http.Client
	csrf   string
}

// signInAgent signs in on the agent's page and returns the status, the
// body and, on success, the signed-in page.
func signInAgent(t *testing.T, agentURL, username, password string) (int, string, *agentPage) {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	p := &agentPage{client: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
	body, _ := json.Marshal(map[string]string{"username": username, "password": password})
	resp, err := p.client.Post(agentURL+"/api/v1/local/session", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("sign in on the agent: %v", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, string(data), nil
	}
	var session struct {
		CSRF string `json:"csrf_token"`
	}
	if err := json.Unmarshal(data, &session); err != nil || session.CSRF == "" {
		t.Fatalf("sign-in body %s: %v", data, err)
	}
	p.csrf = session.CSRF
	return resp.StatusCode, string(data), p
}

// getJSON reads url with the page's session into v.
func (p *agentPage) getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := p.client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, data)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("GET %s: body is not JSON: %v: %s", url, err, data)
	}
}

// post posts body as JSON with the page's session and CSRF token.
func (p *agentPage) post(t *testing.T, url, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-CSRF-Token", p.csrf)
	resp, err := p.client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// An operator created on the hub reaches the agent's operator list. While
// the hub is down, the operator signs in on the agent's page with the hub
// password and acknowledges an SOS there. The driver hears it at
// once, and the hub records the acknowledgement by the operator's name
// when the link returns. The agent
// itself sends an SMS about an SOS that no one acknowledged, once per
// number after the outage delay. The hub's dispatcher, configured with
// the same number as a responder, does not send that SMS again.
func TestOutageMode_LocalAckAndAgentSMS(t *testing.T) {
	const (
		agentID   = "ncr-outage"
		phone     = "+639171234567"
		vehAck    = "ncr-taxi-31"
		vehSMS    = "ncr-taxi-32"
		sosAck    = "outage-ack-1"
		sosSMS    = "outage-sms-1"
		staff     = "Maria Santos"
		staffUser = "maria"
		// staffActor is the name her acknowledgements record.
		staffActor = staff + " (" + staffUser + ")"
		delaySec   = 10
	)
	twilio := dispatchtest.NewTwilio(t, nil)
	dbURL := pgtest.NewDatabase(t)
	hubAgentAddr, hubHTTPAddr := freeAddr(t), freeAddr(t)
	agentMQTTAddr, agentHTTPAddr := freeAddr(t), freeAddr(t)
	agentURL := "http://" + agentHTTPAddr

	// The hub starts with the same Twilio as the agent. It goes down, and
	// later comes back with the same database.
	hubArgs := []string{"hub", "--agent-mqtt-addr", hubAgentAddr, "--http-addr", hubHTTPAddr, "--data-dir", t.TempDir(),
		"--twilio-account-sid", twilio.AccountSID, "--twilio-from", "+639170000001", "--twilio-api-url", twilio.URL(),
		"--escalate-after", "10m"}
	hubEnv := []string{"XPRESS_DATABASE_URL=" + dbURL, "XPRESS_TWILIO_AUTH_TOKEN=" + twilio.AuthToken}
	agentToken := provisionAgent(t, dbURL, "", agentID)
	firstHub := startProcess(t, "hub", hubEnv, hubArgs...)
	waitHTTP(t, firstHub, "http://"+hubHTTPAddr+"/readyz")

	// Operators are created on the hub: one of the agent's region, one of
	// another region, who may not sign in at this agent.
	password, cebuPassword := rand.Text(), rand.Text()
	for _, body := range []string{
		fmt.Sprintf(`{"username":%q,"display_name":%q,"role":"operator","regions":["NCR-Manila"],"password":%q}`, staffUser, staff, password),
		fmt.Sprintf(`{"username":"ana","display_name":"Ana Reyes","role":"operator","regions":["Cebu"],"password":%q}`, cebuPassword),
	} {
		if code, resp := postJSON(t, "http://"+hubHTTPAddr+"/api/v1/admin/operators", body,
			map[string]string{"Authorization": "Bearer " + adminToken}); code != http.StatusCreated {
			t.Fatalf("create operator = %d %s", code, resp)
		}
	}

	// The WAN between agent and hub passes until the hub goes down.
	wan := faultproxy.Start(t, hubAgentAddr)

	agentProc := startProcess(t, "agent", []string{"XPRESS_TWILIO_AUTH_TOKEN=" + twilio.AuthToken,
		"XPRESS_AGENT_TOKEN=" + agentToken},
		"agent", "--id", agentID, "--region", "NCR-Manila",
		"--mqtt-addr", agentMQTTAddr, "--http-addr", agentHTTPAddr,
		"--hub-url", wan.URL(), "--data-dir", t.TempDir(),
		"--uplink-connect-timeout", "1s", "--uplink-min-backoff", "50ms", "--uplink-max-backoff", "500ms",
		"--outage-notify-after", fmt.Sprintf("%ds", delaySec), "--outage-notify-to", "0917 123 4567",
		"--twilio-account-sid", twilio.AccountSID, "--twilio-from", "+639170000001", "--twilio-api-url", twilio.URL(),
		"--public-url", agentURL+"/",
		// The vehicles of this test are not provisioned at the hub.
		"--vehicle-auth", "off",
	)
	waitHTTP(t, agentProc, agentURL+"/readyz")
	waitFor(t, 60*time.Second, "the hub's operator list at the agent", func() bool {
		return metricValue(t, agentURL+"/metrics", "xpress_agent_operator_list_operators") == 1
	})

	// The hub goes down: its process stops and the WAN is cut.
	firstHub.kill(syscall.SIGTERM)
	if code := firstHub.exitCode(t); code != 0 {
		t.Fatalf("hub exited with %d:\n%s", code, firstHub.output())
	}
	wan.Blackhole()

	// Without a session the agent's page shows nothing.
	if code, body := postJSON(t, agentURL+"/api/v1/local/sos/"+vehAck+"/"+sosAck+"/acknowledge", `{"actor":"Mallory"}`, nil); code != http.StatusUnauthorized {
		t.Errorf("acknowledge without a session = %d %s, want 401", code, body)
	}
	// The operator of another region and a wrong password cannot sign in.
	if code, body, _ := signInAgent(t, agentURL, "ana", cebuPassword); code != http.StatusUnauthorized {
		t.Errorf("Cebu operator signs in at the NCR agent = %d %s, want 401", code, body)
	}
	if code, body, _ := signInAgent(t, agentURL, staffUser, password+"x"); code != http.StatusUnauthorized {
		t.Errorf("wrong password = %d %s, want 401", code, body)
	}
	code, body, page := signInAgent(t, agentURL, staffUser, password)
	if page == nil || !strings.Contains(body, `"display_name":"Maria Santos"`) {
		t.Fatalf("sign in with the hub password while the hub is down = %d %s", code, body)
	}
	waitFor(t, 30*time.Second, "the agent to see the hub down", func() bool {
		var info struct {
			Uplink struct {
				State string `json:"state"`
			} `json:"uplink"`
		}
		page.getJSON(t, agentURL+"/api/v1/info", &info)
		return info.Uplink.State == "disconnected"
	})

	// Two vehicles press SOS; each driver hears "received" from the agent.
	ackDriver := listenStates(t, agentMQTTAddr, vehAck, vehAck+"-app")
	smsDriver := listenStates(t, agentMQTTAddr, vehSMS, vehSMS+"-app")
	publish(t, ackDriver.client, protocol.VehicleTopicFor(vehAck, protocol.TopicSOS),
		fmt.Sprintf(`{"id":%q,"ts":%q,"lat":14.5547,"lon":121.0244,"kind":"harassment"}`, sosAck, time.Now().Format(time.RFC3339)))
	publish(t, smsDriver.client, protocol.VehicleTopicFor(vehSMS, protocol.TopicSOS),
		fmt.Sprintf(`{"id":%q,"ts":%q,"lat":14.5995,"lon":120.9842,"kind":"medical"}`, sosSMS, time.Now().Format(time.RFC3339)))
	ackDriver.expectState(vehAck, sosAck, protocol.SOSStateReceived)
	smsDriver.expectState(vehSMS, sosSMS, protocol.SOSStateReceived)

	// The regional page and its API show both, with the hub unreachable.
	var local agentLocalSOS
	page.getJSON(t, agentURL+"/api/v1/local/sos", &local)
	if local.Uplink.State != "disconnected" || len(local.SOS) != 2 {
		t.Fatalf("agent's local SOS = %+v, want 2 SOS with the hub unreachable", local)
	}
	for _, s := range local.SOS {
		if s.HubReceived || s.State != protocol.SOSStateReceived || !strings.HasSuffix(s.ReceivedAtManila, "PHT") || s.MapURL == "" {
			t.Errorf("local SOS %+v, want received, not at the hub, with Manila time and map link", s)
		}
	}
	resp, err := httpClient.Get(agentURL + "/")
	if err != nil {
		t.Fatal(err)
	}
	html, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(html), "local.js") ||
		!strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Errorf("regional page = %d with CSP %q", resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
	}

	// Staff acknowledge one SOS; its driver hears it while the hub is down.
	// The acknowledgement names the signed-in operator, not the body's name.
	ackURL := fmt.Sprintf("%s/api/v1/local/sos/%s/%s/acknowledge", agentURL, vehAck, sosAck)
	if code, body := postJSON(t, ackURL, `{}`, map[string]string{"Cookie": page.cookieHeader(t, agentURL)}); code != http.StatusForbidden {
		t.Errorf("acknowledge without the CSRF header = %d %s, want 403", code, body)
	}
	if code, body := page.post(t, ackURL, `{"actor":"Ben Cruz"}`); code != http.StatusOK || !strings.Contains(body, fmt.Sprintf(`"acknowledged_by":%q`, staffActor)) {
		t.Fatalf("local acknowledge = %d %s, want 200 by %s", code, body, staffActor)
	}
	ackDriver.expectState(vehAck, sosAck, protocol.SOSStateAcknowledged)
	if code, body := page.post(t, ackURL, `{}`); code != http.StatusOK || !strings.Contains(body, `"already_acknowledged":true`) {
		t.Errorf("second local acknowledge = %d %s, want 200, already acknowledged", code, body)
	}

	// After the outage delay the agent sends one SMS, about the SOS that
	// no one acknowledged.
	waitFor(t, time.Duration(delaySec+50)*time.Second, "the agent's SMS", func() bool {
		return len(twilio.MessagesTo(phone)) >= 1
	})
	agentSMS := twilio.MessagesTo(phone)[0]
	if !strings.Contains(agentSMS.Body, sosSMS) || !strings.Contains(agentSMS.Body, vehSMS) || strings.Contains(agentSMS.Body, vehAck) {
		t.Errorf("agent's SMS %q, want the SOS %s of %s only", agentSMS.Body, sosSMS, vehSMS)
	}
	if !strings.Contains(agentSMS.Body, "hub unreachable") || !strings.Contains(agentSMS.Body, agentURL+"/") || strings.Contains(agentSMS.Body, "dashboard") {
		t.Errorf("agent's SMS %q, want the outage text linking to the agent's page %s/", agentSMS.Body, agentURL)
	}
	waitFor(t, 30*time.Second, "the agent to record its SMS", func() bool {
		page.getJSON(t, agentURL+"/api/v1/local/sos", &local)
		for _, s := range local.SOS {
			if s.SOSID == sosSMS && len(s.Notifications) == 1 && s.Notifications[0].State == "sent" {
				return s.Notifications[0].ProviderID == agentSMS.SID
			}
		}
		return false
	})
	if n := metricValue(t, agentURL+"/metrics", "xpress_agent_outage_sms_total", "outcome", "sent"); n != 1 {
		t.Errorf("agent counted %v SMS sent, want 1", n)
	}

	// The hub comes back, and the number becomes a responder.
	hubProc := startProcess(t, "hub", hubEnv, hubArgs...)
	waitHTTP(t, hubProc, "http://"+hubHTTPAddr+"/readyz")
	if code, body := postJSON(t, "http://"+hubHTTPAddr+"/api/v1/contacts",
		`{"name":"Ana Reyes","role":"responder","region":"NCR-Manila","phone":"0917 123 4567"}`,
		authHeaderMap(hubHTTPAddr)); code != http.StatusCreated {
		t.Fatalf("create responder contact = %d %s", code, body)
	}
	wan.Pass()

	incidentOf := func(vehicle string) store.Incident {
		var list struct {
			Incidents []store.Incident `json:"incidents"`
		}
		waitFor(t, 60*time.Second, "the incident of "+vehicle+" at the hub", func() bool {
			getJSON(t, "http://"+hubHTTPAddr+"/api/v1/incidents?vehicle="+vehicle, &list)
			return len(list.Incidents) == 1
		})
		return list.Incidents[0]
	}
	acked, notified := incidentOf(vehAck), incidentOf(vehSMS)

	// The acknowledgement reached the hub by name.
	if acked.State != store.StateAcknowledged {
		t.Errorf("incident of %s is %s, want acknowledged", vehAck, acked.State)
	}
	var detail struct {
		Events []store.IncidentEvent `json:"events"`
	}
	getJSON(t, fmt.Sprintf("http://%s/api/v1/incidents/%d", hubHTTPAddr, acked.ID), &detail)
	wantActor := staffActor + " (at agent " + agentID + ")"
	ackEvents := 0
	for _, ev := range detail.Events {
		if ev.Type == store.EventAcknowledged {
			ackEvents++
			if ev.Actor != wantActor {
				t.Errorf("acknowledged by %q, want %q", ev.Actor, wantActor)
			}
		}
	}
	if ackEvents != 1 {
		t.Errorf("%d acknowledged events, want 1: %+v", ackEvents, detail.Events)
	}

	// The hub records the agent's SMS as sent by the agent.
	notificationsOf := func(id int64) []store.Notification {
		var body struct {
			Notifications []store.Notification `json:"notifications"`
		}
		getJSON(t, fmt.Sprintf("http://%s/api/v1/incidents/%d/notifications", hubHTTPAddr, id), &body)
		return body.Notifications
	}
	var agentRecorded store.Notification
	waitFor(t, 60*time.Second, "the hub to record the agent's SMS", func() bool {
		for _, n := range notificationsOf(notified.ID) {
			if n.Channel == store.ChannelSMS && n.Address == phone {
				agentRecorded = n
			}
		}
		return agentRecorded.State == store.NotificationSent
	})
	if agentRecorded.SentBy != agentID || agentRecorded.ProviderID != agentSMS.SID {
		t.Errorf("hub's record of the agent's SMS = %+v, want sent by %s as %s", agentRecorded, agentID, agentSMS.SID)
	}

	// The dispatcher alerts the responder about the other incident, which
	// shows it ran; it sends nothing more about the SOS the agent sent.
	waitFor(t, 60*time.Second, "the hub's own SMS about incident "+fmt.Sprint(acked.ID), func() bool {
		for _, n := range notificationsOf(acked.ID) {
			if n.Channel == store.ChannelSMS && n.Address == phone && n.State == store.NotificationSent && n.SentBy == store.SentByHub {
				return true
			}
		}
		return false
	})
	waitFor(t, 60*time.Second, "the dispatcher's first level for incident "+fmt.Sprint(notified.ID), func() bool {
		var inc store.Incident
		getJSON(t, fmt.Sprintf("http://%s/api/v1/incidents/%d", hubHTTPAddr, notified.ID), &struct {
			Incident *store.Incident `json:"incident"`
		}{&inc})
		return inc.EscalationLevel >= 1
	})
	msgs := twilio.MessagesTo(phone)
	aboutNotified := 0
	for _, m := range msgs {
		if strings.Contains(m.Body, sosSMS) || strings.Contains(m.Body, fmt.Sprintf("Incident %d.", notified.ID)) {
			aboutNotified++
		}
	}
	if aboutNotified != 1 || len(msgs) != 2 {
		bodies, _ := json.Marshal(msgs)
		t.Errorf("SMS to %s: %d in all, %d about %s; want 2 in all, 1 about it (the agent's): %s", phone, len(msgs), aboutNotified, sosSMS, bodies)
	}
	for _, n := range notificationsOf(notified.ID) {
		if n.Address == phone && n.Channel == store.ChannelSMS && n.SentBy != agentID {
			t.Errorf("notification %+v of incident %d, want the SMS sent by the agent only", n, notified.ID)
		}
	}

	// Back on the link, the agent's page shows both SOS at the hub.
	waitFor(t, 60*time.Second, "the agent's page to show the hub link", func() bool {
		page.getJSON(t, agentURL+"/api/v1/local/sos", &local)
		if local.Uplink.State != "connected" {
			return false
		}
		for _, s := range local.SOS {
			if !s.HubReceived || s.IncidentID == 0 {
				return false
			}
		}
		return len(local.SOS) == 2
	})

	// Sign-ins are logged by user name, never with the password.
	if out := agentProc.output(); !strings.Contains(out, "local sign-in") || !strings.Contains(out, staffUser) ||
		strings.Contains(out, password) || strings.Contains(out, cebuPassword) {
		t.Errorf("agent log lacks the sign-in of %s or shows a password", staffUser)
	}

	// With the hub responding again, acknowledgements belong on the
	// operators' dashboard: the agent rejects them.
	smsAckURL := fmt.Sprintf("%s/api/v1/local/sos/%s/%s/acknowledge", agentURL, vehSMS, sosSMS)
	waitFor(t, 30*time.Second, "the agent to reject local acknowledgements", func() bool {
		code, body := page.post(t, smsAckURL, `{}`)
		return code == http.StatusConflict && strings.Contains(body, "the hub is reachable: acknowledge on the operators' dashboard")
	})
}
