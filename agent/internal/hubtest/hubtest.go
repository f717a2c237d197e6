// Package hubtest is a stand-in for the hub's MQTT ingest in the agent's
// tests: a mochi broker on a loopback port whose hook decodes the agent's
// batches, commits records past a per-lane cursor in memory, and
// publishes Acks through mochi's inline client. The hub's real ingest
// lives under hub/; this double is a seam the agent's tests own.
package hubtest

import (
	"bytes"
	"log/slog"
	"net"
	"sync"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/xpress-ops/tower/internal/mqttlistener"
	"github.com/xpress-ops/tower/internal/retainguard"
	"github.com/xpress-ops/tower/protocol"
)

// Hub is a test hub. By default it commits every batch and acknowledges
// it; SetRespond changes the Acks it sends.
type Hub struct {
	t      testing.TB
	server *mqtt.Server
	// guard orders retained publishes with the agents' subscribes, as in
	// the hub's ingest.
	guard *retainguard.Guard
	// Addr is the host:port the hub listens on.
	Addr string

	mu      sync.Mutex
	batches []protocol.Batch
	// clients holds the client id each of batches came from.
	clients   []string
	committed map[protocol.Lane][]protocol.Record
	cursor    map[protocol.Lane]uint64
	respond   func(h *Hub, b *protocol.Batch) []protocol.Ack
	// refuse decides which subscriptions the hub refuses; nil refuses none.
	refuse func(filter string) bool

	closeOnce sync.Once
}

// Start starts a test hub on addr ("127.0.0.1:0" for a free port) and
// stops it on cleanup.
func Start(t testing.TB, addr string) *Hub {
	t.Helper()
	h := &Hub{
		t:         t,
		committed: map[protocol.Lane][]protocol.Record{},
		cursor:    map[protocol.Lane]uint64{},
	}
	h.server = mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := h.server.AddHook(&hubHook{hub: h}, nil); err != nil {
		t.Fatal(err)
	}
	h.guard = retainguard.New()
	if err := h.server.AddHook(h.guard, nil); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("test hub listen on %s: %v", addr, err)
	}
	if err := h.server.AddListener(mqttlistener.New("agents", ln, h.server, slog.New(slog.DiscardHandler))); err != nil {
		t.Fatal(err)
	}
	if err := h.server.Serve(); err != nil {
		t.Fatal(err)
	}
	h.Addr = ln.Addr().String()
	t.Cleanup(h.Close)
	return h
}

// Close stops the hub; it is safe to call more than once.
func (h *Hub) Close() {
	h.closeOnce.Do(func() { _ = h.server.Close() })
}

// Publish sends payload on topic to the connected agents with QoS 1, as
// the hub sends SOS states, and retains it when retain is set.
func (h *Hub) Publish(topic string, payload []byte, retain bool) error {
	return h.guard.Publish(h.server, topic, payload, retain, 1)
}

// URL returns the hub's address as an MQTT URL.
func (h *Hub) URL() string { return "tcp://" + h.Addr }

// SetRespond makes f decide the Acks for each batch; nil restores the
// default (Commit and acknowledge). f runs on the agent connection's
// goroutine in the hub, without the hub's lock.
func (h *Hub) SetRespond(f func(h *Hub, b *protocol.Batch) []protocol.Ack) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.respond = f
}

// SetRefuseSubscriptions makes the hub refuse every subscription to a
// filter for which refuse returns true: the SUBACK carries 0x80 for it.
// nil accepts every subscription again.
func (h *Hub) SetRefuseSubscriptions(refuse func(filter string) bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.refuse = refuse
}

// Commit stores the batch's records past the lane cursor, as the real
// hub's store does, and returns the success Ack.
func (h *Hub) Commit(b *protocol.Batch) protocol.Ack {
	h.mu.Lock()
	defer h.mu.Unlock()
	if b.Prev > h.cursor[b.Lane] {
		// As the real hub: the batch before this one was not committed.
		return protocol.Ack{AgentID: b.AgentID, SpoolID: b.SpoolID, Lane: b.Lane, Through: h.cursor[b.Lane],
			Error: "previous batch not committed"}
	}
	for _, r := range b.Records {
		if r.Seq > h.cursor[b.Lane] {
			h.committed[b.Lane] = append(h.committed[b.Lane], r)
			h.cursor[b.Lane] = r.Seq
		}
	}
	return protocol.Ack{AgentID: b.AgentID, SpoolID: b.SpoolID, Lane: b.Lane, Through: h.cursor[b.Lane]}
}

// Received returns a copy of every batch received so far, in order.
func (h *Hub) Received() []protocol.Batch {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]protocol.Batch(nil), h.batches...)
}

// ReceivedOn returns the batches received so far from the MQTT client
// clientID, in order.
func (h *Hub) ReceivedOn(clientID string) []protocol.Batch {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []protocol.Batch
	for i, b := range h.batches {
		if h.clients[i] == clientID {
			out = append(out, b)
		}
	}
	return out
}

// Committed returns a copy of the lane's committed records.
func (h *Hub) Committed(lane protocol.Lane) []protocol.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]protocol.Record(nil), h.committed[lane]...)
}

// handleBatch commits or rejects a batch that the client clientID sent.
// As the hub's ingest, it acknowledges batches of an agent's SOS link on
// protocol.SOSAckTopic and others on protocol.AckTopic.
func (h *Hub) handleBatch(clientID string, payload []byte) {
	b, err := protocol.DecodeBatch(payload)
	if err != nil {
		h.t.Errorf("test hub got an invalid batch: %v", err)
		return
	}
	h.mu.Lock()
	h.batches = append(h.batches, *b)
	h.clients = append(h.clients, clientID)
	respond := h.respond
	h.mu.Unlock()

	var acks []protocol.Ack
	if respond == nil {
		acks = []protocol.Ack{h.Commit(b)}
	} else {
		acks = respond(h, b)
	}
	for _, ack := range acks {
		data, err := protocol.EncodeAck(&ack)
		if err != nil {
			h.t.Errorf("encode ack: %v", err)
			return
		}
		topic := protocol.AckTopic(b.AgentID)
		if clientID == protocol.SOSLinkClientID(b.AgentID) {
			topic = protocol.SOSAckTopic(b.AgentID)
		}
		if err := h.server.Publish(topic, data, false, 1); err != nil {
			h.t.Errorf("publish ack: %v", err)
		}
	}
}

// hubHook accepts every client and hands batch publishes to the hub.
type hubHook struct {
	mqtt.HookBase
	hub *Hub
}

func (k *hubHook) ID() string { return "test-hub" }

func (k *hubHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish}, []byte{b})
}

func (k *hubHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

// OnACLCheck accepts everything but the subscriptions SetRefuseSubscriptions
// names. mochi also calls it with write false before delivering a message,
// with the topic in place of the filter.
func (k *hubHook) OnACLCheck(_ *mqtt.Client, topic string, write bool) bool {
	if write {
		return true
	}
	k.hub.mu.Lock()
	refuse := k.hub.refuse
	k.hub.mu.Unlock()
	return refuse == nil || !refuse(topic)
}

func (k *hubHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if _, err := protocol.ParseBatchTopic(pk.TopicName); err == nil && !cl.Net.Inline {
		k.hub.handleBatch(cl.ID, pk.Payload)
	}
	return pk, nil
}

// Cursor returns the last committed sequence number of lane.
func (h *Hub) Cursor(lane protocol.Lane) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cursor[lane]
}
