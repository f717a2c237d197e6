package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/goleak"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/agent/internal/hubtest"
	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const vehicle = "veh-042"

// unusedHubURL returns the URL of a loopback port that nothing listens on:
// a hub outage.
func unusedHubURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return "tcp://" + addr
}

func testConfig(t *testing.T, hubURL, dataDir string) agent.Config {
	t.Helper()
	return agent.Config{
		ID:         "agent-test",
		Region:     "NCR-Manila",
		MQTTAddr:   "127.0.0.1:0",
		HTTPAddr:   "127.0.0.1:0",
		HubURL:     hubURL,
		DataDir:    dataDir,
		Logger:     slog.New(slog.DiscardHandler),
		AckTimeout: 5 * time.Second,
		MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
	}
}

// openAgent opens an agent for cfg and closes it on cleanup.
func openAgent(t *testing.T, cfg agent.Config) *agent.Agent {
	t.Helper()
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatalf("new agent: %v", err)
	}
	if err := a.Open(context.Background()); err != nil {
		t.Fatalf("open agent: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("close agent: %v", err)
		}
	})
	return a
}

func connectVehicle(t *testing.T, a *agent.Agent) paho.Client {
	t.Helper()
	c := paho.NewClient(paho.NewClientOptions().
		AddBroker("tcp://" + a.MQTTAddr().String()).
		SetClientID("client-" + vehicle).
		SetUsername(vehicle).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second))
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("vehicle connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func publish(t *testing.T, c paho.Client, kind protocol.TopicKind, payload string) {
	t.Helper()
	tok := c.Publish(protocol.VehicleTopicFor(vehicle, kind), 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: no PUBACK (%v)", kind, tok.Error())
	}
}

func fixPayload() string {
	return `{"ts":"` + time.Now().UTC().Add(-5*time.Second).Format(time.RFC3339) + `","lat":14.5995,"lon":120.9842}`
}

func get(t *testing.T, a *agent.Agent, path string) (int, []byte) {
	t.Helper()
	client := http.DefaultClient
	if strings.HasPrefix(path, "/api/v1/") {
		// The local API needs a signed-in operator.
		client = session(t, a).client
	}
	resp, err := client.Get("http://" + a.HTTPAddr().String() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

type readyzBody struct {
	Ready   bool   `json:"ready"`
	Spool   string `json:"spool"`
	Broker  string `json:"broker"`
	Uplink  string `json:"uplink"`
	SpoolID string `json:"spool_id"`
	Lanes   map[protocol.Lane]struct {
		Records int `json:"records"`
	} `json:"lanes"`
}

func readyz(t *testing.T, a *agent.Agent) (int, readyzBody) {
	t.Helper()
	code, body := get(t, a, "/readyz")
	var r readyzBody
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("decode /readyz body %s: %v", body, err)
	}
	return code, r
}

// eventually polls cond every 10 ms until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 10 s waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAgent_ServesVehiclesDuringHubOutage(t *testing.T) {
	a := openAgent(t, testConfig(t, unusedHubURL(t), t.TempDir()))
	c := connectVehicle(t, a)

	publish(t, c, protocol.TopicFix, fixPayload())
	publish(t, c, protocol.TopicSOS, `{"id":"sos-outage-1","lat":14.6,"lon":121.0}`)

	if code, body := get(t, a, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d %s, want 200", code, body)
	}
	code, r := readyz(t, a)
	if code != http.StatusOK || !r.Ready {
		t.Errorf("/readyz = %d %+v, want 200 and ready during a hub outage", code, r)
	}
	if r.Uplink != "disconnected" || r.Spool != "open" || r.Broker != "listening" {
		t.Errorf("/readyz reports spool %q broker %q uplink %q, want open, listening, disconnected", r.Spool, r.Broker, r.Uplink)
	}
	if r.Lanes[protocol.LaneSOS].Records != 1 || r.Lanes[protocol.LaneGPS].Records != 1 {
		t.Errorf("/readyz lanes = %+v, want 1 SOS and 1 GPS record waiting", r.Lanes)
	}
	if r.SpoolID != a.SpoolID() || len(r.SpoolID) != 32 {
		t.Errorf("/readyz spool id = %q, want the agent's %q", r.SpoolID, a.SpoolID())
	}
}

