package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait in these tests; they never sleep.
const waitTimeout = 5 * time.Second

// testNow is the fake clock of every test server: 2026-12-04 10:00 in Manila.
var testNow = time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)

// fakeStore is an in-memory api.Store. It records the arguments of the
// last query so tests can check how the API translated a request.
type fakeStore struct {
	mu        sync.Mutex
	positions []store.Position
	fixes     []store.StoredFix
	incidents []store.Incident
	events    map[int64][]store.IncidentEvent
	// err, when set, is returned by every read; pingErr by Ping.
	err     error
	pingErr error

	lastFixes struct {
		vehicle  string
		from, to time.Time
		limit    int
	}
	lastFilter store.IncidentFilter
	// actions are the lifecycle calls that reached the store, in order.
	actions []actionCall
	// now stamps lifecycle changes.
	now time.Time
}

// actionCall is one lifecycle call of the fake store.
type actionCall struct {
	action store.Action
	id     int64
	actor  string
	text   string
}

var _ api.Store = (*fakeStore)(nil)

func (f *fakeStore) LatestPositions(ctx context.Context) ([]store.Position, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return slices.Clone(f.positions), nil
}

func (f *fakeStore) Fixes(ctx context.Context, vehicleID string, from, to time.Time, limit int) ([]store.StoredFix, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastFixes.vehicle, f.lastFixes.from, f.lastFixes.to, f.lastFixes.limit = vehicleID, from, to, limit
	if f.err != nil {
		return nil, f.err
	}
	var out []store.StoredFix
	for _, fx := range f.fixes {
		if fx.VehicleID == vehicleID && !fx.Fix.Time.Before(from) && fx.Fix.Time.Before(to) && len(out) < limit {
			out = append(out, fx)
		}
	}
	return out, nil
}

func (f *fakeStore) Incidents(ctx context.Context, filter store.IncidentFilter) ([]store.Incident, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastFilter = filter
	if f.err != nil {
		return nil, f.err
	}
	var out []store.Incident
	for _, inc := range f.incidents {
		if len(filter.States) > 0 && !slices.Contains(filter.States, inc.State) {
			continue
		}
		if filter.Region != "" && inc.Region != filter.Region {
			continue
		}
		if filter.VehicleID != "" && inc.VehicleID != filter.VehicleID {
			continue
		}
		out = append(out, inc)
	}
	slices.SortFunc(out, func(a, b store.Incident) int { return b.OpenedAt.Compare(a.OpenedAt) })
	if len(out) > filter.Limit {
		out = out[:filter.Limit]
	}
	return out, nil
}

func (f *fakeStore) Incident(ctx context.Context, id int64) (store.Incident, []store.IncidentEvent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return store.Incident{}, nil, f.err
	}
	for _, inc := range f.incidents {
		if inc.ID == id {
			return inc, f.events[id], nil
		}
	}
	return store.Incident{}, nil, store.ErrNotFound
}

func (f *fakeStore) AcknowledgeIncident(ctx context.Context, id int64, actor string) (store.IncidentChange, error) {
	return f.act(store.ActionAcknowledge, id, actor, "")
}

func (f *fakeStore) AssignIncident(ctx context.Context, id int64, actor, assignee string) (store.IncidentChange, error) {
	return f.act(store.ActionAssign, id, actor, assignee)
}

func (f *fakeStore) DispatchIncident(ctx context.Context, id int64, actor, detail string) (store.IncidentChange, error) {
	return f.act(store.ActionDispatch, id, actor, detail)
}

func (f *fakeStore) AddIncidentNote(ctx context.Context, id int64, actor, text string) (store.IncidentChange, error) {
	return f.act(store.ActionNote, id, actor, text)
}

func (f *fakeStore) ResolveIncident(ctx context.Context, id int64, actor, resolution string) (store.IncidentChange, error) {
	return f.act(store.ActionResolve, id, actor, resolution)
}

func (f *fakeStore) CancelIncident(ctx context.Context, id int64, actor, reason string) (store.IncidentChange, error) {
	return f.act(store.ActionCancel, id, actor, reason)
}

