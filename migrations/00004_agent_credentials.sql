-- +goose Up

-- The credentials agents present to the hub's agent listener: the MQTT
-- user name is the agent id, the password a random token of which only
-- the SHA-256 hash is kept. After a rotation the replaced token's hash
-- stays valid until previous_valid_until, so agents can be reconfigured
-- without downtime.
CREATE TABLE agent_credentials (
    agent_id             text PRIMARY KEY,
    region               text NOT NULL,
    token_hash           bytea NOT NULL,
    previous_hash        bytea,
    previous_valid_until timestamptz,
    created_at           timestamptz NOT NULL,
    rotated_at           timestamptz
);

-- +goose Down

DROP TABLE agent_credentials;
