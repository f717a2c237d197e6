package agent_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/agent/internal/hubtest"
	"github.com/xpress-ops/tower/hub/dispatch/dispatchtest"
	"github.com/xpress-ops/tower/notify"
	"github.com/xpress-ops/tower/protocol"
)

// outageInfo is the part of GET /api/v1/info these tests read.
type outageInfo struct {
	Uplink struct {
		State              string    `json:"state"`
		Reachable          bool      `json:"reachable"`
		UnreachableSeconds float64   `json:"unreachable_seconds"`
		LastContact        time.Time `json:"last_contact"`
		LastContactSeconds float64   `json:"last_contact_seconds"`
	} `json:"uplink"`
}

func info(t *testing.T, a *agent.Agent) outageInfo {
	t.Helper()
	code, body := get(t, a, "/api/v1/info")
	if code != http.StatusOK {
		t.Fatalf("GET /api/v1/info = %d %s", code, body)
	}
	var out outageInfo
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return out
}

// ackBody is the body of an acknowledgement these tests read.
type ackBody struct {
	AlreadyAcknowledged bool     `json:"already_acknowledged"`
	AcknowledgedBy      string   `json:"acknowledged_by"`
	Message             string   `json:"message"`
	AcknowledgedSOSIDs  []string `json:"acknowledged_sos_ids"`
	Error               string   `json:"error"`
	SOS                 struct {
		Presses int      `json:"presses"`
		SOSIDs  []string `json:"sos_ids"`
	} `json:"sos"`
}

