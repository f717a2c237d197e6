package uplink_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xpress-ops/tower/agent/internal/hubtest"
	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/hub/ingest"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/protocol"
)

func TestUplink_RefusedSubscriptionRetriedAndReported(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	operators := protocol.AgentOperatorsTopic(agentID)
	var refused atomic.Int64
	hub.SetRefuseSubscriptions(func(filter string) bool {
		if filter != operators {
			return false
		}
		refused.Add(1)
		return true
	})
	u, reg := startUplink(t, openSpool(t), hub.URL(), func(c *uplink.Config) {
		c.OnOperators = func(string, []byte) {}
	})

	eventually(t, "two refused subscriptions of the operator list", func() bool {
		return metricValue(t, reg, "xpress_agent_uplink_subscriptions_refused_total", map[string]string{"link": "main"}) >= 2
	})
	if refused.Load() < 2 {
		t.Errorf("the hub saw %d subscriptions to %s, want the link to retry", refused.Load(), operators)
	}
	if !u.SubscriptionsRefused() {
		t.Error("SubscriptionsRefused is false while the hub refuses a subscription")
	}
	if u.State() == uplink.StateConnected {
		t.Error("uplink reports connected while the hub refuses the main link's subscription")
	}

	hub.SetRefuseSubscriptions(nil)
	eventually(t, "the uplink connected after the hub accepted the subscription", func() bool {
		return u.State() == uplink.StateConnected
	})
	if u.SubscriptionsRefused() {
		t.Error("SubscriptionsRefused is still true after the hub accepted every subscription")
	}
}

// hubMessages collects the messages one of the uplink's callbacks got.
type hubMessages struct {
	mu   sync.Mutex
	msgs map[string]string
}

func (m *hubMessages) add(topic string, payload []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.msgs == nil {
		m.msgs = map[string]string{}
	}
	m.msgs[topic] = string(payload)
}

func (m *hubMessages) get(topic string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.msgs[topic]
}

// TestUplink_SubscriptionsSurviveHubRestart restarts
// the hub's real ingest while SOS states, vehicle credentials and the
// operator list are retained for the agent, and checks that a credential
// changed after the restart reaches the agent.
func TestUplink_SubscriptionsSurviveHubRestart(t *testing.T) {
	st := embedded.New(embedded.Config{Path: filepath.Join(t.TempDir(), "hub.db")})
	if err := st.Open(context.Background()); err != nil {
		t.Fatalf("open hub store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	auth := &gateAuth{token: "agent-token"}
	startHub := func(addr string) *ingest.Server {
		srv := ingest.New(ingest.Config{Addr: addr, Store: st, Authenticator: auth})
		if err := srv.Open(); err != nil {
			t.Fatalf("open ingest on %s: %v", addr, err)
		}
		t.Cleanup(func() { srv.Close() })
		return srv
	}
	// publishRetained publishes what a starting hub retains for its
	// agents: the open SOS states, every vehicle credential and the
	// agent's operator list.
	publishRetained := func(srv *ingest.Server) {
		t.Helper()
		for i := range 5 {
			topic := protocol.SOSStateUpdateTopic(agentID, "taxi-1", fmt.Sprintf("sos-%d", i))
			if err := srv.Publish(topic, []byte(`{"state":"acknowledged"}`), true); err != nil {
				t.Fatal(err)
			}
		}
		if err := srv.Publish(protocol.VehicleCredentialTopic("taxi-1"), []byte(`{"version":1}`), true); err != nil {
			t.Fatal(err)
		}
		if err := srv.Publish(protocol.AgentOperatorsTopic(agentID), []byte(`{"operators":[]}`), true); err != nil {
			t.Fatal(err)
		}
	}

	hub := startHub("127.0.0.1:0")
	addr := hub.Addr().String()
	var credentials, operators hubMessages
	var up atomic.Pointer[uplink.Uplink]
	u, _ := startUplink(t, openSpool(t), "tcp://"+addr, func(c *uplink.Config) {
		c.Password = "agent-token"
		// The agent stores each state before paho acknowledges it, so the
		// hub's deliveries stay in flight meanwhile. The handler holds
		// them in flight until the connection is up, the widest window a
		// slow disk gives, and at most 3 s, so that a connection whose
		// SUBACK waits behind this handler still comes up.
		c.OnSOSState = func(string, []byte) {
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) {
				if u := up.Load(); u != nil && u.State() == uplink.StateConnected {
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		c.OnVehicleCredential = credentials.add
		c.OnOperators = operators.add
	})
	up.Store(u)
	eventually(t, "the uplink connected", func() bool { return u.State() == uplink.StateConnected })
	publishRetained(hub)
	eventually(t, "the retained credential", func() bool { return credentials.get(protocol.VehicleCredentialTopic("taxi-1")) != "" })

	// Restart the hub with the messages retained before the agent is back.
	if err := hub.Close(); err != nil {
		t.Fatalf("close ingest: %v", err)
	}
	eventually(t, "the uplink to notice the outage", func() bool { return u.State() == uplink.StateDisconnected })
	restarted := startHub(addr)
	publishRetained(restarted)
	eventually(t, "the uplink reconnected", func() bool { return u.State() == uplink.StateConnected })

	// A credential change made after the restart reaches the agent.
	changed := protocol.VehicleCredentialTopic("taxi-2")
	if err := restarted.Publish(changed, []byte(`{"version":2}`), true); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the credential changed after the restart", func() bool { return credentials.get(changed) == `{"version":2}` })
	if u.SubscriptionsRefused() {
		t.Error("SubscriptionsRefused is true after every subscription was granted")
	}
	if operators.get(protocol.AgentOperatorsTopic(agentID)) == "" {
		t.Error("the retained operator list did not reach the agent")
	}
}
