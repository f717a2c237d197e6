package embedded

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/hub/store"
)

// CreateOperator adds an operator (see store.OperatorStore).
func (s *Store) CreateOperator(ctx context.Context, o store.Operator, passwordHash string) (store.Operator, error) {
	o, err := store.NewOperator(o, passwordHash, s.now)
	if err == nil {
		err = s.update(ctx, func(tx *bolt.Tx) error {
			bk := tx.Bucket(bucketOperators)
			if bk.Get([]byte(o.Username)) != nil {
				return fmt.Errorf("user name %s is taken: %w", o.Username, store.ErrConflict)
			}
			return putJSON(bk, []byte(o.Username), store.StoredOperator{Operator: o, PasswordHash: passwordHash})
		})
	}
	if err != nil {
		return store.Operator{}, fmt.Errorf("create operator %s: %w", o.Username, err)
	}
	return o, nil
}

// Operator returns one operator with its password hash (see
// store.OperatorStore).
func (s *Store) Operator(ctx context.Context, username string) (store.StoredOperator, error) {
	var o store.StoredOperator
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var err error
		o, err = getOperator(tx, username)
		return err
	})
	if err != nil {
		return store.StoredOperator{}, fmt.Errorf("read operator %s: %w", username, err)
	}
	return o, nil
}

// Operators lists the operators without password hashes (see
// store.OperatorStore).
func (s *Store) Operators(ctx context.Context) ([]store.Operator, error) {
	var out []store.Operator
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketOperators).ForEach(func(k, v []byte) error {
			var o store.StoredOperator
			if err := json.Unmarshal(v, &o); err != nil {
				return fmt.Errorf("%w: operator %q: %v", ErrCorrupt, k, err)
			}
			out = append(out, o.Operator)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list operators: %w", err)
	}
	return out, nil
}

// UpdateOperator changes an operator in one transaction (see
// store.OperatorStore).
func (s *Store) UpdateOperator(ctx context.Context, username string, change func(o *store.StoredOperator) error) (store.StoredOperator, error) {
	var o store.StoredOperator
	err := s.update(ctx, func(tx *bolt.Tx) error {
		old, err := getOperator(tx, username)
		if err != nil {
			return err
		}
		if o, err = store.ChangeOperator(old, change, s.now); err != nil {
			return err
		}
		return putJSON(tx.Bucket(bucketOperators), []byte(username), o)
	})
	if err != nil {
		return store.StoredOperator{}, fmt.Errorf("update operator %s: %w", username, err)
	}
	return o, nil
}

// DeleteOperator removes an operator with its sessions and tokens (see
// store.OperatorStore).
func (s *Store) DeleteOperator(ctx context.Context, username string) error {
	err := s.update(ctx, func(tx *bolt.Tx) error {
		if _, err := getOperator(tx, username); err != nil {
			return err
		}
		if _, err := deleteSessionsOf(tx, username, func(store.Session) bool { return true }); err != nil {
			return err
		}
		tokens, hashes := tx.Bucket(bucketAPITokens), tx.Bucket(bucketAPITokenHashes)
		var drop []store.StoredAPIToken
		err := tokens.ForEach(func(k, v []byte) error {
			var t store.StoredAPIToken
			if err := json.Unmarshal(v, &t); err != nil {
				return fmt.Errorf("%w: API token %x: %v", ErrCorrupt, k, err)
			}
			if t.Operator == username {
				drop = append(drop, t)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, t := range drop {
			if err := tokens.Delete(u64(uint64(t.ID))); err != nil {
				return err
			}
			if err := hashes.Delete(t.TokenHash); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketOperators).Delete([]byte(username))
	})
	if err != nil {
		return fmt.Errorf("delete operator %s: %w", username, err)
	}
	return nil
}

// CreateSession stores a session (see store.OperatorStore).
func (s *Store) CreateSession(ctx context.Context, sess store.Session) error {
	sess = normalizeSession(sess)
	err := s.update(ctx, func(tx *bolt.Tx) error {
		if _, err := getOperator(tx, sess.Operator); err != nil {
			return err
		}
		expired := func(old store.Session) bool { return old.ExpiresAt.Before(sess.CreatedAt) }
		if _, err := deleteSessionsOf(tx, sess.Operator, expired); err != nil {
			return err
		}
		return putJSON(tx.Bucket(bucketSessions), sess.IDHash, sess)
	})
	if err != nil {
		return fmt.Errorf("create session of operator %s: %w", sess.Operator, err)
	}
	return nil
}

// Session returns a session by the hash of its id (see store.OperatorStore).
func (s *Store) Session(ctx context.Context, idHash []byte) (store.Session, error) {
	var sess store.Session
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var err error
		sess, err = getSession(tx, idHash)
		return err
	})
	if err != nil {
		return store.Session{}, fmt.Errorf("read session: %w", err)
	}
	return sess, nil
}

// TouchSession records a session's latest request (see store.OperatorStore).
func (s *Store) TouchSession(ctx context.Context, idHash []byte, lastSeen, expires time.Time) error {
	err := s.update(ctx, func(tx *bolt.Tx) error {
		sess, err := getSession(tx, idHash)
		if err != nil {
			return err
		}
		sess.LastSeenAt, sess.ExpiresAt = store.Time(lastSeen), store.Time(expires)
		return putJSON(tx.Bucket(bucketSessions), idHash, sess)
	})
	if err != nil {
		return fmt.Errorf("touch session: %w", err)
	}
	return nil
}

// DeleteSession removes a session (see store.OperatorStore).
func (s *Store) DeleteSession(ctx context.Context, idHash []byte) error {
	err := s.update(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketSessions)
		if bk.Get(idHash) == nil {
			return fmt.Errorf("no such session: %w", store.ErrNotFound)
		}
		return bk.Delete(idHash)
	})
	if err != nil {
		return fmt.Errorf("delete session: %w", err)
	}
	return nil
}

