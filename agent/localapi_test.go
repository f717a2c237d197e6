package agent_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/agent/internal/hubtest"
	"github.com/xpress-ops/tower/hub/dispatch/dispatchtest"
	"github.com/xpress-ops/tower/internal/configcheck"
	"github.com/xpress-ops/tower/notify"
	"github.com/xpress-ops/tower/protocol"
)

// localListBody is the body of GET /api/v1/local/sos.
type localListBody struct {
	Mode   string `json:"mode"`
	Agent  string `json:"agent"`
	Region string `json:"region"`
	Uplink struct {
		State              string    `json:"state"`
		Since              time.Time `json:"since"`
		UnreachableSeconds float64   `json:"unreachable_seconds"`
	} `json:"uplink"`
	OutageSMS struct {
		Enabled      bool    `json:"enabled"`
		AfterSeconds float64 `json:"after_seconds"`
		Recipients   int     `json:"recipients"`
	} `json:"outage_sms"`
	Store string     `json:"store"`
	SOS   []localSOS `json:"sos"`
}

type localSOS struct {
	VehicleID        string    `json:"vehicle"`
	SOSID            string    `json:"sos_id"`
	Kind             string    `json:"kind"`
	HasLocation      bool      `json:"has_location"`
	MapURL           string    `json:"map_url"`
	Note             string    `json:"note"`
	ReceivedAt       time.Time `json:"received_at"`
	ReceivedAtManila string    `json:"received_at_manila"`
	State            string    `json:"state"`
	IncidentID       int64     `json:"incident"`
	HubReceived      bool      `json:"hub_received"`
	LocalAckBy       string    `json:"local_ack_by"`
	LocalAckQueued   bool      `json:"local_ack_queued"`
	Notifications    []struct {
		Channel    string `json:"channel"`
		Address    string `json:"address"`
		State      string `json:"state"`
		ProviderID string `json:"provider_id"`
	} `json:"notifications"`
}

type localAck struct {
	SOS                 localSOS `json:"sos"`
	AlreadyAcknowledged bool     `json:"already_acknowledged"`
	HubRecord           string   `json:"hub_record"`
	Error               string   `json:"error"`
}

func localList(t *testing.T, a *agent.Agent) localListBody {
	t.Helper()
	code, body := get(t, a, "/api/v1/local/sos")
	if code != http.StatusOK {
		t.Fatalf("GET /api/v1/local/sos = %d %s", code, body)
	}
	var l localListBody
	if err := json.Unmarshal(body, &l); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return l
}

// postAck posts body to the acknowledge route of vehicle's SOS sosID with
// contentType, and returns the status and the decoded body.
func postAck(t *testing.T, a *agent.Agent, vehicleID, sosID, contentType, body string) (int, localAck) {
	t.Helper()
	url := "http://" + a.HTTPAddr().String() + "/api/v1/local/sos/" + vehicleID + "/" + sosID + "/acknowledge"
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := session(t, a).do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out localAck
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("POST %s: body %q is not JSON: %v", url, data, err)
	}
	return resp.StatusCode, out
}

// expectState waits for the next state payload and checks its state.
func expectState(t *testing.T, states <-chan []byte, want string) {
	t.Helper()
	select {
	case payload := <-states:
		st, err := protocol.DecodeSOSState(payload)
		if err != nil || st.State != want {
			t.Fatalf("state payload %q (%v), want %s", payload, err, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the vehicle did not hear %s", want)
	}
}

func checkSecurityHeaders(t *testing.T, path string, h http.Header) {
	t.Helper()
	for name, want := range map[string]string{
		"X-Content-Type-Options": "nosniff",
		"Referrer-Policy":        "no-referrer",
		"X-Frame-Options":        "DENY",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("%s: %s = %q, want %q", path, name, got, want)
		}
	}
	csp := h.Get("Content-Security-Policy")
	for _, part := range []string{"default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, part) {
			t.Errorf("%s: Content-Security-Policy %q lacks %q", path, csp, part)
		}
	}
	if strings.Contains(csp, "unsafe-inline") {
		t.Errorf("%s: Content-Security-Policy %q allows inline code", path, csp)
	}
}

