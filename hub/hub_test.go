package hub_test

import (
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
	if err := st.Close(); err != nil {
		t.Fatalf("close store: %v", err)
	}
	id := res.Incidents[0].Incident.ID

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

	conn, _, err := websocket.Dial(ctx, "ws://"+h.HTTPAddr().String()+"/api/v1/stream", nil)
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
	req.Header.Set(api.OperatorHeader, "Maria Santos")
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
	if change.Event.Type != store.EventAcknowledged || change.Event.Actor != "operator:Maria Santos" {
		t.Errorf("published event %+v, want acknowledged by operator:Maria Santos", change.Event)
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
