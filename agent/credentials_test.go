package agent_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/xpress-ops/tower/hub/ingest"
	"github.com/xpress-ops/tower/hub/store/embedded"
)

// A hub that refuses the agent's token shows in /readyz, which stays
// ready because vehicles are still served, and in the metrics.
func TestAgent_ReadyzShowsRefusedCredentials(t *testing.T) {
	t.Parallel()
	st := embedded.New(embedded.Config{Path: filepath.Join(t.TempDir(), "hub.db")})
	if err := st.Open(context.Background()); err != nil {
		t.Fatalf("open hub store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	if _, _, err := st.CreateAgentCredential(context.Background(), "agent-test", "NCR-Manila"); err != nil {
		t.Fatalf("create credential: %v", err)
	}
	srv := ingest.New(ingest.Config{Addr: "127.0.0.1:0", Store: st, Authenticator: ingest.NewStoreAuthenticator(st, 0)})
	if err := srv.Open(); err != nil {
		t.Fatalf("open ingest: %v", err)
	}
	t.Cleanup(func() { srv.Close() })

	cfg := testConfig(t, "tcp://"+srv.Addr().String(), t.TempDir())
	cfg.HubPassword = "not-the-agent-token"
	a := openAgent(t, cfg)

	var body struct {
		Ready          bool   `json:"ready"`
		Uplink         string `json:"uplink"`
		HubCredentials string `json:"hub_credentials"`
	}
	eventually(t, "/readyz reporting refused hub credentials", func() bool {
		_, raw := get(t, a, "/readyz")
		if err := json.Unmarshal(raw, &body); err != nil {
			t.Fatalf("decode /readyz: %v", err)
		}
		return body.HubCredentials == "refused"
	})
	if !body.Ready || body.Uplink != "disconnected" {
		t.Errorf("/readyz = %+v, want ready with the uplink disconnected", body)
	}
	_, metrics := get(t, a, "/metrics")
	if !slices.Contains(strings.Split(string(metrics), "\n"), "xpress_agent_uplink_credentials_refused 1") {
		t.Errorf("/metrics lacks xpress_agent_uplink_credentials_refused 1")
	}
}