func TestLocalAPI_ListsOpenSOSDuringOutage(t *testing.T) {
	a := openAgent(t, testConfig(t, unusedHubURL(t), t.TempDir()))
	c := connectVehicle(t, a)
	states := subscribeStates(t, c)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-1","kind":"medical","lat":14.5995,"lon":120.9842,"note":"passenger fainted"}`)
	expectReceived(t, states)

	l := localList(t, a)
	if l.Mode != "regional" || l.Agent != "agent-test" || l.Region != "NCR-Manila" || l.Store != "open" {
		t.Errorf("list header = %+v, want regional NCR-Manila agent-test with the store open", l)
	}
	if l.Uplink.State != "disconnected" || l.Uplink.Since.IsZero() || l.Uplink.UnreachableSeconds < 0 {
		t.Errorf("uplink = %+v, want disconnected with the time it happened", l.Uplink)
	}
	if l.OutageSMS.Enabled {
		t.Errorf("outage SMS = %+v, want disabled", l.OutageSMS)
	}
	if len(l.SOS) != 1 {
		t.Fatalf("%d SOS listed, want 1", len(l.SOS))
	}
	s := l.SOS[0]
	if s.VehicleID != vehicle || s.SOSID != "sos-1" || s.Kind != "medical" || s.Note != "passenger fainted" || s.State != "received" {
		t.Errorf("SOS = %+v, want the medical SOS sos-1 as received", s)
	}
	if !s.HasLocation || s.MapURL != "https://maps.google.com/?q=14.59950,120.98420" {
		t.Errorf("location = %v %q, want the map link of 14.5995,120.9842", s.HasLocation, s.MapURL)
	}
	if want := notify.ManilaTime(s.ReceivedAt); s.ReceivedAt.IsZero() || s.ReceivedAtManila != want || !strings.HasSuffix(want, " PHT") {
		t.Errorf("received at %v shown as %q, want %q in Philippine time", s.ReceivedAt, s.ReceivedAtManila, want)
	}
	if s.HubReceived {
		t.Error("hub_received is true while the hub is unreachable")
	}
	code, body := get(t, a, "/api/v1/info")
	if code != http.StatusOK || !strings.Contains(string(body), `"mode":"regional"`) {
		t.Errorf("/api/v1/info = %d %s, want the regional mode", code, body)
	}
}

func TestLocalAPI_AcknowledgeOnceTellsVehicle(t *testing.T) {
	a := openAgent(t, testConfig(t, unusedHubURL(t), t.TempDir()))
	c := connectVehicle(t, a)
	states := subscribeStates(t, c)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-1","kind":"panic"}`)
	expectReceived(t, states)

	// The session names the operator; the body's name is not trusted.
	code, ack := postAck(t, a, vehicle, "sos-1", "application/json", `{"actor":"Mallory"}`)
	if code != http.StatusOK || ack.HubRecord != "queued" || ack.AlreadyAcknowledged {
		t.Fatalf("acknowledge = %d %+v, want 200, queued for the hub", code, ack)
	}
	if ack.SOS.State != "acknowledged" || ack.SOS.LocalAckBy != staffActor || !ack.SOS.LocalAckQueued {
		t.Errorf("acknowledged SOS = %+v", ack.SOS)
	}
	expectState(t, states, protocol.SOSStateAcknowledged)

	code, again := postAck(t, a, vehicle, "sos-1", "application/json; charset=utf-8", `{"actor":"Ben Cruz"}`)
	if code != http.StatusOK || !again.AlreadyAcknowledged || again.SOS.LocalAckBy != staffActor {
		t.Errorf("second acknowledge = %d %+v, want 200, already acknowledged by %s", code, again, staffActor)
	}
	// The spool holds the SOS and one acknowledgement record, not two.
	if _, r := readyz(t, a); r.Lanes[protocol.LaneSOS].Records != 2 {
		t.Errorf("SOS lane holds %d records, want the SOS and one acknowledgement", r.Lanes[protocol.LaneSOS].Records)
	}
	if l := localList(t, a); len(l.SOS) != 1 || l.SOS[0].LocalAckBy != staffActor {
		t.Errorf("list after the acknowledgement = %+v", l.SOS)
	}
	select {
	case payload := <-states:
		t.Errorf("the second acknowledgement sent the vehicle %q, want nothing", payload)
	default:
	}
}

