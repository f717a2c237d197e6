package broker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/goleak"

	"github.com/xpress-ops/tower/agent/broker"
	"github.com/xpress-ops/tower/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const vehicle = "veh-001"

var (
	fixTopic       = protocol.VehicleTopicFor(vehicle, protocol.TopicFix)
	sosTopic       = protocol.VehicleTopicFor(vehicle, protocol.TopicSOS)
	sosCancelTopic = protocol.VehicleTopicFor(vehicle, protocol.TopicSOSCancel)
	statusTopic    = protocol.VehicleTopicFor(vehicle, protocol.TopicStatus)
	fixTime        = agentNow.Add(-10 * time.Second)
)

func TestBroker_StoresFixBeforePuback(t *testing.T) {
	tb := startBroker(t, nil)
	c := connectPaho(t, tb.broker.Addr(), vehicle)

	publishPaho(t, c, fixTopic, fixJSON(14.5995, 120.9842, fixTime))

	// The PUBACK arrived, so the record must already be in the spool.
	recs := readLane(t, tb.spool, protocol.LaneGPS)
	if len(recs) != 1 {
		t.Fatalf("gps lane holds %d records after the PUBACK, want 1", len(recs))
	}
	r := recs[0]
	if r.Kind != protocol.KindFix || r.VehicleID != vehicle || r.Seq != 1 {
		t.Errorf("record = kind %s vehicle %s seq %d, want fix from %s with seq 1", r.Kind, r.VehicleID, r.Seq, vehicle)
	}
	if !r.ReceivedAt.Equal(agentNow) {
		t.Errorf("received_at = %s, want the agent clock %s", r.ReceivedAt, agentNow)
	}
	if r.Fix == nil || r.Fix.Lat != 14.5995 || !r.Fix.Time.Equal(fixTime) {
		t.Errorf("fix = %+v, want lat 14.5995 at %s", r.Fix, fixTime)
	}
	if got := counterValue(t, tb.reg, "xpress_agent_messages_accepted_total", "kind", "fix"); got != 1 {
		t.Errorf("accepted fix messages = %v, want 1", got)
	}
}

func TestBroker_StoresFixArray(t *testing.T) {
	tb := startBroker(t, nil)
	c := connectPaho(t, tb.broker.Addr(), vehicle)
	payload := fmt.Appendf(nil, "[%s,%s,%s]",
		fixJSON(14.1, 121.1, fixTime.Add(-3*time.Second)),
		fixJSON(14.2, 121.2, fixTime.Add(-2*time.Second)),
		fixJSON(14.3, 121.3, fixTime.Add(-1*time.Second)))

	publishPaho(t, c, fixTopic, payload)

	recs := readLane(t, tb.spool, protocol.LaneGPS)
	if len(recs) != 3 {
		t.Fatalf("gps lane holds %d records, want 3 from one array", len(recs))
	}
	for i, want := range []float64{14.1, 14.2, 14.3} {
		if recs[i].Fix.Lat != want || recs[i].Seq != uint64(i+1) {
			t.Errorf("record %d = lat %v seq %d, want lat %v seq %d", i, recs[i].Fix.Lat, recs[i].Seq, want, i+1)
		}
	}
}

func TestBroker_StoresSOSWithAndWithoutID(t *testing.T) {
	tb := startBroker(t, nil)
	c := connectPaho(t, tb.broker.Addr(), vehicle)

	publishPaho(t, c, sosTopic, []byte(`{"id":"sos-device-1","lat":14.6,"lon":121.0,"kind":"crash"}`))
	publishPaho(t, c, sosTopic, []byte(`{"lat":14.6,"lon":121.0}`))

	recs := readLane(t, tb.spool, protocol.LaneSOS)
	if len(recs) != 2 {
		t.Fatalf("sos lane holds %d records, want 2", len(recs))
	}
	if s := recs[0].SOS; s.ID != "sos-device-1" || s.IDAssigned || s.Kind != protocol.SOSCrash {
		t.Errorf("first SOS = %+v, want the device's id sos-device-1, kind crash", s)
	}
	if s := recs[1].SOS; !strings.HasPrefix(s.ID, "agent-") || !s.IDAssigned {
		t.Errorf("second SOS id = %q (assigned %v), want an agent-assigned id agent-<hex>", s.ID, s.IDAssigned)
	}
	if err := protocol.ValidateSOSID(recs[1].SOS.ID); err != nil {
		t.Errorf("assigned SOS id is invalid: %v", err)
	}
	// The line is written off the PUBACK's path, so it may follow the PUBACK.
	eventually(t, "a log line for the stored SOS with vehicle and sos id", func() bool {
		_, ok := tb.logs.find(map[string]string{"msg": "SOS stored", "vehicle": vehicle, "sos": "sos-device-1"})
		return ok
	})
}

