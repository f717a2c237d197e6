-- +goose Up

-- The credentials vehicles present to the agents' brokers: the MQTT user
-- name is the vehicle id, the password a random token of which only an
-- argon2id hash (a PHC string) is kept. The hub copies the hashes to every
-- agent, which checks vehicles itself, also while the hub is unreachable.
-- After a rotation the replaced token's hash stays valid until
-- previous_valid_until. A revoked credential stays as a tombstone
-- (revoked_at set, no hashes) so agents learn of the revocation.
--
-- version is the value of vehicle_credential_version.version at the
-- row's last change. Every change increments that one-row counter in its
-- transaction, and the counter's row lock makes changes commit in version
-- order, so a reader that asks for rows past the highest version it saw
-- misses none.
CREATE TABLE vehicle_credentials (
    vehicle_id           text PRIMARY KEY,
    token_hash           text,
    previous_hash        text,
    previous_valid_until timestamptz,
    created_at           timestamptz NOT NULL,
    rotated_at           timestamptz,
    revoked_at           timestamptz,
    version              bigint NOT NULL
);

CREATE UNIQUE INDEX vehicle_credentials_version ON vehicle_credentials (version);

CREATE TABLE vehicle_credential_version (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint NOT NULL
);

INSERT INTO vehicle_credential_version (version) VALUES (0);

-- +goose Down

DROP TABLE vehicle_credential_version;
DROP TABLE vehicle_credentials;