func TestLocalAPI_AcknowledgeRejectsBadInput(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := testConfig(t, unusedHubURL(t), t.TempDir())
	cfg.Registerer = reg
	a := openAgent(t, cfg)
	c := connectVehicle(t, a)
	states := subscribeStates(t, c)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-1"}`)
	expectReceived(t, states)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-closed"}`)
	expectReceived(t, states)
	update, err := protocol.EncodeSOSStateUpdate(&protocol.SOSStateUpdate{VehicleID: vehicle, SOSID: "sos-closed", IncidentID: 9,
		State: protocol.SOSState{State: protocol.SOSStateResolved, TS: time.Now().UTC(), Message: "resolved"}})
	if err != nil {
		t.Fatal(err)
	}
	a.LocalSOS().HubState(protocol.SOSStateUpdateTopic("agent-test", vehicle, "sos-closed"), update)

	for _, tc := range []struct {
		name, vehicle, sos, contentType, body string
		want                                  int
	}{
		{"form body", vehicle, "sos-1", "application/x-www-form-urlencoded", "actor=Maria", http.StatusUnsupportedMediaType},
		{"no content type", vehicle, "sos-1", "", `{"actor":"Maria"}`, http.StatusUnsupportedMediaType},
		{"not an object", vehicle, "sos-1", "application/json", `"Maria"`, http.StatusBadRequest},
		{"unknown field", vehicle, "sos-1", "application/json", `{"actor":"Maria","role":"admin"}`, http.StatusBadRequest},
		{"two objects", vehicle, "sos-1", "application/json", `{"actor":"Maria"}{"actor":"Jo"}`, http.StatusBadRequest},
		{"huge body", vehicle, "sos-1", "application/json", `{"actor":"` + strings.Repeat("m", agent.MaxLocalAckBody) + `"}`, http.StatusRequestEntityTooLarge},
		{"bad vehicle id", "veh%21x", "sos-1", "application/json", `{"actor":"Maria"}`, http.StatusBadRequest},
		{"unknown SOS", vehicle, "sos-404", "application/json", `{"actor":"Maria"}`, http.StatusNotFound},
		{"closed SOS", vehicle, "sos-closed", "application/json", `{"actor":"Maria"}`, http.StatusConflict},
	} {
		code, body := postAck(t, a, tc.vehicle, tc.sos, tc.contentType, tc.body)
		if code != tc.want || body.Error == "" {
			t.Errorf("%s: status %d body %+v, want %d with an error message", tc.name, code, body, tc.want)
		}
	}
	// None of them acknowledged anything.
	if l := localList(t, a); len(l.SOS) != 1 || l.SOS[0].LocalAckBy != "" || l.SOS[0].State != "received" {
		t.Errorf("SOS after bad requests = %+v, want sos-1 still unacknowledged", l.SOS)
	}
	select {
	case payload := <-states:
		st, _ := protocol.DecodeSOSState(payload)
		if st.State == protocol.SOSStateAcknowledged {
			t.Errorf("a bad request acknowledged an SOS: %q", payload)
		}
	default:
	}
	// Every refusal is counted by route and status.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	refused := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "xpress_agent_http_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "code" && strings.HasPrefix(lp.GetValue(), "4") {
					refused += m.GetCounter().GetValue()
				}
			}
		}
	}
	if refused != 9 {
		t.Errorf("requests counted with a 4xx status = %v, want 9", refused)
	}
}

func TestLocalAPI_HubReceivedOnceHubCommits(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	a := openAgent(t, testConfig(t, hub.URL(), t.TempDir()))
	c := connectVehicle(t, a)
	states := subscribeStates(t, c)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-1","kind":"crash"}`)
	expectReceived(t, states)

	eventually(t, "the hub's acknowledgement of the SOS", func() bool {
		l := localList(t, a)
		return len(l.SOS) == 1 && l.SOS[0].HubReceived
	})
	l := localList(t, a)
	if l.Uplink.State != "connected" || l.Uplink.UnreachableSeconds != 0 {
		t.Errorf("uplink = %+v, want connected", l.Uplink)
	}
}

func TestLocalPage_ServedWithSecurityHeaders(t *testing.T) {
	a := openAgent(t, testConfig(t, unusedHubURL(t), t.TempDir()))
	for _, tc := range []struct {
		path, contentType string
		want              int
	}{
		{"/", "text/html", http.StatusOK},
		{"/local.js", "text/javascript", http.StatusOK},
		{"/local.css", "text/css", http.StatusOK},
		{"/app.css", "text/css", http.StatusOK},
		{"/favicon.svg", "image/svg+xml", http.StatusOK},
		{"/app.js", "", http.StatusNotFound},
		{"/static/", "", http.StatusNotFound},
		{"/metrics", "", http.StatusOK},
		{"/api/v1/local/sos", "application/json", http.StatusOK},
	} {
		resp, err := session(t, a).client.Get("http://" + a.HTTPAddr().String() + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET %s = %d, want %d", tc.path, resp.StatusCode, tc.want)
		}
		if tc.contentType != "" && !strings.HasPrefix(resp.Header.Get("Content-Type"), tc.contentType) {
			t.Errorf("GET %s: Content-Type %q, want %s", tc.path, resp.Header.Get("Content-Type"), tc.contentType)
		}
		checkSecurityHeaders(t, tc.path, resp.Header)
		if tc.path == "/" {
			page := string(body)
			if !strings.Contains(page, `<script src="local.js" defer></script>`) || !strings.Contains(page, `href="app.css"`) {
				t.Errorf("page lacks its script or the dashboard stylesheet")
			}
			if strings.Contains(page, "<script>") || strings.Contains(page, "style=") || strings.Contains(page, "<style") || strings.Contains(page, "onclick=") {
				t.Errorf("page has inline script or style, which the policy blocks")
			}
		}
	}
}