// act applies a lifecycle call with the rules every store shares
// (store.ValidateAction and store.ApplyAction) and records it.
func (f *fakeStore) act(a store.Action, id int64, actor, text string) (store.IncidentChange, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.actions = append(f.actions, actionCall{action: a, id: id, actor: actor, text: text})
	if f.err != nil {
		return store.IncidentChange{}, f.err
	}
	text, err := store.ValidateAction(a, actor, text)
	if err != nil {
		return store.IncidentChange{}, err
	}
	for i := range f.incidents {
		inc := &f.incidents[i]
		if inc.ID != id {
			continue
		}
		next := *inc
		ev, err := store.ApplyAction(&next, a, actor, text, f.now)
		if err != nil {
			return store.IncidentChange{}, fmt.Errorf("%s incident %d: %w", a, id, err)
		}
		*inc = next
		ev.ID = int64(len(f.events[id]) + 1)
		f.events[id] = append(f.events[id], ev)
		return store.IncidentChange{Incident: next, Event: ev}, nil
	}
	return store.IncidentChange{}, fmt.Errorf("%s incident %d: %w", a, id, store.ErrNotFound)
}

// actionCalls returns the lifecycle calls that reached the store.
func (f *fakeStore) actionCalls() []actionCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.actions)
}

// incident returns the stored incident with id.
func (f *fakeStore) incident(id int64) (store.Incident, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, inc := range f.incidents {
		if inc.ID == id {
			return inc, true
		}
	}
	return store.Incident{}, false
}

func (f *fakeStore) Ping(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pingErr
}

// update changes the store's contents under its lock, because the server
// reads them on other goroutines.
func (f *fakeStore) update(fn func(f *fakeStore)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// fixesCall returns the arguments of the last Fixes call.
func (f *fakeStore) fixesCall() (vehicle string, from, to time.Time, limit int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastFixes.vehicle, f.lastFixes.from, f.lastFixes.to, f.lastFixes.limit
}

// filter returns the filter of the last Incidents call.
func (f *fakeStore) filter() store.IncidentFilter {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastFilter
}

func (f *fakeStore) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *fakeStore) setPingErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pingErr = err
}

// testServer is a running API server with its dependencies.
type testServer struct {
	*httptest.Server
	api   *api.Server
	bus   *events.Bus
	store *fakeStore
	reg   *prometheus.Registry
}

// newTestServer starts an API server on a loopback port. edit adjusts the
// configuration before New; busCfg configures the bus.
func newTestServer(t *testing.T, busCfg events.Config, edit func(*api.Config)) *testServer {
	t.Helper()
	reg := prometheus.NewRegistry()
	busCfg.Registerer = reg
	bus := events.NewBus(busCfg)
	fs := &fakeStore{events: map[int64][]store.IncidentEvent{}, now: testNow}
	cfg := api.Config{
		Store:      fs,
		Bus:        bus,
		Registerer: reg,
		Now:        func() time.Time { return testNow },
	}
	if edit != nil {
		edit(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config: %v", err)
	}
	srv := api.New(cfg)
	ts := httptest.NewServer(withTestPrincipal(srv.Handler()))
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("close api: %v", err)
		}
		ts.Close()
		if err := bus.Close(); err != nil {
			t.Errorf("close bus: %v", err)
		}
	})
	return &testServer{Server: ts, api: srv, bus: bus, store: fs, reg: reg}
}

// testPrincipalHeader chooses the principal of a test request: the key of
// a testPrincipals entry. A request without it acts as testAdmin.
const testPrincipalHeader = "X-Test-Principal"

