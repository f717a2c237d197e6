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

const (
	operatorColumns = `username, display_name, role, regions, password_hash, disabled, failed_logins,
		locked_until, created_at, updated_at, password_changed_at`
	sessionColumns  = `id_hash, operator, created_at, last_seen_at, expires_at, csrf_token, remote_addr, user_agent`
	apiTokenColumns = `id, name, operator, token_hash, created_at, last_used_at, revoked_at`
	auditColumns    = `id, at, actor, action, target, remote, outcome, detail`
)

// pgUniqueViolation and pgForeignKeyViolation are the SQLSTATE codes of
// a duplicate key and of a reference to a missing row.
const (
	pgUniqueViolation     = "23505"
	pgForeignKeyViolation = "23503"
)

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// CreateOperator adds an operator (see store.OperatorStore).
func (s *Store) CreateOperator(ctx context.Context, o store.Operator, passwordHash string) (store.Operator, error) {
	o, err := store.NewOperator(o, passwordHash, s.now)
	if err == nil {
		err = s.inTx(ctx, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO operators (`+operatorColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
				o.Username, o.DisplayName, o.Role, o.Regions, passwordHash, o.Disabled, o.FailedLogins,
				nullTime(o.LockedUntil), o.CreatedAt, o.UpdatedAt, o.PasswordChangedAt)
			if pgCode(err) == pgUniqueViolation {
				return fmt.Errorf("user name %s is taken: %w", o.Username, store.ErrConflict)
			}
			return err
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
	pool, err := s.getPool()
	if err != nil {
		return store.StoredOperator{}, fmt.Errorf("read operator %s: %w", username, err)
	}
	o, err := scanOperator(pool.QueryRow(ctx, `SELECT `+operatorColumns+` FROM operators WHERE username = $1`, username))
	if err != nil {
		return store.StoredOperator{}, fmt.Errorf("read operator %s: %w", username, notFound(err, "no operator "+username))
	}
	return o, nil
}

// Operators lists the operators without password hashes (see
// store.OperatorStore).
func (s *Store) Operators(ctx context.Context) ([]store.Operator, error) {
	pool, err := s.getPool()
	if err != nil {
		return nil, fmt.Errorf("list operators: %w", err)
	}
	rows, err := pool.Query(ctx, `SELECT `+operatorColumns+` FROM operators ORDER BY username`)
	if err != nil {
		return nil, fmt.Errorf("list operators: %w", classify(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Operator, error) {
		o, err := scanOperator(row)
		return o.Operator, err
	})
	if err != nil {
		return nil, fmt.Errorf("list operators: %w", classify(err))
	}
	return out, nil
}

// UpdateOperator changes an operator in one transaction (see
// store.OperatorStore).
func (s *Store) UpdateOperator(ctx context.Context, username string, change func(o *store.StoredOperator) error) (store.StoredOperator, error) {
	var o store.StoredOperator
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		old, err := scanOperator(tx.QueryRow(ctx, `SELECT `+operatorColumns+` FROM operators WHERE username = $1 FOR UPDATE`, username))
		if err != nil {
			return notFound(err, "no operator "+username)
		}
		if o, err = store.ChangeOperator(old, change, s.now); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `
			UPDATE operators SET display_name = $2, role = $3, regions = $4, password_hash = $5, disabled = $6,
				failed_logins = $7, locked_until = $8, updated_at = $9, password_changed_at = $10
			WHERE username = $1`,
			username, o.DisplayName, o.Role, o.Regions, o.PasswordHash, o.Disabled,
			o.FailedLogins, nullTime(o.LockedUntil), o.UpdatedAt, o.PasswordChangedAt)
		return err
	})
	if err != nil {
		return store.StoredOperator{}, fmt.Errorf("update operator %s: %w", username, err)
	}
	return o, nil
}

// DeleteOperator removes an operator; its sessions and tokens go with it
// by ON DELETE CASCADE (see store.OperatorStore).
func (s *Store) DeleteOperator(ctx context.Context, username string) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM operators WHERE username = $1`, username)
		if err == nil && tag.RowsAffected() == 0 {
			err = fmt.Errorf("no operator %q: %w", username, store.ErrNotFound)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("delete operator %s: %w", username, err)
	}
	return nil
}

// CreateSession stores a session (see store.OperatorStore).
func (s *Store) CreateSession(ctx context.Context, sess store.Session) error {
	sess.CreatedAt, sess.LastSeenAt, sess.ExpiresAt = store.Time(sess.CreatedAt), store.Time(sess.LastSeenAt), store.Time(sess.ExpiresAt)
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM operator_sessions WHERE operator = $1 AND expires_at < $2`, sess.Operator, sess.CreatedAt); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO operator_sessions (`+sessionColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			sess.IDHash, sess.Operator, sess.CreatedAt, sess.LastSeenAt, sess.ExpiresAt,
			store.CleanText(sess.CSRFToken), store.CleanText(sess.RemoteAddr), store.CleanText(sess.UserAgent))
		if pgCode(err) == pgForeignKeyViolation {
			return fmt.Errorf("no operator %q: %w", sess.Operator, store.ErrNotFound)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("create session of operator %s: %w", sess.Operator, err)
	}
	return nil
}

// Session returns a session by the hash of its id (see store.OperatorStore).
func (s *Store) Session(ctx context.Context, idHash []byte) (store.Session, error) {
	pool, err := s.getPool()
	if err != nil {
		return store.Session{}, fmt.Errorf("read session: %w", err)
	}
	var sess store.Session
	err = pool.QueryRow(ctx, `SELECT `+sessionColumns+` FROM operator_sessions WHERE id_hash = $1`, idHash).Scan(
		&sess.IDHash, &sess.Operator, &sess.CreatedAt, &sess.LastSeenAt, &sess.ExpiresAt, &sess.CSRFToken, &sess.RemoteAddr, &sess.UserAgent)
	if err != nil {
		return store.Session{}, fmt.Errorf("read session: %w", notFound(err, "no such session"))
	}
	sess.CreatedAt, sess.LastSeenAt, sess.ExpiresAt = sess.CreatedAt.UTC(), sess.LastSeenAt.UTC(), sess.ExpiresAt.UTC()
	return sess, nil
}

// TouchSession records a session's latest request (see store.OperatorStore).
func (s *Store) TouchSession(ctx context.Context, idHash []byte, lastSeen, expires time.Time) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE operator_sessions SET last_seen_at = $2, expires_at = $3 WHERE id_hash = $1`,
			idHash, store.Time(lastSeen), store.Time(expires))
		if err == nil && tag.RowsAffected() == 0 {
			err = fmt.Errorf("no such session: %w", store.ErrNotFound)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("touch session: %w", err)
	}
	return nil
}

// DeleteSession removes a session (see store.OperatorStore).
func (s *Store) DeleteSession(ctx context.Context, idHash []byte) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM operator_sessions WHERE id_hash = $1`, idHash)
		if err == nil && tag.RowsAffected() == 0 {
			err = fmt.Errorf("no such session: %w", store.ErrNotFound)
		}
		return err
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
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `DELETE FROM operator_sessions WHERE operator = $1 RETURNING id_hash`, username)
		if err != nil {
			return err
		}
		ids, err = pgx.CollectRows(rows, pgx.RowTo[[]byte])
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
	var hash []byte
	t := store.APIToken{Name: name, Operator: operator, CreatedAt: s.now()}
	err := store.ValidateTokenName(name)
	if err == nil {
		token, hash, err = store.NewAPIToken()
	}
	if err == nil {
		err = s.inTx(ctx, func(tx pgx.Tx) error {
			err := tx.QueryRow(ctx, `INSERT INTO api_tokens (name, operator, token_hash, created_at) VALUES ($1, $2, $3, $4) RETURNING id`,
				name, operator, hash, t.CreatedAt).Scan(&t.ID)
			if pgCode(err) == pgForeignKeyViolation {
				return fmt.Errorf("no operator %q: %w", operator, store.ErrNotFound)
			}
			return err
		})
	}
	if err != nil {
		return "", store.APIToken{}, fmt.Errorf("create API token %q of operator %s: %w", name, operator, err)
	}
	return token, t, nil
}

