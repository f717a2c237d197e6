package e2e

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/xpress-ops/tower/protocol"
)

// tryVehicle connects as vehicle with password over MQTT 3.1.1 and
// returns the client, or the connect error.
func tryVehicle(t *testing.T, brokerAddr, vehicle, password string) (mqtt.Client, error) {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + brokerAddr).SetClientID(vehicle).
		SetUsername(vehicle).SetPassword(password).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, os.ErrDeadlineExceeded
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

// An operator provisions a vehicle with `xpress admin vehicle add`
// through the hub's admin API, and the hub sends the credential to the
// agent. The agent accepts the vehicle's token and rejects a wrong one,
// also after the hub is killed and the agent restarted.
func TestVehicleAuth_ProvisionSyncAndOutage(t *testing.T) {
	const vehicle = "taxi-e2e-1"
	hubAgentAddr, hubHTTPAddr := freeAddr(t), freeAddr(t)
	agentMQTTAddr, agentHTTPAddr := freeAddr(t), freeAddr(t)
	hubDir, agentDir := t.TempDir(), t.TempDir()
	agentToken := provisionAgent(t, "", hubDir, "ncr-1")

	hubProc := startProcess(t, "hub", []string{"XPRESS_DATABASE_URL="},
		"hub", "--agent-mqtt-addr", hubAgentAddr, "--http-addr", hubHTTPAddr, "--data-dir", hubDir)
	waitHTTP(t, hubProc, "http://"+hubHTTPAddr+"/readyz")
	agentArgs := []string{"agent", "--id", "ncr-1", "--region", "NCR-Manila",
		"--mqtt-addr", agentMQTTAddr, "--http-addr", agentHTTPAddr,
		"--hub-url", "tcp://" + hubAgentAddr, "--data-dir", agentDir}
	agentEnv := []string{"XPRESS_AGENT_TOKEN=" + agentToken}
	agentProc := startProcess(t, "agent", agentEnv, agentArgs...)
	waitHTTP(t, agentProc, "http://"+agentHTTPAddr+"/readyz")

	tokenFile := filepath.Join(t.TempDir(), "fleet.csv")
	add := startProcess(t, "admin vehicle add", nil,
		"admin", "vehicle", "add", vehicle, "--hub", "http://"+hubHTTPAddr, "--out", tokenFile)
	if code := add.exitCode(t); code != 0 {
		t.Fatalf("xpress admin vehicle add exited %d:\n%s", code, add.output())
	}
	info, err := os.Stat(tokenFile)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, mode %v; want 0600", err, info.Mode().Perm())
	}
	data, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	id, token, ok := strings.Cut(strings.TrimSpace(string(data)), ",")
	if !ok || id != vehicle || token == "" {
		t.Fatalf("token file holds %q, want %s,<token>", data, vehicle)
	}

	// The hub syncs the credential to the agent within moments. The
	// agent's metrics tell when, so the vehicle does not collect failed
	// attempts, which the agent counts against its address.
	waitFor(t, 30*time.Second, "the agent to hold the new vehicle's credential", func() bool {
		return strings.Contains(agentMetrics(t, agentHTTPAddr), "\nxpress_agent_vehicle_credentials 1\n")
	})
	client, err := tryVehicle(t, agentMQTTAddr, vehicle, token)
	if err != nil {
		t.Fatalf("the vehicle's token: %v, want accepted", err)
	}
	publish(t, client, protocol.VehicleTopicFor(vehicle, protocol.TopicFix),
		`{"ts":"`+time.Now().UTC().Format(time.RFC3339)+`","lat":14.5995,"lon":120.9842}`)
	client.Disconnect(100)
	if _, err := tryVehicle(t, agentMQTTAddr, vehicle, token+"x"); err != packets.ErrorRefusedBadUsernameOrPassword {
		t.Errorf("wrong token: %v, want CONNACK bad user name or password", err)
	}
	if _, err := tryVehicle(t, agentMQTTAddr, "taxi-unknown", token); err != packets.ErrorRefusedNotAuthorised {
		t.Errorf("unknown vehicle: %v, want CONNACK not authorized", err)
	}

	// WAN outage: the hub dies, the agent restarts without it.
	hubProc.kill(syscall.SIGKILL)
	agentProc.kill(syscall.SIGTERM)
	agentProc = startProcess(t, "agent restarted", agentEnv, agentArgs...)
	waitHTTP(t, agentProc, "http://"+agentHTTPAddr+"/readyz")
	if _, err := tryVehicle(t, agentMQTTAddr, vehicle, token); err != nil {
		t.Errorf("after the hub died and the agent restarted, the vehicle's token: %v, want accepted", err)
	}
	if _, err := tryVehicle(t, agentMQTTAddr, vehicle, token+"x"); err != packets.ErrorRefusedBadUsernameOrPassword {
		t.Errorf("after the restart, wrong token: %v, want CONNACK bad user name or password", err)
	}
}

// agentMetrics returns the agent's /metrics text, empty when it cannot be read.
func agentMetrics(t *testing.T, httpAddr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := newGet(ctx, "http://"+httpAddr+"/metrics")
	resp, err := httpClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}
