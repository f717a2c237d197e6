package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/xpress-ops/tower/hub/store"
)

const credentialColumns = `agent_id, region, token_hash, previous_hash, previous_valid_until, created_at, rotated_at`

// CreateAgentCredential creates an agent's credential (see
// store.AgentCredentialStore).
func (s *Store) CreateAgentCredential(ctx context.Context, agentID, region string) (string, store.AgentCredential, error) {
	token, c, err := store.NewStoredAgentCredential(agentID, region, s.now())
	if err == nil {
		err = s.inTx(ctx, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `
				INSERT INTO agent_credentials (agent_id, region, token_hash, created_at) VALUES ($1, $2, $3, $4)`,
				c.AgentID, c.Region, c.TokenHash, c.CreatedAt)
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "23505" { // unique_violation
				return fmt.Errorf("agent %s already has a credential: %w", agentID, store.ErrConflict)
			}
			return err
		})
	}
	if err != nil {
		return "", store.AgentCredential{}, fmt.Errorf("create credential of agent %s: %w", agentID, err)
	}
	s.log.Info("agent credential created", "agent", agentID, "region", region)
	return token, c.AgentCredential, nil
}

// RotateAgentCredential gives an agent a new token (see
// store.AgentCredentialStore).
func (s *Store) RotateAgentCredential(ctx context.Context, agentID string, grace time.Duration) (string, store.AgentCredential, error) {
	var token string
	var c store.StoredAgentCredential
	err := store.ValidateRotationGrace(grace)
	if err == nil {
		err = s.inTx(ctx, func(tx pgx.Tx) error {
			var err error
			c, err = scanCredential(tx.QueryRow(ctx, `SELECT `+credentialColumns+` FROM agent_credentials WHERE agent_id = $1 FOR UPDATE`, agentID))
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("agent %s has no credential: %w", agentID, store.ErrNotFound)
			}
			if err != nil {
				return err
			}
			if token, err = c.Rotate(s.now(), grace); err != nil {
				return err
			}
			_, err = tx.Exec(ctx, `
				UPDATE agent_credentials SET token_hash = $2, previous_hash = $3, previous_valid_until = $4, rotated_at = $5
				WHERE agent_id = $1`,
				agentID, c.TokenHash, c.PreviousHash, nullTime(c.PreviousValidUntil), c.RotatedAt)
			return err
		})
	}
	if err != nil {
		return "", store.AgentCredential{}, fmt.Errorf("rotate credential of agent %s: %w", agentID, err)
	}
	s.log.Info("agent credential rotated", "agent", agentID, "previous_valid_until", c.PreviousValidUntil)
	return token, c.AgentCredential, nil
}

// RevokeAgentCredential deletes an agent's credential (see
// store.AgentCredentialStore).
func (s *Store) RevokeAgentCredential(ctx context.Context, agentID string) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM agent_credentials WHERE agent_id = $1`, agentID)
		if err == nil && tag.RowsAffected() == 0 {
			err = fmt.Errorf("agent %s has no credential: %w", agentID, store.ErrNotFound)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("revoke credential of agent %s: %w", agentID, err)
	}
	s.log.Info("agent credential revoked", "agent", agentID)
	return nil
}

// AgentCredentials lists the credentials without hashes (see
// store.AgentCredentialStore).
func (s *Store) AgentCredentials(ctx context.Context) ([]store.AgentCredential, error) {
	pool, err := s.getPool()
	if err != nil {
		return nil, err
	}
	rows, err := pool.Query(ctx, `SELECT `+credentialColumns+` FROM agent_credentials ORDER BY agent_id`)
	if err != nil {
		return nil, fmt.Errorf("list agent credentials: %w", classify(err))
	}
	defer rows.Close()
	var out []store.AgentCredential
	for rows.Next() {
		c, err := scanCredential(rows)
		if err != nil {
			return nil, fmt.Errorf("list agent credentials: %w", classify(err))
		}
		out = append(out, c.AgentCredential)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list agent credentials: %w", classify(err))
	}
	return out, nil
}

// VerifyAgentToken checks an agent's token (see
// store.AgentCredentialStore).
func (s *Store) VerifyAgentToken(ctx context.Context, agentID, token string) (store.AgentCredential, error) {
	pool, err := s.getPool()
	if err != nil {
		return store.AgentCredential{}, fmt.Errorf("verify token of agent %s: %w", agentID, err)
	}
	c, err := scanCredential(pool.QueryRow(ctx, `SELECT `+credentialColumns+` FROM agent_credentials WHERE agent_id = $1`, agentID))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		err = fmt.Errorf("agent %s has no credential: %w", agentID, store.ErrNotFound)
	case err != nil:
		err = classify(err)
	default:
		err = c.Verify(token, s.now())
	}
	if err != nil {
		return store.AgentCredential{}, fmt.Errorf("verify token of agent %s: %w", agentID, err)
	}
	return c.AgentCredential, nil
}

func scanCredential(row pgx.Row) (store.StoredAgentCredential, error) {
	var c store.StoredAgentCredential
	var until, rotated *time.Time
	if err := row.Scan(&c.AgentID, &c.Region, &c.TokenHash, &c.PreviousHash, &until, &c.CreatedAt, &rotated); err != nil {
		return c, err
	}
	c.CreatedAt = c.CreatedAt.UTC()
	if until != nil {
		c.PreviousValidUntil = until.UTC()
	}
	if rotated != nil {
		c.RotatedAt = rotated.UTC()
	}
	return c, nil
}
