package sim

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.uber.org/goleak"

	"github.com/xpress-ops/tower/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testBroker is a real mochi broker on a free loopback port.
type testBroker struct {
	server *mochi.Server
	url    string
}

// startBroker starts a broker with the given hooks, or one that allows
// everything when none are given, and closes it on cleanup.
func startBroker(t testing.TB, hooks ...mochi.Hook) *testBroker {
	t.Helper()
	server := mochi.New(&mochi.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if len(hooks) == 0 {
		hooks = []mochi.Hook{new(auth.AllowHook)}
	}
	for _, h := range hooks {
		if err := server.AddHook(h, nil); err != nil {
			t.Fatalf("add hook %s: %v", h.ID(), err)
		}
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "vehicles", Address: "127.0.0.1:0"})
	if err := server.AddListener(tcp); err != nil {
		t.Fatalf("listen: %v", err)
	}
	if err := server.Serve(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() { _ = server.Close() })
	return &testBroker{server: server, url: "tcp://" + tcp.Address()}
}

// dropClient closes a client's connection from the broker side, as a
// network failure would.
func (b *testBroker) dropClient(t *testing.T, id string) {
	t.Helper()
	cl, ok := b.server.Clients.Get(id)
	if !ok {
		t.Fatalf("client %s is not connected to the broker", id)
	}
	cl.Stop(io.ErrUnexpectedEOF)
}

// passwordHook accepts one password for every user and allows every topic.
type passwordHook struct {
	mochi.HookBase
	password string
}

func (h *passwordHook) ID() string { return "password" }

func (h *passwordHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (h *passwordHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	return string(pk.Connect.Password) == h.password && string(pk.Connect.Username) == cl.ID
}

func (h *passwordHook) OnACLCheck(*mochi.Client, string, bool) bool { return true }

// silentHook swallows fix messages of one client without a PUBACK, like a
// broker whose storage stalls.
type silentHook struct {
	mochi.HookBase
	client string
}

func (h *silentHook) ID() string { return "silent" }

func (h *silentHook) Provides(b byte) bool { return b == mochi.OnPublish }

func (h *silentHook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.ID == h.client && strings.HasSuffix(pk.TopicName, "/fix") {
		return pk, packets.ErrRejectPacket
	}
	return pk, nil
}

// received is one message a subscriber got.
type received struct {
	topic    string
	vehicle  string
	kind     protocol.TopicKind
	payload  []byte
	retained bool
}

// subscriber records every message under the vehicle prefix.
type subscriber struct {
	mu   sync.Mutex
	msgs []received
}

// subscribe connects a paho client that records everything published
// under xpress/v1/vehicles/, and disconnects it on cleanup.
func subscribe(t *testing.T, brokerURL, clientID string) *subscriber {
	t.Helper()
	s := &subscriber{}
	opts := mqtt.NewClientOptions().AddBroker(brokerURL).SetClientID(clientID).SetAutoReconnect(false)
	client := mqtt.NewClient(opts)
	if tok := client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	t.Cleanup(func() { client.Disconnect(250) })

	tok := client.Subscribe(protocol.VehiclePrefix+"#", 1, func(_ mqtt.Client, m mqtt.Message) {
		vt, err := protocol.ParseVehicleTopic(m.Topic())
		if err != nil {
			t.Errorf("message on unexpected topic %q: %v", m.Topic(), err)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.msgs = append(s.msgs, received{
			topic: m.Topic(), vehicle: vt.VehicleID, kind: vt.Kind,
			payload: bytes.Clone(m.Payload()), retained: m.Retained(),
		})
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return s
}

// of returns the messages of one kind, optionally of one vehicle, in arrival order.
func (s *subscriber) of(kind protocol.TopicKind, vehicle string) []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []received
	for _, m := range s.msgs {
		if m.kind == kind && (vehicle == "" || m.vehicle == vehicle) {
			out = append(out, m)
		}
	}
	return out
}

// fixesAfterStatus counts the fix messages of a vehicle that arrived
// after its status message number n (from 0).
func (s *subscriber) fixesAfterStatus(vehicle string, n int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	statuses, fixes := 0, 0
	for _, m := range s.msgs {
		if m.vehicle != vehicle {
			continue
		}
		switch {
		case m.kind == protocol.TopicStatus:
			statuses++
		case m.kind == protocol.TopicFix && statuses > n:
			fixes++
		}
	}
	return fixes
}

// fixes decodes every fix message of a vehicle (all vehicles if empty)
// with the device contract's decoder, failing the test on an invalid one.
func (s *subscriber) fixes(t *testing.T, vehicle string) []protocol.Fix {
	t.Helper()
	var out []protocol.Fix
	for _, m := range s.of(protocol.TopicFix, vehicle) {
		fixes, err := protocol.DecodeFixes(m.payload, protocol.Limits{})
		if err != nil {
			t.Fatalf("invalid fix payload on %s: %v\n%s", m.topic, err, m.payload)
		}
		out = append(out, fixes...)
	}
	return out
}

// statuses decodes the status messages of one vehicle in arrival order.
func (s *subscriber) statuses(t *testing.T, vehicle string) []bool {
	t.Helper()
	var out []bool
	for _, m := range s.of(protocol.TopicStatus, vehicle) {
		st, err := protocol.DecodeStatus(m.payload)
		if err != nil {
			t.Fatalf("invalid status payload on %s: %v", m.topic, err)
		}
		out = append(out, st.Online)
	}
	return out
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// closedPortURL returns a broker URL on a loopback port nothing listens on.
func closedPortURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return "tcp://" + addr
}