// APITokens lists the API tokens without hashes (see store.OperatorStore).
func (s *Store) APITokens(ctx context.Context) ([]store.APIToken, error) {
	pool, err := s.getPool()
	if err != nil {
		return nil, fmt.Errorf("list API tokens: %w", err)
	}
	rows, err := pool.Query(ctx, `SELECT `+apiTokenColumns+` FROM api_tokens ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list API tokens: %w", classify(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.APIToken, error) {
		t, err := scanAPIToken(row)
		return t.APIToken, err
	})
	if err != nil {
		return nil, fmt.Errorf("list API tokens: %w", classify(err))
	}
	return out, nil
}

// RevokeAPIToken ends an API token (see store.OperatorStore).
func (s *Store) RevokeAPIToken(ctx context.Context, id int64) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var revoked *time.Time
		err := tx.QueryRow(ctx, `SELECT revoked_at FROM api_tokens WHERE id = $1 FOR UPDATE`, id).Scan(&revoked)
		if err != nil {
			return notFound(err, fmt.Sprintf("no API token %d", id))
		}
		if revoked != nil {
			return fmt.Errorf("already revoked: %w", store.ErrConflict)
		}
		_, err = tx.Exec(ctx, `UPDATE api_tokens SET revoked_at = $2 WHERE id = $1`, id, s.now())
		return err
	})
	if err != nil {
		return fmt.Errorf("revoke API token %d: %w", id, err)
	}
	return nil
}

// VerifyAPIToken finds the API token token (see store.OperatorStore).
func (s *Store) VerifyAPIToken(ctx context.Context, token string) (store.APIToken, error) {
	pool, err := s.getPool()
	if err != nil {
		return store.APIToken{}, fmt.Errorf("verify API token: %w", err)
	}
	t, err := scanAPIToken(pool.QueryRow(ctx, `SELECT `+apiTokenColumns+` FROM api_tokens WHERE token_hash = $1`, store.HashSessionID(token)))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		err = store.ErrBadToken
	case err != nil:
		err = classify(err)
	case !t.RevokedAt.IsZero():
		err = store.ErrBadToken
	}
	if err == nil && s.now().Sub(t.LastUsedAt) > store.APITokenTouchInterval {
		t.LastUsedAt = s.now()
		_, err = pool.Exec(ctx, `UPDATE api_tokens SET last_used_at = $2 WHERE id = $1`, t.ID, t.LastUsedAt)
		err = classify(err)
	}
	if err != nil {
		return store.APIToken{}, fmt.Errorf("verify API token: %w", err)
	}
	return t.APIToken, nil
}

// AppendAudit adds an audit entry (see store.OperatorStore).
func (s *Store) AppendAudit(ctx context.Context, e store.AuditEntry) (store.AuditEntry, error) {
	e = store.NormalizeAuditEntry(e)
	e.At = s.now()
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `
			INSERT INTO audit_log (at, actor, action, target, remote, outcome, detail)
			VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id`,
			e.At, e.Actor, e.Action, e.Target, e.Remote, e.Outcome, e.Detail).Scan(&e.ID)
	})
	if err != nil {
		return store.AuditEntry{}, fmt.Errorf("append audit entry %s: %w", e.Action, err)
	}
	return e, nil
}

// AuditLog lists audit entries, newest first (see store.OperatorStore).
func (s *Store) AuditLog(ctx context.Context, f store.AuditFilter) ([]store.AuditEntry, error) {
	pool, err := s.getPool()
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	rows, err := pool.Query(ctx, `
		SELECT `+auditColumns+` FROM audit_log
		WHERE ($1::timestamptz IS NULL OR at >= $1) AND ($2 = '' OR actor = $2) AND ($3 = '' OR action = $3)
		ORDER BY id DESC LIMIT $4`,
		nullTime(f.Since), f.Actor, f.Action, f.AuditLimit())
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", classify(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.AuditEntry, error) {
		var e store.AuditEntry
		err := row.Scan(&e.ID, &e.At, &e.Actor, &e.Action, &e.Target, &e.Remote, &e.Outcome, &e.Detail)
		e.At = e.At.UTC()
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", classify(err))
	}
	return out, nil
}

// notFound turns pgx.ErrNoRows into an error wrapping store.ErrNotFound
// with msg, and classifies other errors.
func notFound(err error, msg string) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%s: %w", msg, store.ErrNotFound)
	}
	return classify(err)
}

func scanOperator(row pgx.Row) (store.StoredOperator, error) {
	var o store.StoredOperator
	var locked *time.Time
	err := row.Scan(&o.Username, &o.DisplayName, &o.Role, &o.Regions, &o.PasswordHash, &o.Disabled, &o.FailedLogins,
		&locked, &o.CreatedAt, &o.UpdatedAt, &o.PasswordChangedAt)
	if err != nil {
		return o, err
	}
	if locked != nil {
		o.LockedUntil = locked.UTC()
	}
	o.CreatedAt, o.UpdatedAt, o.PasswordChangedAt = o.CreatedAt.UTC(), o.UpdatedAt.UTC(), o.PasswordChangedAt.UTC()
	return o, nil
}

func scanAPIToken(row pgx.Row) (store.StoredAPIToken, error) {
	var t store.StoredAPIToken
	var used, revoked *time.Time
	if err := row.Scan(&t.ID, &t.Name, &t.Operator, &t.TokenHash, &t.CreatedAt, &used, &revoked); err != nil {
		return t, err
	}
	t.CreatedAt = t.CreatedAt.UTC()
	if used != nil {
		t.LastUsedAt = used.UTC()
	}
	if revoked != nil {
		t.RevokedAt = revoked.UTC()
	}
	return t, nil
}
