package ingest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	mochipackets "github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/protocol"
)

// newAuthHarness is a harness whose agents authenticate against the
// store's credentials, with one credential per agent id given. It
// returns the tokens by agent id.
func newAuthHarness(t *testing.T, agentIDs ...string) (*harness, map[string]string) {
	t.Helper()
	h := newHarness(t, func(cfg *Config) { cfg.Authenticator = NewStoreAuthenticator(cfg.Store, 0) })
	tokens := map[string]string{}
	for _, id := range agentIDs {
		token, _, err := h.store.CreateAgentCredential(context.Background(), id, storetest.Region)
		if err != nil {
			t.Fatalf("create credential of %s: %v", id, err)
		}
		tokens[id] = token
	}
	return h, tokens
}

// rawConnect sends one CONNECT with the given MQTT protocol version (4 for
// 3.1.1, 5) and returns the CONNACK's return or reason code.
func rawConnect(t *testing.T, addr net.Addr, version byte, user, password string) byte {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr.String(), waitTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	pk := mochipackets.Packet{
		FixedHeader:     mochipackets.FixedHeader{Type: mochipackets.Connect},
		ProtocolVersion: version,
		Connect: mochipackets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			ClientIdentifier: user,
			Clean:            true,
			Keepalive:        30,
			Username:         []byte(user),
			UsernameFlag:     true,
			Password:         []byte(password),
			PasswordFlag:     password != "",
		},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatalf("encode CONNECT: %v", err)
	}
	if err := conn.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatalf("set deadline: %v", err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatalf("write CONNECT: %v", err)
	}
	// Fixed header (type, remaining length), acknowledge flags, code.
	ack := make([]byte, 4)
	if _, err := io.ReadFull(conn, ack); err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	if ack[0] != 0x20 {
		t.Fatalf("answer to CONNECT starts with %#x, want a CONNACK (0x20)", ack[0])
	}
	return ack[3]
}

func TestServer_StoreAuthRefusesBadCredentials(t *testing.T) {
	t.Parallel()
	h, tokens := newAuthHarness(t, "agent-a", "agent-b")
	addr := h.server.Addr()

	cases := []struct {
		name, user, password, reason string
	}{
		{"no token", "agent-a", "", reasonNoToken},
		{"wrong token", "agent-a", tokens["agent-b"], reasonBadToken},
		{"unknown agent", "agent-x", tokens["agent-a"], reasonUnknownAgent},
	}
	for _, c := range cases {
		if code := rawConnect(t, addr, 4, c.user, c.password); code != 0x04 {
			t.Errorf("%s over MQTT 3.1.1: CONNACK return code %#x, want 0x04 (bad user name or password)", c.name, code)
		}
		if code := rawConnect(t, addr, 5, c.user, c.password); code != 0x86 {
			t.Errorf("%s over MQTT 5: CONNACK reason code %#x, want 0x86 (bad user name or password)", c.name, code)
		}
		if _, err := dialAgent(t, addr, c.user, c.password); !errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) {
			t.Errorf("%s with paho: %v, want %v", c.name, err, packets.ErrorRefusedBadUsernameOrPassword)
		}
		if got := testutil.ToFloat64(h.server.metrics.connectionsRejected.WithLabelValues(c.reason)); got != 3 {
			t.Errorf("%s: rejected (%s) = %v, want 3", c.name, c.reason, got)
		}
	}
	select {
	case st := <-h.statuses:
		t.Errorf("status callback for a refused connection: %+v", st)
	default:
	}

	// The right token gets in, over both protocol versions.
	for _, v := range []byte{4, 5} {
		if code := rawConnect(t, addr, v, "agent-a", tokens["agent-a"]); code != 0 {
			t.Errorf("valid token over protocol %d: CONNACK code %#x, want 0", v, code)
		}
	}
}

func TestServer_StoreAuthForgetsRevokedToken(t *testing.T) {
	t.Parallel()
	h, tokens := newAuthHarness(t, "agent-a")
	auth := h.server.cfg.Authenticator.(*StoreAuthenticator)
	if err := auth.Authenticate("agent-a", []byte(tokens["agent-a"])); err != nil {
		t.Fatalf("valid token: %v", err)
	}
	if err := h.store.RevokeAgentCredential(context.Background(), "agent-a"); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	// Within the cache TTL the verified token is still accepted...
	if err := auth.Authenticate("agent-a", []byte(tokens["agent-a"])); err != nil {
		t.Errorf("cached token refused before its TTL: %v", err)
	}
	// ...but never a different one, and not after Forget.
	if err := auth.Authenticate("agent-a", []byte("other")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("other token = %v, want ErrNotFound", err)
	}
	auth.Forget("agent-a")
	if err := auth.Authenticate("agent-a", []byte(tokens["agent-a"])); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoked token after Forget = %v, want ErrNotFound", err)
	}
}

// connectAs connects agentID with token and subscribes to its ack topic.
func connectAs(t *testing.T, h *harness, agentID, token string) *agent {
	t.Helper()
	a, err := dialAgent(t, h.server.Addr(), agentID, token)
	if err != nil {
		t.Fatalf("connect %s: %v", agentID, err)
	}
	tok := a.client.Subscribe(protocol.AckTopic(agentID), 1, func(_ paho.Client, m paho.Message) {
		if ack, err := protocol.DecodeAck(m.Payload()); err == nil {
			a.acks <- ack
		}
	})
	if !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		t.Fatalf("subscribe %s to its ack topic: %v", agentID, tok.Error())
	}
	return a
}

