package uplink_test

import (
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/agent/internal/hubtest"
	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/protocol"
)

// stateMessages collects what the uplink hands to Config.OnSOSState.
type stateMessages struct {
	mu   sync.Mutex
	msgs []stateMessage
}

type stateMessage struct {
	topic, payload string
}

func (s *stateMessages) add(topic string, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, stateMessage{topic, string(payload)})
}

func (s *stateMessages) list() []stateMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]stateMessage(nil), s.msgs...)
}

func TestUplink_SOSStatesReachCallback(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	retained := protocol.SOSStateUpdateTopic(agentID, "taxi-1", "sos-1")
	if err := hub.Publish(retained, []byte(`{"state":"acknowledged"}`), true); err != nil {
		t.Fatal(err)
	}
	// Another agent's state must not reach this one.
	if err := hub.Publish(protocol.SOSStateUpdateTopic("agent-other", "taxi-9", "sos-9"), []byte(`{"state":"received"}`), true); err != nil {
		t.Fatal(err)
	}

	var got stateMessages
	u, _ := startUplink(t, openSpool(t), hub.URL(), func(c *uplink.Config) { c.OnSOSState = got.add })

	// The state retained before the agent connected arrives on subscribe.
	eventually(t, "the retained SOS state", func() bool { return len(got.list()) >= 1 })
	if first := got.list()[0]; first.topic != retained || first.payload != `{"state":"acknowledged"}` {
		t.Errorf("first message = %+v, want the retained state on %s", first, retained)
	}
	if u.State() != uplink.StateConnected {
		t.Errorf("uplink state = %s, want connected", u.State())
	}

	live := protocol.SOSStateUpdateTopic(agentID, "taxi-2", "sos-2")
	if err := hub.Publish(live, []byte(`{"state":"dispatched"}`), false); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the live SOS state", func() bool { return len(got.list()) >= 2 })
	msgs := got.list()
	if msgs[1].topic != live {
		t.Errorf("second message on %s, want %s", msgs[1].topic, live)
	}
	for _, m := range msgs {
		if m.topic == protocol.SOSStateUpdateTopic("agent-other", "taxi-9", "sos-9") {
			t.Errorf("received another agent's state: %+v", m)
		}
	}
}

func TestUplink_StateSinceFollowsConnection(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	before := time.Now()
	u, _ := startUplink(t, openSpool(t), hub.URL(), nil)
	if since := u.StateSince(); since.Before(before) || since.After(time.Now()) {
		t.Errorf("StateSince after Open = %v, want between %v and now", since, before)
	}
	eventually(t, "the connection", func() bool { return u.State() == uplink.StateConnected })
	connectedSince := u.StateSince()
	if connectedSince.Before(before) {
		t.Errorf("StateSince when connected = %v, want the time of the connect, after %v", connectedSince, before)
	}

	hub.Close()
	eventually(t, "the disconnect", func() bool { return u.State() == uplink.StateDisconnected })
	if since := u.StateSince(); since.Before(connectedSince) {
		t.Errorf("StateSince when disconnected = %v, want the disconnect, after the connect at %v", since, connectedSince)
	}
}
