package api_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
)

// testOperator is the operator name of the principal the action tests
// act as: testAdmin, which withTestPrincipal puts on requests that name
// no other.
const testOperator = "admin"

// changeRecorder collects the changes a server reports to OnIncidentChange.
type changeRecorder struct {
	mu      sync.Mutex
	changes []store.IncidentChange
}

func (r *changeRecorder) record(c store.IncidentChange) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, c)
}

func (r *changeRecorder) all() []store.IncidentChange {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]store.IncidentChange(nil), r.changes...)
}

// newActionServer starts a test server with incidents 1 to n, open, and
// records what it reports to OnIncidentChange.
func newActionServer(t *testing.T, n int) (*testServer, *changeRecorder) {
	t.Helper()
	rec := &changeRecorder{}
	ts := newTestServer(t, events.Config{}, func(c *api.Config) { c.OnIncidentChange = rec.record })
	ts.store.update(func(f *fakeStore) {
		for i := range n {
			f.incidents = append(f.incidents, sampleIncident(int64(i+1), fmt.Sprintf("MNL-%04d", i+1), store.StateOpen, testNow.Add(-time.Hour)))
		}
	})
	return ts, rec
}

// post sends a POST request with body. Each header in headers is set
// unless its value is empty; nil headers means a JSON content type.
func (ts *testServer) post(t *testing.T, path string, headers map[string]string, body string) (*http.Response, []byte) {
	t.Helper()
	if headers == nil {
		headers = map[string]string{"Content-Type": "application/json"}
	}
	req, err := http.NewRequest(http.MethodPost, ts.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for name, value := range headers {
		if value != "" {
			req.Header.Set(name, value)
		}
	}
	return ts.send(t, req)
}

func (ts *testServer) send(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	res, err := ts.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read %s body: %v", req.URL.Path, err)
	}
	return res, body
}

// postJSON posts body with the default headers, checks the status and
// decodes the JSON response.
func (ts *testServer) postJSON(t *testing.T, path, body string, wantStatus int) map[string]any {
	t.Helper()
	res, raw := ts.post(t, path, nil, body)
	return decodeResponse(t, "POST "+path, res, raw, wantStatus)
}

func decodeResponse(t *testing.T, what string, res *http.Response, raw []byte, wantStatus int) map[string]any {
	t.Helper()
	if res.StatusCode != wantStatus {
		t.Fatalf("%s status = %d, want %d; body %s", what, res.StatusCode, wantStatus, raw)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("%s Content-Type = %q, want application/json", what, ct)
	}
	var v map[string]any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s body %s is not a JSON object: %v", what, raw, err)
	}
	return v
}

func errorMessage(v map[string]any) string {
	msg, _ := v["error"].(string)
	return msg
}

func TestActions_EachRouteAppliesAction(t *testing.T) {
	ts, rec := newActionServer(t, 6)
	cases := []struct {
		id        int64
		path      string
		body      string
		action    store.Action
		text      string
		state     store.IncidentState
		eventType string
		detail    string
	}{
		{1, "acknowledge", ``, store.ActionAcknowledge, "", store.StateAcknowledged, store.EventAcknowledged, ""},
		{2, "assign", `{"assignee":"Maria Santos"}`, store.ActionAssign, "Maria Santos", store.StateOpen, store.EventAssigned, "assigned to Maria Santos"},
		{3, "dispatch", `{"detail":"ambulance A-12 from PGH"}`, store.ActionDispatch, "ambulance A-12 from PGH", store.StateDispatched, store.EventDispatched, "ambulance A-12 from PGH"},
		{4, "notes", `{"text":"  called the driver, no answer\n"}`, store.ActionNote, "called the driver, no answer", store.StateOpen, store.EventNote, "called the driver, no answer"},
		{5, "resolve", `{"resolution":"driver safe at the hospital"}`, store.ActionResolve, "driver safe at the hospital", store.StateResolved, store.EventResolved, "driver safe at the hospital"},
		{6, "cancel", `{"reason":"driver confirmed a false alarm by phone"}`, store.ActionCancel, "driver confirmed a false alarm by phone", store.StateCancelled, store.EventCancelled, "driver confirmed a false alarm by phone"},
	}
	for i, tc := range cases {
		path := fmt.Sprintf("/api/v1/incidents/%d/%s", tc.id, tc.path)
		v := ts.postJSON(t, path, tc.body, http.StatusOK)

		if got := jsonPath(t, v, "incident", "id"); got != float64(tc.id) {
			t.Errorf("%s: incident.id = %v, want %d", path, got, tc.id)
		}
		if got := jsonPath(t, v, "incident", "state"); got != string(tc.state) {
			t.Errorf("%s: incident.state = %v, want %s", path, got, tc.state)
		}
		for key, want := range map[string]any{"type": tc.eventType, "actor": "operator:" + testOperator, "at": "2026-12-04T02:00:00Z"} {
			if got := jsonPath(t, v, "event", key); got != want {
				t.Errorf("%s: event.%s = %v, want %v", path, key, got, want)
			}
		}
		if tc.detail != "" {
			if got := jsonPath(t, v, "event", "detail"); got != tc.detail {
				t.Errorf("%s: event.detail = %v, want %q", path, got, tc.detail)
			}
		}

		calls := ts.store.actionCalls()
		if len(calls) != i+1 {
			t.Fatalf("%s: %d store calls, want %d", path, len(calls), i+1)
		}
		want := actionCall{action: tc.action, id: tc.id, actor: "operator:" + testOperator, text: tc.text}
		if calls[i] != want {
			t.Errorf("%s: store call %+v, want %+v", path, calls[i], want)
		}

		changes := rec.all()
		if len(changes) != i+1 {
			t.Fatalf("%s: OnIncidentChange called %d times, want %d", path, len(changes), i+1)
		}
		stored, _ := ts.store.incident(tc.id)
		if changes[i].Incident != stored || changes[i].Opened || changes[i].Event.Type != tc.eventType {
			t.Errorf("%s: OnIncidentChange got %+v, want the stored incident %+v and its %s event", path, changes[i], stored, tc.eventType)
		}
	}
}