func TestBroker_StoresCancelAndStatus(t *testing.T) {
	tb := startBroker(t, nil)
	c := connectPaho(t, tb.broker.Addr(), vehicle)

	publishPaho(t, c, sosCancelTopic, []byte(`{"id":"sos-device-1","reason":"pressed by mistake"}`))
	publishPaho(t, c, statusTopic, []byte(`{"online":true}`))

	sos := readLane(t, tb.spool, protocol.LaneSOS)
	if len(sos) != 1 || sos[0].Kind != protocol.KindSOSCancel || sos[0].Cancel.ID != "sos-device-1" {
		t.Errorf("sos lane = %+v, want one cancel of sos-device-1", sos)
	}
	status := readLane(t, tb.spool, protocol.LaneStatus)
	if len(status) != 1 || status[0].Status == nil || !status[0].Status.Online {
		t.Errorf("status lane = %+v, want one online status", status)
	}
}

// badMessage is an invalid publish and how the broker classifies it.
type badMessage struct {
	name    string
	topic   string
	payload []byte
	reason  string
	code    byte // MQTT 5 PUBACK reason code
}

func badMessages() []badMessage {
	return []badMessage{
		{"malformed JSON", fixTopic, []byte(`{"ts":`), "malformed", 0x99},
		{"latitude 91", fixTopic, fixJSON(91, 121, fixTime), "out_of_range", 0x99},
		{"position (0, 0)", fixTopic, fixJSON(0, 0, fixTime), "null_island", 0x99},
		{"ts a year ahead", fixTopic, fixJSON(14.6, 121, agentNow.AddDate(1, 0, 0)), "future_timestamp", 0x99},
		{"invalid UTF-8", fixTopic, []byte("{\"ts\":\"\xff\xfe\",\"lat\":14.6,\"lon\":121}"), "invalid_utf8", 0x99},
		{"another vehicle's topic", protocol.VehicleTopicFor("veh-999", protocol.TopicFix), fixJSON(14.6, 121, fixTime), "acl", 0x87},
		{"oversized payload", fixTopic, bytes.Repeat([]byte(" "), protocol.MaxPayloadBytes+1), "too_large", 0x99},
		{"unknown topic kind", protocol.VehiclePrefix + vehicle + "/telemetry", []byte(`{}`), "unknown_topic", 0x90},
		{"sos state topic", protocol.SOSStateTopic(vehicle, "sos-1"), []byte(`{"state":"resolved"}`), "read_only_topic", 0x87},
		{"status without online", statusTopic, []byte(`{}`), "missing_field", 0x99},
	}
}

// expectedReasons counts the bad messages per reject reason.
func expectedReasons(cases []badMessage) map[string]float64 {
	want := map[string]float64{}
	for _, c := range cases {
		want[c.reason]++
	}
	return want
}

// checkValidFixesStored checks the gps lane holds exactly the valid fixes
// published around the bad messages, in order.
func checkValidFixesStored(t *testing.T, tb *testBroker, n int) {
	t.Helper()
	recs := readLane(t, tb.spool, protocol.LaneGPS)
	if len(recs) != 2*n {
		t.Fatalf("gps lane holds %d records, want the %d valid fixes sent around the bad messages", len(recs), 2*n)
	}
	for i, r := range recs {
		if want := markerLat(i); r.Fix.Lat != want {
			t.Errorf("gps record %d has lat %v, want %v", i, r.Fix.Lat, want)
		}
	}
}

