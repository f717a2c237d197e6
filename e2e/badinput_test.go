package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/xpress-ops/tower/internal/pgtest"
	"github.com/xpress-ops/tower/protocol"
)

// publishNoWait sends one QoS 1 message to which the agent may respond by
// closing the connection, and waits briefly for the outcome.
func publishNoWait(c mqtt.Client, topic string, payload []byte) {
	tok := c.Publish(topic, 1, false, payload)
	tok.WaitTimeout(5 * time.Second)
}

// Each kind of bad input is rejected and counted by reason, and every
// valid fix published around it is stored.
func TestBadInput_RejectedCountedAndValidKept(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	h := startHub(t, dbURL)
	a := startAgent(t, "iloilo-1", h.AgentMQTTAddr().String(), t.TempDir())
	pool := openPool(t, dbURL)
	metricsURL := "http://" + a.HTTPAddr().String() + "/metrics"

	const id = "iloilo-jeep-3"
	fixTopic := protocol.VehicleTopicFor(id, protocol.TopicFix)
	now := time.Now()
	valid := 0
	sendValid := func(c mqtt.Client) {
		t.Helper()
		valid++
		publish(t, c, fixTopic, fixJSON(now.Add(time.Duration(valid)*time.Second-time.Minute), 10.7202+float64(valid)/1000, 122.5621))
	}

	vehicle := connectVehicle(t, a.MQTTAddr().String(), id)
	bad := []struct {
		name    string
		payload string
		reason  string
	}{
		{"malformed JSON", `{"ts":"2026-12-04T10:00:00+08:00","lat":`, "malformed"},
		{"NaN", `{"ts":"2026-12-04T10:00:00+08:00","lat":NaN,"lon":122.56}`, "malformed"},
		{"latitude 91", fmt.Sprintf(`{"ts":%q,"lat":91,"lon":122.56}`, now.Format(time.RFC3339)), "out_of_range"},
		{"null island", fmt.Sprintf(`{"ts":%q,"lat":0,"lon":0}`, now.Format(time.RFC3339)), "null_island"},
		{"a year ahead", fmt.Sprintf(`{"ts":%q,"lat":10.72,"lon":122.56}`, now.AddDate(1, 0, 0).Format(time.RFC3339)), "future_timestamp"},
		{"invalid UTF-8", "{\"ts\":\"" + now.Format(time.RFC3339) + "\",\"lat\":10.72,\"lon\":122.56,\"x\":\"\xff\xfe\"}", "invalid_utf8"},
	}
	sendValid(vehicle)
	for _, b := range bad {
		publish(t, vehicle, fixTopic, b.payload)
		sendValid(vehicle)
	}

	// A topic of another vehicle: MQTT 3.1.1 has no negative PUBACK, so
	// the agent closes the connection. The vehicle reconnects and goes on.
	publishNoWait(vehicle, protocol.VehicleTopicFor("someone-else", protocol.TopicFix), []byte(fixJSON(now, 10.72, 122.56)))
	vehicle.Disconnect(0)
	vehicle = connectVehicle(t, a.MQTTAddr().String(), id)
	sendValid(vehicle)

	// An oversized packet: the broker closes the connection before reading it.
	publishNoWait(vehicle, fixTopic, []byte(strings.Repeat(" ", protocol.MaxPayloadBytes+64<<10)))
	vehicle.Disconnect(0)
	vehicle = connectVehicle(t, a.MQTTAddr().String(), id)
	sendValid(vehicle)

	waitFor(t, 15*time.Second, fmt.Sprintf("%d valid fixes in PostgreSQL", valid), func() bool {
		return queryInt(t, pool, `select count(*) from fixes where vehicle_id = $1`, id) >= valid
	})
	if n := queryInt(t, pool, `select count(*) from fixes where vehicle_id = $1`, id); n != valid {
		t.Errorf("stored fixes = %d, want %d", n, valid)
	}
	if n := queryInt(t, pool, `select count(*) from fixes where vehicle_id = 'someone-else'`); n != 0 {
		t.Errorf("fixes stored for the other vehicle's topic = %d, want 0", n)
	}

	want := map[string]float64{}
	for _, b := range bad {
		want[b.reason]++
	}
	for reason, n := range want {
		if got := metricValue(t, metricsURL, "xpress_agent_rejects_total", "reason", reason); got != n {
			t.Errorf("xpress_agent_rejects_total{reason=%q} = %v, want %v", reason, got, n)
		}
	}
	if got := metricValue(t, metricsURL, "xpress_agent_rejects_total", "reason", "acl"); got != 1 {
		t.Errorf("rejects for another vehicle's topic = %v, want 1", got)
	}
	if got := metricValue(t, metricsURL, "xpress_agent_rejects_total", "reason", "packet_too_large"); got != 1 {
		t.Errorf("rejects for the oversized packet = %v, want 1", got)
	}
}
