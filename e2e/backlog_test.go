package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/internal/faultproxy"
	"github.com/xpress-ops/tower/internal/pgtest"
	"github.com/xpress-ops/tower/protocol"
)

// backlogVehicles × backlogMessages × protocol.MaxFixesPerMessage is the
// backlog of TestBacklog_SOSOvertakesGPSDrain: 200,000 fixes.
const (
	backlogVehicles = 20
	backlogMessages = 10
	backlogTotal    = backlogVehicles * backlogMessages * protocol.MaxFixesPerMessage
)

// fillBacklog publishes backlogTotal fixes to the agent at mqttAddr from
// backlogVehicles concurrent vehicles, in arrays of
// protocol.MaxFixesPerMessage fixes, and fails the test unless every
// message gets a PUBACK.
func fillBacklog(t *testing.T, mqttAddr string, base time.Time) {
	t.Helper()
	errs := make(chan error, backlogVehicles)
	var wg sync.WaitGroup
	for v := range backlogVehicles {
		vehicle := fmt.Sprintf("backlog-%02d", v)
		client := connectVehicle(t, mqttAddr, vehicle)
		topic := protocol.VehicleTopicFor(vehicle, protocol.TopicFix)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range backlogMessages {
				first := base.Add(time.Duration(m*protocol.MaxFixesPerMessage) * time.Millisecond)
				tok := client.Publish(topic, 1, false, fixArray(first, protocol.MaxFixesPerMessage))
				if !tok.WaitTimeout(60 * time.Second) {
					errs <- fmt.Errorf("%s message %d: no PUBACK within 60 s", vehicle, m)
					return
				}
				if err := tok.Error(); err != nil {
					errs <- fmt.Errorf("%s message %d: %w", vehicle, m, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// An SOS published while the agent drains a backlog of 200,000 GPS fixes
// after an outage reaches PostgreSQL while most of the backlog is still
// queued: the SOS lane does not wait for the GPS lane.
func TestBacklog_SOSOvertakesGPSDrain(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	hub := &hubProcess{agentAddr: freeAddr(t), httpAddr: freeAddr(t), dbURL: dbURL}
	// A regional WAN with a 50 ms round trip. The hub is down while the
	// backlog builds up, so the proxy refuses the agent's connections.
	wan := faultproxy.Start(t, hub.agentAddr)
	wan.Delay(25*time.Millisecond, 25*time.Millisecond)
	a := startFaultAgent(t, "ncr-backlog", wan.Addr(), dbURL, 0)
	pool := openPool(t, dbURL)

	start := time.Now()
	fillBacklog(t, a.MQTTAddr().String(), start.Add(-5*time.Minute).Truncate(time.Second))
	if got := agentGauge(t, a, "xpress_agent_spool_records", "lane", "gps"); got != backlogTotal {
		t.Fatalf("agent spool holds %v gps records after the outage, want %d", got, backlogTotal)
	}
	t.Logf("queued %d fixes in the agent's spool in %s", backlogTotal, time.Since(start).Round(time.Millisecond))

	hub.start(t)
	waitFor(t, 60*time.Second, "the agent to start draining its backlog", func() bool {
		return agentGauge(t, a, "xpress_agent_uplink_acked_seq", "lane", "gps") > 0
	})

	vehicle := connectVehicle(t, a.MQTTAddr().String(), "ncr-taxi-99")
	published := time.Now()
	publish(t, vehicle, protocol.VehicleTopicFor("ncr-taxi-99", protocol.TopicSOS), sosPayload("backlog-sos"))
	var gpsQueued float64
	var fixesStored int
	waitFor(t, 60*time.Second, "the SOS incident in PostgreSQL", func() bool {
		if countWhere(t, pool, "incidents", "sos_id = 'backlog-sos'") == 0 {
			return false
		}
		// Take the backlog's state at once, before the drain moves on.
		gpsQueued = agentGauge(t, a, "xpress_agent_spool_records", "lane", "gps")
		fixesStored = countWhere(t, pool, "fixes", "vehicle_id like 'backlog-%'")
		return true
	})
	t.Logf("SOS reached PostgreSQL %s after it was published, with %v fixes still queued at the agent and %d stored",
		time.Since(published).Round(time.Millisecond), gpsQueued, fixesStored)
	if gpsQueued == 0 {
		t.Errorf("the agent's GPS lane was empty when the SOS reached PostgreSQL: the SOS waited for the backlog")
	}
	if fixesStored >= backlogTotal {
		t.Errorf("PostgreSQL held all %d fixes when the SOS arrived: the SOS waited for the backlog", fixesStored)
	}

	drainStart := time.Now()
	waitFor(t, 300*time.Second, "the backlog to drain into PostgreSQL", func() bool {
		return agentGauge(t, a, "xpress_agent_spool_records", "lane", "gps") == 0
	})
	t.Logf("backlog drained %s after the SOS arrived", time.Since(drainStart).Round(time.Millisecond))
	if n := countWhere(t, pool, "fixes", "vehicle_id like 'backlog-%'"); n != backlogTotal {
		t.Errorf("fixes stored = %d, want %d", n, backlogTotal)
	}
	if n := queryInt(t, pool, `select count(distinct (vehicle_id, ts)) from fixes where vehicle_id like 'backlog-%'`); n != backlogTotal {
		t.Errorf("distinct fixes stored = %d, want %d", n, backlogTotal)
	}
	if n := countWhere(t, pool, "incidents", "sos_id = 'backlog-sos'"); n != 1 {
		t.Errorf("incidents for backlog-sos = %d, want 1", n)
	}
}
