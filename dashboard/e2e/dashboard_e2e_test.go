//go:build e2e

// Package e2e checks the dashboard in a real browser: headless Chromium,
// driven by check.mjs through playwright-core, against the hub's API with
// an in-memory store. It needs node, `npm ci` in this directory and
// Chromium at /usr/bin/chromium (or CHROMIUM_PATH), so it runs only with
// `go test -tags e2e ./dashboard/e2e/`.
package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/internal/passhash"
	"github.com/xpress-ops/tower/protocol"
)

// memStore is an in-memory api.Store. Its lifecycle methods apply the
// rules every store shares (store.ValidateAction, store.ApplyAction).
type memStore struct {
	mu        sync.Mutex
	positions []store.Position
	incidents []store.Incident
	events    map[int64][]store.IncidentEvent
}

func (m *memStore) LatestPositions(context.Context) ([]store.Position, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.positions), nil
}

func (m *memStore) Fixes(context.Context, string, time.Time, time.Time, int) ([]store.StoredFix, error) {
	return nil, nil
}

// Incidents returns the incidents in one of f.States, newest opened first.
func (m *memStore) Incidents(_ context.Context, f store.IncidentFilter) ([]store.Incident, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.Incident
	for _, inc := range m.incidents {
		if len(f.States) == 0 || slices.Contains(f.States, inc.State) {
			out = append(out, inc)
		}
	}
	slices.SortFunc(out, func(a, b store.Incident) int { return b.OpenedAt.Compare(a.OpenedAt) })
	return out, nil
}

func (m *memStore) Incident(_ context.Context, id int64) (store.Incident, []store.IncidentEvent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, inc := range m.incidents {
		if inc.ID == id {
			return inc, slices.Clone(m.events[id]), nil
		}
	}
	return store.Incident{}, nil, store.ErrNotFound
}

func (m *memStore) Ping(context.Context) error { return nil }

func (m *memStore) AcknowledgeIncident(_ context.Context, id int64, actor string) (store.IncidentChange, error) {
	return m.act(store.ActionAcknowledge, id, actor, "")
}

func (m *memStore) AssignIncident(_ context.Context, id int64, actor, assignee string) (store.IncidentChange, error) {
	return m.act(store.ActionAssign, id, actor, assignee)
}

func (m *memStore) DispatchIncident(_ context.Context, id int64, actor, detail string) (store.IncidentChange, error) {
	return m.act(store.ActionDispatch, id, actor, detail)
}

func (m *memStore) AddIncidentNote(_ context.Context, id int64, actor, text string) (store.IncidentChange, error) {
	return m.act(store.ActionNote, id, actor, text)
}

func (m *memStore) ResolveIncident(_ context.Context, id int64, actor, resolution string) (store.IncidentChange, error) {
	return m.act(store.ActionResolve, id, actor, resolution)
}

func (m *memStore) CancelIncident(_ context.Context, id int64, actor, reason string) (store.IncidentChange, error) {
	return m.act(store.ActionCancel, id, actor, reason)
}

func (m *memStore) act(a store.Action, id int64, actor, text string) (store.IncidentChange, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	text, err := store.ValidateAction(a, actor, text)
	if err != nil {
		return store.IncidentChange{}, err
	}
	for i := range m.incidents {
		if m.incidents[i].ID != id {
			continue
		}
		next := m.incidents[i]
		ev, err := store.ApplyAction(&next, a, actor, text, time.Now().UTC().Truncate(time.Microsecond))
		if err != nil {
			return store.IncidentChange{}, err
		}
		m.incidents[i] = next
		ev.ID = int64(len(m.events[id]) + 1)
		m.events[id] = append(m.events[id], ev)
		return store.IncidentChange{Incident: next, Event: ev}, nil
	}
	return store.IncidentChange{}, store.ErrNotFound
}

// add stores inc with an opened event.
func (m *memStore) add(inc store.Incident) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.incidents = append(m.incidents, inc)
	m.events[inc.ID] = append(m.events[inc.ID], store.IncidentEvent{
		ID: 1, IncidentID: inc.ID, Type: store.EventOpened, Actor: "vehicle:" + inc.VehicleID, At: inc.OpenedAt,
	})
}

