package broker_test

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// rawClient speaks MQTT 3.1.1 or 5 over a plain TCP connection, encoding
// and decoding packets with mochi's codec. Unlike paho it shows the exact
// PUBACK reason codes and lets a test see that no PUBACK came.
type rawClient struct {
	t       *testing.T
	version byte
	conn    net.Conn
	reader  *bufio.Reader
	nextID  uint16
}

type rawConnect struct {
	version   byte // 4 for MQTT 3.1.1, 5 for MQTT 5
	clientID  string
	username  string
	willTopic string
	willBody  []byte
	// willRetain sets the will's retain flag.
	willRetain bool
	// password is sent as the CONNECT password; empty sends "device-token".
	password string
	// localIP, when set, is the source address, e.g. "127.0.0.2".
	localIP string
}

// dialRaw connects and sends CONNECT; it returns the client and the CONNACK.
func dialRaw(t *testing.T, addr net.Addr, c rawConnect) (*rawClient, packets.Packet) {
	t.Helper()
	dialer := net.Dialer{Timeout: 5 * time.Second}
	if c.localIP != "" {
		dialer.LocalAddr = &net.TCPAddr{IP: net.ParseIP(c.localIP)}
	}
	conn, err := dialer.Dial("tcp", addr.String())
	if err != nil {
		t.Fatalf("dial broker: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	rc := &rawClient{t: t, version: c.version, conn: conn, reader: bufio.NewReader(conn)}

	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: c.version,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        30,
			ClientIdentifier: c.clientID,
			UsernameFlag:     true,
			Username:         []byte(c.username),
			PasswordFlag:     true,
			Password:         []byte(cmp.Or(c.password, "device-token")),
		},
	}
	if c.willTopic != "" {
		pk.Connect.WillFlag = true
		pk.Connect.WillQos = 1
		pk.Connect.WillTopic = c.willTopic
		pk.Connect.WillPayload = c.willBody
		pk.Connect.WillRetain = c.willRetain
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatalf("encode CONNECT: %v", err)
	}
	rc.write(buf.Bytes())
	return rc, rc.read()
}

func (rc *rawClient) write(b []byte) {
	rc.t.Helper()
	if err := rc.conn.SetWriteDeadline(time.Now().Add(5 * time.Second)); err != nil {
		rc.t.Fatal(err)
	}
	if _, err := rc.conn.Write(b); err != nil {
		rc.t.Fatalf("write packet: %v", err)
	}
}

// publish sends a PUBLISH and returns its packet id (0 for QoS 0).
func (rc *rawClient) publish(topic string, payload []byte, qos byte) uint16 {
	rc.t.Helper()
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: qos},
		ProtocolVersion: rc.version,
		TopicName:       topic,
		Payload:         payload,
	}
	if qos > 0 {
		rc.nextID++
		pk.PacketID = rc.nextID
	}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		rc.t.Fatalf("encode PUBLISH: %v", err)
	}
	rc.write(buf.Bytes())
	return pk.PacketID
}

func (rc *rawClient) pingreq() {
	rc.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	var buf bytes.Buffer
	if err := pk.PingreqEncode(&buf); err != nil {
		rc.t.Fatal(err)
	}
	rc.write(buf.Bytes())
}

func (rc *rawClient) subscribe(filter string) packets.Packet {
	rc.t.Helper()
	rc.nextID++
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: rc.version,
		PacketID:        rc.nextID,
		Filters:         packets.Subscriptions{{Filter: filter, Qos: 1}},
	}
	var buf bytes.Buffer
	if err := pk.SubscribeEncode(&buf); err != nil {
		rc.t.Fatal(err)
	}
	rc.write(buf.Bytes())
	return rc.read()
}

// read returns the next packet from the broker, failing the test after 10 s.
func (rc *rawClient) read() packets.Packet {
	rc.t.Helper()
	pk, err := rc.tryRead()
	if err != nil {
		rc.t.Fatalf("read packet: %v", err)
	}
	return pk
}

// tryRead returns the next packet or the read error (io.EOF once the broker closed the connection).
func (rc *rawClient) tryRead() (packets.Packet, error) {
	if err := rc.conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return packets.Packet{}, err
	}
	first, err := rc.reader.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	pk := packets.Packet{ProtocolVersion: rc.version}
	if err := pk.FixedHeader.Decode(first); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(rc.reader)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(rc.reader, body); err != nil {
		return pk, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Pingresp:
	default:
		err = fmt.Errorf("unexpected packet type %d", pk.FixedHeader.Type)
	}
	return pk, err
}

// expectPuback reads the PUBACK for id and returns its reason code.
func (rc *rawClient) expectPuback(id uint16) byte {
	rc.t.Helper()
	pk := rc.read()
	if pk.FixedHeader.Type != packets.Puback {
		rc.t.Fatalf("got packet type %d, want PUBACK (%d) for packet id %d", pk.FixedHeader.Type, packets.Puback, id)
	}
	if pk.PacketID != id {
		rc.t.Fatalf("PUBACK for packet id %d, want %d", pk.PacketID, id)
	}
	return pk.ReasonCode
}