func TestAgent_MetricsLintClean(t *testing.T) {
	a := openAgent(t, testConfig(t, unusedHubURL(t), t.TempDir()))
	c := connectVehicle(t, a)
	publish(t, c, protocol.TopicFix, fixPayload())
	publish(t, c, protocol.TopicFix, `{"lat":91}`)

	code, body := get(t, a, "/metrics")

	if code != http.StatusOK {
		t.Fatalf("/metrics = %d, want 200", code)
	}
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatalf("lint /metrics: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	for _, name := range []string{
		`xpress_agent_messages_accepted_total{kind="fix"} 1`,
		`xpress_agent_rejects_total{reason="missing_field"} 1`,
		`xpress_agent_spool_records{lane="gps"} 1`,
		`xpress_agent_uplink_connected 0`,
		"xpress_agent_spool_fsync_seconds_bucket",
		"xpress_agent_spool_group_commit_requests_bucket",
		`xpress_agent_spool_oldest_record_age_seconds{lane="gps"}`,
		`xpress_agent_uplink_acked_seq{lane="sos"} 0`,
		"xpress_agent_uplink_batch_round_trip_seconds",
	} {
		if !bytes.Contains(body, []byte(name)) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

func TestAgent_ForwardsToHub(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	a := openAgent(t, testConfig(t, hub.URL(), t.TempDir()))
	c := connectVehicle(t, a)

	publish(t, c, protocol.TopicSOS, `{"id":"sos-e2e-1","lat":14.6,"lon":121.0,"kind":"medical"}`)
	publish(t, c, protocol.TopicFix, fixPayload())

	eventually(t, "the SOS and the fix at the hub", func() bool {
		return len(hub.Committed(protocol.LaneSOS)) == 1 && len(hub.Committed(protocol.LaneGPS)) == 1
	})
	if s := hub.Committed(protocol.LaneSOS)[0]; s.SOS.ID != "sos-e2e-1" || s.VehicleID != vehicle {
		t.Errorf("hub got SOS %q from %q, want sos-e2e-1 from %s", s.SOS.ID, s.VehicleID, vehicle)
	}
	eventually(t, "the spool to drain after the hub's Ack", func() bool {
		_, r := readyz(t, a)
		return r.Lanes[protocol.LaneSOS].Records == 0 && r.Lanes[protocol.LaneGPS].Records == 0
	})
	if a.UplinkState() != uplink.StateConnected {
		t.Errorf("uplink state = %s, want connected", a.UplinkState())
	}
}

func TestAgent_RestartKeepsUnsentRecords(t *testing.T) {
	dir := t.TempDir()
	hubURL := unusedHubURL(t)
	first, err := agent.New(testConfig(t, hubURL, dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := connectVehicle(t, first)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-restart-1"}`)
	spoolID := first.SpoolID()
	if err := first.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := first.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}

	second := openAgent(t, testConfig(t, hubURL, dir))

	_, r := readyz(t, second)
	if r.Lanes[protocol.LaneSOS].Records != 1 {
		t.Errorf("SOS records after restart = %d, want 1", r.Lanes[protocol.LaneSOS].Records)
	}
	if second.SpoolID() != spoolID {
		t.Errorf("spool id after restart = %q, want %q", second.SpoolID(), spoolID)
	}
}

func TestAgent_SecondAgentOnSameDataDirFails(t *testing.T) {
	dir := t.TempDir()
	hubURL := unusedHubURL(t)
	openAgent(t, testConfig(t, hubURL, dir))

	second, err := agent.New(testConfig(t, hubURL, dir))
	if err != nil {
		t.Fatal(err)
	}
	err = second.Open(context.Background())

	if !errors.Is(err, spool.ErrLocked) {
		t.Errorf("second agent on the same data dir: error = %v, want spool.ErrLocked", err)
	}
	if err := second.Close(); err != nil {
		t.Errorf("close of an agent that failed to open: %v", err)
	}
}

func TestConfig_Validate(t *testing.T) {
	valid := agent.Config{ID: "agent-1", Region: "Cebu", DataDir: "/var/lib/xpress", VehicleAuth: agent.VehicleAuthHub}
	if err := valid.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mutate := range map[string]func(*agent.Config){
		"missing id":      func(c *agent.Config) { c.ID = "" },
		"invalid id":      func(c *agent.Config) { c.ID = "agent/1" },
		"missing region":  func(c *agent.Config) { c.Region = "" },
		"missing datadir": func(c *agent.Config) { c.DataDir = "" },
		"bad hub url":     func(c *agent.Config) { c.HubURL = "localhost:1884" },
	} {
		c := valid
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
		if _, err := agent.New(c); err == nil {
			t.Errorf("%s: New accepted an invalid config", name)
		}
	}
}

func TestAgent_RefusesDataDirOfAnotherAgent(t *testing.T) {
	dir := t.TempDir()
	first := openAgent(t, testConfig(t, unusedHubURL(t), dir))
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	cfg := testConfig(t, unusedHubURL(t), dir)
	cfg.ID = "another-agent"
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = a.Open(context.Background())
	if err == nil {
		a.Close()
		t.Fatal("an agent with another id opened the data dir of agent-test")
	}
	if !strings.Contains(err.Error(), `belongs to agent "agent-test"`) {
		t.Errorf("error %q does not name the owning agent", err)
	}

	// The owner itself may still open it.
	again := openAgent(t, testConfig(t, unusedHubURL(t), dir))
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestAgent_RefusesEmptiedSpool(t *testing.T) {
	dir := t.TempDir()
	first := openAgent(t, testConfig(t, unusedHubURL(t), dir))
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dir, agent.SpoolFile), 0); err != nil {
		t.Fatal(err)
	}

	a, err := agent.New(testConfig(t, unusedHubURL(t), dir))
	if err != nil {
		t.Fatal(err)
	}
	err = a.Open(context.Background())
	if err == nil {
		a.Close()
		t.Fatal("the agent opened a data dir whose spool file was emptied")
	}
	if !strings.Contains(err.Error(), "missing or empty") || !strings.Contains(err.Error(), agent.AgentIDFile) {
		t.Errorf("error %q does not say what happened and how to start fresh", err)
	}

	// Deleting the owner file is the documented way to start fresh.
	if err := os.Remove(filepath.Join(dir, agent.AgentIDFile)); err != nil {
		t.Fatal(err)
	}
	fresh := openAgent(t, testConfig(t, unusedHubURL(t), dir))
	if err := fresh.Close(); err != nil {
		t.Fatal(err)
	}
}