// DeleteOperatorSessions removes an operator's sessions (see
// store.OperatorStore).
func (s *Store) DeleteOperatorSessions(ctx context.Context, username string) ([][]byte, error) {
	var ids [][]byte
	err := s.update(ctx, func(tx *bolt.Tx) error {
		var err error
		ids, err = deleteSessionsOf(tx, username, func(store.Session) bool { return true })
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("delete sessions of operator %s: %w", username, err)
	}
	return ids, nil
}

// CreateAPIToken creates an integration's token (see store.OperatorStore).
func (s *Store) CreateAPIToken(ctx context.Context, operator, name string) (string, store.APIToken, error) {
	var token string
	var t store.StoredAPIToken
	err := store.ValidateTokenName(name)
	if err == nil {
		token, t.TokenHash, err = store.NewAPIToken()
	}
	if err == nil {
		err = s.update(ctx, func(tx *bolt.Tx) error {
			if _, err := getOperator(tx, operator); err != nil {
				return err
			}
			bk := tx.Bucket(bucketAPITokens)
			id, err := bk.NextSequence()
			if err != nil {
				return err
			}
			t.APIToken = store.APIToken{ID: int64(id), Name: name, Operator: operator, CreatedAt: s.now()}
			if err := putJSON(bk, u64(id), t); err != nil {
				return err
			}
			return tx.Bucket(bucketAPITokenHashes).Put(t.TokenHash, u64(id))
		})
	}
	if err != nil {
		return "", store.APIToken{}, fmt.Errorf("create API token %q of operator %s: %w", name, operator, err)
	}
	return token, t.APIToken, nil
}

// APITokens lists the API tokens without hashes (see store.OperatorStore).
func (s *Store) APITokens(ctx context.Context) ([]store.APIToken, error) {
	var out []store.APIToken
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAPITokens).ForEach(func(k, v []byte) error {
			var t store.StoredAPIToken
			if err := json.Unmarshal(v, &t); err != nil {
				return fmt.Errorf("%w: API token %x: %v", ErrCorrupt, k, err)
			}
			out = append(out, t.APIToken)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list API tokens: %w", err)
	}
	return out, nil
}

// RevokeAPIToken ends an API token (see store.OperatorStore).
func (s *Store) RevokeAPIToken(ctx context.Context, id int64) error {
	err := s.update(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketAPITokens)
		t, err := getAPIToken(bk, id)
		if err != nil {
			return err
		}
		if !t.RevokedAt.IsZero() {
			return fmt.Errorf("already revoked: %w", store.ErrConflict)
		}
		t.RevokedAt = s.now()
		return putJSON(bk, u64(uint64(id)), t)
	})
	if err != nil {
		return fmt.Errorf("revoke API token %d: %w", id, err)
	}
	return nil
}

// VerifyAPIToken finds the API token token (see store.OperatorStore).
func (s *Store) VerifyAPIToken(ctx context.Context, token string) (store.APIToken, error) {
	hash := store.HashSessionID(token)
	var t store.StoredAPIToken
	lookup := func(tx *bolt.Tx) error {
		id := tx.Bucket(bucketAPITokenHashes).Get(hash)
		if len(id) != 8 {
			return store.ErrBadToken
		}
		var err error
		if t, err = getAPIToken(tx.Bucket(bucketAPITokens), int64(binary.BigEndian.Uint64(id))); err != nil {
			return err
		}
		if !t.RevokedAt.IsZero() || !bytes.Equal(t.TokenHash, hash) {
			return store.ErrBadToken
		}
		return nil
	}
	err := s.view(ctx, lookup)
	if err == nil && s.now().Sub(t.LastUsedAt) > store.APITokenTouchInterval {
		err = s.update(ctx, func(tx *bolt.Tx) error {
			if err := lookup(tx); err != nil {
				return err
			}
			t.LastUsedAt = s.now()
			return putJSON(tx.Bucket(bucketAPITokens), u64(uint64(t.ID)), t)
		})
	}
	if err != nil {
		return store.APIToken{}, fmt.Errorf("verify API token: %w", err)
	}
	return t.APIToken, nil
}

