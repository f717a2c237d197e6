package ingest

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	mochipackets "github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/protocol"
)

// hubOnlyTopics are topics agent self may not leave a message on: one of
// each family only the hub writes to, the agent's own and another
// agent's, and the batch topics, whose messages are never forwarded.
func hubOnlyTopics(self string) map[string]string {
	const other = "agent-other"
	return map[string]string{
		"vehicle credential":         protocol.VehicleCredentialTopic("veh-1"),
		"operators of another agent": protocol.AgentOperatorsTopic(other),
		"own operators":              protocol.AgentOperatorsTopic(self),
		"SOS state of another agent": protocol.SOSStateUpdateTopic(other, "veh-1", "sos-1"),
		"own SOS state":              protocol.SOSStateUpdateTopic(self, "veh-1", "sos-1"),
		"own Ack":                    protocol.AckTopic(self),
		"own SOS link Ack":           protocol.SOSAckTopic(self),
		"Ack of another agent":       protocol.AckTopic(other),
		"batch of another agent":     protocol.BatchTopic(other),
		"own batch":                  protocol.BatchTopic(self),
	}
}

// rawMQTT5 is a plain TCP MQTT 5 connection to the ingest broker, which
// shows the exact CONNACK and PUBACK reason codes.
type rawMQTT5 struct {
	t      *testing.T
	conn   net.Conn
	reader *bufio.Reader
}

// dialMQTT5 sends a CONNECT as agentID, with a retained QoS 1 will on
// willTopic unless it is empty, and returns the connection and the
// CONNACK's reason code.
func dialMQTT5(t *testing.T, addr net.Addr, agentID, willTopic string) (*rawMQTT5, byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr.String(), waitTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatalf("set deadline: %v", err)
	}
	rc := &rawMQTT5{t: t, conn: conn, reader: bufio.NewReader(conn)}
	pk := mochipackets.Packet{
		FixedHeader:     mochipackets.FixedHeader{Type: mochipackets.Connect},
		ProtocolVersion: 5,
		Connect: mochipackets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			ClientIdentifier: agentID,
			Clean:            true,
			Keepalive:        30,
			Username:         []byte(agentID),
			UsernameFlag:     true,
			Password:         []byte("dev-password"),
			PasswordFlag:     true,
		},
	}
	if willTopic != "" {
		pk.Connect.WillFlag = true
		pk.Connect.WillQos = 1
		pk.Connect.WillRetain = true
		pk.Connect.WillTopic = willTopic
		pk.Connect.WillPayload = []byte(`{"forged":true}`)
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatalf("encode CONNECT: %v", err)
	}
	rc.write(buf.Bytes())
	typ, body := rc.read()
	if typ != mochipackets.Connack || len(body) < 2 {
		t.Fatalf("answer to CONNECT: packet type %d with %d bytes, want a CONNACK", typ, len(body))
	}
	return rc, body[1]
}

func (rc *rawMQTT5) write(b []byte) {
	rc.t.Helper()
	if _, err := rc.conn.Write(b); err != nil {
		rc.t.Fatalf("write packet: %v", err)
	}
}

// read returns the type and the variable header and payload of the next packet.
func (rc *rawMQTT5) read() (byte, []byte) {
	rc.t.Helper()
	first, err := rc.reader.ReadByte()
	if err != nil {
		rc.t.Fatalf("read packet: %v", err)
	}
	var length, shift int
	for {
		b, err := rc.reader.ReadByte()
		if err != nil {
			rc.t.Fatalf("read remaining length: %v", err)
		}
		length |= int(b&0x7f) << shift
		if b&0x80 == 0 {
			break
		}
		shift += 7
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(rc.reader, body); err != nil {
		rc.t.Fatalf("read packet body: %v", err)
	}
	return first >> 4, body
}

// publishRetained sends a retained QoS 1 PUBLISH with packet id 1 and
// returns the PUBACK's reason code.
// publishRetainedQoS0 sends a retained QoS 0 PUBLISH, which gets no PUBACK.
func (rc *rawMQTT5) publishRetainedQoS0(topic string, payload []byte) {
	rc.t.Helper()
	pk := mochipackets.Packet{
		FixedHeader:     mochipackets.FixedHeader{Type: mochipackets.Publish, Retain: true},
		ProtocolVersion: 5,
		TopicName:       topic,
		Payload:         payload,
	}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		rc.t.Fatalf("encode PUBLISH: %v", err)
	}
	rc.write(buf.Bytes())
}