func markerLat(i int) float64 { return 10 + float64(i)/100 }

func checkRejectsCountedAndLogged(t *testing.T, tb *testBroker, cases []badMessage) {
	t.Helper()
	for reason, want := range expectedReasons(cases) {
		if got := counterValue(t, tb.reg, "xpress_agent_rejects_total", "reason", reason); got != want {
			t.Errorf("xpress_agent_rejects_total{reason=%q} = %v, want %v", reason, got, want)
		}
		if _, ok := tb.logs.find(map[string]string{"vehicle": vehicle, "reason": reason, "level": "WARN"}); !ok {
			t.Errorf("no warning logged for reason %s with vehicle %s", reason, vehicle)
		}
	}
	if _, ok := tb.logs.find(map[string]string{"vehicle": vehicle, "topic": protocol.VehicleTopicFor("veh-999", protocol.TopicFix), "level": "WARN"}); !ok {
		t.Error("no warning logged naming the vehicle and the other vehicle's topic")
	}
}

func TestBroker_RejectsInvalidMessagesMQTT311(t *testing.T) {
	tb := startBroker(t, nil)
	c := connectPaho(t, tb.broker.Addr(), vehicle)
	cases := badMessages()

	for i, bad := range cases {
		publishPaho(t, c, fixTopic, fixJSON(markerLat(2*i), 121, fixTime))
		// MQTT 3.1.1 has no reason codes: the bad message is acknowledged and discarded.
		publishPaho(t, c, bad.topic, bad.payload)
		publishPaho(t, c, fixTopic, fixJSON(markerLat(2*i+1), 121, fixTime))
	}

	checkValidFixesStored(t, tb, len(cases))
	if n := len(readLane(t, tb.spool, protocol.LaneSOS)) + len(readLane(t, tb.spool, protocol.LaneStatus)); n != 0 {
		t.Errorf("sos and status lanes hold %d records, want none from bad messages", n)
	}
	checkRejectsCountedAndLogged(t, tb, cases)
}

func TestBroker_RejectsInvalidMessagesMQTT5(t *testing.T) {
	tb := startBroker(t, nil)
	rc, connack := dialRaw(t, tb.broker.Addr(), rawConnect{version: 5, clientID: "raw-v5", username: vehicle})
	if connack.ReasonCode != 0 {
		t.Fatalf("CONNACK reason 0x%02x, want success", connack.ReasonCode)
	}
	cases := badMessages()

	for i, bad := range cases {
		if code := rc.expectPuback(rc.publish(fixTopic, fixJSON(markerLat(2*i), 121, fixTime), 1)); code != 0 {
			t.Fatalf("valid fix before %q: PUBACK reason 0x%02x, want 0x00", bad.name, code)
		}
		if code := rc.expectPuback(rc.publish(bad.topic, bad.payload, 1)); code != bad.code {
			t.Errorf("%s: PUBACK reason 0x%02x, want 0x%02x", bad.name, code, bad.code)
		}
		if code := rc.expectPuback(rc.publish(fixTopic, fixJSON(markerLat(2*i+1), 121, fixTime), 1)); code != 0 {
			t.Fatalf("valid fix after %q: PUBACK reason 0x%02x, want 0x00", bad.name, code)
		}
	}

	checkValidFixesStored(t, tb, len(cases))
	checkRejectsCountedAndLogged(t, tb, cases)
}

