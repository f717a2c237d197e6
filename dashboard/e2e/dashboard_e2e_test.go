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
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// memStore is an in-memory api.Store holding fixed data.
type memStore struct {
	positions []store.Position
	incidents []store.Incident
}

func (m *memStore) LatestPositions(context.Context) ([]store.Position, error) {
	return m.positions, nil
}

func (m *memStore) Fixes(context.Context, string, time.Time, time.Time, int) ([]store.StoredFix, error) {
	return nil, nil
}

func (m *memStore) Incidents(context.Context, store.IncidentFilter) ([]store.Incident, error) {
	return m.incidents, nil
}

func (m *memStore) Incident(context.Context, int64) (store.Incident, []store.IncidentEvent, error) {
	return store.Incident{}, nil, store.ErrNotFound
}

func (m *memStore) Ping(context.Context) error { return nil }

// snapshot is what check.mjs reports about the page.
type snapshot struct {
	Phase     string   `json:"phase"`
	Conn      string   `json:"conn"`
	Seq       string   `json:"seq"`
	Title     string   `json:"title"`
	Alert     string   `json:"alert"`
	Incidents []row    `json:"incidents"`
	Vehicles  []row    `json:"vehicles"`
	Agents    []string `json:"agents"`
	Plot      string   `json:"plot"`
	Errors    []string `json:"errors"`
}

type row struct {
	ClassName string   `json:"className"`
	Cells     []string `json:"cells"`
}

func (r row) text() string { return strings.Join(r.Cells, " | ") }

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
		positions: []store.Position{
			{VehicleID: "MNL-0001", AgentID: "agent-ncr", Region: "NCR", ReceivedAt: fixTime, Online: ptr(true),
				Fix: protocol.Fix{Time: fixTime, Lat: 14.5995, Lon: 120.9842, SpeedKmh: ptr(32.5)}},
			{VehicleID: "MNL-0002", AgentID: "agent-ncr", Region: "NCR", ReceivedAt: fixTime,
				Fix: protocol.Fix{Time: fixTime, Lat: 14.5547, Lon: 121.0244}},
		},
		incidents: []store.Incident{{
			ID: 41, SOSID: "sos-41", VehicleID: "MNL-0001", AgentID: "agent-ncr", Region: "NCR",
			Kind: protocol.SOSMedical, State: store.StateAcknowledged, HasLocation: true, Lat: 14.5995, Lon: 120.9842,
			PressedAt: pressed, ReceivedAt: pressed, OpenedAt: pressed, UpdatedAt: pressed, Presses: 1,
		}},
	}
	bus := events.NewBus(events.Config{})
	newServer := func() *api.Server {
		return api.New(api.Config{
			Store: st,
			Bus:   bus,
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
	// next asks check.mjs for a snapshot once texts are on the page.
	next := func(phase string, texts ...string) snapshot {
		t.Helper()
		if phase != "loaded" {
			req, err := json.Marshal(map[string]any{"phase": phase, "texts": texts})
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
			t.Errorf("browser reported: %s", e)
		}
		return s
	}

	// The REST state is shown and the stream is live.
	loaded := next("loaded")
	if loaded.Conn != "Live" {
		t.Errorf("connection label = %q, want Live", loaded.Conn)
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
	publish := func(typ string, data any) {
		t.Helper()
		if _, err := bus.Publish(typ, data); err != nil {
			t.Fatal(err)
		}
	}
	publish(events.TypeIncidentOpened, store.IncidentChange{Incident: opened, Opened: true})
	newFix := now.Add(-time.Second)
	publish(events.TypeFix, store.StoredFix{VehicleID: "MNL-0002", AgentID: "agent-ncr", Region: "NCR", ReceivedAt: newFix,
		Fix: protocol.Fix{Time: newFix, Lat: 14.56, Lon: 121.03, SpeedKmh: ptr(12.0)}})
	// An older fix arriving late must not move the vehicle back.
	publish(events.TypeFix, store.StoredFix{VehicleID: "MNL-0002", AgentID: "agent-ncr", Region: "NCR", ReceivedAt: now,
		Fix: protocol.Fix{Time: fixTime.Add(-time.Hour), Lat: 10.3157, Lon: 123.8854}})
	publish(events.TypeVehicleStatus, store.VehicleStatus{VehicleID: "MNL-0002", AgentID: "agent-ncr", Online: true, ReceivedAt: now})
	publish(events.TypeAgentStatus, api.AgentState{ID: "agent-cebu", Region: "Cebu", Connected: false, Since: now})
	live := next("live", "DISCONNECTED", "14.56000", "seq 5")
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

	// The hub restarts: the page loses its stream, and events published
	// meanwhile reach it by resuming after seq 5. A reload of the REST state
	// instead would put MNL-0002 back at its stored position.
	if err := current.Load().Close(); err != nil {
		t.Fatal(err)
	}
	down := next("disconnected", "Disconnected: retry", "resuming after seq 5")
	if !strings.Contains(down.Conn, "resuming after seq 5") {
		t.Errorf("connection label = %q, want a retry that resumes after seq 5", down.Conn)
	}
	resolved := opened
	resolved.State, resolved.UpdatedAt = store.StateResolved, now.Add(time.Second)
	publish(events.TypeIncidentUpdated, store.IncidentChange{Incident: resolved})
	publish(events.TypeAgentStatus, api.AgentState{ID: "agent-cebu", Region: "Cebu", Connected: true, Since: now.Add(time.Second)})
	current.Store(newServer())

	resumed := next("resumed", "Live", "seq 7", "connected")
	if len(resumed.Incidents) != 1 || resumed.Incidents[0].Cells[0] != "41" {
		t.Errorf("incidents after resume = %+v, want only 41 (42 resolved)", resumed.Incidents)
	}
	if resumed.Alert != "" {
		t.Errorf("alert banner = %q after the open incident resolved, want hidden", resumed.Alert)
	}
	if v := resumed.Vehicles[1].Cells; v[2] != "14.56000" {
		t.Errorf("MNL-0002 latitude after resume = %q, want 14.56000 kept from the stream", v[2])
	}

	if err := stdin.Close(); err != nil {
		t.Error(err)
	}
	_, _ = io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("check.mjs: %v\n%s", err, stderr.String())
	}
	t.Logf("screenshots in %s", shots)
}
