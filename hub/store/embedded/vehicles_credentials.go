package embedded

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/hub/store"
)

// CreateVehicleCredentials creates vehicles' credentials (see
// store.VehicleCredentialStore).
func (s *Store) CreateVehicleCredentials(ctx context.Context, vehicleIDs []string) ([]store.IssuedVehicleToken, error) {
	tokens, hashes, err := store.NewVehicleTokens(vehicleIDs)
	out := make([]store.IssuedVehicleToken, len(vehicleIDs))
	if err == nil {
		err = s.update(ctx, func(tx *bolt.Tx) error {
			bk := tx.Bucket(bucketVehicleCreds)
			now := s.now()
			for i, id := range vehicleIDs {
				c, found, err := getVehicleCredential(bk, id)
				if err != nil {
					return err
				}
				if found && !c.Revoked() {
					return fmt.Errorf("vehicle %s already has a credential: %w", id, store.ErrConflict)
				}
				version, err := bk.NextSequence()
				if err != nil {
					return err
				}
				c.Create(id, hashes[i], now, version)
				if err := putVehicleCredential(bk, c); err != nil {
					return err
				}
				out[i] = store.IssuedVehicleToken{Credential: c.VehicleCredential, Token: tokens[i]}
			}
			return nil
		})
	}
	if err != nil {
		return nil, fmt.Errorf("create credentials of %d vehicles: %w", len(vehicleIDs), err)
	}
	s.log.Info("vehicle credentials created", "vehicles", len(vehicleIDs), "first", vehicleIDs[0])
	return out, nil
}

// RotateVehicleCredential gives a vehicle a new token (see
// store.VehicleCredentialStore).
func (s *Store) RotateVehicleCredential(ctx context.Context, vehicleID string, grace time.Duration) (string, store.VehicleCredential, error) {
	var c store.StoredVehicleCredential
	err := store.ValidateRotationGrace(grace)
	var token, hash string
	if err == nil {
		token, hash, err = store.NewVehicleToken()
	}
	if err == nil {
		err = s.update(ctx, func(tx *bolt.Tx) error {
			bk := tx.Bucket(bucketVehicleCreds)
			var err error
			if c, err = getLiveVehicleCredential(bk, vehicleID); err != nil {
				return err
			}
			version, err := bk.NextSequence()
			if err != nil {
				return err
			}
			c.Rotate(hash, s.now(), grace, version)
			return putVehicleCredential(bk, c)
		})
	}
	if err != nil {
		return "", store.VehicleCredential{}, fmt.Errorf("rotate credential of vehicle %s: %w", vehicleID, err)
	}
	s.log.Info("vehicle credential rotated", "vehicle", vehicleID, "previous_valid_until", c.PreviousValidUntil)
	return token, c.VehicleCredential, nil
}

// RevokeVehicleCredential turns a vehicle's credential into a tombstone
// (see store.VehicleCredentialStore).
func (s *Store) RevokeVehicleCredential(ctx context.Context, vehicleID string) (store.VehicleCredential, error) {
	var c store.StoredVehicleCredential
	err := s.update(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketVehicleCreds)
		var err error
		if c, err = getLiveVehicleCredential(bk, vehicleID); err != nil {
			return err
		}
		version, err := bk.NextSequence()
		if err != nil {
			return err
		}
		c.Revoke(s.now(), version)
		return putVehicleCredential(bk, c)
	})
	if err != nil {
		return store.VehicleCredential{}, fmt.Errorf("revoke credential of vehicle %s: %w", vehicleID, err)
	}
	s.log.Info("vehicle credential revoked", "vehicle", vehicleID)
	return c.VehicleCredential, nil
}

// VehicleCredentials lists the credentials without hashes (see
// store.VehicleCredentialStore).
func (s *Store) VehicleCredentials(ctx context.Context) ([]store.VehicleCredential, error) {
	var out []store.VehicleCredential
	err := s.eachVehicleCredential(ctx, func(c store.StoredVehicleCredential) {
		out = append(out, c.VehicleCredential)
	})
	if err != nil {
		return nil, fmt.Errorf("list vehicle credentials: %w", err)
	}
	return out, nil
}

// VehicleCredentialsSince returns the credentials changed after version
// (see store.VehicleCredentialStore).
func (s *Store) VehicleCredentialsSince(ctx context.Context, version uint64) ([]store.StoredVehicleCredential, error) {
	var out []store.StoredVehicleCredential
	err := s.eachVehicleCredential(ctx, func(c store.StoredVehicleCredential) {
		if c.Version > version {
			out = append(out, c)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("read vehicle credentials since version %d: %w", version, err)
	}
	slices.SortFunc(out, func(a, b store.StoredVehicleCredential) int {
		return cmp.Compare(a.Version, b.Version)
	})
	return out, nil
}

// eachVehicleCredential calls fn with every stored credential in vehicle
// id order, in one read transaction: a fleet's credentials are a few
// megabytes at most.
func (s *Store) eachVehicleCredential(ctx context.Context, fn func(store.StoredVehicleCredential)) error {
	return s.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVehicleCreds).ForEach(func(k, v []byte) error {
			var c store.StoredVehicleCredential
			if err := json.Unmarshal(v, &c); err != nil {
				return fmt.Errorf("%w: credential of vehicle %q: %v", ErrCorrupt, k, err)
			}
			fn(c)
			return nil
		})
	})
}

func getVehicleCredential(bk *bolt.Bucket, vehicleID string) (store.StoredVehicleCredential, bool, error) {
	var c store.StoredVehicleCredential
	v := bk.Get([]byte(vehicleID))
	if v == nil {
		return c, false, nil
	}
	if err := json.Unmarshal(v, &c); err != nil {
		return c, false, fmt.Errorf("%w: credential of vehicle %s: %v", ErrCorrupt, vehicleID, err)
	}
	return c, true, nil
}

func getLiveVehicleCredential(bk *bolt.Bucket, vehicleID string) (store.StoredVehicleCredential, error) {
	c, found, err := getVehicleCredential(bk, vehicleID)
	if err == nil && (!found || c.Revoked()) {
		err = fmt.Errorf("vehicle %s has no live credential: %w", vehicleID, store.ErrNotFound)
	}
	return c, err
}

func putVehicleCredential(bk *bolt.Bucket, c store.StoredVehicleCredential) error {
	data, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode credential of vehicle %s: %w", c.VehicleID, err)
	}
	return bk.Put([]byte(c.VehicleID), data)
}