func TestActions_AssignedToAndTimesInJSON(t *testing.T) {
	ts, _ := newActionServer(t, 1)
	ts.postJSON(t, "/api/v1/incidents/1/acknowledge", `{}`, http.StatusOK)
	v := ts.postJSON(t, "/api/v1/incidents/1/assign", `{"assignee":"Maria Santos"}`, http.StatusOK)
	if got := jsonPath(t, v, "incident", "assigned_to"); got != "Maria Santos" {
		t.Errorf("incident.assigned_to = %v, want Maria Santos", got)
	}
	if got := jsonPath(t, v, "incident", "acknowledged_at"); got != "2026-12-04T02:00:00Z" {
		t.Errorf("incident.acknowledged_at = %v, want the fake clock", got)
	}
	inc := v["incident"].(map[string]any)
	for _, key := range []string{"dispatched_at", "resolved_at", "cancelled_at"} {
		if _, ok := inc[key]; ok {
			t.Errorf("incident.%s = %v, want it left out while zero", key, inc[key])
		}
	}
}

func TestActions_AcknowledgeAcceptsEmptyBodies(t *testing.T) {
	ts, _ := newActionServer(t, 3)
	for i, body := range []string{``, `{}`, ` null `} {
		ts.postJSON(t, fmt.Sprintf("/api/v1/incidents/%d/acknowledge", i+1), body, http.StatusOK)
	}
}

func TestActions_RefusedTransitionIs409(t *testing.T) {
	ts, rec := newActionServer(t, 1)
	ts.postJSON(t, "/api/v1/incidents/1/resolve", `{"resolution":"handled"}`, http.StatusOK)

	for path, body := range map[string]string{
		"acknowledge": ``,
		"assign":      `{"assignee":"Maria Santos"}`,
		"dispatch":    `{"detail":"ambulance"}`,
		"resolve":     `{"resolution":"again"}`,
		"cancel":      `{"reason":"false alarm"}`,
	} {
		v := ts.postJSON(t, "/api/v1/incidents/1/"+path, body, http.StatusConflict)
		if msg := errorMessage(v); !strings.Contains(msg, "incident 1: it is resolved") {
			t.Errorf("%s of a resolved incident: error %q, want it to name the state", path, msg)
		}
	}
	// A note is still taken.
	ts.postJSON(t, "/api/v1/incidents/1/notes", `{"text":"follow-up call done"}`, http.StatusOK)
	if n := len(rec.all()); n != 2 {
		t.Errorf("OnIncidentChange called %d times, want 2: refused actions report nothing", n)
	}
}

func TestActions_MissingIncidentIs404(t *testing.T) {
	ts, rec := newActionServer(t, 1)
	v := ts.postJSON(t, "/api/v1/incidents/404/acknowledge", ``, http.StatusNotFound)
	if errorMessage(v) != "not found" {
		t.Errorf("error = %q, want not found", errorMessage(v))
	}
	if n := len(rec.all()); n != 0 {
		t.Errorf("OnIncidentChange called %d times, want 0", n)
	}
}

