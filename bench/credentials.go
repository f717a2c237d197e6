package bench

import (
	"context"
	"errors"
	"fmt"

	"github.com/xpress-ops/tower/hub"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/postgres"
)

// noteHub records which store holds the agent credentials of the hub
// whose agent listener is at agentAddr: an in-process *hub.Hub, or the
// database URL of a hub subprocess.
func (e *runEnv) noteHub(agentAddr string, h any) { e.hubs.Store(agentAddr, h) }

// agentToken returns the token of agent id on the hub at hubAddr,
// provisioned the way an operator would: through the hub's store. It
// returns "" for an address where no hub of this run listens, such as
// the unreachable hub of the edge scenario.
func (e *runEnv) agentToken(ctx context.Context, hubAddr, id string) (string, error) {
	v, ok := e.hubs.Load(hubAddr)
	if !ok {
		return "", nil
	}
	switch h := v.(type) {
	case *hub.Hub:
		return h.ProvisionAgent(ctx, id, "NCR-Manila")
	case string:
		return provisionAgent(ctx, h, id)
	}
	return "", fmt.Errorf("agent token for %s: unknown hub kind %T", hubAddr, v)
}

// provisionAgent creates the credential of agent id in the hub database
// at dbURL and returns its token; an existing credential is rotated
// without grace. The hub need not run yet.
func provisionAgent(ctx context.Context, dbURL, id string) (string, error) {
	s := postgres.New(postgres.Config{URL: dbURL})
	if err := s.Open(ctx); err != nil {
		return "", fmt.Errorf("open the hub database to provision agent %s: %w", id, err)
	}
	defer s.Close()
	token, _, err := s.CreateAgentCredential(ctx, id, "NCR-Manila")
	if errors.Is(err, store.ErrConflict) {
		token, _, err = s.RotateAgentCredential(ctx, id, 0)
	}
	if err != nil {
		return "", fmt.Errorf("provision agent %s: %w", id, err)
	}
	return token, nil
}