// snapshot is what check.mjs reports about the page.
type snapshot struct {
	Phase  string `json:"phase"`
	Conn   string `json:"conn"`
	Seq    string `json:"seq"`
	Title  string `json:"title"`
	Alert  string `json:"alert"`
	Notice string `json:"notice"`
	Path   string `json:"path"`
	// SignedIn is the signed-in operator's name, role and regions.
	SignedIn []string `json:"signedIn"`
	// Login is the sign-in page's notice and error.
	Login     []string `json:"login"`
	Sockets   []socket `json:"sockets"`
	Dialogs   []string `json:"dialogs"`
	Incidents []row    `json:"incidents"`
	Closed    []row    `json:"closed"`
	Events    []row    `json:"events"`
	Vehicles  []row    `json:"vehicles"`
	Agents    []string `json:"agents"`
	Plot      string   `json:"plot"`
	Errors    []string `json:"errors"`
}

// socket is a WebSocket the page opened.
type socket struct {
	URL    string `json:"url"`
	Closed bool   `json:"closed"`
}

type row struct {
	ClassName string   `json:"className"`
	Cells     []string `json:"cells"`
}

func (r row) text() string { return strings.Join(r.Cells, " | ") }

// step is one thing check.mjs does before a snapshot: fill a field
// ([selector, value]) or click an element.
type step struct {
	Fill  []string `json:"fill,omitempty"`
	Click string   `json:"click,omitempty"`
}

// manila formats t as the dashboard shows Asia/Manila times (UTC+8, no DST).
func manila(t time.Time) string {
	return t.In(time.FixedZone("PHT", 8*3600)).Format("2006-01-02 15:04:05")
}

func ptr[T any](v T) *T { return &v }