// postRaw posts body as JSON to the acknowledge route of sosID.
func postRaw(t *testing.T, a *agent.Agent, sosID string, body []byte) (int, ackBody) {
	t.Helper()
	url := "http://" + a.HTTPAddr().String() + "/api/v1/local/sos/" + vehicle + "/" + sosID + "/acknowledge"
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := session(t, a).do(req)
	if err != nil {
		t.Errorf("POST %s: %v", url, err)
		return 0, ackBody{}
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out ackBody
	if err := json.Unmarshal(data, &out); err != nil {
		t.Errorf("POST %s: body %q is not JSON: %v", url, data, err)
	}
	return resp.StatusCode, out
}

// While the hub answers, staff acknowledge on the operators' dashboard:
// the agent refuses local acknowledgements with 409.
func TestLocalAPI_RefusesAckWhileHubReachable(t *testing.T) {
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
	if i := info(t, a); !i.Uplink.Reachable || i.Uplink.LastContact.IsZero() {
		t.Errorf("uplink = %+v, want reachable with its last contact", i.Uplink)
	}

	code, ack := postRaw(t, a, "sos-1", []byte(`{"actor":"Maria Santos"}`))
	if code != http.StatusConflict || !strings.Contains(ack.Error, "the hub is reachable: acknowledge on the operators' dashboard") {
		t.Errorf("acknowledge while the hub answers = %d %+v, want 409 pointing to the dashboard", code, ack)
	}
	if l := localList(t, a); l.SOS[0].LocalAckBy != "" {
		t.Errorf("SOS acknowledged locally by %q while the hub answers", l.SOS[0].LocalAckBy)
	}
}

// A hub that keeps the connection but sends no acknowledgement for longer
// than the ack timeout counts as unreachable, and staff may acknowledge.
func TestLocalAPI_HungHubCountsAsUnreachable(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	hub.SetRespond(func(*hubtest.Hub, *protocol.Batch) []protocol.Ack { return nil })
	clock := dispatchtest.NewClock(time.Now())
	cfg := testConfig(t, hub.URL(), t.TempDir())
	cfg.Now = clock.Now
	// The uplink's own ack timer runs on real time: long enough that it
	// does not reconnect during the test.
	cfg.AckTimeout = time.Minute
	a := openAgent(t, cfg)
	c := connectVehicle(t, a)
	states := subscribeStates(t, c)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-1","kind":"crash"}`)
	expectReceived(t, states)
	eventually(t, "the uplink connected", func() bool { return info(t, a).Uplink.State == "connected" })

	clock.Advance(cfg.AckTimeout + time.Second)
	i := info(t, a)
	if i.Uplink.State != "connected" || i.Uplink.Reachable || i.Uplink.UnreachableSeconds < cfg.AckTimeout.Seconds() {
		t.Errorf("uplink of a hung hub = %+v, want connected but unreachable for over %s", i.Uplink, cfg.AckTimeout)
	}
	if i.Uplink.LastContactSeconds < cfg.AckTimeout.Seconds() {
		t.Errorf("last contact %v s ago, want over %s", i.Uplink.LastContactSeconds, cfg.AckTimeout)
	}
	if code, ack := postRaw(t, a, "sos-1", []byte(`{"actor":"Maria Santos"}`)); code != http.StatusOK || ack.AcknowledgedBy != staffActor {
		t.Errorf("acknowledge while the hub hangs = %d %+v, want 200", code, ack)
	}
}

// The outage counts from the last contact with the hub, across restarts,
// so an agent that restarts during an outage still sends its SMS.
func TestAgent_OutageCountsFromLastContactAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	start := time.Now()
	clock := dispatchtest.NewClock(start)
	hub := hubtest.Start(t, "127.0.0.1:0")
	cfg := testConfig(t, hub.URL(), dir)
	cfg.Now = clock.Now
	first := openAgent(t, cfg)
	eventually(t, "contact with the hub", func() bool { return info(t, first).Uplink.Reachable })
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	tw := dispatchtest.NewTwilio(t, nil)
	sender, err := notify.NewTwilio(notify.TwilioConfig{
		AccountSID: tw.AccountSID, AuthToken: tw.AuthToken, From: "+639170000001", BaseURL: tw.URL(),
		HTTPClient: dispatchtest.LoopbackClient(),
	})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(10 * time.Minute)
	cfg = testConfig(t, unusedHubURL(t), dir)
	cfg.Now = clock.Now
	cfg.OutageNotifyAfter = time.Minute
	cfg.OutageNotifyTo = []string{"+639171234567"}
	cfg.OutageSMS = sender
	cfg.PublicURL = "https://agent-ncr.example.ph:9090/"
	cfg.Registerer = prometheus.NewRegistry()
	second := openAgent(t, cfg)
	i := info(t, second)
	if i.Uplink.Reachable || i.Uplink.UnreachableSeconds < 600 || i.Uplink.LastContact.Before(start) {
		t.Errorf("uplink after the restart = %+v, want unreachable for 10 min since the contact before it", i.Uplink)
	}
	c := connectVehicle(t, second)
	states := subscribeStates(t, c)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-restart","kind":"panic"}`)
	expectReceived(t, states)
	// Past the start grace the SMS goes, although this process has run
	// for less than OutageNotifyAfter by its clock.
	clock.Advance(10 * time.Second)
	eventually(t, "the outage SMS", func() bool { return len(tw.MessagesTo("+639171234567")) == 1 })
	if body := tw.MessagesTo("+639171234567")[0].Body; !strings.Contains(body, cfg.PublicURL) || !strings.Contains(body, "hub unreachable") {
		t.Errorf("SMS %q, want the outage template with the page link", body)
	}
	age, err := gaugeValue(cfg.Registerer.(*prometheus.Registry), "xpress_agent_hub_last_contact_age_seconds")
	if err != nil || age < 600 {
		t.Errorf("xpress_agent_hub_last_contact_age_seconds = %v (%v), want at least 600", age, err)
	}
}

// gaugeValue returns the value of the gauge name in reg.
func gaugeValue(reg *prometheus.Registry, name string) (float64, error) {
	families, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetGauge().GetValue(), nil
		}
	}
	return 0, fmt.Errorf("gauge %s not found", name)
}

