// Package retainguard closes a data race in mochi-mqtt v2.7.9 between
// retained publishes and new subscriptions; see Guard.
package retainguard

import (
	"bytes"
	"fmt"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Guard is a mochi hook that orders retained publishes made through
// Publish with the retained-message scan of a client's SUBSCRIBE.
//
// mochi v2.7.9 sends the retained messages that match a new subscription
// by walking its topic tree (TopicsIndex.scanMessages). When the filter
// has a wildcard, the walk reads each node's retainPath field without the
// node's lock. TopicsIndex.RetainMessage writes that field under the lock
// when a retained message is published or cleared, so the two race.
//
// Server.processSubscribe in mochi v2.7.9 runs, on the client's goroutine:
// the OnSubscribe hook, the ACL checks, OnSubscribed, the SUBACK write,
// the retained-message scan (which only queues the messages for the
// client's writer goroutine), and then returns to processPacket, which
// always calls OnPacketProcessed. A SUBSCRIBE that fails validation skips
// all of it. The guard therefore takes a read lock in OnPacketSent for
// the SUBACK and releases it in OnPacketProcessed for the SUBSCRIBE:
// the lock covers the scan but not the SUBACK write, which can block on
// a client that reads nothing. Publish takes the write lock around a
// retained publish.
//
// Only retained publishes made through Publish are ordered. A retained
// publish from a client (a vehicle's retained status) or a will message
// still writes retainPath without the guard; those topics are outside the
// filters our brokers' ACLs let other clients subscribe to.
type Guard struct {
	mqtt.HookBase

	mu sync.RWMutex
	// scanning holds the clients whose SUBSCRIBE holds a read lock of mu,
	// from its SUBACK to the end of its processing.
	scanning sync.Map
}

// New returns a guard. Add it to the server with AddHook before Serve.
func New() *Guard { return &Guard{} }

// ID names the hook in mochi's logs.
func (g *Guard) ID() string { return "xpress-retain-guard" }

// Provides reports which mochi events the hook handles.
func (g *Guard) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPacketSent, mqtt.OnPacketProcessed}, []byte{b})
}

// OnPacketSent takes the read lock once a SUBACK is written, before mochi
// scans for the subscription's retained messages.
func (g *Guard) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type != packets.Suback {
		return
	}
	g.mu.RLock()
	if _, held := g.scanning.LoadOrStore(cl, struct{}{}); held {
		// processPacket handles one packet of a client at a time, so a
		// second SUBACK before OnPacketProcessed cannot happen. Keep one
		// read lock per client regardless.
		g.mu.RUnlock()
	}
}

// OnPacketProcessed releases the read lock of a SUBSCRIBE whose SUBACK
// was written.
func (g *Guard) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, _ error) {
	if pk.FixedHeader.Type != packets.Subscribe {
		return
	}
	if _, held := g.scanning.LoadAndDelete(cl); held {
		g.mu.RUnlock()
	}
}

// Publish sends payload on topic through server's inline client with
// qos, as mqtt.Server.Publish does. A retained publish waits until no
// subscription is scanning retained messages, and new scans wait for it.
func (g *Guard) Publish(server *mqtt.Server, topic string, payload []byte, retain bool, qos byte) error {
	if retain {
		g.mu.Lock()
		defer g.mu.Unlock()
	}
	if err := server.Publish(topic, payload, retain, qos); err != nil {
		return fmt.Errorf("publish to %s: %w", topic, err)
	}
	return nil
}
