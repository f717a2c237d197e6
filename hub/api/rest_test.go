package api_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

func TestHealthz_ReturnsOK(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	v := ts.getJSON(t, "/healthz", http.StatusOK)
	if v["status"] != "ok" {
		t.Errorf("status = %v, want ok", v["status"])
	}
}

func TestReadyz_OKWhenStoreAndCheckPass(t *testing.T) {
	ts := newTestServer(t, events.Config{}, func(c *api.Config) {
		c.Ready = func(context.Context) error { return nil }
	})
	v := ts.getJSON(t, "/readyz", http.StatusOK)
	if v["status"] != "ok" {
		t.Errorf("status = %v, want ok", v["status"])
	}
}

func TestReadyz_StoreDownIs503(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	ts.store.setPingErr(fmt.Errorf("dial 127.0.0.1:5432: %w", store.ErrUnavailable))

	v := ts.getJSON(t, "/readyz", http.StatusServiceUnavailable)
	if v["reason"] != "store unavailable" {
		t.Errorf("reason = %v, want store unavailable", v["reason"])
	}
	if v["status"] != "unavailable" {
		t.Errorf("status = %v, want unavailable", v["status"])
	}
}

func TestReadyz_ReadyCheckFailureIs503(t *testing.T) {
	ts := newTestServer(t, events.Config{}, func(c *api.Config) {
		c.Ready = func(context.Context) error { return errors.New("agent broker not listening") }
	})
	v := ts.getJSON(t, "/readyz", http.StatusServiceUnavailable)
	if v["reason"] != "agent broker not listening" {
		t.Errorf("reason = %v, want the Ready error", v["reason"])
	}
}

func TestReadyz_NotReadyAfterClose(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	if err := ts.api.Close(); err != nil {
		t.Fatal(err)
	}
	v := ts.getJSON(t, "/readyz", http.StatusServiceUnavailable)
	if v["reason"] != "shutting down" {
		t.Errorf("reason = %v, want shutting down", v["reason"])
	}
	// REST reads are still served while the HTTP server drains.
	ts.getJSON(t, "/api/v1/vehicles", http.StatusOK)
}

func TestVehicles_ReturnsLatestPositions(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	fixTime := testNow.Add(-time.Minute)
	ts.store.update(func(f *fakeStore) {
		f.positions = []store.Position{
			samplePosition("MNL-0001", 14.5995, 120.9842, fixTime),
			samplePosition("MNL-0002", 14.6, 121.0, fixTime),
		}
	})

	v := ts.getJSON(t, "/api/v1/vehicles", http.StatusOK)
	vehicles, ok := v["vehicles"].([]any)
	if !ok || len(vehicles) != 2 {
		t.Fatalf("vehicles = %v, want an array of 2", v["vehicles"])
	}
	for path, want := range map[string]any{
		"vehicle_id":  "MNL-0001",
		"agent_id":    "agent-ncr",
		"region":      "NCR",
		"received_at": "2026-12-04T01:59:01Z",
		"online":      true,
	} {
		if got := jsonPath(t, vehicles, 0, path); got != want {
			t.Errorf("vehicles[0].%s = %v, want %v", path, got, want)
		}
	}
	if got := jsonPath(t, vehicles, 0, "fix", "lat"); got != 14.5995 {
		t.Errorf("vehicles[0].fix.lat = %v, want 14.5995", got)
	}
	if got := jsonPath(t, vehicles, 0, "fix", "ts"); got != "2026-12-04T01:59:00Z" {
		t.Errorf("vehicles[0].fix.ts = %v, want 2026-12-04T01:59:00Z", got)
	}
	if got := jsonPath(t, vehicles, 0, "fix", "speed_kmh"); got != 32.5 {
		t.Errorf("vehicles[0].fix.speed_kmh = %v, want 32.5", got)
	}
}

func TestVehicles_EmptyIsEmptyArray(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	_, body := ts.get(t, "/api/v1/vehicles")
	if got := strings.TrimSpace(string(body)); got != `{"vehicles":[]}` {
		t.Errorf("body = %s, want {\"vehicles\":[]}", got)
	}
}