// AppendAudit adds an audit entry (see store.OperatorStore).
func (s *Store) AppendAudit(ctx context.Context, e store.AuditEntry) (store.AuditEntry, error) {
	e = store.NormalizeAuditEntry(e)
	err := s.update(ctx, func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketAudit)
		id, err := bk.NextSequence()
		if err != nil {
			return err
		}
		e.ID, e.At = int64(id), s.now()
		return putJSON(bk, u64(id), e)
	})
	if err != nil {
		return store.AuditEntry{}, fmt.Errorf("append audit entry %s: %w", e.Action, err)
	}
	return e, nil
}

// AuditLog lists audit entries, newest first (see store.OperatorStore).
// Entries are visited from the newest id; the walk stops at the first
// entry older than f.Since, as ids follow the store's clock.
func (s *Store) AuditLog(ctx context.Context, f store.AuditFilter) ([]store.AuditEntry, error) {
	limit := f.AuditLimit()
	var out []store.AuditEntry
	err := s.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Last(); k != nil && len(out) < limit; k, v = c.Prev() {
			var e store.AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("%w: audit entry %x: %v", ErrCorrupt, k, err)
			}
			if !f.Since.IsZero() && e.At.Before(f.Since) {
				break
			}
			if f.Matches(e) {
				out = append(out, e)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	return out, nil
}

func normalizeSession(sess store.Session) store.Session {
	sess.CreatedAt, sess.LastSeenAt, sess.ExpiresAt = store.Time(sess.CreatedAt), store.Time(sess.LastSeenAt), store.Time(sess.ExpiresAt)
	sess.CSRFToken, sess.RemoteAddr, sess.UserAgent = store.CleanText(sess.CSRFToken), store.CleanText(sess.RemoteAddr), store.CleanText(sess.UserAgent)
	return sess
}

func getOperator(tx *bolt.Tx, username string) (store.StoredOperator, error) {
	var o store.StoredOperator
	v := tx.Bucket(bucketOperators).Get([]byte(username))
	if v == nil {
		return o, fmt.Errorf("no operator %q: %w", username, store.ErrNotFound)
	}
	if err := json.Unmarshal(v, &o); err != nil {
		return o, fmt.Errorf("%w: operator %s: %v", ErrCorrupt, username, err)
	}
	return o, nil
}

func getSession(tx *bolt.Tx, idHash []byte) (store.Session, error) {
	var sess store.Session
	v := tx.Bucket(bucketSessions).Get(idHash)
	if v == nil {
		return sess, fmt.Errorf("no such session: %w", store.ErrNotFound)
	}
	if err := json.Unmarshal(v, &sess); err != nil {
		return sess, fmt.Errorf("%w: session: %v", ErrCorrupt, err)
	}
	return sess, nil
}

func getAPIToken(bk *bolt.Bucket, id int64) (store.StoredAPIToken, error) {
	var t store.StoredAPIToken
	v := bk.Get(u64(uint64(id)))
	if v == nil {
		return t, fmt.Errorf("no API token %d: %w", id, store.ErrNotFound)
	}
	if err := json.Unmarshal(v, &t); err != nil {
		return t, fmt.Errorf("%w: API token %d: %v", ErrCorrupt, id, err)
	}
	return t, nil
}

// deleteSessionsOf removes the sessions of username for which drop
// returns true, and returns their id hashes. The sessions bucket is keyed
// by id hash, so it is scanned whole; an install has few sessions.
func deleteSessionsOf(tx *bolt.Tx, username string, drop func(store.Session) bool) ([][]byte, error) {
	bk := tx.Bucket(bucketSessions)
	var ids [][]byte
	err := bk.ForEach(func(k, v []byte) error {
		var sess store.Session
		if err := json.Unmarshal(v, &sess); err != nil {
			return fmt.Errorf("%w: session: %v", ErrCorrupt, err)
		}
		if sess.Operator == username && drop(sess) {
			ids = append(ids, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		if err := bk.Delete(id); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

func putJSON(bk *bolt.Bucket, key []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode entry %q: %w", key, err)
	}
	return bk.Put(key, data)
}