func TestConfig_OutageNotifyRules(t *testing.T) {
	tw := dispatchtest.NewTwilio(t, nil)
	sender, err := notify.NewTwilio(notify.TwilioConfig{AccountSID: tw.AccountSID, AuthToken: tw.AuthToken, From: "+639170000001", BaseURL: tw.URL()})
	if err != nil {
		t.Fatal(err)
	}
	base := testConfig(t, unusedHubURL(t), t.TempDir())
	for _, tc := range []struct {
		name   string
		mutate func(*agent.Config)
		field  string
	}{
		{"too short", func(c *agent.Config) {
			c.OutageNotifyAfter, c.OutageNotifyTo, c.OutageSMS = time.Second, []string{"0917 123 4567"}, sender
		}, "OutageNotifyAfter"},
		{"invalid number", func(c *agent.Config) {
			c.OutageNotifyAfter, c.OutageNotifyTo, c.OutageSMS = time.Minute, []string{"0917 123 4567", "12"}, sender
		}, "OutageNotifyTo"},
		{"no numbers", func(c *agent.Config) { c.OutageNotifyAfter, c.OutageSMS = time.Minute, sender }, "OutageNotifyTo"},
		{"no sender", func(c *agent.Config) { c.OutageNotifyAfter, c.OutageNotifyTo = time.Minute, []string{"0917 123 4567"} }, "OutageSMS"},
		{"numbers without delay", func(c *agent.Config) { c.OutageNotifyTo = []string{"0917 123 4567"} }, "OutageNotifyTo"},
		{"unknown language", func(c *agent.Config) { c.OutageNotifyLanguage = "de" }, "OutageNotifyLanguage"},
	} {
		cfg := base
		tc.mutate(&cfg)
		err := cfg.Validate()
		var fe *configcheck.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: Validate = %v, want an error about %s", tc.name, err, tc.field)
		}
	}
	good := base
	good.OutageNotifyAfter, good.OutageNotifyTo, good.OutageSMS = time.Minute, []string{"0917 123 4567", "+63 917 123 4567"}, sender
	good.OutageNotifyLanguage = "fil"
	if err := good.Validate(); err != nil {
		t.Errorf("valid outage settings: %v", err)
	}
}

// With OutageNotifyAfter set, an agent cut off from the hub sends the SOS
// alert SMS itself once the delay has passed, and the local API shows it.
func TestAgent_OutageSMSAfterDelay(t *testing.T) {
	tw := dispatchtest.NewTwilio(t, nil)
	sender, err := notify.NewTwilio(notify.TwilioConfig{
		AccountSID: tw.AccountSID, AuthToken: tw.AuthToken, From: "+639170000001", BaseURL: tw.URL(),
		HTTPClient: dispatchtest.LoopbackClient(),
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, unusedHubURL(t), t.TempDir())
	cfg.OutageNotifyAfter = agent.MinOutageNotifyAfter
	cfg.OutageNotifyTo = []string{"0917 123 4567", "+63 917 123 4567"}
	cfg.OutageSMS = sender
	a := openAgent(t, cfg)
	c := connectVehicle(t, a)
	states := subscribeStates(t, c)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-sms","kind":"fire","lat":14.5995,"lon":120.9842}`)
	expectReceived(t, states)

	if l := localList(t, a); !l.OutageSMS.Enabled || l.OutageSMS.Recipients != 1 || l.OutageSMS.AfterSeconds != agent.MinOutageNotifyAfter.Seconds() {
		t.Errorf("outage SMS = %+v, want enabled for the one number (both forms are the same)", l.OutageSMS)
	}
	deadline := time.Now().Add(agent.MinOutageNotifyAfter + 20*time.Second)
	var got localSOS
	for {
		l := localList(t, a)
		if len(l.SOS) == 1 && len(l.SOS[0].Notifications) == 1 && l.SOS[0].Notifications[0].State == "sent" {
			got = l.SOS[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SMS sent within the delay plus 20 s: %+v", l.SOS)
		}
		time.Sleep(50 * time.Millisecond)
	}
	msgs := tw.MessagesTo("+639171234567")
	if len(msgs) != 1 || got.Notifications[0].ProviderID != msgs[0].SID || !strings.Contains(msgs[0].Body, "sos-sms") {
		t.Fatalf("SMS = %+v, notification %+v; want one SMS about sos-sms", msgs, got.Notifications)
	}
	eventually(t, "the SMS report in the spool", func() bool {
		_, r := readyz(t, a)
		return r.Lanes[protocol.LaneSOS].Records == 2
	})
	code, body := get(t, a, "/metrics")
	if code != http.StatusOK || !bytes.Contains(body, []byte(`xpress_agent_outage_sms_total{outcome="sent"} 1`)) {
		t.Errorf("metrics do not count the sent SMS")
	}
}
