package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
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

// While the hub is down, regional staff see an SOS on the agent's page
// and acknowledge it there. The driver hears it at once, and the hub
// records the acknowledgement by name when the link returns. The agent
// itself sends an SMS about an SOS that no one acknowledged, once per
// number after the outage delay. The hub's dispatcher, configured with
// the same number as a responder, does not send that SMS again.
func TestOutageMode_LocalAckAndAgentSMS(t *testing.T) {
	const (
		agentID  = "ncr-outage"
		phone    = "+639171234567"
		vehAck   = "ncr-taxi-31"
		vehSMS   = "ncr-taxi-32"
		sosAck   = "outage-ack-1"
		sosSMS   = "outage-sms-1"
		staff    = "Maria Santos"
		delaySec = 10
	)
	twilio := dispatchtest.NewTwilio(t, nil)
	dbURL := pgtest.NewDatabase(t)
	hubAgentAddr, hubHTTPAddr := freeAddr(t), freeAddr(t)
	agentMQTTAddr, agentHTTPAddr := freeAddr(t), freeAddr(t)
	agentURL := "http://" + agentHTTPAddr

	// The WAN between agent and hub: cut until the hub is configured.
	wan := faultproxy.Start(t, hubAgentAddr)
	wan.Blackhole()

	agentProc := startProcess(t, "agent", []string{"XPRESS_TWILIO_AUTH_TOKEN=" + twilio.AuthToken,
		"XPRESS_AGENT_TOKEN=" + provisionAgent(t, dbURL, "", agentID)},
		"agent", "--id", agentID, "--region", "NCR-Manila",
		"--mqtt-addr", agentMQTTAddr, "--http-addr", agentHTTPAddr,
		"--hub-url", wan.URL(), "--data-dir", t.TempDir(),
		"--uplink-connect-timeout", "1s", "--uplink-min-backoff", "50ms", "--uplink-max-backoff", "500ms",
		"--outage-notify-after", fmt.Sprintf("%ds", delaySec), "--outage-notify-to", "0917 123 4567",
		"--twilio-account-sid", twilio.AccountSID, "--twilio-from", "+639170000001", "--twilio-api-url", twilio.URL(),
		"--public-url", agentURL+"/",
	)
	waitHTTP(t, agentProc, agentURL+"/readyz")

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
	getJSON(t, agentURL+"/api/v1/local/sos", &local)
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
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "local.js") ||
		!strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Errorf("regional page = %d with CSP %q", resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
	}

	// Staff acknowledge one SOS; its driver hears it while the hub is down.
	ackURL := fmt.Sprintf("%s/api/v1/local/sos/%s/%s/acknowledge", agentURL, vehAck, sosAck)
	if code, body := postJSON(t, ackURL, `{"actor":" "}`, nil); code != http.StatusBadRequest {
		t.Errorf("acknowledge with a blank name = %d %s, want 400", code, body)
	}
	if code, body := postJSON(t, ackURL, fmt.Sprintf(`{"actor":%q}`, staff), nil); code != http.StatusOK {
		t.Fatalf("local acknowledge = %d %s", code, body)
	}
	ackDriver.expectState(vehAck, sosAck, protocol.SOSStateAcknowledged)
	if code, body := postJSON(t, ackURL, `{"actor":"Ben Cruz"}`, nil); code != http.StatusOK || !strings.Contains(body, `"already_acknowledged":true`) {
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
		getJSON(t, agentURL+"/api/v1/local/sos", &local)
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

	// The hub starts with the same Twilio and the number as a responder.
	hubProc := startProcess(t, "hub", []string{"XPRESS_DATABASE_URL=" + dbURL, "XPRESS_TWILIO_AUTH_TOKEN=" + twilio.AuthToken},
		"hub", "--agent-mqtt-addr", hubAgentAddr, "--http-addr", hubHTTPAddr, "--data-dir", t.TempDir(),
		"--twilio-account-sid", twilio.AccountSID, "--twilio-from", "+639170000001", "--twilio-api-url", twilio.URL(),
		"--escalate-after", "10m")
	waitHTTP(t, hubProc, "http://"+hubHTTPAddr+"/readyz")
	if code, body := postJSON(t, "http://"+hubHTTPAddr+"/api/v1/contacts",
		`{"name":"Ana Reyes","role":"responder","region":"NCR-Manila","phone":"0917 123 4567"}`,
		map[string]string{"X-Xpress-Operator": "Maria Santos"}); code != http.StatusCreated {
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
	wantActor := staff + " (at agent " + agentID + ")"
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
		getJSON(t, agentURL+"/api/v1/local/sos", &local)
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

	// With the hub responding again, acknowledgements belong on the
	// operators' dashboard: the agent rejects them.
	smsAckURL := fmt.Sprintf("%s/api/v1/local/sos/%s/%s/acknowledge", agentURL, vehSMS, sosSMS)
	waitFor(t, 30*time.Second, "the agent to reject local acknowledgements", func() bool {
		code, body := postJSON(t, smsAckURL, `{"actor":"Ben Cruz"}`, nil)
		return code == http.StatusConflict && strings.Contains(body, "the hub is reachable: acknowledge on the operators' dashboard")
	})
}