func TestActions_InvalidIncidentIDIs400(t *testing.T) {
	ts, _ := newActionServer(t, 1)
	for _, id := range []string{"abc", "0", "-1", "99999999999999999999999"} {
		v := ts.postJSON(t, "/api/v1/incidents/"+id+"/acknowledge", ``, http.StatusBadRequest)
		if msg := errorMessage(v); !strings.Contains(msg, "invalid incident id") {
			t.Errorf("id %s: error %q, want invalid incident id", id, msg)
		}
	}
}

func TestActions_NonJSONContentTypeIs415(t *testing.T) {
	ts, _ := newActionServer(t, 2)
	for _, ct := range []string{
		"",
		"text/plain",
		"application/x-www-form-urlencoded",
		"multipart/form-data; boundary=x",
		"application/json; charset=iso-8859-1",
		"application/json-patch+json",
		"application/json; version=2",
		"json",
	} {
		res, raw := ts.post(t, "/api/v1/incidents/1/notes", map[string]string{"Content-Type": ct}, `{"text":"x"}`)
		v := decodeResponse(t, "POST with Content-Type "+ct, res, raw, http.StatusUnsupportedMediaType)
		if msg := errorMessage(v); !strings.Contains(msg, "send application/json") {
			t.Errorf("Content-Type %q: error %q, want it to ask for application/json", ct, msg)
		}
	}
	if calls := ts.store.actionCalls(); len(calls) != 0 {
		t.Errorf("store called %d times for rejected requests, want 0", len(calls))
	}

	// Parameters and case that mean the same type are accepted.
	for i, ct := range []string{"application/json; charset=UTF-8", "Application/JSON"} {
		res, raw := ts.post(t, fmt.Sprintf("/api/v1/incidents/%d/acknowledge", i+1), map[string]string{"Content-Type": ct}, ``)
		decodeResponse(t, "POST with Content-Type "+ct, res, raw, http.StatusOK)
	}
}

func TestActions_ActorIsThePrincipal(t *testing.T) {
	ts, _ := newActionServer(t, 2)
	// Without a principal the request is refused before the store.
	res, raw := ts.post(t, "/api/v1/incidents/1/acknowledge", map[string]string{"Content-Type": "application/json", testPrincipalHeader: "none"}, ``)
	v := decodeResponse(t, "no principal", res, raw, http.StatusUnauthorized)
	if msg := errorMessage(v); !strings.Contains(msg, "sign in first") {
		t.Errorf("no principal: error %q, want it to ask to sign in", msg)
	}
	if calls := ts.store.actionCalls(); len(calls) != 0 {
		t.Errorf("store called %d times for a refused request, want 0", len(calls))
	}
	// A header naming another operator, as older clients sent, changes
	// nothing. The incident is moved into the principal's region first.
	ts.store.update(func(f *fakeStore) { f.incidents[0].Region = "NCR-Manila" })
	res, raw = ts.post(t, "/api/v1/incidents/1/acknowledge", map[string]string{
		"Content-Type": "application/json", testPrincipalHeader: "manila", "X-Xpress-Operator": "Somebody Else",
	}, ``)
	v = decodeResponse(t, "as maria", res, raw, http.StatusOK)
	if got := jsonPath(t, v, "event", "actor"); got != "operator:maria" {
		t.Errorf("event.actor = %v, want operator:maria", got)
	}
	res, raw = ts.post(t, "/api/v1/incidents/2/acknowledge", nil, ``)
	v = decodeResponse(t, "as admin", res, raw, http.StatusOK)
	if got := jsonPath(t, v, "event", "actor"); got != "operator:"+testOperator {
		t.Errorf("event.actor = %v, want operator:%s", got, testOperator)
	}
}

