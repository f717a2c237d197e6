package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/hub"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/passhash"
	"github.com/xpress-ops/tower/internal/pgtest"
	"github.com/xpress-ops/tower/protocol"
)

// startRegionAgent starts an agent of region on port 0 that forwards to
// the in-process hub h, with a credential of that region.
func startRegionAgent(t testing.TB, h *hub.Hub, id, region string) *agent.Agent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	token, err := h.ProvisionAgent(ctx, id, region)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{
		ID:          id,
		Region:      region,
		MQTTAddr:    "127.0.0.1:0",
		HubURL:      "tcp://" + h.AgentMQTTAddr().String(),
		DataDir:     t.TempDir(),
		HTTPAddr:    "127.0.0.1:0",
		Logger:      testLogger(t).With("process", "agent", "region", region),
		HubPassword: token,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Open(context.Background()); err != nil {
		t.Fatalf("open agent %s: %v", id, err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("close agent %s: %v", id, err)
		}
	})
	return a
}

// regionOperator is an operator signed in to the hub through the API.
type regionOperator struct {
	name   string
	cookie *http.Cookie
	csrf   string
	stream *wsClient
}

// addOperator creates an operator on h and signs it in through the API,
// and opens its stream with the session cookie.
func addOperator(t *testing.T, h *hub.Hub, name, role string, regions ...string) *regionOperator {
	t.Helper()
	password := "pw-of-" + name + "-for-this-run"
	hash, err := passhash.Hash(password, passhash.Password)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Accounts().CreateOperator(context.Background(),
		store.Operator{Username: name, DisplayName: name, Role: role, Regions: regions}, hash); err != nil {
		t.Fatalf("create operator %s: %v", name, err)
	}
	httpAddr := h.HTTPAddr().String()
	o := &regionOperator{name: name}
	o.cookie, o.csrf = login(t, "http://"+httpAddr, name, password)
	o.stream = openStreamWith(t, httpAddr, http.Header{"Cookie": {o.cookie.String()}})
	return o
}

// do sends a request with the operator's cookie and CSRF token and
// returns the status and body.
func (o *regionOperator) do(t *testing.T, method, url, body string) (int, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	req.AddCookie(o.cookie)
	req.Header.Set("X-CSRF-Token", o.csrf)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s as %s: %v", method, url, o.name, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(data)
}

// openedSOS returns the SOS ids of the incident.opened frames of w.
func openedSOS(t *testing.T, w *wsClient) []string {
	t.Helper()
	var ids []string
	for _, ev := range w.ofType("incident.opened") {
		var c store.IncidentChange
		if err := json.Unmarshal(ev.Data, &c); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, c.Incident.SOSID)
	}
	return ids
}

// frameIDs returns the values of the string field of the data of w's
// frames of type typ, such as the vehicle_id of fix frames.
func frameIDs(t *testing.T, w *wsClient, typ, field string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, ev := range w.ofType(typ) {
		var data map[string]any
		if err := json.Unmarshal(ev.Data, &data); err != nil {
			t.Fatal(err)
		}
		if id, ok := data[field].(string); ok {
			out[id] = true
		}
	}
	return out
}