func TestTrack_DefaultsToLastHour(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	ts.store.update(func(f *fakeStore) {
		for i := range 3 {
			f.fixes = append(f.fixes, store.StoredFix{
				VehicleID: "MNL-0001",
				Fix:       protocol.Fix{Time: testNow.Add(-time.Duration(50-i*10) * time.Minute), Lat: 14.6, Lon: 121},
			})
		}
		// One fix is older than an hour and must be left out.
		f.fixes = append(f.fixes, store.StoredFix{
			VehicleID: "MNL-0001", Fix: protocol.Fix{Time: testNow.Add(-2 * time.Hour), Lat: 14.6, Lon: 121},
		})
	})

	v := ts.getJSON(t, "/api/v1/vehicles/MNL-0001/track", http.StatusOK)
	if fixes, _ := v["fixes"].([]any); len(fixes) != 3 {
		t.Errorf("fixes = %d, want 3", len(fixes))
	}
	if v["vehicle_id"] != "MNL-0001" || v["from"] != "2026-12-04T01:00:00Z" || v["to"] != "2026-12-04T02:00:00Z" || v["limit"] != 1000.0 {
		t.Errorf("track header = %v %v %v %v, want MNL-0001, the last hour, limit 1000", v["vehicle_id"], v["from"], v["to"], v["limit"])
	}
	if v["truncated"] != false {
		t.Errorf("truncated = %v, want false for 3 fixes under the limit", v["truncated"])
	}
	vehicle, from, to, limit := ts.store.fixesCall()
	if vehicle != "MNL-0001" || !from.Equal(testNow.Add(-time.Hour)) || !to.Equal(testNow) || limit != 1000 {
		t.Errorf("store called with %s %v %v %d, want MNL-0001, the last hour, limit 1000", vehicle, from, to, limit)
	}

	cut := ts.getJSON(t, "/api/v1/vehicles/MNL-0001/track?limit=2", http.StatusOK)
	if cut["truncated"] != true {
		t.Errorf("truncated = %v, want true when the limit cut the track", cut["truncated"])
	}
}

func TestTrack_ReadsFromToAndLimit(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	// The +08:00 offset is sent unescaped: '+' arrives as a space.
	v := ts.getJSON(t, "/api/v1/vehicles/MNL-0001/track?from=2026-12-04T08:00:00+08:00&to=2026-12-04T01:30:00Z&limit=10000", http.StatusOK)
	if fixes, ok := v["fixes"].([]any); !ok || len(fixes) != 0 {
		t.Errorf("fixes = %v, want an empty array", v["fixes"])
	}
	_, from, to, limit := ts.store.fixesCall()
	if want := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC); !from.Equal(want) {
		t.Errorf("from = %v, want %v", from, want)
	}
	if want := time.Date(2026, 12, 4, 1, 30, 0, 0, time.UTC); !to.Equal(want) {
		t.Errorf("to = %v, want %v", to, want)
	}
	if limit != 10000 {
		t.Errorf("limit = %d, want 10000", limit)
	}

	ts.getJSON(t, "/api/v1/vehicles/MNL-0001/track?to=2026-12-04T01:30:00Z", http.StatusOK)
	if _, from, _, _ := ts.store.fixesCall(); !from.Equal(time.Date(2026, 12, 4, 0, 30, 0, 0, time.UTC)) {
		t.Errorf("from without a from parameter = %v, want an hour before to", from)
	}
	ts.getJSON(t, "/api/v1/vehicles/MNL-0001/track?from=2026-12-04T00:30:00%2B08:00", http.StatusOK)
	_, from, to, _ = ts.store.fixesCall()
	if want := time.Date(2026, 12, 3, 16, 30, 0, 0, time.UTC); !from.Equal(want) || !to.Equal(testNow) {
		t.Errorf("range without a to parameter = %v to %v, want %v to now", from, to, want)
	}
}