func TestActions_BadBodyIs400(t *testing.T) {
	ts, rec := newActionServer(t, 1)
	for _, tc := range []struct {
		path, body, wantMsg string
	}{
		{"notes", `{"text":"x","extra":1}`, `unknown field "extra"`},
		{"notes", `{"note":"x"}`, `unknown field "note"`},
		{"acknowledge", `{"note":"x"}`, `unknown field "note"`},
		{"acknowledge", `[]`, "send an empty JSON object"},
		{"notes", `{}`, `missing field "text"`},
		{"notes", `{"text":null}`, `missing field "text"`},
		{"notes", ``, "empty request body"},
		{"notes", `{"text":5}`, `invalid field "text"`},
		{"notes", `"just text"`, `send a JSON object with a "text" string`},
		{"notes", `{"text":"x"`, "invalid JSON"},
		{"notes", `{"text":"x"} {"text":"y"}`, "exactly one JSON object"},
		{"notes", `{"text":"x"} trailing`, "invalid JSON"},
		{"notes", `{"text":"   "}`, "note is empty"},
		{"notes", `{"text":"` + strings.Repeat("x", store.MaxActionText+1) + `"}`, "longer than 2000 bytes"},
		{"notes", `{"text":"bell \u0007"}`, "control character"},
		{"assign", `{"assignee":""}`, "assignee is empty"},
		{"assign", `{"assignee":"` + strings.Repeat("a", 65) + `"}`, "assignee is longer than 64 characters"},
		{"dispatch", `{"detail":""}`, "dispatch detail is empty"},
		{"resolve", `{"resolution":""}`, "resolution is empty"},
		{"cancel", `{"reason":""}`, "cancel reason is empty"},
		{"cancel", `{"reason":"x","resolution":"y"}`, `unknown field "resolution"`},
	} {
		v := ts.postJSON(t, "/api/v1/incidents/1/"+tc.path, tc.body, http.StatusBadRequest)
		if msg := errorMessage(v); !strings.Contains(msg, tc.wantMsg) {
			t.Errorf("%s with %.60s: error %q, want it to contain %q", tc.path, tc.body, msg, tc.wantMsg)
		}
	}
	if calls := ts.store.actionCalls(); len(calls) != 0 {
		t.Errorf("store called %d times for rejected bodies, want 0", len(calls))
	}
	if n := len(rec.all()); n != 0 {
		t.Errorf("OnIncidentChange called %d times, want 0", n)
	}
}

func TestActions_OversizeBodyIs413(t *testing.T) {
	ts, _ := newActionServer(t, 1)
	// Valid JSON one byte over the limit, and a body far larger.
	padding := strings.Repeat(" ", api.MaxActionBody-len(`{"text":"x"}`)+1)
	for _, body := range []string{`{"text":"x"}` + padding, `{"text":"` + strings.Repeat("x", 1<<20) + `"}`} {
		v := ts.postJSON(t, "/api/v1/incidents/1/notes", body, http.StatusRequestEntityTooLarge)
		if msg := errorMessage(v); msg != "request body is larger than 16384 bytes" {
			t.Errorf("body of %d bytes: error %q", len(body), msg)
		}
	}
	if calls := ts.store.actionCalls(); len(calls) != 0 {
		t.Errorf("store called %d times for oversize bodies, want 0", len(calls))
	}
	// Exactly at the limit is accepted.
	ts.postJSON(t, "/api/v1/incidents/1/notes", `{"text":"x"}`+padding[1:], http.StatusOK)
}

func TestActions_StoreErrorsMapToStatus(t *testing.T) {
	ts, rec := newActionServer(t, 1)
	for _, tc := range []struct {
		err    error
		status int
	}{
		{fmt.Errorf("acknowledge incident 1: %w", store.ErrUnavailable), http.StatusServiceUnavailable},
		{fmt.Errorf("acknowledge incident 1: %w", store.ErrConflict), http.StatusConflict},
		{fmt.Errorf("acknowledge incident 1: %w", store.ErrInvalid), http.StatusBadRequest},
		{errors.New("pq: secret detail"), http.StatusInternalServerError},
	} {
		ts.store.setErr(tc.err)
		v := ts.postJSON(t, "/api/v1/incidents/1/acknowledge", ``, tc.status)
		if msg := errorMessage(v); strings.Contains(msg, "secret") || msg == "" {
			t.Errorf("%v: error %q, want a plain message", tc.err, msg)
		}
	}
	if n := len(rec.all()); n != 0 {
		t.Errorf("OnIncidentChange called %d times after store errors, want 0", n)
	}
}

