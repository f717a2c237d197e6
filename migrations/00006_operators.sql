-- +goose Up

-- Operator accounts. password_hash is an argon2id PHC string; the
-- password itself is never stored. regions lists the regions the
-- operator sees, '*' meaning all. failed_logins and locked_until carry a
-- lockout after repeated failed sign-ins across restarts.
CREATE TABLE operators (
    username            text PRIMARY KEY,
    display_name        text NOT NULL,
    role                text NOT NULL CHECK (role IN ('operator', 'supervisor', 'admin')),
    regions             text[] NOT NULL,
    password_hash       text NOT NULL,
    disabled            boolean NOT NULL DEFAULT false,
    failed_logins       integer NOT NULL DEFAULT 0,
    locked_until        timestamptz,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    password_changed_at timestamptz NOT NULL
);

-- Sign-in sessions, keyed by the SHA-256 hash of the id the cookie
-- carries, so the table cannot be used to take over a session.
CREATE TABLE operator_sessions (
    id_hash      bytea PRIMARY KEY,
    operator     text NOT NULL REFERENCES operators (username) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    csrf_token   text NOT NULL,
    remote_addr  text NOT NULL,
    user_agent   text NOT NULL
);

CREATE INDEX operator_sessions_operator ON operator_sessions (operator);

-- API tokens of integrations. Each acts as its operator; only the
-- SHA-256 hash of the token is kept.
CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL,
    operator     text NOT NULL REFERENCES operators (username) ON DELETE CASCADE,
    token_hash   bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- The audit log of sign-ins, incident actions and admin changes. The hub
-- only inserts into it.
CREATE TABLE audit_log (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL,
    actor   text NOT NULL,
    action  text NOT NULL,
    target  text NOT NULL,
    remote  text NOT NULL,
    outcome text NOT NULL,
    detail  text NOT NULL
);

CREATE INDEX audit_log_at ON audit_log (at);

-- +goose Down

DROP TABLE audit_log;
DROP TABLE api_tokens;
DROP TABLE operator_sessions;
DROP TABLE operators;