// Of acknowledgements at the same time, one wins; every other response
// says the SOS was already acknowledged, and by whom.
func TestLocalAPI_ConcurrentAcksNameTheFirst(t *testing.T) {
	a := openAgent(t, testConfig(t, unusedHubURL(t), t.TempDir()))
	c := connectVehicle(t, a)
	states := subscribeStates(t, c)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-1","kind":"panic"}`)
	expectReceived(t, states)

	const n = 6
	acks := make([]ackBody, n)
	codes := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], acks[i] = postRaw(t, a, "sos-1", fmt.Appendf(nil, `{"actor":"Staff %d"}`, i))
		}()
	}
	wg.Wait()
	firsts := 0
	for i := range n {
		if codes[i] != http.StatusOK {
			t.Fatalf("request %d = %d %+v", i, codes[i], acks[i])
		}
		if !acks[i].AlreadyAcknowledged {
			firsts++
		}
		if acks[i].AcknowledgedBy != acks[0].AcknowledgedBy {
			t.Errorf("request %d names %q as first, request 0 %q", i, acks[i].AcknowledgedBy, acks[0].AcknowledgedBy)
		}
		if acks[i].AlreadyAcknowledged && !strings.Contains(acks[i].Message, "already acknowledged by "+acks[i].AcknowledgedBy) {
			t.Errorf("request %d message %q, want it to name who acknowledged first", i, acks[i].Message)
		}
	}
	if firsts != 1 {
		t.Errorf("%d responses say they acknowledged first, want 1", firsts)
	}
}

// A body that is not valid UTF-8 is rejected, not repaired.
func TestLocalAPI_RejectsInvalidUTF8Body(t *testing.T) {
	a := openAgent(t, testConfig(t, unusedHubURL(t), t.TempDir()))
	c := connectVehicle(t, a)
	states := subscribeStates(t, c)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-1","kind":"panic"}`)
	expectReceived(t, states)

	code, ack := postRaw(t, a, "sos-1", []byte("{\"actor\":\"Ana \xff Reyes\"}"))
	if code != http.StatusBadRequest || !strings.Contains(ack.Error, "not valid UTF-8") {
		t.Errorf("invalid UTF-8 actor = %d %+v, want 400", code, ack)
	}
	if l := localList(t, a); l.SOS[0].LocalAckBy != "" {
		t.Errorf("SOS acknowledged by %q", l.SOS[0].LocalAckBy)
	}
}