// A damaged SOS is still a button press: it is stored, not rejected, and
// counted as repaired.
func TestBroker_KeepsDamagedSOS(t *testing.T) {
	tb := startBroker(t, nil)
	c := connectPaho(t, tb.broker.Addr(), vehicle)
	sosTopic := protocol.VehicleTopicFor(vehicle, protocol.TopicSOS)
	publishPaho(t, c, sosTopic, []byte(`[1,2]`))
	publishPaho(t, c, sosTopic, []byte(`{"id":"wrong-types","lat":"14.6","lon":121,"kind":5}`))

	recs := readLane(t, tb.spool, protocol.LaneSOS)
	if len(recs) != 2 {
		t.Fatalf("sos lane holds %d records, want both damaged SOS", len(recs))
	}
	if recs[0].SOS.PayloadError == "" || !recs[0].SOS.IDAssigned {
		t.Errorf("SOS from a non-object payload = %+v, want an assigned id and a payload error", recs[0].SOS)
	}
	if recs[1].SOS.ID != "wrong-types" || recs[1].SOS.HasLocation || recs[1].SOS.Kind != protocol.SOSOther {
		t.Errorf("SOS with mistyped fields = %+v, want id kept, no location, kind other", recs[1].SOS)
	}
	if got := counterValue(t, tb.reg, "xpress_agent_rejects_total", "reason", "sos_payload_repaired"); got != 2 {
		t.Errorf("xpress_agent_rejects_total{reason=\"sos_payload_repaired\"} = %v, want 2", got)
	}
}

func TestBroker_PubackReasonStringNamesTheProblem(t *testing.T) {
	tb := startBroker(t, nil)
	rc, _ := dialRaw(t, tb.broker.Addr(), rawConnect{version: 5, clientID: "raw-v5", username: vehicle})

	rc.publish(fixTopic, fixJSON(91, 121, fixTime), 1)

	ack := rc.read()
	if !strings.Contains(ack.Properties.ReasonString, "lat 91") {
		t.Errorf("PUBACK reason string = %q, want it to name lat 91", ack.Properties.ReasonString)
	}
}

func TestBroker_OversizedPacketDisconnects(t *testing.T) {
	tb := startBroker(t, nil)
	rc, _ := dialRaw(t, tb.broker.Addr(), rawConnect{version: 4, clientID: "raw-big", username: vehicle})

	rc.publish(fixTopic, bytes.Repeat([]byte("x"), broker.MaxPacketBytes+1), 1)

	for {
		pk, err := rc.tryRead()
		if err != nil {
			break // the broker closed the connection
		}
		if pk.FixedHeader.Type == packets.Puback {
			t.Fatal("oversized packet was acknowledged")
		}
	}
	eventually(t, "packet_too_large reject counted", func() bool {
		return counterValue(t, tb.reg, "xpress_agent_rejects_total", "reason", "packet_too_large") == 1
	})
	// The vehicle reconnects and its next message is stored.
	c := connectPaho(t, tb.broker.Addr(), vehicle)
	publishPaho(t, c, fixTopic, fixJSON(14.6, 121, fixTime))
	if n := len(readLane(t, tb.spool, protocol.LaneGPS)); n != 1 {
		t.Errorf("gps lane holds %d records after reconnect, want 1", n)
	}
}

func TestBroker_SpoolFailureSendsNoPubackMQTT311(t *testing.T) {
	tb := startBroker(t, nil)
	rc, _ := dialRaw(t, tb.broker.Addr(), rawConnect{version: 4, clientID: "raw-v3", username: vehicle})
	if err := tb.spool.Close(); err != nil {
		t.Fatal(err)
	}

	rc.publish(sosTopic, []byte(`{"id":"sos-lost-1","lat":14.6,"lon":121}`), 1)

	// The agent closes the connection without a PUBACK, so the device
	// reconnects and resends [MQTT-4.4.0-1].
	for {
		pk, err := rc.tryRead()
		var netErr net.Error
		if errors.As(err, &netErr) && netErr.Timeout() {
			t.Fatal("the connection stayed open after the spool failed to store an SOS")
		}
		if err != nil {
			break
		}
		if pk.FixedHeader.Type == packets.Puback {
			t.Fatal("got a PUBACK for an SOS the spool did not store")
		}
	}
	if got := counterValue(t, tb.reg, "xpress_agent_rejects_total", "reason", "spool_error"); got != 1 {
		t.Errorf("spool_error rejects = %v, want 1", got)
	}
	if _, ok := tb.logs.find(map[string]string{"level": "ERROR", "vehicle": vehicle, "sos": "sos-lost-1"}); !ok {
		t.Error("no error logged with the vehicle and SOS id of the unstored SOS")
	}
}

