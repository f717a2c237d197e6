package hub_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/xpress-ops/tower/hub"
	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/internal/passhash"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestHub_OperatorActionPublishesIncidentUpdated checks the wiring from
// the API's incident actions to the event bus: an acknowledgement sent
// over HTTP reaches a stream client as an incident.updated event with the
// same payload shape as a committed batch's incident change.
func TestHub_OperatorActionPublishesIncidentUpdated(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// An incident stored before the hub starts, as after a restart.
	dir := t.TempDir()
	st := embedded.New(embedded.Config{Path: filepath.Join(dir, hub.EmbeddedStoreFile), RetentionInterval: -1})
	if err := st.Open(ctx); err != nil {
		t.Fatalf("open store: %v", err)
	}
	res, err := st.CommitBatch(ctx, storetest.NewBatch(storetest.SOSRecord(1, "MNL-0001", "sos-1", time.Now())))
	if err != nil {
		t.Fatalf("commit SOS: %v", err)
	}
	id := res.Incidents[0].Incident.ID
	// An operator account, signed in below through the hub's login route.
	const password = "a password made for this test"
	hash, err := passhash.Hash(password, passhash.Params{Memory: 64, Time: 1, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateOperator(ctx, store.Operator{Username: "maria", DisplayName: "Maria Santos", Role: store.OperatorRoleOperator, Regions: []string{store.AllRegions}}, hash); err != nil {
		t.Fatalf("create operator: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("close store: %v", err)
	}

	h, err := hub.New(hub.Config{HTTPAddr: "127.0.0.1:0", AgentMQTTAddr: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Open(ctx); err != nil {
		t.Fatalf("open hub: %v", err)
	}
	defer func() {
		if err := h.Close(); err != nil {
			t.Errorf("close hub: %v", err)
		}
	}()
	base := "http://" + h.HTTPAddr().String()
	cookie, csrf := signIn(ctx, t, base, "maria", password)

	conn, _, err := websocket.Dial(ctx, "ws://"+h.HTTPAddr().String()+"/api/v1/stream",
		&websocket.DialOptions{HTTPHeader: http.Header{"Cookie": {cookie.String()}}})
	if err != nil {
		t.Fatalf("dial stream: %v", err)
	}
	defer conn.CloseNow() //nolint:errcheck // the test is over
	if hello := readFrame(ctx, t, conn); hello.Type != "hello" {
		t.Fatalf("first frame %q, want hello", hello.Type)
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/api/v1/incidents/%d/acknowledge", base, id), strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.AddCookie(cookie)
	req.Header.Set(api.CSRFHeader, csrf)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("acknowledge: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("acknowledge status %d: %s", resp.StatusCode, body)
	}

	ev := readFrame(ctx, t, conn)
	if ev.Type != events.TypeIncidentUpdated {
		t.Fatalf("frame after the action is %q, want %s", ev.Type, events.TypeIncidentUpdated)
	}
	var change store.IncidentChange
	if err := json.Unmarshal(ev.Data, &change); err != nil {
		t.Fatalf("decode %s: %v", ev.Data, err)
	}
	if change.Incident.ID != id || change.Incident.State != store.StateAcknowledged || change.Opened {
		t.Errorf("published incident %d in state %s (opened %v), want %d acknowledged", change.Incident.ID, change.Incident.State, change.Opened, id)
	}
	if change.Event.Type != store.EventAcknowledged || change.Event.Actor != "operator:maria" {
		t.Errorf("published event %+v, want acknowledged by operator:maria", change.Event)
	}
}

// streamFrame is a stream frame as a client decodes it.
type streamFrame struct {
	Type string          `json:"type"`
	Seq  uint64          `json:"seq"`
	Data json.RawMessage `json:"data"`
}

func readFrame(ctx context.Context, t *testing.T, conn *websocket.Conn) streamFrame {
	t.Helper()
	_, data, err := conn.Read(ctx)
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	var f streamFrame
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatalf("decode frame %s: %v", data, err)
	}
	return f
}

// signIn signs in to the hub at base through POST /api/v1/session and
// returns the session cookie and the CSRF token.
func signIn(ctx context.Context, t *testing.T, base, username, password string) (*http.Cookie, string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"username": username, "password": password})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/v1/session", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("sign in: %v", err)
	}
	defer resp.Body.Close()
	var session struct {
		CSRFToken string `json:"csrf_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&session); err != nil || resp.StatusCode != http.StatusOK || len(resp.Cookies()) != 1 {
		t.Fatalf("sign in: status %d, %d cookies, %v", resp.StatusCode, len(resp.Cookies()), err)
	}
	c := resp.Cookies()[0]
	if c.Name != api.SessionCookie {
		t.Fatalf("session cookie %q over plain HTTP, want %s", c.Name, api.SessionCookie)
	}
	return &http.Cookie{Name: c.Name, Value: c.Value}, session.CSRFToken
}