// The HTTP server answers only to IP addresses, localhost and the names
// of HTTPAllowedHosts, so a DNS rebinding page cannot reach it.
func TestHTTP_RejectsUnknownHost(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := testConfig(t, unusedHubURL(t), t.TempDir())
	cfg.Registerer = reg
	cfg.HTTPAllowedHosts = []string{"Agent-NCR.example.ph"}
	a := openAgent(t, cfg)
	_, port, _ := strings.Cut(a.HTTPAddr().String(), ":")
	for host, want := range map[string]int{
		"127.0.0.1:" + port:            http.StatusOK,
		"[::1]:" + port:                http.StatusOK,
		"localhost:" + port:            http.StatusOK,
		"agent-ncr.example.ph:" + port: http.StatusOK,
		"agent-ncr.example.ph.":        http.StatusOK,
		"attacker.example:" + port:     http.StatusMisdirectedRequest,
		"agent-ncr.example.ph.evil":    http.StatusMisdirectedRequest,
	} {
		req, err := http.NewRequest(http.MethodGet, "http://"+a.HTTPAddr().String()+"/api/v1/info", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		// The cookie is sent by hand: the client's jar does not add it
		// to a request whose Host differs from its URL.
		for _, c := range session(t, a).client.Jar.Cookies(req.URL) {
			req.AddCookie(c)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Host %q = %d, want %d", host, resp.StatusCode, want)
		}
	}
	got, err := testutil.GatherAndCount(reg, "xpress_agent_http_requests_total")
	if err != nil || got == 0 {
		t.Fatalf("request metrics: %d, %v", got, err)
	}
	want := `
# HELP xpress_agent_http_requests_total HTTP requests to the agent, by route pattern and status code; unmatched for requests that matched no route, host_rejected for requests whose Host header is not allowed.
# TYPE xpress_agent_http_requests_total counter
xpress_agent_http_requests_total{code="200",route="GET /api/v1/info"} 5
xpress_agent_http_requests_total{code="200",route="POST /api/v1/local/session"} 1
xpress_agent_http_requests_total{code="421",route="host_rejected"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "xpress_agent_http_requests_total"); err != nil {
		t.Error(err)
	}
}

// Repeat presses of a vehicle share one row with a press count, and one
// acknowledgement covers them all: each SOS id gets its acknowledgement
// record for the hub and its state message to the vehicle.
func TestLocalAPI_GroupsRepeatPresses(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := testConfig(t, unusedHubURL(t), t.TempDir())
	cfg.Registerer = reg
	a := openAgent(t, cfg)
	c := connectVehicle(t, a)
	states := subscribeStates(t, c)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-1","kind":"panic"}`)
	expectReceived(t, states)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-2","kind":"panic"}`)
	expectReceived(t, states)

	l := localList(t, a)
	if len(l.SOS) != 1 || l.SOS[0].SOSID != "sos-1" {
		t.Fatalf("rows = %+v, want one row for the two presses", l.SOS)
	}
	if open, _ := gaugeValue(reg, "xpress_agent_local_sos_open"); open != 2 {
		t.Errorf("open local SOS = %v, want 2", open)
	}
	if unacked, _ := gaugeValue(reg, "xpress_agent_local_sos_unacknowledged"); unacked != 2 {
		t.Errorf("unacknowledged local SOS = %v, want 2", unacked)
	}

	code, ack := postRaw(t, a, "sos-1", []byte(`{"actor":"Maria Santos"}`))
	if code != http.StatusOK || strings.Join(ack.AcknowledgedSOSIDs, ",") != "sos-1,sos-2" {
		t.Fatalf("acknowledge = %d %+v, want both presses acknowledged", code, ack)
	}
	if ack.SOS.Presses != 2 || strings.Join(ack.SOS.SOSIDs, ",") != "sos-1,sos-2" {
		t.Errorf("row = %+v, want 2 presses", ack.SOS)
	}
	for range 2 {
		select {
		case payload := <-states:
			var s protocol.SOSState
			if err := json.Unmarshal(payload, &s); err != nil || s.State != protocol.SOSStateAcknowledged {
				t.Errorf("state %q, want acknowledged", payload)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the vehicle did not hear acknowledged for both presses")
		}
	}
	// The SOS lane holds both SOS and one acknowledgement record for each.
	if _, r := readyz(t, a); r.Lanes[protocol.LaneSOS].Records != 4 {
		t.Errorf("SOS lane holds %d records, want 2 SOS and 2 acknowledgements", r.Lanes[protocol.LaneSOS].Records)
	}
	if unacked, _ := gaugeValue(reg, "xpress_agent_local_sos_unacknowledged"); unacked != 0 {
		t.Errorf("unacknowledged local SOS after the acknowledgement = %v, want 0", unacked)
	}
}

// A driver's cancel during an outage shows on the row; the SOS stays open.
func TestLocalAPI_ShowsDriverCancel(t *testing.T) {
	a := openAgent(t, testConfig(t, unusedHubURL(t), t.TempDir()))
	c := connectVehicle(t, a)
	states := subscribeStates(t, c)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-1","kind":"panic"}`)
	expectReceived(t, states)
	publish(t, c, protocol.TopicSOSCancel, `{"id":"sos-1","reason":"passenger calmed down"}`)

	var row map[string]any
	eventually(t, "the cancel on the row", func() bool {
		code, body := get(t, a, "/api/v1/local/sos")
		var l struct {
			SOS []map[string]any `json:"sos"`
		}
		if code != http.StatusOK || json.Unmarshal(body, &l) != nil || len(l.SOS) != 1 {
			return false
		}
		row = l.SOS[0]
		return row["cancel_requested"] == true
	})
	if row["cancel_reason"] != "passenger calmed down" || row["state"] != "received" {
		t.Errorf("row = %v, want the reason and the SOS still received", row)
	}
}
