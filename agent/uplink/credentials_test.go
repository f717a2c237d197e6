package uplink_test

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/hub/ingest"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/embedded"
)

// gateAuth refuses every agent while closed is set, and otherwise
// accepts only token, as a hub in the middle of a rotation would.
type gateAuth struct {
	token  string
	closed atomic.Bool
}

func (g *gateAuth) Authenticate(_ string, password []byte) error {
	if g.closed.Load() || string(password) != g.token {
		return store.ErrBadToken
	}
	return nil
}

// startIngest starts the hub's real ingest on an embedded store with
// auth as its authenticator and returns its MQTT URL.
func startIngest(t *testing.T, auth ingest.AgentAuthenticator) string {
	t.Helper()
	st := embedded.New(embedded.Config{Path: filepath.Join(t.TempDir(), "hub.db")})
	if err := st.Open(context.Background()); err != nil {
		t.Fatalf("open hub store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	srv := ingest.New(ingest.Config{Addr: "127.0.0.1:0", Store: st, Authenticator: auth})
	if err := srv.Open(); err != nil {
		t.Fatalf("open ingest: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	return "tcp://" + srv.Addr().String()
}

func TestUplink_RefusedCredentialsRetriedUntilAccepted(t *testing.T) {
	t.Parallel()
	auth := &gateAuth{token: "agent-token"}
	auth.closed.Store(true)
	hubURL := startIngest(t, auth)
	sp := openSpool(t)
	appendRecords(t, sp, fix("veh-1", 1), sos("veh-1", "sos-1"))
	u, reg := startUplink(t, sp, hubURL, func(c *uplink.Config) { c.Password = "agent-token" })

	eventually(t, "two refused connection attempts", func() bool {
		return metricValue(t, reg, "xpress_agent_uplink_auth_refused_total", nil) >= 2
	})
	if !u.CredentialsRefused() {
		t.Error("CredentialsRefused is false while the hub refuses the agent")
	}
	if v := metricValue(t, reg, "xpress_agent_uplink_credentials_refused", nil); v != 1 {
		t.Errorf("credentials_refused gauge = %v while refused, want 1", v)
	}
	if spoolEmpty(sp) {
		t.Fatal("records left the spool although the hub refused the agent")
	}

	// The hub accepts the token again: the uplink connects and drains.
	auth.closed.Store(false)
	eventually(t, "the spool drained after the hub accepted the token", func() bool { return spoolEmpty(sp) })
	if u.CredentialsRefused() {
		t.Error("CredentialsRefused is still true after the hub accepted the agent")
	}
	if v := metricValue(t, reg, "xpress_agent_uplink_credentials_refused", nil); v != 0 {
		t.Errorf("credentials_refused gauge = %v after acceptance, want 0", v)
	}
}
