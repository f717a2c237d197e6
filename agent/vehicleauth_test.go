package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/hub"
	"github.com/xpress-ops/tower/hub/dispatch/dispatchtest"
)

// adminCall sends an admin API request to the hub and decodes the JSON
// response into out.
func adminCall(t *testing.T, h *hub.Hub, token, method, path, body string, out any) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+h.HTTPAddr().String()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		t.Fatalf("%s %s: %s: %s", method, path, resp.Status, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, raw, err)
		}
	}
}

type issuedVehicle struct {
	ID                 string    `json:"id"`
	Token              string    `json:"token"`
	Version            uint64    `json:"version"`
	PreviousValidUntil time.Time `json:"previous_valid_until"`
}

// vehicleConnack connects as vehicle with MQTT 5 and returns the CONNACK
// reason code.
func vehicleConnack(t *testing.T, a *agent.Agent, vehicle, password string) byte {
	t.Helper()
	conn, err := net.DialTimeout("tcp", a.MQTTAddr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "c-" + vehicle,
			UsernameFlag: true, Username: []byte(vehicle), PasswordFlag: true, Password: []byte(password)},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	first, err := r.ReadByte()
	if err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	ack := packets.Packet{ProtocolVersion: 5}
	if err := ack.FixedHeader.Decode(first); err != nil || ack.FixedHeader.Type != packets.Connack {
		t.Fatalf("packet type %d (%v), want CONNACK", ack.FixedHeader.Type, err)
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatal(err)
	}
	if err := ack.ConnackDecode(body); err != nil {
		t.Fatal(err)
	}
	return ack.ReasonCode
}

func waitVersion(t *testing.T, a *agent.Agent, vehicle string, version uint64) {
	t.Helper()
	eventually(t, "agent holds version "+vehicle, func() bool {
		v, ok := a.VehicleCredentialVersion(vehicle)
		return ok && v >= version
	})
}

// TestAgent_VehicleCredentialsFromHub provisions vehicles through the
// hub's admin API, lets the hub sync them to a real agent, and checks the
// agent's CONNACK codes, also after the hub is gone and the agent restarted.
func TestAgent_VehicleCredentialsFromHub(t *testing.T) {
	adminToken := "admin-" + randomHex(t)
	h, err := hub.New(hub.Config{HTTPAddr: "127.0.0.1:0", AgentMQTTAddr: "127.0.0.1:0", DataDir: t.TempDir(), AdminToken: adminToken})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	hubOpen := true
	defer func() {
		if hubOpen {
			h.Close()
		}
	}()
	agentToken, err := h.ProvisionAgent(context.Background(), "agent-test", "NCR-Manila")
	if err != nil {
		t.Fatal(err)
	}

	var created struct {
		Vehicles []issuedVehicle `json:"vehicles"`
	}
	adminCall(t, h, adminToken, http.MethodPost, "/api/v1/admin/vehicles", `{"ids":["veh-1","veh-2"]}`, &created)
	if len(created.Vehicles) != 2 {
		t.Fatalf("created %+v", created.Vehicles)
	}
	tok1, tok2 := created.Vehicles[0].Token, created.Vehicles[1].Token

	clock := dispatchtest.NewClock(time.Now())
	dataDir := t.TempDir()
	cfg := testConfig(t, "tcp://"+h.AgentMQTTAddr().String(), dataDir)
	cfg.HubPassword, cfg.VehicleAuth, cfg.Now = agentToken, agent.VehicleAuthHub, clock.Now
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	agentOpen := true
	defer func() {
		if agentOpen {
			a.Close()
		}
	}()
	waitVersion(t, a, "veh-2", created.Vehicles[1].Version)

	for _, c := range []struct {
		name, vehicle, password string
		want                    byte
	}{
		{"right token", "veh-1", tok1, 0},
		{"another vehicle's token", "veh-1", tok2, 0x86},
		{"unknown vehicle", "veh-3", tok1, 0x87},
	} {
		if got := vehicleConnack(t, a, c.vehicle, c.password); got != c.want {
			t.Errorf("%s: CONNACK 0x%02x, want 0x%02x", c.name, got, c.want)
		}
	}

	// Revoke veh-2: refused once the agent hears of it.
	adminCall(t, h, adminToken, http.MethodDelete, "/api/v1/admin/vehicles/veh-2", "", nil)
	eventually(t, "veh-2 refused after its revocation", func() bool { return vehicleConnack(t, a, "veh-2", tok2) == 0x87 })

	// Rotate veh-1 with a grace: both tokens work until the grace ends on
	// the agent's clock.
	var rotated issuedVehicle
	adminCall(t, h, adminToken, http.MethodPost, "/api/v1/admin/vehicles/veh-1/rotate", `{"grace":"1h"}`, &rotated)
	waitVersion(t, a, "veh-1", rotated.Version)
	if got := vehicleConnack(t, a, "veh-1", tok1); got != 0 {
		t.Errorf("old token during the grace: CONNACK 0x%02x, want success", got)
	}
	if got := vehicleConnack(t, a, "veh-1", rotated.Token); got != 0 {
		t.Errorf("new token: CONNACK 0x%02x, want success", got)
	}
	clock.Set(rotated.PreviousValidUntil)
	if got := vehicleConnack(t, a, "veh-1", tok1); got != 0x86 {
		t.Errorf("old token after the grace: CONNACK 0x%02x, want 0x86", got)
	}

	// WAN outage: the hub goes away and the agent restarts. The agent
	// still checks vehicles against its own copy.
	hubOpen = false
	if err := h.Close(); err != nil {
		t.Fatalf("close hub: %v", err)
	}
	agentOpen = false
	if err := a.Close(); err != nil {
		t.Fatalf("close agent: %v", err)
	}
	a2 := openAgent(t, cfg)
	if got := vehicleConnack(t, a2, "veh-1", rotated.Token); got != 0 {
		t.Errorf("after restart without a hub, veh-1: CONNACK 0x%02x, want success", got)
	}
	if got := vehicleConnack(t, a2, "veh-2", tok2); got != 0x87 {
		t.Errorf("after restart without a hub, revoked veh-2: CONNACK 0x%02x, want 0x87", got)
	}
	if got := vehicleConnack(t, a2, "veh-1", "wrong"); got != 0x86 {
		t.Errorf("after restart without a hub, wrong token: CONNACK 0x%02x, want 0x86", got)
	}
}

