package e2e

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/xpress-ops/tower/internal/pgtest"
	"github.com/xpress-ops/tower/protocol"
)

// fixJSON returns a device fix payload at time ts.
func fixJSON(ts time.Time, lat, lon float64) string {
	return fmt.Sprintf(`{"ts":%q,"lat":%v,"lon":%v,"speed_kmh":30,"heading_deg":90,"accuracy_m":5,"battery_pct":80}`,
		ts.In(time.FixedZone("PHT", 8*3600)).Format(time.RFC3339Nano), lat, lon)
}

func TestPipeline_SOSAndFixesReachOperator(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	h := startHub(t, dbURL)
	a := startAgent(t, "ncr-1", h.AgentMQTTAddr().String(), t.TempDir())
	stream := openStream(t, h.HTTPAddr().String())
	pool := openPool(t, dbURL)

	vehicle := connectVehicle(t, a.MQTTAddr().String(), "taxi-0917")
	now := time.Now()
	newer := now.Add(-10 * time.Second)
	older := now.Add(-60 * time.Second)

	// The newer fix arrives first, the older one after it: the latest
	// position must stay at the newer fix.
	publish(t, vehicle, protocol.VehicleTopicFor("taxi-0917", protocol.TopicFix), fixJSON(newer, 14.5995, 120.9842))
	publish(t, vehicle, protocol.VehicleTopicFor("taxi-0917", protocol.TopicFix), fixJSON(older, 14.5000, 120.9000))
	publish(t, vehicle, protocol.VehicleTopicFor("taxi-0917", protocol.TopicFix),
		fmt.Sprintf("[%s,%s]", fixJSON(older.Add(-time.Second), 14.49, 120.89), fixJSON(older.Add(-2*time.Second), 14.48, 120.88)))
	sos := fmt.Sprintf(`{"id":"sos-1","ts":%q,"lat":14.5995,"lon":120.9842,"kind":"harassment","note":"passenger threatening"}`,
		now.Format(time.RFC3339))
	publish(t, vehicle, protocol.VehicleTopicFor("taxi-0917", protocol.TopicSOS), sos)
	// A QoS 1 redelivery of the same SOS attaches to the same incident
	// without counting as a press; a second press of the same id, with
	// its own time, counts.
	publish(t, vehicle, protocol.VehicleTopicFor("taxi-0917", protocol.TopicSOS), sos)
	again := fmt.Sprintf(`{"id":"sos-1","ts":%q,"lat":14.5995,"lon":120.9842,"kind":"harassment"}`,
		now.Add(time.Second).Format(time.RFC3339))
	publish(t, vehicle, protocol.VehicleTopicFor("taxi-0917", protocol.TopicSOS), again)

	waitFor(t, 15*time.Second, "4 fixes in PostgreSQL", func() bool {
		return queryInt(t, pool, `select count(*) from fixes where vehicle_id = 'taxi-0917'`) == 4
	})
	waitFor(t, 15*time.Second, "the SOS redelivery and repeat press in PostgreSQL", func() bool {
		return queryInt(t, pool, `select coalesce(sum(presses), 0) from incidents where vehicle_id = 'taxi-0917'`) == 2 &&
			queryInt(t, pool, `select count(*) from incident_events where type = 'redelivered'`) == 1
	})
	if n := queryInt(t, pool, `select count(*) from incidents where vehicle_id = 'taxi-0917'`); n != 1 {
		t.Errorf("incidents for taxi-0917 = %d, want 1", n)
	}
	if n := queryInt(t, pool, `select count(*) from incidents where sos_id = 'sos-1' and kind = 'harassment' and state = 'open'`); n != 1 {
		t.Errorf("open harassment incidents with sos id sos-1 = %d, want 1", n)
	}

	waitFor(t, 10*time.Second, "incident.opened on the WebSocket", func() bool { return stream.count("incident.opened") >= 1 })
	waitFor(t, 10*time.Second, "4 fix events on the WebSocket", func() bool { return stream.count("fix") >= 4 })
	if n := stream.count("incident.opened"); n != 1 {
		t.Errorf("incident.opened events = %d, want 1", n)
	}
	var opened struct {
		Incident struct {
			SOSID     string `json:"sos_id"`
			VehicleID string `json:"vehicle_id"`
		} `json:"incident"`
	}
	if err := json.Unmarshal(stream.ofType("incident.opened")[0].Data, &opened); err != nil {
		t.Fatal(err)
	}
	if opened.Incident.SOSID != "sos-1" || opened.Incident.VehicleID != "taxi-0917" {
		t.Errorf("incident.opened data = %+v, want sos-1 of taxi-0917", opened.Incident)
	}

	var vehicles struct {
		Vehicles []struct {
			VehicleID string       `json:"vehicle_id"`
			Fix       protocol.Fix `json:"fix"`
		} `json:"vehicles"`
	}
	getJSON(t, "http://"+h.HTTPAddr().String()+"/api/v1/vehicles", &vehicles)
	if len(vehicles.Vehicles) != 1 {
		t.Fatalf("vehicles = %+v, want one", vehicles.Vehicles)
	}
	latest := vehicles.Vehicles[0].Fix
	if latest.Lat != 14.5995 || latest.Lon != 120.9842 {
		t.Errorf("latest position = (%v, %v), want the newer fix (14.5995, 120.9842)", latest.Lat, latest.Lon)
	}
	if !latest.Time.Equal(newer.Truncate(time.Nanosecond)) && latest.Time.Sub(newer).Abs() > time.Microsecond {
		t.Errorf("latest fix time = %v, want %v", latest.Time, newer)
	}

	var incidents struct {
		Incidents []struct {
			SOSID   string `json:"sos_id"`
			Presses int    `json:"presses"`
		} `json:"incidents"`
	}
	getJSON(t, "http://"+h.HTTPAddr().String()+"/api/v1/incidents", &incidents)
	if len(incidents.Incidents) != 1 || incidents.Incidents[0].Presses != 2 {
		t.Errorf("incidents from the API = %+v, want one with 2 presses", incidents.Incidents)
	}
}
