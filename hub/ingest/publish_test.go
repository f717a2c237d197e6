package ingest

import (
	"errors"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/xpress-ops/tower/protocol"
)

// received is one message an agent's test client received.
type received struct {
	topic    string
	payload  string
	retained bool
}

// subscribeAll subscribes a to filter with QoS 1, sends what arrives to
// out and returns the granted code.
func (a *agent) subscribeAll(t *testing.T, filter string, out chan<- received) byte {
	t.Helper()
	tok := a.client.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		out <- received{topic: m.Topic(), payload: string(m.Payload()), retained: m.Retained()}
	})
	if !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		t.Fatalf("subscribe to %s: %v", filter, tok.Error())
	}
	return tok.(*paho.SubscribeToken).Result()[filter]
}

func nextMessage(t *testing.T, ch <-chan received) received {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(waitTimeout):
		t.Fatalf("no message within %s", waitTimeout)
		return received{}
	}
}

func TestServer_PublishRetainedReachesOwnAgentOnly(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	topic := protocol.SOSStateUpdateTopic("agent-a", "veh-1", "sos-1")
	if err := h.server.Publish(topic, []byte(`{"state":"acknowledged"}`), true); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	// An agent that connects later gets the retained message.
	a := connectAgent(t, h, "agent-a")
	msgs := make(chan received, 16)
	if code := a.subscribeAll(t, protocol.SOSStateUpdateFilter("agent-a"), msgs); code != 1 {
		t.Fatalf("subscription to own SOS state filter granted code %#x, want QoS 1", code)
	}
	got := nextMessage(t, msgs)
	if got.topic != topic || got.payload != `{"state":"acknowledged"}` || !got.retained {
		t.Errorf("received %+v, want the retained message on %s", got, topic)
	}

	// A live publish reaches the subscribed agent.
	if err := h.server.Publish(topic, []byte(`{"state":"dispatched"}`), true); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if got := nextMessage(t, msgs); got.payload != `{"state":"dispatched"}` {
		t.Errorf("received %+v, want the dispatched message", got)
	}

	// Another agent may not subscribe to agent-a's states.
	b := connectAgent(t, h, "agent-b")
	if code := b.subscribeAll(t, protocol.SOSStateUpdateFilter("agent-a"), make(chan received, 1)); code != 0x80 {
		t.Errorf("agent-b's subscription to agent-a's SOS states granted code %#x, want failure 0x80", code)
	}
}

func TestServer_PublishEmptyRetainedClears(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	cleared := protocol.SOSStateUpdateTopic("agent-a", "veh-1", "sos-1")
	marker := protocol.SOSStateUpdateTopic("agent-a", "veh-1", "marker")
	for _, p := range []struct {
		topic, payload string
	}{{cleared, `{"state":"resolved"}`}, {cleared, ""}, {marker, "marker"}} {
		if err := h.server.Publish(p.topic, []byte(p.payload), true); err != nil {
			t.Fatalf("Publish %q to %s: %v", p.payload, p.topic, err)
		}
	}

	// The broker queues a subscription's retained messages before it reads
	// the next SUBSCRIBE, so once the marker arrives, a message retained on
	// the cleared topic would have arrived before it.
	a := connectAgent(t, h, "agent-a")
	msgs := make(chan received, 16)
	a.subscribeAll(t, cleared, msgs)
	a.subscribeAll(t, marker, msgs)
	if got := nextMessage(t, msgs); got.topic != marker {
		t.Errorf("first message %+v, want only the marker: the cleared topic kept a retained message", got)
	}
}

func TestServer_PublishWhenNotOpen(t *testing.T) {
	t.Parallel()
	s := New(Config{Addr: "127.0.0.1:0"})
	if err := s.Publish("xpress/v1/agents/a/sos-state/v/s", []byte("x"), true); !errors.Is(err, ErrNotOpen) {
		t.Errorf("Publish before Open: error = %v, want ErrNotOpen", err)
	}
	h := newHarness(t, nil)
	if err := h.server.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.server.Publish("xpress/v1/agents/a/sos-state/v/s", []byte("x"), true); !errors.Is(err, ErrNotOpen) {
		t.Errorf("Publish after Close: error = %v, want ErrNotOpen", err)
	}
}
