package hub

import (
	"context"
	"errors"
	"fmt"

	"github.com/xpress-ops/tower/hub/store"
)

// ProvisionVehicles gives each vehicle of ids a new token and returns
// the tokens in the order of ids. A vehicle without a live credential
// gets a new one, and the others a rotation without grace, so only the
// returned tokens work afterwards. The agents get the change through the
// credential sync. xpress dev and tests use it for their simulated
// vehicles. Valid after Open.
func (h *Hub) ProvisionVehicles(ctx context.Context, ids []string) ([]store.IssuedVehicleToken, error) {
	defer h.credsync.Notify()
	issued, err := h.store.CreateVehicleCredentials(ctx, ids)
	if err == nil || !errors.Is(err, store.ErrConflict) {
		if err != nil {
			return nil, fmt.Errorf("provision %d vehicles: %w", len(ids), err)
		}
		return issued, nil
	}
	// Some have a credential: one vehicle at a time.
	issued = make([]store.IssuedVehicleToken, len(ids))
	for i, id := range ids {
		created, err := h.store.CreateVehicleCredentials(ctx, []string{id})
		if err == nil {
			issued[i] = created[0]
			continue
		}
		if !errors.Is(err, store.ErrConflict) {
			return nil, fmt.Errorf("provision vehicle %s: %w", id, err)
		}
		token, c, err := h.store.RotateVehicleCredential(ctx, id, 0)
		if err != nil {
			return nil, fmt.Errorf("provision vehicle %s: %w", id, err)
		}
		issued[i] = store.IssuedVehicleToken{Credential: c, Token: token}
	}
	return issued, nil
}

// VehicleCredentialsSynced returns a channel closed once the hub has
// published every stored vehicle credential to its agent broker after
// Open. Valid after Open.
func (h *Hub) VehicleCredentialsSynced() <-chan struct{} { return h.credsync.Synced() }

// VehicleCredentials returns the store of the vehicles' credentials, for
// tests and tools in the same process. Valid after Open.
func (h *Hub) VehicleCredentials() store.VehicleCredentialStore { return h.store }
