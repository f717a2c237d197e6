package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/internal/faultproxy"
	"github.com/xpress-ops/tower/internal/pgtest"
	"github.com/xpress-ops/tower/protocol"
)

// hubProcess is an xpress hub subprocess with its addresses, so a test
// can kill it and start it again on the same ports and database.
type hubProcess struct {
	*process
	agentAddr, httpAddr, dbURL string
}

// startHubProcess starts xpress hub on free loopback ports with the given
// database and waits until it is ready.
func startHubProcess(t *testing.T, dbURL string) *hubProcess {
	t.Helper()
	h := &hubProcess{agentAddr: freeAddr(t), httpAddr: freeAddr(t), dbURL: dbURL}
	h.start(t)
	return h
}

// start runs the hub on h's addresses and waits until it is ready.
func (h *hubProcess) start(t *testing.T) {
	t.Helper()
	h.process = startProcess(t, "hub", []string{"XPRESS_DATABASE_URL=" + h.dbURL},
		"hub", "--agent-mqtt-addr", h.agentAddr, "--http-addr", h.httpAddr, "--data-dir", t.TempDir())
	waitHTTP(t, h.process, "http://"+h.httpAddr+"/readyz")
}

// startFaultAgent starts an in-process agent that forwards to hubAddr
// with the given Ack timeout and a short reconnect backoff, so tests can
// watch it notice faults quickly. Its credential is created in the hub
// database at dbURL.
func startFaultAgent(t *testing.T, id, hubAddr, dbURL string, ackTimeout time.Duration) *agent.Agent {
	t.Helper()
	reg := prometheus.NewRegistry()
	a, err := agent.New(agent.Config{
		ID:         id,
		Region:     "NCR-Manila",
		MQTTAddr:   "127.0.0.1:0",
		HubURL:     "tcp://" + hubAddr,
		DataDir:    t.TempDir(),
		HTTPAddr:   "127.0.0.1:0",
		Logger:     testLogger(t).With("process", "agent"),
		Registerer: reg,
		AckTimeout: ackTimeout,
		MinBackoff: 50 * time.Millisecond,
		MaxBackoff: 500 * time.Millisecond,

		HubPassword: provisionAgent(t, dbURL, "", id),
	})
	if err != nil {
		t.Fatal(err)
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

// agentGauge reads one sample of an agent metric, for example
// agentGauge(t, a, "xpress_agent_spool_records", "lane", "sos").
func agentGauge(t *testing.T, a *agent.Agent, name string, labels ...string) float64 {
	t.Helper()
	return metricValue(t, "http://"+a.HTTPAddr().String()+"/metrics", name, labels...)
}

// linkDeadTotal returns the agent's dead-link detections of all causes.
func linkDeadTotal(t *testing.T, a *agent.Agent) float64 {
	t.Helper()
	return agentGauge(t, a, "xpress_agent_uplink_link_dead_total")
}

// sosPayload returns an SOS message with the given id.
func sosPayload(id string) string {
	return fmt.Sprintf(`{"id":%q,"ts":%q,"lat":14.5547,"lon":121.0244,"kind":"panic"}`, id, time.Now().Format(time.RFC3339))
}

// fixArray returns a JSON array of n fixes with Unix millisecond times
// from first on, one millisecond apart. A vehicle's fix times identify
// its fixes in PostgreSQL.
func fixArray(first time.Time, n int) string {
	var b strings.Builder
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"ts":%d,"lat":14.%04d,"lon":121.0244}`, first.UnixMilli()+int64(i), 1000+i%8000)
	}
	b.WriteByte(']')
	return b.String()
}

// countWhere runs select count(*) from table where cond.
func countWhere(t *testing.T, pool *pgxpool.Pool, table, cond string, args ...any) int {
	t.Helper()
	return queryInt(t, pool, "select count(*) from "+table+" where "+cond, args...)
}

// An SOS published while the WAN silently drops every packet is held by
// the agent, which notices the dead link, and reaches PostgreSQL exactly
// once when the WAN comes back.
func TestFaults_SOSDuringSilentBlackhole(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	hub := startHubProcess(t, dbURL)
	wan := faultproxy.Start(t, hub.agentAddr)
	const ackTimeout = 2 * time.Second
	a := startFaultAgent(t, "ncr-blackhole", wan.Addr(), dbURL, ackTimeout)
	pool := openPool(t, dbURL)

	vehicle := connectVehicle(t, a.MQTTAddr().String(), "ncr-taxi-11")
	publish(t, vehicle, protocol.VehicleTopicFor("ncr-taxi-11", protocol.TopicFix), fixJSON(time.Now(), 14.5547, 121.0244))
	waitFor(t, 30*time.Second, "the first fix in PostgreSQL", func() bool {
		return countWhere(t, pool, "fixes", "vehicle_id = 'ncr-taxi-11'") == 1
	})

	wan.Blackhole()
	published := time.Now()
	publish(t, vehicle, protocol.VehicleTopicFor("ncr-taxi-11", protocol.TopicSOS), sosPayload("blackhole-1"))

	// The bound is AckTimeout after the SOS batch was sent (the keep-alive
	// bound, 50 s by default, is longer); the deadline is generous.
	waitFor(t, 60*time.Second, "the agent to detect the dead link", func() bool { return linkDeadTotal(t, a) >= 1 })
	t.Logf("dead link detected %s after the SOS was published (Ack timeout %s)", time.Since(published).Round(time.Millisecond), ackTimeout)
	if got := agentGauge(t, a, "xpress_agent_uplink_link_dead_total", "cause", "ack_timeout"); got < 1 {
		t.Errorf("dead links detected by Ack timeout = %v, want at least 1", got)
	}
	waitFor(t, 10*time.Second, "the uplink to report disconnected", func() bool { return a.UplinkState() == uplink.StateDisconnected })
	if got := agentGauge(t, a, "xpress_agent_spool_records", "lane", "sos"); got != 1 {
		t.Errorf("agent spool holds %v SOS records during the blackhole, want 1", got)
	}
	if n := countWhere(t, pool, "incidents", "sos_id = 'blackhole-1'"); n != 0 {
		t.Errorf("incidents for blackhole-1 during the blackhole = %d, want 0", n)
	}

	wan.Pass()
	waitFor(t, 60*time.Second, "the SOS incident in PostgreSQL", func() bool {
		return countWhere(t, pool, "incidents", "sos_id = 'blackhole-1'") > 0
	})
	waitFor(t, 30*time.Second, "the agent's SOS lane to drain", func() bool {
		return agentGauge(t, a, "xpress_agent_spool_records", "lane", "sos") == 0
	})
	if n := countWhere(t, pool, "incidents", "sos_id = 'blackhole-1'"); n != 1 {
		t.Errorf("incidents for blackhole-1 = %d, want 1", n)
	}
	if n := queryInt(t, pool, `select presses from incidents where sos_id = 'blackhole-1'`); n != 1 {
		t.Errorf("presses of blackhole-1 = %d, want 1", n)
	}
}

// lostAckSetup proves the link with one fix of vehicleID, then makes the
// WAN drop everything from the hub to the agent, publishes 20 more fixes
// and the SOS vehicleID+"-sos", and waits until the hub committed them.
// It checks that the agent still holds them, since no Ack arrived.
func lostAckSetup(t *testing.T, a *agent.Agent, wan *faultproxy.Proxy, pool *pgxpool.Pool, vehicleID string) {
	t.Helper()
	vehicle := connectVehicle(t, a.MQTTAddr().String(), vehicleID)
	publish(t, vehicle, protocol.VehicleTopicFor(vehicleID, protocol.TopicFix), fixJSON(time.Now(), 14.5547, 121.0244))
	waitFor(t, 30*time.Second, "the first fix in PostgreSQL", func() bool {
		return countWhere(t, pool, "fixes", "vehicle_id = $1", vehicleID) == 1
	})
	// Its Ack must be through too, or the drop below may swallow it and
	// leave the first fix in the spool with the 20 that follow.
	waitFor(t, 30*time.Second, "the agent to delete the acknowledged first fix", func() bool {
		return agentGauge(t, a, "xpress_agent_spool_records", "lane", "gps") == 0
	})

	wan.Drop(faultproxy.ToAgent)
	publish(t, vehicle, protocol.VehicleTopicFor(vehicleID, protocol.TopicFix), fixArray(time.Now().Add(-time.Minute), 20))
	publish(t, vehicle, protocol.VehicleTopicFor(vehicleID, protocol.TopicSOS), sosPayload(vehicleID+"-sos"))
	waitFor(t, 30*time.Second, "the hub to commit 21 fixes and the SOS", func() bool {
		return countWhere(t, pool, "fixes", "vehicle_id = $1", vehicleID) == 21 &&
			countWhere(t, pool, "incidents", "sos_id = $1", vehicleID+"-sos") == 1
	})

	// The hub has the records but its Acks never arrived: nothing may be deleted.
	if got := agentGauge(t, a, "xpress_agent_spool_records", "lane", "gps"); got != 20 {
		t.Errorf("agent spool holds %v gps records after the hub's Ack was lost, want 20", got)
	}
	if got := agentGauge(t, a, "xpress_agent_spool_records", "lane", "sos"); got != 1 {
		t.Errorf("agent spool holds %v SOS records after the hub's Ack was lost, want 1", got)
	}
}

// checkStoredOnce waits for the agent's spool to drain and checks that
// PostgreSQL holds the vehicle's 21 fixes and its SOS exactly once.
func checkStoredOnce(t *testing.T, a *agent.Agent, pool *pgxpool.Pool, vehicleID string) {
	t.Helper()
	waitFor(t, 90*time.Second, "the agent's spool to drain", func() bool {
		return agentGauge(t, a, "xpress_agent_spool_records", "lane", "gps") == 0 &&
			agentGauge(t, a, "xpress_agent_spool_records", "lane", "sos") == 0
	})
	if n := countWhere(t, pool, "fixes", "vehicle_id = $1", vehicleID); n != 21 {
		t.Errorf("fixes of %s = %d, want 21", vehicleID, n)
	}
	if n := countWhere(t, pool, "incidents", "sos_id = $1", vehicleID+"-sos"); n != 1 {
		t.Errorf("incidents for %s-sos = %d, want 1", vehicleID, n)
	}
	if n := queryInt(t, pool, `select presses from incidents where sos_id = $1`, vehicleID+"-sos"); n != 1 {
		t.Errorf("presses of %s-sos = %d, want 1", vehicleID, n)
	}
}

// The hub commits a batch, but its PUBACK and Ack never reach the agent;
// then the connection is reset. The agent keeps the records until a later
// Ack and resends them, and the hub stores nothing twice.
func TestFaults_LostAckThenResetStoresOnce(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	hub := startHubProcess(t, dbURL)
	wan := faultproxy.Start(t, hub.agentAddr)
	// A long Ack timeout, so that the reset is what ends the connection.
	a := startFaultAgent(t, "ncr-lostack", wan.Addr(), dbURL, time.Minute)
	pool := openPool(t, dbURL)

	lostAckSetup(t, a, wan, pool, "ncr-taxi-12")
	wan.Pass()
	wan.Reset()

	waitFor(t, 30*time.Second, "the agent to see the reset", func() bool {
		return agentGauge(t, a, "xpress_agent_uplink_link_dead_total", "cause", "tcp_error") >= 1
	})
	checkStoredOnce(t, a, pool, "ncr-taxi-12")
	if got := metricValue(t, "http://"+hub.httpAddr+"/metrics", "xpress_ingest_records_duplicate_total"); got < 21 {
		t.Errorf("hub skipped %v duplicate records, want at least 21 (the agent resent the committed batches)", got)
	}
}

// The hub commits a batch, its Ack is lost, and the hub is killed with
// SIGKILL before anything else. After a restart, PostgreSQL holds every
// record exactly once.
func TestFaults_HubKilledAfterCommitStoresOnce(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	hub := startHubProcess(t, dbURL)
	wan := faultproxy.Start(t, hub.agentAddr)
	// The Ack timeout notices the dead hub behind the still-open proxied connection.
	a := startFaultAgent(t, "ncr-hubkill", wan.Addr(), dbURL, 3*time.Second)
	pool := openPool(t, dbURL)

	lostAckSetup(t, a, wan, pool, "ncr-taxi-13")
	hub.kill(syscall.SIGKILL)
	wan.Pass()
	hub.start(t)

	checkStoredOnce(t, a, pool, "ncr-taxi-13")
	if got := metricValue(t, "http://"+hub.httpAddr+"/metrics", "xpress_ingest_records_duplicate_total"); got < 21 {
		t.Errorf("restarted hub skipped %v duplicate records, want at least 21 (the agent resent the committed batches)", got)
	}
}

// burstVehicles, burstMessages and burstFixesPerMessage make the 50,000
// fixes of TestFaults_AgentKilledMidBurst.
const (
	burstVehicles        = 20
	burstMessages        = 50
	burstFixesPerMessage = 50
	burstTotal           = burstVehicles * burstMessages * burstFixesPerMessage
)

// fixKey identifies one fix of the burst.
type fixKey struct {
	vehicle string
	ms      int64
}

// The agent is killed with SIGKILL in the middle of a burst of 50,000
// fixes. Every fix that got a PUBACK is in PostgreSQL exactly once after
// a restart, and no fix is there twice.
func TestFaults_AgentKilledMidBurst(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	hub := startHubProcess(t, dbURL)
	pool := openPool(t, dbURL)
	mqttAddr, httpAddr, dataDir := freeAddr(t), freeAddr(t), t.TempDir()
	args := []string{"agent", "--id", "ncr-burst", "--region", "NCR-Manila", "--mqtt-addr", mqttAddr,
		"--http-addr", httpAddr, "--hub-url", "tcp://" + hub.agentAddr, "--data-dir", dataDir,
		// Many publishers with made-up ids: vehicle credentials are not what this test is about.
		"--vehicle-auth", "off"}
	agentEnv := []string{"XPRESS_AGENT_TOKEN=" + provisionAgent(t, dbURL, "", "ncr-burst")}
	agentProc := startProcess(t, "agent", agentEnv, args...)
	waitHTTP(t, agentProc, "http://"+httpAddr+"/readyz")

	// Every publisher records the messages the agent acknowledged.
	var (
		mu       sync.Mutex
		acked    = make(map[fixKey]bool)
		ackedN   atomic.Int64
		base     = time.Now().Add(-2 * time.Minute).Truncate(time.Second)
		killAt   = int64(burstTotal * 3 / 10)
		killed   = make(chan struct{})
		killOnce sync.Once
		wg       sync.WaitGroup
	)
	clients := make([]mqtt.Client, burstVehicles)
	for v := range burstVehicles {
		clients[v] = connectVehicle(t, mqttAddr, fmt.Sprintf("burst-%02d", v))
	}
	for v := range burstVehicles {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vehicle := fmt.Sprintf("burst-%02d", v)
			topic := protocol.VehicleTopicFor(vehicle, protocol.TopicFix)
			for m := range burstMessages {
				first := base.Add(time.Duration(m*burstFixesPerMessage) * time.Millisecond)
				tok := clients[v].Publish(topic, 1, false, fixArray(first, burstFixesPerMessage))
				if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					return // the agent is gone: this message and the rest are unacknowledged
				}
				mu.Lock()
				for i := range burstFixesPerMessage {
					acked[fixKey{vehicle, first.UnixMilli() + int64(i)}] = true
				}
				mu.Unlock()
				if ackedN.Add(burstFixesPerMessage) >= killAt {
					killOnce.Do(func() { close(killed) })
				}
			}
		}()
	}

	select {
	case <-killed:
	case <-time.After(120 * time.Second):
		t.Fatalf("only %d of %d fixes acknowledged after 120 s", ackedN.Load(), burstTotal)
	}
	agentProc.kill(syscall.SIGKILL)
	wg.Wait()
	mu.Lock()
	ackedFixes := len(acked)
	mu.Unlock()
	t.Logf("agent killed after %d of %d fixes were acknowledged", ackedFixes, burstTotal)
	if ackedFixes >= burstTotal {
		t.Fatalf("all %d fixes were acknowledged before the kill; the burst was not interrupted", burstTotal)
	}

	agentProc = startProcess(t, "agent restarted", agentEnv, args...)
	waitHTTP(t, agentProc, "http://"+httpAddr+"/readyz")
	agentMetrics := "http://" + httpAddr + "/metrics"
	waitFor(t, 180*time.Second, "the restarted agent's GPS lane to drain", func() bool {
		return metricValue(t, agentMetrics, "xpress_agent_spool_records", "lane", "gps") == 0
	})

	stored := make(map[fixKey]int)
	rows, err := pool.Query(context.Background(), `select vehicle_id, ts from fixes where vehicle_id like 'burst-%'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k fixKey
		var ts time.Time
		if err := rows.Scan(&k.vehicle, &ts); err != nil {
			t.Fatal(err)
		}
		k.ms = ts.UnixMilli()
		stored[k]++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("PostgreSQL holds %d distinct burst fixes; %d were acknowledged", len(stored), ackedFixes)

	missing, twice := 0, 0
	for k := range acked {
		if stored[k] == 0 {
			missing++
		}
	}
	for _, n := range stored {
		if n > 1 {
			twice++
		}
	}
	if missing > 0 {
		t.Errorf("%d acknowledged fixes are missing from PostgreSQL", missing)
	}
	if twice > 0 {
		t.Errorf("%d fixes are stored more than once", twice)
	}
}