func TestDashboard_LiveEventsAndResume(t *testing.T) {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "playwright-core")); err != nil {
		t.Fatalf("playwright-core is missing: run `npm ci` in %s (%v)", dir, err)
	}

	now := time.Now().UTC().Truncate(time.Second)
	fixTime := now.Add(-30 * time.Second)
	pressed := now.Add(-90 * time.Second)
	st := &memStore{
		events: map[int64][]store.IncidentEvent{},
		positions: []store.Position{
			{VehicleID: "MNL-0001", AgentID: "agent-ncr", Region: "NCR", ReceivedAt: fixTime, Online: ptr(true),
				Fix: protocol.Fix{Time: fixTime, Lat: 14.5995, Lon: 120.9842, SpeedKmh: ptr(32.5)}},
			{VehicleID: "MNL-0002", AgentID: "agent-ncr", Region: "NCR", ReceivedAt: fixTime,
				Fix: protocol.Fix{Time: fixTime, Lat: 14.5547, Lon: 121.0244}},
		},
	}
	st.add(store.Incident{
		ID: 41, SOSID: "sos-41", VehicleID: "MNL-0001", AgentID: "agent-ncr", Region: "NCR",
		Kind: protocol.SOSMedical, State: store.StateAcknowledged, HasLocation: true, Lat: 14.5995, Lon: 120.9842,
		PressedAt: pressed, ReceivedAt: pressed, OpenedAt: pressed, UpdatedAt: pressed, Presses: 1,
	})
	// The operator signs in with an account of a real store, which also
	// keeps the sessions across the API server's restart.
	accounts := embedded.New(embedded.Config{Path: filepath.Join(t.TempDir(), "hub.db")})
	if err := accounts.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accounts.Close() })
	password := rand.Text()
	hash, err := passhash.Hash(password, passhash.Password)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := accounts.CreateOperator(context.Background(), store.Operator{
		Username: "maria", DisplayName: "Maria Santos", Role: store.OperatorRoleOperator, Regions: []string{"NCR", "Cebu"},
	}, hash); err != nil {
		t.Fatal(err)
	}
	bus := events.NewBus(events.Config{})
	// registry is the metrics registry of the current API server.
	var registry atomic.Pointer[prometheus.Registry]
	newServer := func() *api.Server {
		reg := prometheus.NewRegistry()
		registry.Store(reg)
		return api.New(api.Config{
			Store:      st,
			Bus:        bus,
			Accounts:   accounts,
			Registerer: reg,
			// Pings end the stream of a session revoked in the store.
			PingInterval: 200 * time.Millisecond,
			// As the hub does: an operator's action reaches the dashboards
			// of the incident's region.
			OnIncidentChange: func(c store.IncidentChange) {
				if _, err := bus.PublishIn(c.Incident.Region, events.TypeIncidentUpdated, c); err != nil {
					t.Errorf("publish: %v", err)
				}
			},
			Agents: func() []api.AgentState {
				return []api.AgentState{{ID: "agent-cebu", Region: "Cebu", Connected: true, Since: now.Add(-time.Hour)}}
			},
		})
	}
	// The listener stays while the API server behind it is replaced, as in
	// a hub restart that keeps its event history.
	var current atomic.Pointer[api.Server]
	current.Store(newServer())
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		current.Load().Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		current.Load().Close()
		ts.Close()
		bus.Close()
	})

	shots := filepath.Join(dir, "screenshots")
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "check.mjs", ts.URL+"/", shots)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "XPRESS_E2E_USER=maria", "XPRESS_E2E_PASSWORD="+password)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node: %v", err)
	}
	lines := bufio.NewScanner(stdout)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	// restarting is set once the test replaces the API server.
	restarting := false
	// next requests a snapshot from check.mjs once it has taken the steps
	// and the texts are on the page.
	next := func(phase string, steps []step, texts ...string) snapshot {
		t.Helper()
		if phase != "loaded" {
			req, err := json.Marshal(map[string]any{"phase": phase, "steps": steps, "texts": texts})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fmt.Fprintf(stdin, "%s\n", req); err != nil {
				t.Fatal(err)
			}
		}
		if !lines.Scan() {
			_ = cmd.Wait()
			t.Fatalf("check.mjs ended before the %s snapshot: %v\n%s", phase, lines.Err(), stderr.String())
		}
		var s snapshot
		if err := json.Unmarshal(lines.Bytes(), &s); err != nil {
			t.Fatalf("snapshot %s: %v", lines.Text(), err)
		}
		if s.Phase != phase {
			t.Fatalf("snapshot phase %q, want %q", s.Phase, phase)
		}
		for _, e := range s.Errors {
			// While the API server is replaced, a reconnect may reach the
			// closed one, which rejects the handshake; the page retries.
			if restarting && strings.Contains(e, "WebSocket connection to") {
				continue
			}
			// The page learns that nobody is signed in from a 401, which
			// the browser reports.
			if strings.Contains(e, "status of 401") {
				continue
			}
			t.Errorf("browser reported: %s", e)
		}
		return s
	}

	// The REST state is shown and the stream is live.
	loaded := next("loaded", nil)
	if loaded.Conn != "Live" {
		t.Errorf("connection label = %q, want Live", loaded.Conn)
	}
	if want := []string{"Maria Santos", "operator", "Cebu, NCR"}; !slices.Equal(loaded.SignedIn, want) {
		t.Errorf("signed-in operator shown as %q, want %q", loaded.SignedIn, want)
	}
	if len(loaded.Vehicles) != 2 {
		t.Fatalf("vehicle rows = %d, want 2", len(loaded.Vehicles))
	}
	first := loaded.Vehicles[0].Cells
	if first[0] != "MNL-0001" || first[2] != "14.59950" || first[3] != "120.98420" || first[4] != "32.5" || first[5] != manila(fixTime) || first[7] != "yes" {
		t.Errorf("first vehicle row = %s, want MNL-0001 at 14.59950, 120.98420, 32.5 km/h, %s Manila, online", loaded.Vehicles[0].text(), manila(fixTime))
	}
	if got := loaded.Vehicles[1].Cells[7]; got != "unknown" {
		t.Errorf("MNL-0002 online = %q, want unknown", got)
	}
	if len(loaded.Incidents) != 1 || !strings.Contains(loaded.Incidents[0].ClassName, "state-acknowledged") {
		t.Fatalf("incident rows = %+v, want the acknowledged incident 41", loaded.Incidents)
	}
	if loaded.Alert != "" {
		t.Errorf("alert banner = %q with no open incident, want hidden", loaded.Alert)
	}
	if len(loaded.Agents) != 1 || !strings.Contains(loaded.Agents[0], "agent-cebu") || !strings.Contains(loaded.Agents[0], "connected") {
		t.Errorf("agents = %q, want agent-cebu connected", loaded.Agents)
	}

	// Live events: a new SOS with a cancel request, a fix, an agent going down.
	opened := store.Incident{
		ID: 42, SOSID: "sos-42", VehicleID: "MNL-0002", AgentID: "agent-ncr", Region: "NCR",
		Kind: protocol.SOSCrash, State: store.StateOpen, HasLocation: true, Lat: 14.5547, Lon: 121.0244,
		PressedAt: now, ReceivedAt: now, OpenedAt: now, UpdatedAt: now, Presses: 2, CancelRequested: true,
	}
	// The hub publishes each event in its region; the page gets those of
	// the operator's regions.
	publish := func(region, typ string, data any) {
		t.Helper()
		if _, err := bus.PublishIn(region, typ, data); err != nil {
			t.Fatal(err)
		}
	}
	st.add(opened)
	publish("NCR", events.TypeIncidentOpened, store.IncidentChange{Incident: opened, Opened: true})
	newFix := now.Add(-time.Second)
	publish("NCR", events.TypeFix, store.StoredFix{VehicleID: "MNL-0002", AgentID: "agent-ncr", Region: "NCR", ReceivedAt: newFix,
		Fix: protocol.Fix{Time: newFix, Lat: 14.56, Lon: 121.03, SpeedKmh: ptr(12.0)}})
	// An older fix arriving late must not move the vehicle back.
	publish("NCR", events.TypeFix, store.StoredFix{VehicleID: "MNL-0002", AgentID: "agent-ncr", Region: "NCR", ReceivedAt: now,
		Fix: protocol.Fix{Time: fixTime.Add(-time.Hour), Lat: 10.3157, Lon: 123.8854}})
	publish("NCR", events.TypeVehicleStatus, store.VehicleStatus{VehicleID: "MNL-0002", AgentID: "agent-ncr", Online: true, ReceivedAt: now})
	publish("Cebu", events.TypeAgentStatus, api.AgentState{ID: "agent-cebu", Region: "Cebu", Connected: false, Since: now})
	live := next("live", nil, "DISCONNECTED", "14.56000", "seq 5")
	if len(live.Incidents) != 2 {
		t.Fatalf("incident rows = %d, want 2", len(live.Incidents))
	}
	top := live.Incidents[0]
	if !strings.Contains(top.ClassName, "state-open") {
		t.Errorf("newest incident row class = %q, want state-open", top.ClassName)
	}
	for i, want := range map[int]string{0: "42", 1: "OPEN", 2: "MNL-0002", 3: "crash", 4: manila(now), 6: "14.55470, 121.02440", 7: "2", 8: "YES – confirm with driver", 9: "NCR"} {
		if top.Cells[i] != want {
			t.Errorf("newest incident cell %d = %q, want %q (row %s)", i, top.Cells[i], want, top.text())
		}
	}
	if !strings.Contains(live.Alert, "1 OPEN SOS") || !strings.Contains(live.Alert, "MNL-0002") {
		t.Errorf("alert banner = %q, want 1 OPEN SOS for MNL-0002", live.Alert)
	}
	if !strings.HasPrefix(live.Title, "(1) SOS") {
		t.Errorf("title = %q, want it to flag 1 SOS", live.Title)
	}
	second := live.Vehicles[1]
	if second.Cells[2] != "14.56000" || second.Cells[5] != manila(newFix) || second.Cells[7] != "yes" || !strings.Contains(second.ClassName, "sos") {
		t.Errorf("MNL-0002 row = %s (class %q), want the new fix, online, marked sos", second.text(), second.ClassName)
	}
	if len(live.Agents) != 1 || !strings.Contains(live.Agents[0], "DISCONNECTED") || !strings.Contains(live.Agents[0], manila(now)) {
		t.Errorf("agents = %q, want agent-cebu DISCONNECTED since %s", live.Agents, manila(now))
	}
	if live.Seq != "seq 5" {
		t.Errorf("seq label = %q, want seq 5", live.Seq)
	}
	if !strings.Contains(top.ClassName, "cancel-requested") || !strings.Contains(top.text(), "Confirm driver cancel…") {
		t.Errorf("incident 42 row %s (class %q), want the driver's cancel request marked and a confirm button", top.text(), top.ClassName)
	}
	for _, label := range []string{"Acknowledge", "Assign to me", "Dispatch…", "Add note…", "Resolve…", "Details"} {
		if !strings.Contains(top.Cells[12], label) {
			t.Errorf("open incident actions %q lack %q", top.Cells[12], label)
		}
	}
	if acked := live.Incidents[1].Cells[12]; strings.Contains(acked, "Acknowledge") || !strings.Contains(acked, "Cancel as false alarm…") {
		t.Errorf("acknowledged incident actions = %q, want no Acknowledge and a plain cancel", acked)
	}

	// The operator acknowledges incident 42 from its row.
	ack := next("acknowledged", []step{
		{Click: `#incidents button[data-action="acknowledge"][data-id="42"]`},
	}, "Incident 42 acknowledged.")
	if len(ack.Incidents) != 2 || ack.Incidents[0].Cells[1] != "ACKNOWLEDGED" {
		t.Errorf("incident rows after acknowledging = %+v, want 42 acknowledged", ack.Incidents)
	}
	if ack.Alert != "" {
		t.Errorf("alert banner = %q with no open incident, want hidden", ack.Alert)
	}

	// The driver's cancel is confirmed only through a dialog that warns
	// about coercion and requires a reason.
	confirm := next("confirm-cancel", []step{
		{Click: `#incidents button[data-action="cancel"][data-id="42"]`},
	}, "Confirm the driver's cancel request", "a driver can be forced to cancel")
	if len(confirm.Dialogs) != 1 || confirm.Dialogs[0] != "Confirm the driver's cancel request" {
		t.Errorf("open dialogs = %q, want the cancel confirmation", confirm.Dialogs)
	}
	cancelled := next("cancelled", []step{
		{Fill: []string{"#action-text", "Called the driver on a known number: safe, pressed by mistake."}},
		{Click: "#action-submit"},
	}, "cancelled as a false alarm")
	if len(cancelled.Dialogs) != 0 {
		t.Errorf("open dialogs after confirming = %q, want none", cancelled.Dialogs)
	}
	if len(cancelled.Incidents) != 1 || cancelled.Incidents[0].Cells[0] != "41" {
		t.Errorf("active incidents after the cancel = %+v, want only 41", cancelled.Incidents)
	}
	if len(cancelled.Closed) != 1 || cancelled.Closed[0].Cells[0] != "42" || cancelled.Closed[0].Cells[1] != "CANCELLED" || cancelled.Closed[0].Cells[6] != "requested" {
		t.Errorf("closed incidents = %+v, want 42 cancelled after a driver's request", cancelled.Closed)
	}

	// The audit trail shows who did what.
	detail := next("details", []step{
		{Click: `#closed button[data-action="details"][data-id="42"]`},
	}, "Audit trail", "Cancelled as false alarm", "pressed by mistake")
	wantEvents := []struct{ label, actor string }{
		{"SOS opened", "vehicle:MNL-0002"},
		{"Acknowledged", "operator:maria"},
		{"Cancelled as false alarm", "operator:maria"},
	}
	if len(detail.Events) != len(wantEvents) {
		t.Fatalf("audit trail rows = %+v, want %d", detail.Events, len(wantEvents))
	}
	for i, want := range wantEvents {
		if got := detail.Events[i].Cells; got[1] != want.label || got[2] != want.actor {
			t.Errorf("audit trail row %d = %s, want %s by %s", i, detail.Events[i].text(), want.label, want.actor)
		}
	}

	// The hub restarts: the page loses its stream, and events published
	// meanwhile reach it by resuming after seq 5. A reload of the REST state
	// instead would put MNL-0002 back at its stored position.
	restarting = true
	if err := current.Load().Close(); err != nil {
		t.Fatal(err)
	}
	down := next("disconnected", []step{{Click: "#detail-close"}}, "Disconnected: retry", "resuming after seq 7")
	if !strings.Contains(down.Conn, "resuming after seq 7") {
		t.Errorf("connection label = %q, want a retry that resumes after seq 7", down.Conn)
	}
	if len(down.Dialogs) != 0 {
		t.Errorf("open dialogs = %q, want none after closing the details", down.Dialogs)
	}
	dispatched, _, err := st.Incident(ctx, 41)
	if err != nil {
		t.Fatal(err)
	}
	dispatched.State, dispatched.UpdatedAt = store.StateDispatched, time.Now().UTC().Add(time.Minute)
	publish("NCR", events.TypeIncidentUpdated, store.IncidentChange{Incident: dispatched})
	publish("Cebu", events.TypeAgentStatus, api.AgentState{ID: "agent-cebu", Region: "Cebu", Connected: true, Since: now.Add(time.Second)})
	current.Store(newServer())

	resumed := next("resumed", nil, "Live", "seq 9", "connected")
	if len(resumed.Incidents) != 1 || resumed.Incidents[0].Cells[0] != "41" || resumed.Incidents[0].Cells[1] != "DISPATCHED" {
		t.Errorf("incidents after resume = %+v, want only 41, dispatched while the page was disconnected", resumed.Incidents)
	}
	if resumed.Alert != "" {
		t.Errorf("alert banner = %q after the open incident resolved, want hidden", resumed.Alert)
	}
	if v := resumed.Vehicles[1].Cells; v[2] != "14.56000" {
		t.Errorf("MNL-0002 latitude after resume = %q, want 14.56000 kept from the stream", v[2])
	}

	// Signing out closes the stream and shows the sign-in page.
	out := next("signed-out", []step{{Click: "#sign-out"}}, "You are signed out.")
	if !strings.HasPrefix(out.Path, "/login.html") {
		t.Errorf("page after signing out = %s, want the sign-in page", out.Path)
	}
	wantSocketsClosed(t, "after signing out", out.Sockets)
	wantStreams(t, registry.Load(), 0)

	// A wrong password gets the hub's message; the right one signs in again.
	wrong := next("wrong-password", []step{
		{Fill: []string{"#username", "maria"}},
		{Fill: []string{"#password", "not-the-password"}},
		{Click: "#login-submit"},
	}, "wrong user name or password")
	if !strings.HasPrefix(wrong.Path, "/login.html") || wrong.Login[1] == "" {
		t.Errorf("page after a wrong password = %s with error %q, want the sign-in page and an error", wrong.Path, wrong.Login[1])
	}
	again := next("signed-in-again", []step{
		{Fill: []string{"#password", password}},
		{Click: "#login-submit"},
	}, "Live", "Maria Santos")
	if again.Path != "/" {
		t.Errorf("page after signing in = %s, want the dashboard", again.Path)
	}
	wantStreams(t, registry.Load(), 1)

	// A session revoked elsewhere ends the stream at the hub's next ping,
	// and the page goes to the sign-in page instead of reconnecting.
	if _, err := accounts.DeleteOperatorSessions(context.Background(), "maria"); err != nil {
		t.Fatal(err)
	}
	revoked := next("revoked", nil, "You are signed out.")
	if !strings.HasPrefix(revoked.Path, "/login.html") {
		t.Errorf("page after the session was revoked = %s, want the sign-in page", revoked.Path)
	}
	wantSocketsClosed(t, "after the session was revoked", revoked.Sockets)
	wantStreams(t, registry.Load(), 0)

	if err := stdin.Close(); err != nil {
		t.Error(err)
	}
	_, _ = io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("check.mjs: %v\n%s", err, stderr.String())
	}
	t.Logf("screenshots in %s", shots)
}

// wantSocketsClosed fails the test unless the page opened streams and
// the newest, the one that was live, has closed. Older ones closed before
// it opened, or failed their handshake during the restart.
func wantSocketsClosed(t *testing.T, when string, sockets []socket) {
	t.Helper()
	if len(sockets) == 0 {
		t.Errorf("%s: the page opened no WebSocket", when)
		return
	}
	if last := sockets[len(sockets)-1]; !last.Closed {
		t.Errorf("%s: WebSocket %s is still open", when, last.URL)
	}
}

// wantStreams waits until the API server of reg serves n streams: the
// server closes a stream shortly after the browser's socket reports
// closing, and opens one shortly before the page shows it live.
func wantStreams(t *testing.T, reg *prometheus.Registry, n float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := -1.0
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() == "xpress_api_websocket_clients" && len(f.GetMetric()) == 1 {
				got = f.GetMetric()[0].GetGauge().GetValue()
			}
		}
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("the hub serves %v streams, want %v", got, n)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