func TestTrack_BadQueryIs400(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	for path, wantMsg := range map[string]string{
		"/api/v1/vehicles/MNL-0001/track?from=yesterday":                                           `invalid from "yesterday"`,
		"/api/v1/vehicles/MNL-0001/track?to=2026-12-04":                                            `invalid to "2026-12-04"`,
		"/api/v1/vehicles/MNL-0001/track?from=2026-12-04T02:00:00Z&to=2026-12-04T01:00:00Z":        "is not before to",
		"/api/v1/vehicles/MNL-0001/track?from=2026-12-04T01:00:00Z&to=2026-12-04T01:00:00Z":        "is not before to",
		"/api/v1/vehicles/MNL-0001/track?limit=0":                                                  `invalid limit "0"`,
		"/api/v1/vehicles/MNL-0001/track?limit=10001":                                              `invalid limit "10001": use an integer from 1 to 10000`,
		"/api/v1/vehicles/MNL-0001/track?limit=ten":                                                `invalid limit "ten"`,
		"/api/v1/vehicles/bad%20id/track":                                                          `invalid vehicle id "bad id"`,
		"/api/v1/vehicles/" + strings.Repeat("v", 65) + "/track":                                   "invalid vehicle id",
		"/api/v1/vehicles/MNL-0001/track?from=2026-12-04T01:00:00Z&to=2026-12-04T02:00:00Z&limit=": "", // an empty limit is the default
	} {
		if wantMsg == "" {
			ts.getJSON(t, path, http.StatusOK)
			continue
		}
		v := ts.getJSON(t, path, http.StatusBadRequest)
		if msg, _ := v["error"].(string); !strings.Contains(msg, wantMsg) {
			t.Errorf("GET %s error = %q, want it to contain %q", path, msg, wantMsg)
		}
	}
}

func TestIncidents_AppliesFilters(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	ts.store.update(func(f *fakeStore) {
		f.incidents = []store.Incident{
			sampleIncident(1, "MNL-0001", store.StateOpen, testNow.Add(-3*time.Minute)),
			sampleIncident(2, "MNL-0002", store.StateAcknowledged, testNow.Add(-2*time.Minute)),
			sampleIncident(3, "MNL-0001", store.StateResolved, testNow.Add(-time.Minute)),
		}
	})

	v := ts.getJSON(t, "/api/v1/incidents?state=open,acknowledged&region=NCR&limit=5", http.StatusOK)
	incidents, _ := v["incidents"].([]any)
	if len(incidents) != 2 {
		t.Fatalf("incidents = %d, want 2", len(incidents))
	}
	if got := jsonPath(t, incidents, 0, "id"); got != 2.0 {
		t.Errorf("first incident id = %v, want 2 (newest opened first)", got)
	}
	for _, key := range []string{"sos_id", "vehicle_id", "kind", "state", "has_location", "lat", "lon", "pressed_at", "opened_at", "presses", "cancel_requested"} {
		jsonPath(t, incidents, 0, key)
	}
	f := ts.store.filter()
	if len(f.States) != 2 || f.States[0] != store.StateOpen || f.States[1] != store.StateAcknowledged {
		t.Errorf("filter states = %v, want [open acknowledged]", f.States)
	}
	if f.Region != "NCR" || f.Limit != 5 || f.VehicleID != "" {
		t.Errorf("filter = %+v, want region NCR, limit 5, no vehicle", f)
	}

	v = ts.getJSON(t, "/api/v1/incidents?vehicle=MNL-0001", http.StatusOK)
	if incidents, _ := v["incidents"].([]any); len(incidents) != 2 {
		t.Errorf("incidents of MNL-0001 = %d, want 2", len(incidents))
	}
	if f := ts.store.filter(); f.VehicleID != "MNL-0001" || f.Limit != api.DefaultIncidentLimit || len(f.States) != 0 {
		t.Errorf("filter = %+v, want vehicle MNL-0001, default limit, all states", f)
	}
}

func TestIncidents_BadQueryIs400(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	for path, wantMsg := range map[string]string{
		"/api/v1/incidents?state=open,closed":                   `invalid state "closed"`,
		"/api/v1/incidents?limit=1001":                          `invalid limit "1001"`,
		"/api/v1/incidents?limit=-1":                            `invalid limit "-1"`,
		"/api/v1/incidents?vehicle=MNL%2F0001":                  `invalid vehicle id "MNL/0001"`,
		"/api/v1/incidents?region=" + strings.Repeat("r", 65):   "invalid region",
		"/api/v1/incidents?region=NCR%0A":                       "invalid region",
		"/api/v1/incidents/abc":                                 `invalid incident id "abc"`,
		"/api/v1/incidents/0":                                   `invalid incident id "0"`,
		"/api/v1/incidents/99999999999999999999999999999999999": "invalid incident id",
	} {
		v := ts.getJSON(t, path, http.StatusBadRequest)
		if msg, _ := v["error"].(string); !strings.Contains(msg, wantMsg) {
			t.Errorf("GET %s error = %q, want it to contain %q", path, msg, wantMsg)
		}
	}
}