func TestBroker_SpoolFailurePubackErrorMQTT5(t *testing.T) {
	tb := startBroker(t, func(cfg *broker.Config) { cfg.Spool = failingAppender{} })
	rc, _ := dialRaw(t, tb.broker.Addr(), rawConnect{version: 5, clientID: "raw-v5", username: vehicle})

	code := rc.expectPuback(rc.publish(sosTopic, []byte(`{"id":"sos-lost-2"}`), 1))

	if code < 0x80 {
		t.Errorf("PUBACK reason 0x%02x after a failed spool write, want an error code (>= 0x80)", code)
	}
	if _, ok := tb.logs.find(map[string]string{"level": "ERROR", "vehicle": vehicle, "sos": "sos-lost-2"}); !ok {
		t.Error("no error logged with the vehicle and SOS id of the unstored SOS")
	}
}

// failingAppender is a spool whose every write fails.
type failingAppender struct{}

func (failingAppender) Append(context.Context, []protocol.Record) error {
	return errors.New("disk I/O error")
}

func TestBroker_ACLConfinesSubscriptions(t *testing.T) {
	tb := startBroker(t, nil)
	rc, _ := dialRaw(t, tb.broker.Addr(), rawConnect{version: 5, clientID: "raw-sub", username: vehicle})

	for _, filter := range []string{"#", "xpress/v1/vehicles/+/fix", protocol.VehiclePrefix + "veh-999/#", "$SYS/#"} {
		suback := rc.subscribe(filter)
		if len(suback.ReasonCodes) != 1 || suback.ReasonCodes[0] < 0x80 {
			t.Errorf("subscribe %q: SUBACK codes %v, want a failure code", filter, suback.ReasonCodes)
		}
	}
	suback := rc.subscribe(protocol.VehiclePrefix + vehicle + "/#")
	if len(suback.ReasonCodes) != 1 || suback.ReasonCodes[0] != 1 {
		t.Errorf("subscribe to own prefix: SUBACK codes %v, want granted QoS 1", suback.ReasonCodes)
	}
	if got := counterValue(t, tb.reg, "xpress_agent_rejects_total", "reason", "acl_subscribe"); got != 4 {
		t.Errorf("acl_subscribe rejects = %v, want 4", got)
	}
}

func TestBroker_RejectsInvalidUsername(t *testing.T) {
	tb := startBroker(t, nil)

	_, connack := dialRaw(t, tb.broker.Addr(), rawConnect{version: 4, clientID: "bad", username: "not a vehicle id"})

	if connack.ReasonCode == 0 {
		t.Error("CONNACK accepted a username that is not a vehicle id")
	}
	if got := counterValue(t, tb.reg, "xpress_agent_rejects_total", "reason", "auth"); got != 1 {
		t.Errorf("auth rejects = %v, want 1", got)
	}
}

func TestBroker_AuthenticatorRejects(t *testing.T) {
	tb := startBroker(t, func(cfg *broker.Config) { cfg.Authenticator = denyVehicle("veh-blocked") })

	_, blocked := dialRaw(t, tb.broker.Addr(), rawConnect{version: 5, clientID: "c1", username: "veh-blocked"})
	_, allowed := dialRaw(t, tb.broker.Addr(), rawConnect{version: 5, clientID: "c2", username: vehicle})

	if blocked.ReasonCode != packets.ErrBadUsernameOrPassword.Code {
		t.Errorf("blocked vehicle CONNACK 0x%02x, want 0x%02x", blocked.ReasonCode, packets.ErrBadUsernameOrPassword.Code)
	}
	if allowed.ReasonCode != 0 {
		t.Errorf("allowed vehicle CONNACK 0x%02x, want success", allowed.ReasonCode)
	}
}

type denyVehicle string

func (d denyVehicle) Authenticate(id string, _ []byte) error {
	if id == string(d) {
		return errors.New("vehicle is blocked")
	}
	return nil
}

