-- +goose Up

-- Agents forward vehicle data from a regional office to the hub.
CREATE TABLE agents (
    id         text PRIMARY KEY,
    region     text NOT NULL DEFAULT '',
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL
);

-- Vehicles as last seen through an agent. last_seen is the newest agent
-- receive time, so a late batch from a vehicle's former agent does not move
-- it back.
CREATE TABLE vehicles (
    id         text PRIMARY KEY,
    agent_id   text NOT NULL,
    region     text NOT NULL DEFAULT '',
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL
);

-- Every stored GPS fix, range-partitioned by fix time into daily partitions
-- named fixes_pYYYYMMDD (UTC days). The hub creates partitions ahead of
-- time; a fix whose day has no partition lands in fixes_default, so a
-- missing partition never fails a batch.
CREATE TABLE fixes (
    vehicle_id  text NOT NULL,
    agent_id    text NOT NULL,
    region      text NOT NULL DEFAULT '',
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    speed_kmh   double precision,
    heading_deg double precision,
    accuracy_m  double precision,
    alt_m       double precision,
    battery_pct double precision,
    historical  boolean NOT NULL DEFAULT false
) PARTITION BY RANGE (ts);

CREATE TABLE fixes_default PARTITION OF fixes DEFAULT;

CREATE INDEX fixes_vehicle_ts_idx ON fixes (vehicle_id, ts);

-- Each vehicle's fix with the newest fix time, excluding fixes too far
-- ahead of the hub's clock.
CREATE TABLE latest_positions (
    vehicle_id  text PRIMARY KEY,
    agent_id    text NOT NULL,
    region      text NOT NULL DEFAULT '',
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    speed_kmh   double precision,
    heading_deg double precision,
    accuracy_m  double precision,
    alt_m       double precision,
    battery_pct double precision,
    updated_at  timestamptz NOT NULL
);

-- Each vehicle's last reported online state.
CREATE TABLE vehicle_status (
    vehicle_id  text PRIMARY KEY,
    online      boolean NOT NULL,
    agent_id    text NOT NULL,
    received_at timestamptz NOT NULL
);

-- Emergencies. An incident is opened by the first SOS with a new SOS id;
-- repeats attach to it and raise presses.
CREATE TABLE incidents (
    id               bigserial PRIMARY KEY,
    sos_id           text NOT NULL,
    vehicle_id       text NOT NULL,
    agent_id         text NOT NULL,
    region           text NOT NULL DEFAULT '',
    kind             text NOT NULL,
    state            text NOT NULL
        CHECK (state IN ('open', 'acknowledged', 'dispatched', 'resolved', 'cancelled')),
    note             text NOT NULL DEFAULT '',
    has_location     boolean NOT NULL,
    lat              double precision,
    lon              double precision,
    pressed_at       timestamptz NOT NULL,
    received_at      timestamptz NOT NULL,
    opened_at        timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    presses          integer NOT NULL DEFAULT 1,
    cancel_requested boolean NOT NULL DEFAULT false,
    historical       boolean NOT NULL DEFAULT false
);

CREATE INDEX incidents_opened_at_idx ON incidents (opened_at DESC, id DESC);
CREATE INDEX incidents_active_vehicle_idx ON incidents (vehicle_id, received_at DESC)
    WHERE state IN ('open', 'acknowledged', 'dispatched');

-- Every SOS id that attached to an incident, the opening one included.
CREATE TABLE incident_sos_ids (
    vehicle_id  text NOT NULL,
    sos_id      text NOT NULL,
    incident_id bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    PRIMARY KEY (vehicle_id, sos_id)
);

CREATE INDEX incident_sos_ids_incident_idx ON incident_sos_ids (incident_id);

-- The audit trail of each incident.
CREATE TABLE incident_events (
    id          bigserial PRIMARY KEY,
    incident_id bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    type        text NOT NULL,
    actor       text NOT NULL,
    detail      text NOT NULL DEFAULT '',
    at          timestamptz NOT NULL
);

CREATE INDEX incident_events_incident_idx ON incident_events (incident_id, at, id);

-- The last committed sequence number of each agent spool lane.
CREATE TABLE agent_cursors (
    agent_id   text NOT NULL,
    spool_id   text NOT NULL,
    lane       text NOT NULL,
    seq        bigint NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (agent_id, spool_id, lane)
);

-- +goose Down
DROP TABLE agent_cursors;
DROP TABLE incident_events;
DROP TABLE incident_sos_ids;
DROP TABLE incidents;
DROP TABLE vehicle_status;
DROP TABLE latest_positions;
DROP TABLE fixes;
DROP TABLE vehicles;
DROP TABLE agents;
