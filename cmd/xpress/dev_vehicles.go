package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/hub"
)

// devSyncWait bounds how long xpress dev waits for an agent to receive
// the credentials of its simulated vehicles from the hub.
const devSyncWait = 30 * time.Second

// devVehicleTokensFile is the file in --data-dir where xpress dev writes
// the tokens of its simulated vehicles, as "vehicle_id,token" lines, so
// a developer can connect as one of them.
const devVehicleTokensFile = "vehicle-tokens.csv"

// provisionDevVehicles gives the simulated vehicles ids new tokens
// through the hub's store, appends them to tokensFile (mode 0600), and
// waits until agent a holds them, so the simulator's first CONNECT
// succeeds. It returns the tokens by vehicle id.
func provisionDevVehicles(ctx context.Context, h *hub.Hub, a *agent.Agent, ids []string, tokensFile string) (map[string]string, error) {
	issued, err := h.ProvisionVehicles(ctx, ids)
	if err != nil {
		return nil, err
	}
	tokens := make(map[string]string, len(issued))
	var lines strings.Builder
	for _, it := range issued {
		tokens[it.Credential.VehicleID] = it.Token
		fmt.Fprintf(&lines, "%s,%s\n", it.Credential.VehicleID, it.Token)
	}
	if err := appendFile(tokensFile, lines.String()); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, devSyncWait)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for _, it := range issued {
		for {
			if v, ok := a.VehicleCredentialVersion(it.Credential.VehicleID); ok && v >= it.Credential.Version {
				break
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("agent did not receive the credential of simulated vehicle %s from the hub within %s: %w",
					it.Credential.VehicleID, devSyncWait, context.Cause(ctx))
			case <-tick.C:
			}
		}
	}
	return tokens, nil
}

// appendFile appends text to path, creating it with mode 0600.
func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("write vehicle tokens: %w", err)
	}
	_, err = f.WriteString(text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write vehicle tokens to %s: %w", path, err)
	}
	return nil
}
