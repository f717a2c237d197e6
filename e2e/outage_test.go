package e2e

import (
	"context"
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/xpress-ops/tower/internal/pgtest"
	"github.com/xpress-ops/tower/protocol"
)

var httpClient = &http.Client{Timeout: 5 * time.Second}

func newGet(ctx context.Context, url string) (*http.Request, error) {
	return http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
}

// An SOS acknowledged to the vehicle while the hub is down survives a
// SIGKILL of the agent and reaches the hub exactly once when it starts.
func TestOutage_SOSSurvivesAgentKill(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	hubAgentAddr := freeAddr(t)
	hubHTTPAddr := freeAddr(t)
	agentMQTTAddr := freeAddr(t)
	agentHTTPAddr := freeAddr(t)
	dataDir := t.TempDir()
	agentArgs := []string{"agent", "--id", "cebu-1", "--region", "Cebu",
		"--mqtt-addr", agentMQTTAddr, "--http-addr", agentHTTPAddr,
		"--hub-url", "tcp://" + hubAgentAddr, "--data-dir", dataDir,
		// The hub is down before it could send vehicle credentials.
		"--vehicle-auth", "off"}

	agentEnv := []string{"XPRESS_AGENT_TOKEN=" + provisionAgent(t, dbURL, "", "cebu-1")}
	agentProc := startProcess(t, "agent", agentEnv, agentArgs...)
	waitHTTP(t, agentProc, "http://"+agentHTTPAddr+"/readyz")

	vehicle := connectVehicle(t, agentMQTTAddr, "cebu-taxi-7")
	sos := fmt.Sprintf(`{"id":"tunnel-1","ts":%q,"lat":10.3157,"lon":123.8854,"kind":"crash"}`, time.Now().Format(time.RFC3339))
	publish(t, vehicle, protocol.VehicleTopicFor("cebu-taxi-7", protocol.TopicSOS), sos)
	fix := fixJSON(time.Now(), 10.3158, 123.8855)
	publish(t, vehicle, protocol.VehicleTopicFor("cebu-taxi-7", protocol.TopicFix), fix)
	vehicle.Disconnect(0)

	// The PUBACK arrived, so the SOS must be on disk: kill without warning.
	agentProc.kill(syscall.SIGKILL)
	agentProc = startProcess(t, "agent restarted", agentEnv, agentArgs...)
	waitHTTP(t, agentProc, "http://"+agentHTTPAddr+"/readyz")

	hubProc := startProcess(t, "hub", []string{"XPRESS_DATABASE_URL=" + dbURL},
		"hub", "--agent-mqtt-addr", hubAgentAddr, "--http-addr", hubHTTPAddr)
	waitHTTP(t, hubProc, "http://"+hubHTTPAddr+"/readyz")

	pool := openPool(t, dbURL)
	waitFor(t, 60*time.Second, "the SOS incident in PostgreSQL", func() bool {
		return queryInt(t, pool, `select count(*) from incidents where sos_id = 'tunnel-1'`) > 0
	})
	waitFor(t, 30*time.Second, "the fix in PostgreSQL", func() bool {
		return queryInt(t, pool, `select count(*) from fixes where vehicle_id = 'cebu-taxi-7'`) > 0
	})
	// Let the agent finish any resend it had started before checking for duplicates.
	waitFor(t, 30*time.Second, "the agent's SOS lane to drain", func() bool {
		return metricValue(t, "http://"+agentHTTPAddr+"/metrics", "xpress_agent_spool_records", "lane", "sos") == 0
	})
	if n := queryInt(t, pool, `select count(*) from incidents where sos_id = 'tunnel-1'`); n != 1 {
		t.Errorf("incidents for sos tunnel-1 = %d, want 1", n)
	}
	if n := queryInt(t, pool, `select presses from incidents where sos_id = 'tunnel-1'`); n != 1 {
		t.Errorf("presses of sos tunnel-1 = %d, want 1", n)
	}
	if n := queryInt(t, pool, `select count(*) from fixes where vehicle_id = 'cebu-taxi-7'`); n != 1 {
		t.Errorf("fixes of cebu-taxi-7 = %d, want 1", n)
	}
	if n := queryInt(t, pool, `select count(*) from incidents where sos_id = 'tunnel-1' and historical`); n != 1 {
		t.Errorf("the SOS sent after the outage is not marked historical")
	}
}
