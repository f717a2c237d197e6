package uplink_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/hub/ingest"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/protocol"
)

// The uplink hands OnOperators the agent's own retained operator list,
// at connect and on each change, and never another agent's.
func TestUplink_ReceivesOwnOperatorList(t *testing.T) {
	t.Parallel()
	st := embedded.New(embedded.Config{Path: filepath.Join(t.TempDir(), "hub.db")})
	if err := st.Open(context.Background()); err != nil {
		t.Fatalf("open hub store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	srv := ingest.New(ingest.Config{Addr: "127.0.0.1:0", Store: st})
	if err := srv.Open(); err != nil {
		t.Fatalf("open ingest: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	for _, id := range []string{agentID, "agent-cebu"} {
		if err := srv.Publish(protocol.AgentOperatorsTopic(id), []byte(`{"agent":"`+id+`","operators":[]}`), true); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	var got []string
	startUplink(t, openSpool(t), "tcp://"+srv.Addr().String(), func(c *uplink.Config) {
		c.OnOperators = func(topic string, payload []byte) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, topic+" "+string(payload))
		}
	})
	own := protocol.AgentOperatorsTopic(agentID)
	eventually(t, "the retained list", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 1
	})
	update := `{"agent":"` + agentID + `","operators":[{"username":"ana"}]}`
	if err := srv.Publish(own, []byte(update), true); err != nil {
		t.Fatal(err)
	}
	if err := srv.Publish(protocol.AgentOperatorsTopic("agent-cebu"), []byte(`{}`), true); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the changed list", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 2
	})
	mu.Lock()
	defer mu.Unlock()
	if got[0] != own+` {"agent":"`+agentID+`","operators":[]}` || got[1] != own+" "+update {
		t.Errorf("OnOperators got %q, want the agent's own list and its change only", got)
	}
}