func TestIncident_ReturnsIncidentAndEvents(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	inc := sampleIncident(7, "MNL-0001", store.StateOpen, testNow)
	inc.CancelRequested = true
	ts.store.update(func(f *fakeStore) {
		f.incidents = []store.Incident{inc}
		f.events[7] = []store.IncidentEvent{
			{ID: 1, IncidentID: 7, Type: store.EventOpened, Actor: "vehicle:MNL-0001", At: testNow},
			{ID: 2, IncidentID: 7, Type: store.EventCancelRequested, Actor: "vehicle:MNL-0001", At: testNow.Add(time.Minute)},
		}
	})

	v := ts.getJSON(t, "/api/v1/incidents/7", http.StatusOK)
	if got := jsonPath(t, v, "incident", "id"); got != 7.0 {
		t.Errorf("incident.id = %v, want 7", got)
	}
	if got := jsonPath(t, v, "incident", "cancel_requested"); got != true {
		t.Errorf("incident.cancel_requested = %v, want true", got)
	}
	if got := jsonPath(t, v, "events", 1, "type"); got != store.EventCancelRequested {
		t.Errorf("events[1].type = %v, want %s", got, store.EventCancelRequested)
	}

	// An incident without events still has an events array.
	ts.store.update(func(f *fakeStore) {
		f.incidents = append(f.incidents, sampleIncident(8, "MNL-0002", store.StateOpen, testNow))
	})
	if evs, ok := ts.getJSON(t, "/api/v1/incidents/8", http.StatusOK)["events"].([]any); !ok || len(evs) != 0 {
		t.Errorf("events of incident 8 = %v, want []", evs)
	}
}

func TestIncident_MissingIs404(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	v := ts.getJSON(t, "/api/v1/incidents/404", http.StatusNotFound)
	if v["error"] != "not found" {
		t.Errorf("error = %v, want not found", v["error"])
	}
}

func TestAgents_SortedByID(t *testing.T) {
	since := testNow.Add(-time.Hour)
	ts := newTestServer(t, events.Config{}, func(c *api.Config) {
		c.Agents = func() []api.AgentState {
			return []api.AgentState{
				{ID: "agent-davao", Region: "Davao", Connected: false, Since: since},
				{ID: "agent-cebu", Region: "Cebu", Connected: true, Since: since},
			}
		}
	})
	v := ts.getJSON(t, "/api/v1/agents", http.StatusOK)
	agents, _ := v["agents"].([]any)
	if len(agents) != 2 {
		t.Fatalf("agents = %v, want 2", v["agents"])
	}
	for key, want := range map[string]any{"agent_id": "agent-cebu", "region": "Cebu", "connected": true, "since": "2026-12-04T01:00:00Z"} {
		if got := jsonPath(t, agents, 0, key); got != want {
			t.Errorf("agents[0].%s = %v, want %v", key, got, want)
		}
	}
}

func TestAgents_NoneIsEmptyArray(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	if agents, ok := ts.getJSON(t, "/api/v1/agents", http.StatusOK)["agents"].([]any); !ok || len(agents) != 0 {
		t.Errorf("agents = %v, want []", agents)
	}
}