func (rc *rawMQTT5) publishRetained(topic string, payload []byte) byte {
	rc.t.Helper()
	pk := mochipackets.Packet{
		FixedHeader:     mochipackets.FixedHeader{Type: mochipackets.Publish, Qos: 1, Retain: true},
		ProtocolVersion: 5,
		TopicName:       topic,
		Payload:         payload,
		PacketID:        1,
	}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		rc.t.Fatalf("encode PUBLISH: %v", err)
	}
	rc.write(buf.Bytes())
	for {
		typ, body := rc.read()
		if typ != mochipackets.Puback {
			continue // an Ack the hub sent meanwhile
		}
		if len(body) < 3 {
			return mochipackets.CodeSuccess.Code // MQTT 5 omits the code for success
		}
		return body[2]
	}
}

func TestServer_RefusesAgentWillMessages(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	topics := hubOnlyTopics(storetest.Agent)
	for name, topic := range topics {
		rc, code := dialMQTT5(t, h.server.Addr(), storetest.Agent, topic)
		if code != mochipackets.ErrBadUsernameOrPassword.Code {
			t.Errorf("CONNECT with a retained will on %s (%s): CONNACK 0x%02x, want 0x%02x",
				topic, name, code, mochipackets.ErrBadUsernameOrPassword.Code)
		}
		rc.conn.Close()
	}
	got := testutil.ToFloat64(h.server.metrics.connectionsRejected.WithLabelValues(reasonWillMessage))
	if got != float64(len(topics)) {
		t.Errorf("connections rejected for a will message: %v, want %d", got, len(topics))
	}

	// The same agent without a will connects.
	rc, code := dialMQTT5(t, h.server.Addr(), storetest.Agent, "")
	if code != mochipackets.CodeSuccess.Code {
		t.Fatalf("CONNECT without a will: CONNACK 0x%02x, want success", code)
	}
	rc.conn.Close()
}

func TestServer_RefusesRetainedPublishFromAgent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	rc, code := dialMQTT5(t, h.server.Addr(), storetest.Agent, "")
	if code != mochipackets.CodeSuccess.Code {
		t.Fatalf("CONNECT: CONNACK 0x%02x, want success", code)
	}
	// mochi honours a refusal's reason code only at QoS 1 and 2; at QoS 0
	// the hook must drop the publish itself. The QoS 1 publishes below
	// come after it on the same connection, so their PUBACKs mean it was
	// handled.
	batch, err := protocol.EncodeBatch(storetest.FixBatch(1, 5, "veh-1"))
	if err != nil {
		t.Fatalf("encode batch: %v", err)
	}
	rc.publishRetainedQoS0(protocol.BatchTopic(storetest.Agent), batch)
	for name, topic := range hubOnlyTopics(storetest.Agent) {
		payload := []byte(`{"forged":true}`)
		if topic == protocol.BatchTopic(storetest.Agent) {
			var err error
			payload, err = protocol.EncodeBatch(storetest.FixBatch(1, 5, "veh-1"))
			if err != nil {
				t.Fatalf("encode batch: %v", err)
			}
		}
		if code := rc.publishRetained(topic, payload); code != mochipackets.ErrNotAuthorized.Code {
			t.Errorf("retained publish to %s (%s): PUBACK 0x%02x, want 0x%02x", topic, name, code, mochipackets.ErrNotAuthorized.Code)
		}
	}
	// The PUBACKs came after the hook ran, so a commit would be queued by now.
	if len(h.commits) != 0 {
		t.Errorf("a retained batch was committed")
	}
	if got := testutil.ToFloat64(h.server.metrics.batchesRejected.WithLabelValues(reasonRetained)); got != 2 {
		t.Errorf("batches rejected as retained: %v, want 2 (QoS 0 and QoS 1)", got)
	}
	if msgs := h.server.broker.Topics.Messages("#"); len(msgs) != 0 {
		t.Errorf("the broker retains %d messages from an agent, want none: first on %s", len(msgs), msgs[0].TopicName)
	}
}
