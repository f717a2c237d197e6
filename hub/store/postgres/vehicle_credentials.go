package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xpress-ops/tower/hub/store"
)

const vehicleCredentialColumns = `vehicle_id, coalesce(token_hash, ''), coalesce(previous_hash, ''), previous_valid_until,
	created_at, rotated_at, revoked_at, version`

// CreateVehicleCredentials creates vehicles' credentials (see
// store.VehicleCredentialStore).
func (s *Store) CreateVehicleCredentials(ctx context.Context, vehicleIDs []string) ([]store.IssuedVehicleToken, error) {
	tokens, hashes, err := store.NewVehicleTokens(vehicleIDs)
	out := make([]store.IssuedVehicleToken, len(vehicleIDs))
	if err == nil {
		err = s.inTx(ctx, func(tx pgx.Tx) error {
			now := s.now()
			for i, id := range vehicleIDs {
				c, err := scanVehicleCredential(tx.QueryRow(ctx,
					`SELECT `+vehicleCredentialColumns+` FROM vehicle_credentials WHERE vehicle_id = $1 FOR UPDATE`, id))
				switch {
				case errors.Is(err, pgx.ErrNoRows):
				case err != nil:
					return err
				case !c.Revoked():
					return fmt.Errorf("vehicle %s already has a credential: %w", id, store.ErrConflict)
				}
				version, err := nextVehicleCredentialVersion(ctx, tx)
				if err != nil {
					return err
				}
				c.Create(id, hashes[i], now, version)
				if err := upsertVehicleCredential(ctx, tx, c); err != nil {
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
	var token, hash string
	err := store.ValidateRotationGrace(grace)
	if err == nil {
		token, hash, err = store.NewVehicleToken()
	}
	if err == nil {
		err = s.inTx(ctx, func(tx pgx.Tx) error {
			var err error
			if c, err = liveVehicleCredential(ctx, tx, vehicleID); err != nil {
				return err
			}
			version, err := nextVehicleCredentialVersion(ctx, tx)
			if err != nil {
				return err
			}
			c.Rotate(hash, s.now(), grace, version)
			return upsertVehicleCredential(ctx, tx, c)
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
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		if c, err = liveVehicleCredential(ctx, tx, vehicleID); err != nil {
			return err
		}
		version, err := nextVehicleCredentialVersion(ctx, tx)
		if err != nil {
			return err
		}
		c.Revoke(s.now(), version)
		return upsertVehicleCredential(ctx, tx, c)
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
	all, err := s.queryVehicleCredentials(ctx, `SELECT `+vehicleCredentialColumns+` FROM vehicle_credentials ORDER BY vehicle_id`)
	if err != nil {
		return nil, fmt.Errorf("list vehicle credentials: %w", err)
	}
	out := make([]store.VehicleCredential, len(all))
	for i := range all {
		out[i] = all[i].VehicleCredential
	}
	return out, nil
}

// VehicleCredentialsSince returns the credentials changed after version
// (see store.VehicleCredentialStore).
func (s *Store) VehicleCredentialsSince(ctx context.Context, version uint64) ([]store.StoredVehicleCredential, error) {
	out, err := s.queryVehicleCredentials(ctx,
		`SELECT `+vehicleCredentialColumns+` FROM vehicle_credentials WHERE version > $1 ORDER BY version`, int64(version))
	if err != nil {
		return nil, fmt.Errorf("read vehicle credentials since version %d: %w", version, err)
	}
	return out, nil
}

func (s *Store) queryVehicleCredentials(ctx context.Context, sql string, args ...any) ([]store.StoredVehicleCredential, error) {
	pool, err := s.getPool()
	if err != nil {
		return nil, err
	}
	rows, err := pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, classify(err)
	}
	defer rows.Close()
	var out []store.StoredVehicleCredential
	for rows.Next() {
		c, err := scanVehicleCredential(rows)
		if err != nil {
			return nil, classify(err)
		}
		out = append(out, c)
	}
	return out, classify(rows.Err())
}

// nextVehicleCredentialVersion increments the credential version counter.
// Its row stays locked until tx ends, so changes commit in version order.
func nextVehicleCredentialVersion(ctx context.Context, tx pgx.Tx) (uint64, error) {
	var v int64
	err := tx.QueryRow(ctx, `UPDATE vehicle_credential_version SET version = version + 1 RETURNING version`).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("next vehicle credential version: %w", err)
	}
	return uint64(v), nil
}

func liveVehicleCredential(ctx context.Context, tx pgx.Tx, vehicleID string) (store.StoredVehicleCredential, error) {
	c, err := scanVehicleCredential(tx.QueryRow(ctx,
		`SELECT `+vehicleCredentialColumns+` FROM vehicle_credentials WHERE vehicle_id = $1 FOR UPDATE`, vehicleID))
	if errors.Is(err, pgx.ErrNoRows) || err == nil && c.Revoked() {
		return c, fmt.Errorf("vehicle %s has no live credential: %w", vehicleID, store.ErrNotFound)
	}
	return c, err
}

func upsertVehicleCredential(ctx context.Context, tx pgx.Tx, c store.StoredVehicleCredential) error {
	_, err := tx.Exec(ctx, `
		INSERT INTO vehicle_credentials (vehicle_id, token_hash, previous_hash, previous_valid_until, created_at, rotated_at, revoked_at, version)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (vehicle_id) DO UPDATE SET token_hash = $2, previous_hash = $3, previous_valid_until = $4,
			created_at = $5, rotated_at = $6, revoked_at = $7, version = $8`,
		c.VehicleID, nullText(c.TokenHash), nullText(c.PreviousHash), nullTime(c.PreviousValidUntil),
		c.CreatedAt, nullTime(c.RotatedAt), nullTime(c.RevokedAt), int64(c.Version))
	return err
}

func nullText(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func scanVehicleCredential(row pgx.Row) (store.StoredVehicleCredential, error) {
	var c store.StoredVehicleCredential
	var until, rotated, revoked *time.Time
	var version int64
	if err := row.Scan(&c.VehicleID, &c.TokenHash, &c.PreviousHash, &until, &c.CreatedAt, &rotated, &revoked, &version); err != nil {
		return c, err
	}
	c.CreatedAt, c.Version = c.CreatedAt.UTC(), uint64(version)
	for _, t := range []struct {
		src *time.Time
		dst *time.Time
	}{{until, &c.PreviousValidUntil}, {rotated, &c.RotatedAt}, {revoked, &c.RevokedAt}} {
		if t.src != nil {
			*t.dst = t.src.UTC()
		}
	}
	return c, nil
}