func TestErrors_MapKindToStatus(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	for _, tc := range []struct {
		err     error
		status  int
		message string
	}{
		{fmt.Errorf("query positions: %w", store.ErrUnavailable), http.StatusServiceUnavailable, "store unavailable, try again shortly"},
		{fmt.Errorf("query positions: %w", context.DeadlineExceeded), http.StatusServiceUnavailable, "store timed out, try again shortly"},
		{fmt.Errorf("query positions: %w", store.ErrNotFound), http.StatusNotFound, "not found"},
		{errors.New("pq: relation fixes_2026_12 secret-detail"), http.StatusInternalServerError, "internal error"},
	} {
		ts.store.setErr(tc.err)
		for _, path := range []string{"/api/v1/vehicles", "/api/v1/vehicles/MNL-0001/track", "/api/v1/incidents", "/api/v1/incidents/1"} {
			res, body := ts.get(t, path)
			if res.StatusCode != tc.status {
				t.Errorf("GET %s with %v: status %d, want %d", path, tc.err, res.StatusCode, tc.status)
			}
			if want := fmt.Sprintf(`{"error":%q}`, tc.message); strings.TrimSpace(string(body)) != want {
				t.Errorf("GET %s with %v: body %s, want %s", path, tc.err, body, want)
			}
		}
	}
}

func TestUnknownAPIRoute_IsJSON404(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	ts.getJSON(t, "/api/v1/nothing-here", http.StatusNotFound)
	res, _ := ts.do(t, http.MethodPost, "/api/v1/vehicles")
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /api/v1/vehicles status = %d, want 405", res.StatusCode)
	}
}

func TestSecurityHeaders_OnEveryResponse(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	ts.store.setPingErr(store.ErrUnavailable)
	want := map[string]string{
		"X-Content-Type-Options":  "nosniff",
		"Referrer-Policy":         "no-referrer",
		"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
		"X-Frame-Options":         "DENY",
	}
	for _, req := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/", 200},
		{"GET", "/app.js", 200},
		{"GET", "/app.css", 200},
		{"GET", "/favicon.svg", 200},
		{"GET", "/missing.js", 404},
		{"GET", "/healthz", 200},
		{"GET", "/readyz", 503},
		{"GET", "/metrics", 200},
		{"GET", "/api/v1/vehicles", 200},
		{"GET", "/api/v1/incidents/9", 404},
		{"GET", "/api/v1/incidents/x", 400},
		{"GET", "/api/v1/nothing", 404},
		{"GET", "/api/v1/stream", 426}, // a plain GET without the upgrade headers
		{"DELETE", "/api/v1/agents", 405},
	} {
		res, _ := ts.do(t, req.method, req.path)
		if res.StatusCode != req.status {
			t.Errorf("%s %s status = %d, want %d", req.method, req.path, res.StatusCode, req.status)
		}
		for name, value := range want {
			if got := res.Header.Get(name); got != value {
				t.Errorf("%s %s header %s = %q, want %q", req.method, req.path, name, got, value)
			}
		}
	}
}

func TestDashboard_ServedAtRoot(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	res, body := ts.get(t, "/")
	if ct := res.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type = %q, want text/html", ct)
	}
	if !strings.Contains(string(body), `<script src="app.js" defer></script>`) {
		t.Errorf("index does not load app.js: %.200s", body)
	}
}

func TestMetrics_PassPromlintAndCountRequests(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	ts.getJSON(t, "/api/v1/vehicles", http.StatusOK)
	ts.getJSON(t, "/api/v1/incidents/x", http.StatusBadRequest)
	ts.get(t, "/missing.js")
	ts.do(t, http.MethodPost, "/healthz")

	res, body := ts.get(t, "/metrics")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics status %d", res.StatusCode)
	}
	for _, name := range []string{"xpress_api_requests_total", "xpress_api_request_duration_seconds", "xpress_api_websocket_clients", "xpress_api_websocket_frames_sent_total", "xpress_events_published_total"} {
		if !strings.Contains(string(body), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}

	problems, err := promlint.New(strings.NewReader(string(body))).Lint()
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	for _, tc := range []struct {
		route, code string
	}{
		{"GET /api/v1/vehicles", "200"},
		{"GET /api/v1/incidents/{id}", "400"},
		{"GET /", "404"},
		{"unmatched", "405"},
	} {
		if got := metricValue(t, ts.reg, "xpress_api_requests_total", map[string]string{"route": tc.route, "code": tc.code}); got != 1 {
			t.Errorf("requests_total{route=%q,code=%q} = %v, want 1", tc.route, tc.code, got)
		}
	}
}