func TestBroker_RejectsWillOnForeignTopic(t *testing.T) {
	tb := startBroker(t, nil)

	_, connack := dialRaw(t, tb.broker.Addr(), rawConnect{
		version: 4, clientID: "will", username: vehicle,
		willTopic: protocol.VehicleTopicFor("veh-999", protocol.TopicStatus), willBody: []byte(`{"online":false}`),
	})

	if connack.ReasonCode == 0 {
		t.Error("CONNACK accepted a will message on another vehicle's topic")
	}
}

func TestBroker_StoresWillStatus(t *testing.T) {
	tb := startBroker(t, nil)
	rc, connack := dialRaw(t, tb.broker.Addr(), rawConnect{
		version: 4, clientID: "will", username: vehicle,
		willTopic: statusTopic, willBody: []byte(`{"online":false}`),
	})
	if connack.ReasonCode != 0 {
		t.Fatalf("CONNACK 0x%02x, want success", connack.ReasonCode)
	}

	// Dropping the connection without DISCONNECT makes mochi send the will.
	rc.conn.Close()

	eventually(t, "the will status in the spool", func() bool {
		recs := readLane(t, tb.spool, protocol.LaneStatus)
		return len(recs) == 1 && recs[0].Status != nil && !recs[0].Status.Online && recs[0].VehicleID == vehicle
	})
}

func TestBroker_RejectsClientIDOfAnotherVehicle(t *testing.T) {
	tb := startBroker(t, nil)
	_, first := dialRaw(t, tb.broker.Addr(), rawConnect{version: 5, clientID: "shared-id", username: vehicle})
	if first.ReasonCode != 0 {
		t.Fatalf("first CONNACK 0x%02x, want success", first.ReasonCode)
	}

	_, second := dialRaw(t, tb.broker.Addr(), rawConnect{version: 5, clientID: "shared-id", username: "veh-002"})

	if second.ReasonCode == 0 {
		t.Error("a second vehicle took over another vehicle's client id")
	}
	if got := counterValue(t, tb.reg, "xpress_agent_rejects_total", "reason", "client_id_in_use"); got != 1 {
		t.Errorf("client_id_in_use rejects = %v, want 1", got)
	}
}

func TestBroker_MetricsLintClean(t *testing.T) {
	tb := startBroker(t, nil)
	c := connectPaho(t, tb.broker.Addr(), vehicle)
	publishPaho(t, c, fixTopic, fixJSON(14.6, 121, fixTime))

	families, err := tb.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(families).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func TestBroker_CloseTwice(t *testing.T) {
	tb := startBroker(t, nil)
	if err := tb.broker.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tb.broker.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestBroker_CloseWhileClientsChurn(t *testing.T) {
	tb := startBroker(t, nil)
	addr := tb.broker.Addr().String()
	stop := make(chan struct{})
	var churners sync.WaitGroup
	connected := make(chan struct{}, 1000)
	for w := range 4 {
		churners.Add(1)
		go func() {
			defer churners.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Connect, send CONNECT and drop the connection: mochi adds
				// and deletes a client while Close may be running.
				conn, err := net.DialTimeout("tcp", addr, time.Second)
				if err != nil {
					continue
				}
				pk := packets.Packet{
					FixedHeader:     packets.FixedHeader{Type: packets.Connect},
					ProtocolVersion: 4,
					Connect: packets.ConnectParams{
						ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30,
						ClientIdentifier: fmt.Sprintf("churn-%d-%d", w, i),
						UsernameFlag:     true, Username: []byte(vehicle),
					},
				}
				var buf bytes.Buffer
				_ = pk.ConnectEncode(&buf)
				_, _ = conn.Write(buf.Bytes())
				_ = conn.Close()
				select {
				case connected <- struct{}{}:
				default:
				}
			}
		}()
	}
	for range 50 {
		<-connected
	}

	closed := make(chan error, 1)
	go func() { closed <- tb.broker.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("close: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("broker Close did not return within 20 s while clients connected and disconnected")
	}
	close(stop)
	churners.Wait()
}