func TestServer_AgentCannotPoseAsAnother(t *testing.T) {
	t.Parallel()
	h, tokens := newAuthHarness(t, "agent-a", "agent-b")
	victim := connectAs(t, h, "agent-b", tokens["agent-b"])
	b := storetest.FixBatch(1, 3, "veh-b")
	b.AgentID = "agent-b"
	victim.publishBatch(t, b)
	if ack := victim.nextAck(t); ack.Through != 3 || ack.Error != "" {
		t.Fatalf("victim's own batch: Ack %+v, want through 3", ack)
	}
	cursor := func() uint64 {
		seq, err := h.store.Cursor(context.Background(), "agent-b", b.SpoolID, protocol.LaneGPS)
		if err != nil {
			t.Fatalf("cursor: %v", err)
		}
		return seq
	}

	// A batch naming agent-b on agent-a's own topic: permanent error Ack.
	impostor := connectAs(t, h, "agent-a", tokens["agent-a"])
	forged := storetest.FixBatch(4, 50, "veh-b")
	forged.AgentID, forged.Prev = "agent-b", 3
	impostor.publishBatch(t, forged)
	if ack := impostor.nextAck(t); !ack.Permanent || ack.AgentID != "agent-a" {
		t.Errorf("forged batch: Ack %+v, want a permanent error for agent-a", ack)
	}
	if got := testutil.ToFloat64(h.server.metrics.batchesRejected.WithLabelValues(reasonAgentMismatch)); got != 1 {
		t.Errorf("rejected (agent_mismatch) = %v, want 1", got)
	}

	// The same batch on agent-b's topic: the ACL refuses and disconnects.
	payload, err := protocol.EncodeBatch(forged)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	impostor.client.Publish(protocol.BatchTopic("agent-b"), 1, false, payload)
	select {
	case <-impostor.lost:
	case <-time.After(waitTimeout):
		t.Fatal("agent publishing to another agent's batch topic was not disconnected")
	}
	if got := testutil.ToFloat64(h.server.metrics.aclDenied.WithLabelValues("publish")); got != 1 {
		t.Errorf("acl denied (publish) = %v, want 1", got)
	}

	// Agent-a's credentials cannot log in as agent-b either.
	if _, err := dialAgent(t, h.server.Addr(), "agent-b", tokens["agent-a"]); err == nil {
		t.Error("agent-a's token opened a connection as agent-b")
	}
	if seq := cursor(); seq != 3 {
		t.Errorf("victim's cursor = %d after the forgeries, want 3", seq)
	}
	if n := h.fixCount(t, "veh-b"); n != 3 {
		t.Errorf("%d fixes of veh-b stored, want the victim's 3", n)
	}
}

func TestServer_SameClientIDTakesOverSession(t *testing.T) {
	t.Parallel()
	h, tokens := newAuthHarness(t, "agent-a")
	dial := func() (paho.Client, chan error) {
		lost := make(chan error, 1)
		c := paho.NewClient(paho.NewClientOptions().
			AddBroker("tcp://" + h.server.Addr().String()).
			SetClientID("agent-a"). // the uplink's client id is its agent id
			SetUsername("agent-a").
			SetPassword(tokens["agent-a"]).
			SetProtocolVersion(4).
			SetCleanSession(true).
			SetAutoReconnect(false).
			SetConnectTimeout(waitTimeout).
			SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err }))
		tok := c.Connect()
		if !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
			t.Fatalf("connect agent-a: %v", tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(100) })
		return c, lost
	}
	_, firstLost := dial()
	if st := h.nextStatus(t); st != (agentStatus{"agent-a", true}) {
		t.Fatalf("status %+v, want agent-a connected", st)
	}
	second, _ := dial()
	select {
	case <-firstLost:
	case <-time.After(waitTimeout):
		t.Fatal("the first connection was not disconnected by the takeover")
	}
	if !second.IsConnectionOpen() {
		t.Error("the second connection is not open after taking over")
	}
	if got := testutil.ToFloat64(h.server.metrics.sessionTakeovers); got != 1 {
		t.Errorf("session takeovers = %v, want 1", got)
	}
	// The agent stays online through the takeover.
	select {
	case st := <-h.statuses:
		t.Errorf("status callback during a takeover: %+v", st)
	default:
	}
}

// One agent's token must not let it take over another agent's session by
// its client id, which would knock the other agent's uplink off.
func TestServer_AgentCannotUseAnotherAgentsClientID(t *testing.T) {
	t.Parallel()
	h, tokens := newAuthHarness(t, "agent-a", "agent-b")
	victim := connectAs(t, h, "agent-b", tokens["agent-b"])

	for _, clientID := range []string{"agent-b", protocol.SOSLinkClientID("agent-b"), "anything-else"} {
		if _, err := dialAgentAs(t, h.server.Addr(), "agent-a", clientID, tokens["agent-a"]); err == nil {
			t.Errorf("agent-a connected with client id %q, want refused", clientID)
		}
	}
	if got := testutil.ToFloat64(h.server.metrics.connectionsRejected.WithLabelValues(reasonClientID)); got != 3 {
		t.Errorf("connections rejected for their client id = %v, want 3", got)
	}
	if !victim.client.IsConnectionOpen() {
		t.Error("agent-b's connection was closed by another agent's attempts")
	}
	for _, clientID := range []string{"agent-a", protocol.SOSLinkClientID("agent-a")} {
		if _, err := dialAgentAs(t, h.server.Addr(), "agent-a", clientID, tokens["agent-a"]); err != nil {
			t.Errorf("agent-a with its own client id %q: %v", clientID, err)
		}
	}
}