// The principals of the tests.
var (
	testAdmin      = api.Principal{Operator: "admin", Role: api.RoleAdmin, Regions: []string{api.AllRegions}}
	testPrincipals = map[string]api.Principal{
		"admin":   testAdmin,
		"manila":  {Operator: "maria", Role: api.RoleOperator, Regions: []string{"NCR-Manila"}, SessionID: "session-maria"},
		"cebu":    {Operator: "carlo", Role: api.RoleSupervisor, Regions: []string{"Cebu"}, SessionID: "session-carlo"},
		"visayas": {Operator: "vera", Role: api.RoleOperator, Regions: []string{"Cebu", "Iloilo"}, SessionID: "session-vera"},
		"nowhere": {Operator: "nina", Role: api.RoleOperator, Regions: []string{"Davao"}},
		// Another session and an API token of the Manila operator.
		"manila-2":     {Operator: "maria", Role: api.RoleOperator, Regions: []string{"NCR-Manila"}, SessionID: "session-maria-2"},
		"manila-token": {Operator: "maria", Role: api.RoleOperator, Regions: []string{"NCR-Manila"}, TokenID: 7},
	}
)

// withTestPrincipal puts the principal that testPrincipalHeader names in
// each request's context, which the authentication middleware keeps. The
// value "none", an Authorization header or a cookie leave the request to
// the middleware.
func withTestPrincipal(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := r.Header.Get(testPrincipalHeader)
		if name == "none" || r.Header.Get("Authorization") != "" || r.Header.Get("Cookie") != "" {
			next.ServeHTTP(w, r)
			return
		}
		p, ok := testPrincipals[name]
		if !ok {
			p = testAdmin
		}
		next.ServeHTTP(w, r.WithContext(api.WithPrincipal(r.Context(), p)))
	})
}

// get requests path and returns the response with its body read.
func (ts *testServer) get(t *testing.T, path string) (*http.Response, []byte) {
	t.Helper()
	return ts.do(t, http.MethodGet, path)
}

func (ts *testServer) do(t *testing.T, method, path string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, ts.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := ts.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read %s body: %v", path, err)
	}
	return res, body
}

// getJSON requests path, checks the status and JSON content type, and
// decodes the body into a generic value for shape checks.
func (ts *testServer) getJSON(t *testing.T, path string, wantStatus int) map[string]any {
	t.Helper()
	res, body := ts.get(t, path)
	if res.StatusCode != wantStatus {
		t.Fatalf("GET %s status = %d, want %d; body %s", path, res.StatusCode, wantStatus, body)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("GET %s Content-Type = %q, want application/json", path, ct)
	}
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("GET %s body %s is not a JSON object: %v", path, body, err)
	}
	return v
}

// metricValue returns the value of the counter or gauge name whose labels
// include every pair in labels.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, labels) {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	found := 0
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; ok && v == l.GetValue() {
			found++
		}
	}
	return found == len(want)
}

// eventually polls cond until it is true or waitTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ptr[T any](v T) *T { return &v }

// samplePosition returns a position of vehicle id at lat, lon fixed at ts.
func samplePosition(id string, lat, lon float64, ts time.Time) store.Position {
	return store.Position{
		VehicleID:  id,
		AgentID:    "agent-ncr",
		Region:     "NCR",
		Fix:        protocol.Fix{Time: ts, Lat: lat, Lon: lon, SpeedKmh: ptr(32.5)},
		ReceivedAt: ts.Add(time.Second),
		Online:     ptr(true),
	}
}

func sampleIncident(id int64, vehicle string, state store.IncidentState, opened time.Time) store.Incident {
	return store.Incident{
		ID: id, SOSID: "sos-" + vehicle, VehicleID: vehicle, AgentID: "agent-ncr", Region: "NCR",
		Kind: protocol.SOSPanic, State: state, HasLocation: true, Lat: 14.5995, Lon: 120.9842,
		PressedAt: opened, ReceivedAt: opened, OpenedAt: opened, UpdatedAt: opened, Presses: 1,
	}
}

// jsonPath walks a decoded JSON value by object keys and array indexes.
func jsonPath(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch key := p.(type) {
		case string:
			obj, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("at %q: %v is not an object", key, v)
			}
			if v, ok = obj[key]; !ok {
				t.Fatalf("key %q missing in %v", key, keys(obj))
			}
		case int:
			arr, ok := v.([]any)
			if !ok || key >= len(arr) {
				t.Fatalf("index %d out of range in %v", key, v)
			}
			v = arr[key]
		}
	}
	return v
}

func keys(m map[string]any) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}
