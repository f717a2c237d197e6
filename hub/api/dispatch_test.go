package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/dispatch"
	"github.com/xpress-ops/tower/hub/dispatch/dispatchtest"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/notify"
	"github.com/xpress-ops/tower/protocol"
)

// dispatchPublicURL is the hub's public URL in these tests: Twilio signs
// callbacks for it, as it would behind a proxy.
const dispatchPublicURL = "https://ops.example.ph"

// dispatchServer is an API server on a real embedded store with a real
// dispatcher that sends SMS to a fake Twilio.
type dispatchServer struct {
	*httptest.Server
	store  *embedded.Store
	bus    *events.Bus
	twilio *dispatchtest.Twilio
	d      *dispatch.Dispatcher
	reg    *prometheus.Registry
	agents []api.AgentState
}

func newDispatchServer(t *testing.T, configure ...func(*api.Config)) *dispatchServer {
	t.Helper()
	ds := &dispatchServer{reg: prometheus.NewRegistry()}
	ds.store = embedded.New(embedded.Config{Path: filepath.Join(t.TempDir(), "hub.db"), Now: func() time.Time { return testNow }, Registerer: prometheus.NewRegistry()})
	if err := ds.store.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	ds.bus = events.NewBus(events.Config{Registerer: ds.reg})
	ds.twilio = dispatchtest.NewTwilio(t, func() time.Time { return testNow })
	tw, err := notify.NewTwilio(notify.TwilioConfig{
		AccountSID: ds.twilio.AccountSID, AuthToken: ds.twilio.AuthToken, From: "+639170000001",
		BaseURL: ds.twilio.URL(), HTTPClient: dispatchtest.LoopbackClient(),
	})
	if err != nil {
		t.Fatal(err)
	}

	ds.d, err = dispatch.New(dispatch.Config{
		Store:            ds.store,
		Bus:              ds.bus,
		Senders:          map[notify.Channel]notify.Sender{notify.ChannelSMS: tw, notify.ChannelVoice: tw},
		Finder:           tw,
		TwilioAuthToken:  ds.twilio.AuthToken,
		TwilioAccountSID: ds.twilio.AccountSID,
		PublicURL:        dispatchPublicURL,
		Clock:            dispatchtest.NewClock(testNow),
		Registerer:       ds.reg,
	})
	if err != nil {
		t.Fatal(err)
	}

	cfg := api.Config{
		Store:      ds.store,
		Bus:        ds.bus,
		Registerer: ds.reg,
		Dispatch:   ds.d,
		Agents:     func() []api.AgentState { return ds.agents },
		Now:        func() time.Time { return testNow.Add(45 * time.Second) },
	}
	for _, f := range configure {
		f(&cfg)
	}
	srv := api.New(cfg)
	ds.Server = httptest.NewServer(withTestPrincipal(srv.Handler()))
	t.Cleanup(func() {
		srv.Close()
		ds.Server.Close()
		ds.d.Close()
		ds.bus.Close()
		if err := ds.store.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
		// The senders' connections to the fake would outlive the test.
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	})
	return ds
}

// request sends a request with an optional JSON body and the operator
// header, and returns the status and body.
func (ds *dispatchServer) request(t *testing.T, method, path, body string, operator bool) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, ds.URL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if !operator && method != http.MethodGet {
		req.Header.Set(testPrincipalHeader, "none")
	}
	res, err := ds.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, out
}

// openIncident commits an SOS and returns its incident.
func (ds *dispatchServer) openIncident(t *testing.T, sosID string) store.Incident {
	t.Helper()
	rec := storetest.SOSRecord(1, "taxi-0917", sosID, testNow)
	res, err := ds.store.CommitBatch(context.Background(), &protocol.Batch{
		AgentID: "agent-ncr", Region: "NCR-Manila", SpoolID: "s", Lane: rec.Kind.Lane(), Records: []protocol.Record{rec}, SentAt: testNow,
	})
	if err != nil || len(res.Incidents) != 1 {
		t.Fatalf("commit SOS: %+v, %v", res.Incidents, err)
	}
	return res.Incidents[0].Incident
}

// postCallback posts a status callback form to the route with the given
// signature and returns the status and body.
func (ds *dispatchServer) postCallback(t *testing.T, form url.Values, signature string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, ds.URL+dispatch.TwilioStatusPath, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set(notify.TwilioSignatureHeader, signature)
	res, err := ds.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, body
}