// An SOS in Manila and one in Cebu reach a real hub through real agents.
// The Manila operator, the Cebu operator and an admin, signed in through
// the API, each get on their streams and through the API what their
// regions allow: the Cebu operator never learns of the Manila SOS, not
// even by its id. Signing out closes the operator's stream.
func TestRegions_OperatorsSeeOnlyTheirRegions(t *testing.T) {
	h := startHub(t, pgtest.NewDatabase(t))
	manilaAgent := startRegionAgent(t, h, "ncr-1", "NCR-Manila")
	cebuAgent := startRegionAgent(t, h, "cebu-1", "Cebu")
	maria := addOperator(t, h, "maria", store.OperatorRoleOperator, "NCR-Manila")
	carlo := addOperator(t, h, "carlo", store.OperatorRoleOperator, "Cebu")
	admin := addOperator(t, h, "root", store.OperatorRoleAdmin, store.AllRegions)
	base := "http://" + h.HTTPAddr().String()

	now := time.Now()
	manilaTaxi := connectVehicle(t, manilaAgent.MQTTAddr().String(), "mnl-taxi-1")
	publish(t, manilaTaxi, protocol.VehicleTopicFor("mnl-taxi-1", protocol.TopicStatus), `{"online":true}`)
	publish(t, manilaTaxi, protocol.VehicleTopicFor("mnl-taxi-1", protocol.TopicFix), fixJSON(now.Add(-time.Second), 14.5995, 120.9842))
	publish(t, manilaTaxi, protocol.VehicleTopicFor("mnl-taxi-1", protocol.TopicSOS),
		fmt.Sprintf(`{"id":"sos-manila","ts":%q,"lat":14.5995,"lon":120.9842,"kind":"panic"}`, now.Format(time.RFC3339)))
	// The Cebu SOS goes out once the Manila one is on the bus, so it has
	// the higher seq: a stream that got the Cebu SOS was past the Manila one.
	waitFor(t, 30*time.Second, "the Manila SOS on the admin's stream", func() bool { return len(openedSOS(t, admin.stream)) == 1 })
	cebuTaxi := connectVehicle(t, cebuAgent.MQTTAddr().String(), "ceb-taxi-1")
	publish(t, cebuTaxi, protocol.VehicleTopicFor("ceb-taxi-1", protocol.TopicStatus), `{"online":true}`)
	publish(t, cebuTaxi, protocol.VehicleTopicFor("ceb-taxi-1", protocol.TopicFix), fixJSON(now.Add(-time.Second), 10.3157, 123.8854))
	publish(t, cebuTaxi, protocol.VehicleTopicFor("ceb-taxi-1", protocol.TopicSOS),
		fmt.Sprintf(`{"id":"sos-cebu","ts":%q,"lat":10.3157,"lon":123.8854,"kind":"panic"}`, now.Format(time.RFC3339)))
	waitFor(t, 30*time.Second, "the Cebu SOS on the Cebu and admin streams", func() bool {
		return len(openedSOS(t, carlo.stream)) == 1 && len(openedSOS(t, admin.stream)) == 2
	})
	// Fixes and statuses travel in lanes of their own, which may arrive
	// after the SOS.
	waitFor(t, 30*time.Second, "each taxi's fix and status on its operator's stream", func() bool {
		for o, vehicle := range map[*regionOperator]string{maria: "mnl-taxi-1", carlo: "ceb-taxi-1"} {
			if !frameIDs(t, o.stream, "fix", "vehicle_id")[vehicle] || !frameIDs(t, o.stream, "vehicle.status", "vehicle_id")[vehicle] {
				return false
			}
		}
		return true
	})

	for _, tc := range []struct {
		o       *regionOperator
		sos     string
		vehicle string
	}{{maria, "sos-manila", "mnl-taxi-1"}, {carlo, "sos-cebu", "ceb-taxi-1"}} {
		if got := openedSOS(t, tc.o.stream); len(got) != 1 || got[0] != tc.sos {
			t.Errorf("%s's stream opened %v, want only %s", tc.o.name, got, tc.sos)
		}
		for _, typ := range []string{"fix", "vehicle.status"} {
			if got := frameIDs(t, tc.o.stream, typ, "vehicle_id"); len(got) != 1 || !got[tc.vehicle] {
				t.Errorf("%s's stream carried %s frames of %v, want only %s", tc.o.name, typ, got, tc.vehicle)
			}
		}
	}
	for _, tc := range []struct {
		o            *regionOperator
		mine, others string
	}{{maria, "ncr-1", "cebu-1"}, {carlo, "cebu-1", "ncr-1"}} {
		// The agents' first batches, after the streams opened, put their
		// connected state in their regions.
		got := frameIDs(t, tc.o.stream, "agent.status", "agent_id")
		if !got[tc.mine] {
			t.Errorf("%s's stream carried no status of agent %s of its region", tc.o.name, tc.mine)
		}
		if got[tc.others] {
			t.Errorf("%s's stream carried the status of agent %s of another region", tc.o.name, tc.others)
		}
	}
	// The admin's stream carries everything, as it arrives.
	waitFor(t, 10*time.Second, "both agents' statuses and both taxis' fixes on the admin's stream", func() bool {
		agents, fixes := frameIDs(t, admin.stream, "agent.status", "agent_id"), frameIDs(t, admin.stream, "fix", "vehicle_id")
		return agents["ncr-1"] && agents["cebu-1"] && fixes["mnl-taxi-1"] && fixes["ceb-taxi-1"]
	})

	// The API: the Cebu operator lists only the Cebu incident, and asking
	// for the Manila one by id gets the 404 of an id that does not exist.
	var list struct{ Incidents []store.Incident }
	code, body := carlo.do(t, http.MethodGet, base+"/api/v1/incidents", "")
	if err := json.Unmarshal([]byte(body), &list); err != nil || code != http.StatusOK {
		t.Fatalf("Cebu operator's incidents = %d %s", code, body)
	}
	if len(list.Incidents) != 1 || list.Incidents[0].SOSID != "sos-cebu" {
		t.Errorf("Cebu operator's incidents = %+v, want only sos-cebu", list.Incidents)
	}
	code, body = admin.do(t, http.MethodGet, base+"/api/v1/incidents?region=NCR-Manila", "")
	if err := json.Unmarshal([]byte(body), &list); err != nil || code != http.StatusOK || len(list.Incidents) != 1 {
		t.Fatalf("admin's Manila incidents = %d %s", code, body)
	}
	manilaID := list.Incidents[0].ID
	missing := fmt.Sprintf("%s/api/v1/incidents/%d", base, manilaID+1000)
	manila := fmt.Sprintf("%s/api/v1/incidents/%d", base, manilaID)
	for _, req := range []struct{ method, suffix, body string }{
		{http.MethodGet, "", ""},
		{http.MethodGet, "/notifications", ""},
		{http.MethodPost, "/acknowledge", "{}"},
	} {
		code, body := carlo.do(t, req.method, manila+req.suffix, req.body)
		wantCode, wantBody := carlo.do(t, req.method, missing+req.suffix, req.body)
		if code != http.StatusNotFound || code != wantCode || body != wantBody {
			t.Errorf("%s %s of the Manila incident as the Cebu operator = %d %s, want the 404 of an unknown id: %d %s",
				req.method, req.suffix, code, body, wantCode, wantBody)
		}
	}
	if code, body := carlo.do(t, http.MethodGet, base+"/api/v1/vehicles/mnl-taxi-1/track", ""); code != http.StatusNotFound {
		t.Errorf("Manila taxi's track as the Cebu operator = %d %s, want 404", code, body)
	}
	if code, body := carlo.do(t, http.MethodGet, base+"/api/v1/vehicles", ""); code != http.StatusOK || strings.Contains(body, "mnl-taxi-1") {
		t.Errorf("vehicles as the Cebu operator = %d %s, want no Manila taxi", code, body)
	}
	if code, body := carlo.do(t, http.MethodGet, base+"/api/v1/agents", ""); code != http.StatusOK || strings.Contains(body, "ncr-1") || !strings.Contains(body, "cebu-1") {
		t.Errorf("agents as the Cebu operator = %d %s, want cebu-1 only", code, body)
	}
	if code, body := maria.do(t, http.MethodPost, manila+"/acknowledge", "{}"); code != http.StatusOK || !strings.Contains(body, `"actor":"operator:maria"`) {
		t.Errorf("Manila operator acknowledging = %d %s, want 200 by operator:maria", code, body)
	}
	waitFor(t, 10*time.Second, "the acknowledgement on the Manila and admin streams", func() bool {
		return len(maria.stream.ofType("incident.updated")) > 0 && len(admin.stream.ofType("incident.updated")) > 0
	})
	for _, ev := range carlo.stream.ofType("incident.updated") {
		var c store.IncidentChange
		if err := json.Unmarshal(ev.Data, &c); err == nil && c.Incident.ID == manilaID {
			t.Errorf("Cebu operator's stream carried an update of the Manila incident: %s", ev.Data)
		}
	}

	// Signing out closes the operator's stream with 1008.
	if code, body := carlo.do(t, http.MethodDelete, base+"/api/v1/session", ""); code != http.StatusNoContent {
		t.Fatalf("sign out = %d %s", code, body)
	}
	select {
	case <-carlo.stream.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the signed-out operator's stream is still open")
	}
	var ce websocket.CloseError
	if !errors.As(carlo.stream.err, &ce) || ce.Code != websocket.StatusPolicyViolation {
		t.Errorf("signed-out stream ended with %v, want close status 1008", carlo.stream.err)
	}
	if code, _ := carlo.do(t, http.MethodGet, base+"/api/v1/incidents", ""); code != http.StatusUnauthorized {
		t.Errorf("request after sign-out = %d, want 401", code)
	}
}
