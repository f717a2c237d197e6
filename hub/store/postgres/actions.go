package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xpress-ops/tower/hub/store"
)

// AcknowledgeIncident moves an open incident to acknowledged (see
// store.Store).
func (s *Store) AcknowledgeIncident(ctx context.Context, id int64, actor string) (store.IncidentChange, error) {
	return s.act(ctx, id, store.ActionAcknowledge, actor, "")
}

// AssignIncident assigns an active incident to an operator (see
// store.Store).
func (s *Store) AssignIncident(ctx context.Context, id int64, actor, assignee string) (store.IncidentChange, error) {
	return s.act(ctx, id, store.ActionAssign, actor, assignee)
}

// DispatchIncident moves an open or acknowledged incident to dispatched
// (see store.Store).
func (s *Store) DispatchIncident(ctx context.Context, id int64, actor, detail string) (store.IncidentChange, error) {
	return s.act(ctx, id, store.ActionDispatch, actor, detail)
}

// AddIncidentNote adds a note to an incident in any state (see
// store.Store).
func (s *Store) AddIncidentNote(ctx context.Context, id int64, actor, text string) (store.IncidentChange, error) {
	return s.act(ctx, id, store.ActionNote, actor, text)
}

// ResolveIncident moves an active incident to resolved (see store.Store).
func (s *Store) ResolveIncident(ctx context.Context, id int64, actor, resolution string) (store.IncidentChange, error) {
	return s.act(ctx, id, store.ActionResolve, actor, resolution)
}

// CancelIncident moves an active incident to cancelled (see store.Store).
func (s *Store) CancelIncident(ctx context.Context, id int64, actor, reason string) (store.IncidentChange, error) {
	return s.act(ctx, id, store.ActionCancel, actor, reason)
}

// act validates and applies one operator action, counts it and logs it.
func (s *Store) act(ctx context.Context, id int64, a store.Action, actor, text string) (store.IncidentChange, error) {
	var change store.IncidentChange
	text, err := store.ValidateAction(a, actor, text)
	if err == nil {
		var pool *pgxpool.Pool
		if pool, err = s.getPool(); err == nil {
			change, err = actOnce(ctx, pool, id, a, actor, text, s.now())
		}
	}

	err = classify(err)
	s.metrics.incidentActions.WithLabelValues(string(a), actionResult(err)).Inc()
	if err != nil {
		return store.IncidentChange{}, fmt.Errorf("%s incident %d: %w", a, id, err)
	}
	s.log.Info("incident updated", "incident", id, "action", a, "actor", actor, "state", change.Incident.State, "event", change.Event.ID)
	return change, nil
}

// actOnce runs the action's transaction:
//
//  1. read the incident's vehicle and take the vehicle's SOS advisory lock,
//     which CommitBatch holds while it attaches presses, so a new SOS id is
//     never attached to an incident that this transaction closes;
//  2. lock the incident row with SELECT … FOR UPDATE and read it;
//  3. apply store.ApplyAction and write the changed columns back;
//  4. add the event.
//
// The lock order, advisory lock before row lock, is the one CommitBatch
// uses, so the two cannot deadlock.
func actOnce(ctx context.Context, pool pgxBeginner, id int64, a store.Action, actor, text string, now time.Time) (change store.IncidentChange, err error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return change, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit; on failure the first error is returned

	var vehicleID string
	if err := tx.QueryRow(ctx, `SELECT vehicle_id FROM incidents WHERE id = $1`, id).Scan(&vehicleID); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return change, fmt.Errorf("incident %d: %w", id, store.ErrNotFound)
		}
		return change, fmt.Errorf("read incident %d: %w", id, err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, lockClassSOS, vehicleID); err != nil {
		return change, fmt.Errorf("lock vehicle %s: %w", vehicleID, err)
	}
	inc, err := scanIncident(tx.QueryRow(ctx, `SELECT `+incidentColumns+` FROM incidents WHERE id = $1 FOR UPDATE`, id))
	if err != nil {
		return change, fmt.Errorf("lock incident %d: %w", id, err)
	}

	ev, err := store.ApplyAction(&inc, a, actor, text, now)
	if err != nil {
		return change, err
	}
	change.Incident, err = scanIncident(tx.QueryRow(ctx, `
		UPDATE incidents SET state = $2, assigned_to = $3, acknowledged_at = $4, dispatched_at = $5,
			resolved_at = $6, cancelled_at = $7, updated_at = $8
		WHERE id = $1
		RETURNING `+incidentColumns,
		id, string(inc.State), inc.AssignedTo, nullTime(inc.AcknowledgedAt), nullTime(inc.DispatchedAt),
		nullTime(inc.ResolvedAt), nullTime(inc.CancelledAt), inc.UpdatedAt))
	if err != nil {
		return change, fmt.Errorf("update incident %d: %w", id, err)
	}
	if change.Event, err = addEvent(ctx, tx, id, ev.Type, ev.Actor, ev.Detail, ev.At); err != nil {
		return change, err
	}
	if err := tx.Commit(ctx); err != nil {
		return change, fmt.Errorf("commit: %w", err)
	}
	return change, nil
}

// actionResult is the result label of an operator action's metric.
func actionResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, store.ErrConflict):
		return "conflict"
	case errors.Is(err, store.ErrInvalid):
		return "invalid"
	case errors.Is(err, store.ErrNotFound):
		return "not_found"
	}
	return "error"
}
