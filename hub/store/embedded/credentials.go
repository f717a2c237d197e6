package embedded

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/hub/store"
)

// CreateAgentCredential creates an agent's credential (see
// store.AgentCredentialStore).
func (s *Store) CreateAgentCredential(ctx context.Context, agentID, region string) (string, store.AgentCredential, error) {
	token, c, err := store.NewStoredAgentCredential(agentID, region, s.now())
	if err == nil {
		err = s.update(ctx, func(tx *bolt.Tx) error {
			bk := tx.Bucket(bucketAgentCredentials)
			if bk.Get([]byte(agentID)) != nil {
				return fmt.Errorf("agent %s already has a credential: %w", agentID, store.ErrConflict)
			}
			return putCredential(bk, c)
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
		err = s.update(ctx, func(tx *bolt.Tx) error {
			bk := tx.Bucket(bucketAgentCredentials)
			var err error
			if c, err = getCredential(bk, agentID); err != nil {
				return err
			}
			if token, err = c.Rotate(s.now(), grace); err != nil {
				return err
			}
			return putCredential(bk, c)
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
	err := s.update(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketAgentCredentials)
		if bk.Get([]byte(agentID)) == nil {
			return fmt.Errorf("agent %s has no credential: %w", agentID, store.ErrNotFound)
		}
		return bk.Delete([]byte(agentID))
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
	var out []store.AgentCredential
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAgentCredentials).ForEach(func(k, v []byte) error {
			var c store.StoredAgentCredential
			if err := json.Unmarshal(v, &c); err != nil {
				return fmt.Errorf("%w: credential of agent %q: %v", ErrCorrupt, k, err)
			}
			out = append(out, c.AgentCredential)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list agent credentials: %w", err)
	}
	return out, nil
}

// VerifyAgentToken checks an agent's token (see
// store.AgentCredentialStore).
func (s *Store) VerifyAgentToken(ctx context.Context, agentID, token string) (store.AgentCredential, error) {
	var c store.StoredAgentCredential
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var err error
		c, err = getCredential(tx.Bucket(bucketAgentCredentials), agentID)
		return err
	})
	if err == nil {
		err = c.Verify(token, s.now())
	}
	if err != nil {
		return store.AgentCredential{}, fmt.Errorf("verify token of agent %s: %w", agentID, err)
	}
	return c.AgentCredential, nil
}

func getCredential(bk *bolt.Bucket, agentID string) (store.StoredAgentCredential, error) {
	var c store.StoredAgentCredential
	v := bk.Get([]byte(agentID))
	if v == nil {
		return c, fmt.Errorf("agent %s has no credential: %w", agentID, store.ErrNotFound)
	}
	if err := json.Unmarshal(v, &c); err != nil {
		return c, fmt.Errorf("%w: credential of agent %s: %v", ErrCorrupt, agentID, err)
	}
	return c, nil
}

func putCredential(bk *bolt.Bucket, c store.StoredAgentCredential) error {
	data, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode credential of agent %s: %w", c.AgentID, err)
	}
	return bk.Put([]byte(c.AgentID), data)
}