func TestContactsCRUD(t *testing.T) {
	ds := newDispatchServer(t)

	code, body := ds.request(t, http.MethodPost, "/api/v1/contacts",
		`{"name":"Ana Reyes","role":"responder","region":"NCR-Manila","phone":"0917 123 4567","language":"fil"}`, true)
	if code != http.StatusCreated {
		t.Fatalf("POST contact = %d %s, want 201", code, body)
	}
	var created struct{ Contact store.Contact }
	if err := json.Unmarshal(body, &created); err != nil {
		t.Fatal(err)
	}
	if created.Contact.ID == 0 || created.Contact.Phone != "+639171234567" || created.Contact.Language != store.LangFilipino {
		t.Errorf("created contact = %+v, want an id, phone +639171234567 and language fil", created.Contact)
	}

	code, body = ds.request(t, http.MethodPost, "/api/v1/contacts",
		`{"name":"Carla Santos","role":"emergency","vehicle_id":"taxi-0917","email":"carla@example.ph"}`, true)
	if code != http.StatusCreated {
		t.Fatalf("POST emergency contact = %d %s", code, body)
	}

	id := strconv.FormatInt(created.Contact.ID, 10)
	code, body = ds.request(t, http.MethodPut, "/api/v1/contacts/"+id,
		`{"name":"Ana Reyes","role":"supervisor","region":"NCR-Manila","phone":"+63 918 123 4567"}`, true)
	if code != http.StatusOK || !strings.Contains(string(body), `"+639181234567"`) || !strings.Contains(string(body), `"supervisor"`) {
		t.Fatalf("PUT contact = %d %s, want 200 with the new phone and role", code, body)
	}

	code, body = ds.request(t, http.MethodGet, "/api/v1/contacts?role=supervisor&region=NCR-Manila", "", false)
	var list struct{ Contacts []store.Contact }
	if err := json.Unmarshal(body, &list); err != nil || code != http.StatusOK {
		t.Fatalf("GET contacts = %d %s", code, body)
	}
	if len(list.Contacts) != 1 || list.Contacts[0].ID != created.Contact.ID {
		t.Errorf("supervisors of NCR-Manila = %+v, want Ana", list.Contacts)
	}
	code, body = ds.request(t, http.MethodGet, "/api/v1/contacts?vehicle=taxi-0917", "", false)
	if code != http.StatusOK || !strings.Contains(string(body), "Carla Santos") || strings.Contains(string(body), "Ana Reyes") {
		t.Errorf("contacts of taxi-0917 = %d %s, want only Carla", code, body)
	}

	code, body = ds.request(t, http.MethodDelete, "/api/v1/contacts/"+id, "", true)
	if code != http.StatusOK {
		t.Fatalf("DELETE contact = %d %s", code, body)
	}
	code, _ = ds.request(t, http.MethodDelete, "/api/v1/contacts/"+id, "", true)
	if code != http.StatusNotFound {
		t.Errorf("second DELETE = %d, want 404", code)
	}
	code, _ = ds.request(t, http.MethodPut, "/api/v1/contacts/"+id,
		`{"name":"Ana Reyes","role":"supervisor","region":"NCR-Manila","phone":"09181234567"}`, true)
	if code != http.StatusNotFound {
		t.Errorf("PUT of a deleted contact = %d, want 404", code)
	}
}

func TestContactsRejectBadInput(t *testing.T) {
	ds := newDispatchServer(t)
	cases := []struct {
		name     string
		method   string
		path     string
		body     string
		operator bool
		want     int
		message  string
	}{
		{"invalid phone", "POST", "/api/v1/contacts", `{"name":"A","role":"responder","region":"NCR-Manila","phone":"0917 12"}`, true, 400, "invalid phone: phone number"},
		{"letters in phone", "POST", "/api/v1/contacts", `{"name":"A","role":"responder","region":"NCR-Manila","phone":"call me"}`, true, 400, "invalid phone"},
		{"unknown role", "POST", "/api/v1/contacts", `{"name":"A","role":"boss","region":"NCR-Manila","phone":"09171234567"}`, true, 400, `role \"boss\" is unknown`},
		{"no address", "POST", "/api/v1/contacts", `{"name":"A","role":"responder","region":"NCR-Manila"}`, true, 400, "neither phone nor email"},
		{"unknown field", "POST", "/api/v1/contacts", `{"name":"A","role":"responder","region":"NCR-Manila","phone":"09171234567","pager":"1"}`, true, 400, "unknown field"},
		{"missing operator", "POST", "/api/v1/contacts", `{"name":"A","role":"responder","region":"NCR-Manila","phone":"09171234567"}`, false, 401, "sign in first"},
		{"delete without operator", "DELETE", "/api/v1/contacts/1", "", false, 401, "sign in first"},
		{"bad id", "PUT", "/api/v1/contacts/x", `{"name":"A","role":"responder","region":"NCR-Manila","phone":"09171234567"}`, true, 400, "invalid contact id"},
		{"bad role filter", "GET", "/api/v1/contacts?role=boss", "", true, 400, "invalid role"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := ds.request(t, c.method, c.path, c.body, c.operator)
			if code != c.want || !strings.Contains(string(body), c.message) {
				t.Errorf("%s %s = %d %s, want %d with %q", c.method, c.path, code, body, c.want, c.message)
			}
		})
	}

	// A form post, as another site's page could send, is refused.
	req, _ := http.NewRequest(http.MethodPost, ds.URL+"/api/v1/contacts", strings.NewReader("name=A"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	res, err := ds.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("form post = %d, want 415", res.StatusCode)
	}
}

