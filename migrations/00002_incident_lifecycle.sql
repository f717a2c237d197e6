-- +goose Up

-- The operator lifecycle of an incident: who it is assigned to and when
-- it entered each state after open. A state's time is NULL while the
-- incident never entered it.
ALTER TABLE incidents
    ADD COLUMN assigned_to     text NOT NULL DEFAULT '',
    ADD COLUMN acknowledged_at timestamptz,
    ADD COLUMN dispatched_at   timestamptz,
    ADD COLUMN resolved_at     timestamptz,
    ADD COLUMN cancelled_at    timestamptz;

CREATE INDEX incidents_assigned_to_idx ON incidents (assigned_to, opened_at DESC, id DESC)
    WHERE assigned_to <> '';

-- +goose Down
DROP INDEX incidents_assigned_to_idx;
ALTER TABLE incidents
    DROP COLUMN cancelled_at,
    DROP COLUMN resolved_at,
    DROP COLUMN dispatched_at,
    DROP COLUMN acknowledged_at,
    DROP COLUMN assigned_to;