func TestConfig_VehicleAuthRules(t *testing.T) {
	base := agent.Config{ID: "agent-1", Region: "Cebu", DataDir: "/var/lib/xpress"}
	for _, c := range []struct {
		name    string
		mutate  func(*agent.Config)
		wantErr string
	}{
		{"hub on any address", func(c *agent.Config) { c.VehicleAuth = agent.VehicleAuthHub }, ""},
		{"off on loopback", func(c *agent.Config) { c.VehicleAuth, c.MQTTAddr = agent.VehicleAuthOff, "127.0.0.1:1883" }, ""},
		{"off on all addresses", func(c *agent.Config) { c.VehicleAuth = agent.VehicleAuthOff }, "loopback"},
		{"off with a public TLS listener", func(c *agent.Config) {
			c.VehicleAuth, c.MQTTAddr, c.MQTTTLSAddr = agent.VehicleAuthOff, "127.0.0.1:1883", "0.0.0.0:8883"
		}, "0.0.0.0:8883"},
		{"unknown mode", func(c *agent.Config) { c.VehicleAuth = "maybe" }, `must be "hub" or "off"`},
		{"rate out of range", func(c *agent.Config) { c.VehicleAuth, c.VehicleConnectRate = agent.VehicleAuthHub, -1 }, "VehicleConnectRate"},
		{"block out of range", func(c *agent.Config) { c.VehicleAuth, c.VehicleAuthBlock = agent.VehicleAuthHub, 48*time.Hour }, "VehicleAuthBlock"},
	} {
		cfg := base
		c.mutate(&cfg)
		err := cfg.Validate()
		switch {
		case c.wantErr == "" && err != nil:
			t.Errorf("%s: Validate = %v, want nil", c.name, err)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("%s: Validate = %v, want an error containing %q", c.name, err, c.wantErr)
		}
	}
}

// randomHex returns 16 random bytes in hex, generated for this test run.
func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
