-- +goose Up

-- The dispatcher's last escalation step of an incident: 0 while nothing
-- is queued. Raising it and queueing its notifications happen in one
-- transaction, so a step runs once across hub restarts and replicas.
ALTER TABLE incidents
    ADD COLUMN escalation_level integer NOT NULL DEFAULT 0;

-- Every SOS press counted on an incident, by vehicle, SOS id and press
-- time. An SOS with the id and press time of a counted press is a
-- redelivery and counts no new press. Presses counted before this table
-- existed are known only by each incident's first press (sos_id,
-- pressed_at of incidents), which the store checks as well.
CREATE TABLE incident_presses (
    vehicle_id  text NOT NULL,
    sos_id      text NOT NULL,
    pressed_at  timestamptz NOT NULL,
    incident_id bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    PRIMARY KEY (vehicle_id, sos_id, pressed_at)
);

CREATE INDEX incident_presses_incident_idx ON incident_presses (incident_id);

-- People the dispatcher notifies. Responders and supervisors serve a
-- region; emergency contacts and drivers belong to a vehicle. Empty
-- strings stand for absent values, as elsewhere in this schema.
CREATE TABLE contacts (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL,
    role       text NOT NULL
        CHECK (role IN ('responder', 'supervisor', 'emergency', 'driver')),
    region     text NOT NULL DEFAULT '',
    vehicle_id text NOT NULL DEFAULT '',
    phone      text NOT NULL DEFAULT '',
    email      text NOT NULL DEFAULT '',
    language   text NOT NULL DEFAULT 'en' CHECK (language IN ('en', 'fil')),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE INDEX contacts_region_idx ON contacts (region, role) WHERE region <> '';
CREATE INDEX contacts_vehicle_idx ON contacts (vehicle_id, role) WHERE vehicle_id <> '';

-- The notification outbox: at most one message per incident, channel and
-- address. next_attempt_at is when a pending row is due, or when the
-- lease of a sending row expires, and NULL in the other states.
-- contact_id has no foreign key, so deleting a contact keeps the history.
CREATE TABLE notifications (
    id              bigserial PRIMARY KEY,
    incident_id     bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    channel         text NOT NULL CHECK (channel IN ('sms', 'voice', 'email', 'webhook')),
    address         text NOT NULL,
    contact_id      bigint NOT NULL DEFAULT 0,
    language        text NOT NULL CHECK (language IN ('en', 'fil')),
    reason          text NOT NULL,
    state           text NOT NULL
        CHECK (state IN ('pending', 'sending', 'sent', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    provider_id     text NOT NULL DEFAULT '',
    last_error      text NOT NULL DEFAULT '',
    sent_by         text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    UNIQUE (incident_id, channel, address),
    CHECK ((state IN ('pending', 'sending')) = (next_attempt_at IS NOT NULL))
);

CREATE INDEX notifications_due_idx ON notifications (next_attempt_at, id)
    WHERE state IN ('pending', 'sending');
CREATE INDEX notifications_provider_idx ON notifications (provider_id)
    WHERE provider_id <> '';

-- +goose Down
DROP TABLE notifications;
DROP TABLE contacts;
DROP TABLE incident_presses;
ALTER TABLE incidents DROP COLUMN escalation_level;
