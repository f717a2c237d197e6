package agent_test

import (
	"encoding/json"
	"testing"

	"github.com/xpress-ops/tower/agent/internal/hubtest"
	"github.com/xpress-ops/tower/protocol"
)

// A hub that refuses one of the uplink's subscriptions shows in /readyz
// until it grants it.
func TestAgent_ReadyzShowsRefusedSubscriptions(t *testing.T) {
	t.Parallel()
	hub := hubtest.Start(t, "127.0.0.1:0")
	ackTopic := protocol.AckTopic("agent-test")
	hub.SetRefuseSubscriptions(func(filter string) bool { return filter == ackTopic })
	a := openAgent(t, testConfig(t, hub.URL(), t.TempDir()))

	var body struct {
		Ready            bool   `json:"ready"`
		Uplink           string `json:"uplink"`
		HubSubscriptions string `json:"hub_subscriptions"`
	}
	readyz := func() {
		_, raw := get(t, a, "/readyz")
		body.HubSubscriptions = ""
		if err := json.Unmarshal(raw, &body); err != nil {
			t.Fatalf("decode /readyz: %v", err)
		}
	}
	eventually(t, "/readyz reporting refused hub subscriptions", func() bool {
		readyz()
		return body.HubSubscriptions == "refused"
	})
	if body.Uplink != "disconnected" {
		t.Errorf("/readyz = %+v, want the uplink disconnected while a subscription is refused", body)
	}

	hub.SetRefuseSubscriptions(nil)
	eventually(t, "/readyz without refused hub subscriptions", func() bool {
		readyz()
		return body.HubSubscriptions == "" && body.Uplink == "connected"
	})
}
