package embedded

import (
	"context"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

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

// act applies one operator action in one bbolt transaction: read the
// incident, apply store.ApplyAction, write it back (saveIncident drops a
// closed incident from the repeat-window index) and add the event.
// bbolt's single writer orders it with CommitBatch, so a new SOS id is
// never attached to an incident that this transaction closed.
func (s *Store) act(ctx context.Context, id int64, a store.Action, actor, text string) (store.IncidentChange, error) {
	var change store.IncidentChange
	text, err := store.ValidateAction(a, actor, text)
	if err == nil {
		err = s.update(ctx, func(tx *bolt.Tx) error {
			bk, err := bucketsOf(tx)
			if err != nil {
				return err
			}
			if id <= 0 {
				return fmt.Errorf("incident %d: %w", id, store.ErrNotFound)
			}
			inc, err := getIncident(bk, id)
			if err != nil {
				return err
			}
			ev, err := store.ApplyAction(&inc, a, actor, text, s.now())
			if err != nil {
				return err
			}
			if err := saveIncident(bk, inc); err != nil {
				return fmt.Errorf("save incident %d: %w", id, err)
			}
			change.Incident = inc
			change.Event, err = addEvent(bk, id, ev.Type, ev.Actor, ev.Detail, ev.At)
			return err
		})
	}

	s.metrics.incidentActions.WithLabelValues(string(a), actionResult(err)).Inc()
	if err != nil {
		return store.IncidentChange{}, fmt.Errorf("%s incident %d: %w", a, id, err)
	}
	s.log.Info("incident updated", "incident", id, "action", a, "actor", actor, "state", change.Incident.State, "event", change.Event.ID)
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