// sentSMS opens an incident with one responder and sends its SMS, and
// returns the incident and the message's SID.
func sentSMS(t *testing.T, ds *dispatchServer) (store.Incident, string) {
	t.Helper()
	code, body := ds.request(t, http.MethodPost, "/api/v1/contacts",
		`{"name":"Ana Reyes","role":"responder","region":"NCR-Manila","phone":"09171234567"}`, true)
	if code != http.StatusCreated {
		t.Fatalf("POST contact = %d %s", code, body)
	}
	inc := ds.openIncident(t, "sos-cb")
	if err := ds.d.Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.d.SendDue(context.Background()); err != nil {
		t.Fatal(err)
	}
	msgs := ds.twilio.MessagesTo("+639171234567")
	if len(msgs) != 1 {
		t.Fatalf("SMS sent: %d, want 1", len(msgs))
	}
	return inc, msgs[0].SID
}

func TestTwilioStatusCallback(t *testing.T) {
	ds := newDispatchServer(t)
	inc, sid := sentSMS(t, ds)
	sub, err := ds.bus.Subscribe(ds.bus.Latest())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	form := url.Values{"MessageSid": {sid}, "MessageStatus": {"delivered"}, "AccountSid": {ds.twilio.AccountSID}}
	signed := dispatchtest.SignTwilio(ds.twilio.AuthToken, dispatchPublicURL+dispatch.TwilioStatusPath, form)

	forged := dispatchtest.SignTwilio("not-the-token", dispatchPublicURL+dispatch.TwilioStatusPath, form)
	if code, body := ds.postCallback(t, form, forged); code != http.StatusForbidden {
		t.Fatalf("forged callback = %d %s, want 403", code, body)
	}
	if code, _ := ds.postCallback(t, form, ""); code != http.StatusForbidden {
		t.Errorf("unsigned callback = %d, want 403", code)
	}
	wrongURL := dispatchtest.SignTwilio(ds.twilio.AuthToken, "https://evil.example/api/v1/dispatch/twilio/status", form)
	if code, _ := ds.postCallback(t, form, wrongURL); code != http.StatusForbidden {
		t.Errorf("callback signed for another URL = %d, want 403", code)
	}
	n := notificationOf(t, ds, inc.ID)
	if n.State != store.NotificationSent {
		t.Fatalf("notification after forged callbacks = %s, want sent", n.State)
	}
	if v := metricValue(t, ds.reg, "xpress_dispatch_status_callbacks_total", map[string]string{"result": "bad_signature"}); v != 3 {
		t.Errorf("bad signature metric = %v, want 3", v)
	}

	code, body := ds.postCallback(t, form, signed)
	if code != http.StatusOK || !strings.Contains(string(body), `"applied"`) {
		t.Fatalf("signed callback = %d %s, want 200 applied", code, body)
	}
	if n := notificationOf(t, ds, inc.ID); n.State != store.NotificationDelivered {
		t.Errorf("notification after the delivered callback = %s, want delivered", n.State)
	}
	select {
	case ev := <-sub.C():
		if ev.Type != events.TypeIncidentUpdated || !bytes.Contains(ev.Data, []byte("status delivered")) {
			t.Errorf("event after the callback = %s %s, want incident.updated with the status", ev.Type, ev.Data)
		}
	case <-time.After(5 * time.Second):
		t.Error("no incident.updated event after the callback")
	}

	unknown := url.Values{"MessageSid": {"SM" + strings.Repeat("0", 32)}, "MessageStatus": {"delivered"}, "AccountSid": {ds.twilio.AccountSID}}
	code, body = ds.postCallback(t, unknown, dispatchtest.SignTwilio(ds.twilio.AuthToken, dispatchPublicURL+dispatch.TwilioStatusPath, unknown))
	if code != http.StatusOK || !strings.Contains(string(body), "unknown SID") {
		t.Errorf("callback for an unknown SID = %d %s, want 200 ignored", code, body)
	}
	bad := url.Values{"MessageSid": {"not-a-sid"}, "MessageStatus": {"delivered"}}
	if code, _ := ds.postCallback(t, bad, dispatchtest.SignTwilio(ds.twilio.AuthToken, dispatchPublicURL+dispatch.TwilioStatusPath, bad)); code != http.StatusBadRequest {
		t.Errorf("malformed callback = %d, want 400", code)
	}
	if v := metricValue(t, ds.reg, "xpress_dispatch_status_callbacks_total", map[string]string{"result": "applied"}); v != 1 {
		t.Errorf("applied metric = %v, want 1", v)
	}
}