func TestActions_SecurityHeadersOnEveryResponse(t *testing.T) {
	ts, _ := newActionServer(t, 1)
	ts.postJSON(t, "/api/v1/incidents/1/resolve", `{"resolution":"done"}`, http.StatusOK)
	jsonHeaders := map[string]string{"Content-Type": "application/json"}
	for _, req := range []struct {
		path    string
		headers map[string]string
		body    string
		status  int
	}{
		{"/api/v1/incidents/1/notes", jsonHeaders, `{"text":"x"}`, 200},
		{"/api/v1/incidents/1/notes", jsonHeaders, `{}`, 400},
		{"/api/v1/incidents/9/notes", jsonHeaders, `{"text":"x"}`, 404},
		{"/api/v1/incidents/1/acknowledge", jsonHeaders, ``, 409},
		{"/api/v1/incidents/1/notes", jsonHeaders, strings.Repeat(" ", api.MaxActionBody+1), 413},
		{"/api/v1/incidents/1/notes", map[string]string{"Content-Type": "text/plain"}, `x`, 415},
		{"/api/v1/incidents/1/reopen", jsonHeaders, ``, 405},
	} {
		res, _ := ts.post(t, req.path, req.headers, req.body)
		if res.StatusCode != req.status {
			t.Errorf("POST %s status = %d, want %d", req.path, res.StatusCode, req.status)
		}
		for name, value := range map[string]string{
			"X-Content-Type-Options":  "nosniff",
			"Referrer-Policy":         "no-referrer",
			"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
			"X-Frame-Options":         "DENY",
			"Cache-Control":           "no-store",
		} {
			if req.status == 405 && name == "Cache-Control" {
				continue
			}
			if got := res.Header.Get(name); got != value {
				t.Errorf("POST %s (%d) header %s = %q, want %q", req.path, req.status, name, got, value)
			}
		}
	}
}

func TestActions_CountedByRoute(t *testing.T) {
	ts, _ := newActionServer(t, 1)
	ts.postJSON(t, "/api/v1/incidents/1/acknowledge", ``, http.StatusOK)
	ts.postJSON(t, "/api/v1/incidents/1/acknowledge", ``, http.StatusConflict)
	for code, want := range map[string]float64{"200": 1, "409": 1} {
		labels := map[string]string{"route": "POST /api/v1/incidents/{id}/acknowledge", "code": code}
		if got := metricValue(t, ts.reg, "xpress_api_requests_total", labels); got != want {
			t.Errorf("requests_total%v = %v, want %v", labels, got, want)
		}
	}
}

func TestIncidents_LifecycleFilters(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	ts.getJSON(t, "/api/v1/incidents?assigned_to=Maria%20Santos&since=2026-12-04T08:00:00%2B08:00&until=2026-12-04T02:30:00Z&offset=20&limit=10", http.StatusOK)
	f := ts.store.filter()
	if f.AssignedTo != "Maria Santos" {
		t.Errorf("filter assigned to %q, want Maria Santos", f.AssignedTo)
	}
	if want := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC); !f.Since.Equal(want) {
		t.Errorf("filter since %s, want %s", f.Since, want)
	}
	if want := time.Date(2026, 12, 4, 2, 30, 0, 0, time.UTC); !f.Until.Equal(want) {
		t.Errorf("filter until %s, want %s", f.Until, want)
	}
	if f.Offset != 20 || f.Limit != 10 {
		t.Errorf("filter offset, limit = %d, %d, want 20, 10", f.Offset, f.Limit)
	}

	ts.getJSON(t, "/api/v1/incidents", http.StatusOK)
	if f := ts.store.filter(); f.AssignedTo != "" || !f.Since.IsZero() || !f.Until.IsZero() || f.Offset != 0 {
		t.Errorf("filter without parameters = %+v, want no assignee, range or offset", f)
	}

	for path, wantMsg := range map[string]string{
		"/api/v1/incidents?assigned_to=" + strings.Repeat("a", 65):                           "invalid assigned_to",
		"/api/v1/incidents?assigned_to=%09tab":                                               "invalid assigned_to",
		"/api/v1/incidents?since=today":                                                      `invalid since "today"`,
		"/api/v1/incidents?until=2026-12-04":                                                 `invalid until "2026-12-04"`,
		"/api/v1/incidents?since=2026-12-04T02:00:00Z&until=2026-12-04T02:00:00Z":            "is not before until",
		"/api/v1/incidents?since=2026-12-04T03:00:00Z&until=2026-12-04T02:00:00Z":            "is not before until",
		"/api/v1/incidents?offset=-1":                                                        `invalid offset "-1"`,
		"/api/v1/incidents?offset=100001":                                                    `invalid offset "100001": use an integer from 0 to 100000`,
		"/api/v1/incidents?offset=two":                                                       `invalid offset "two"`,
		"/api/v1/incidents?state=open&since=2026-12-04T03:00:00Z&until=2026-12-04T02:00:00Z": "is not before until",
	} {
		v := ts.getJSON(t, path, http.StatusBadRequest)
		if msg := errorMessage(v); !strings.Contains(msg, wantMsg) {
			t.Errorf("GET %s error = %q, want it to contain %q", path, msg, wantMsg)
		}
	}
}