// notificationOf returns the incident's only notification through the API.
func notificationOf(t *testing.T, ds *dispatchServer, incidentID int64) store.Notification {
	t.Helper()
	code, body := ds.request(t, http.MethodGet, "/api/v1/incidents/"+strconv.FormatInt(incidentID, 10)+"/notifications", "", false)
	var out struct {
		EscalationLevel int `json:"escalation_level"`
		Notifications   []store.Notification
	}
	if err := json.Unmarshal(body, &out); err != nil || code != http.StatusOK {
		t.Fatalf("GET notifications = %d %s", code, body)
	}
	if len(out.Notifications) != 1 || out.EscalationLevel != dispatch.LevelOpened {
		t.Fatalf("notifications = %+v at level %d, want one at level 1", out.Notifications, out.EscalationLevel)
	}
	return out.Notifications[0]
}

func TestNotificationsOfUnknownIncident(t *testing.T) {
	ds := newDispatchServer(t)
	if code, _ := ds.request(t, http.MethodGet, "/api/v1/incidents/999/notifications", "", false); code != http.StatusNotFound {
		t.Errorf("notifications of a missing incident = %d, want 404", code)
	}
}

func TestHealthEndpoints(t *testing.T) {
	ds := newDispatchServer(t)
	ds.agents = []api.AgentState{{ID: "ncr-1", Connected: true}, {ID: "cebu-1", Connected: false}}

	code, body := ds.request(t, http.MethodGet, "/api/health", "", false)
	if code != http.StatusOK || !strings.Contains(string(body), `"agents_online":1`) || !strings.Contains(string(body), `"store":"ok"`) {
		t.Errorf("/api/health = %d %s", code, body)
	}

	// Without contacts the incident is still open 45 s later.
	inc := ds.openIncident(t, "sos-health")
	code, body = ds.request(t, http.MethodGet, "/api/emergency/health", "", false)
	if code != http.StatusOK {
		t.Fatalf("/api/emergency/health = %d %s", code, body)
	}
	var h struct {
		Status                      string
		Problems                    []string
		OpenUnacknowledged          int     `json:"open_unacknowledged"`
		OldestUnacknowledgedSeconds float64 `json:"oldest_unacknowledged_seconds"`
		OldestIncidentID            int64   `json:"oldest_incident_id"`
		Dispatch                    *dispatch.Health
		AgentsOffline               []string `json:"agents_offline"`
	}
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatal(err)
	}
	if h.Status != "degraded" || h.OpenUnacknowledged != 1 || h.OldestIncidentID != inc.ID || h.OldestUnacknowledgedSeconds != 45 {
		t.Errorf("emergency health = %+v, want degraded with incident %d open for 45 s", h, inc.ID)
	}
	if len(h.AgentsOffline) != 1 || h.AgentsOffline[0] != "cebu-1" {
		t.Errorf("agents offline = %v, want [cebu-1]", h.AgentsOffline)
	}
	if h.Dispatch == nil || len(h.Dispatch.Channels) != 4 {
		t.Fatalf("dispatch state = %+v, want four channels", h.Dispatch)
	}
	for _, ch := range h.Dispatch.Channels {
		if want := ch.Channel == "sms" || ch.Channel == "voice"; ch.Enabled != want {
			t.Errorf("channel %s enabled = %v, want %v", ch.Channel, ch.Enabled, want)
		}
	}
	problems := strings.Join(h.Problems, "; ")
	if !strings.Contains(problems, "1 open incident unacknowledged") || !strings.Contains(problems, "1 agent offline") {
		t.Errorf("problems %v: want \"1 open incident unacknowledged\" and \"1 agent offline\" in the singular", h.Problems)
	}
}
