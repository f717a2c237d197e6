package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// applyAgentRecord applies a local acknowledgement (see
// store.ApplyLocalAck) or an agent notification (see
// store.ApplyAgentNotified) to the incident of the record's SOS id and
// returns the change. The caller holds the vehicle's SOS advisory lock. A
// record is skipped (ok false) when its SOS id matches no incident of the
// vehicle or the hub cannot store its notification. It is left in fx to
// be counted and logged after the commit, so a bad agent record never
// blocks the SOS lane.
func applyAgentRecord(ctx context.Context, tx pgx.Tx, agentID string, r *protocol.Record, now time.Time, fx *commitEffects) (change store.IncidentChange, ok bool, err error) {
	id, found, err := incidentForSOS(ctx, tx, r.VehicleID, store.AgentRecordSOSID(r))
	if err != nil || !found {
		if err == nil {
			fx.unmatched = append(fx.unmatched, r)
		}
		return change, false, err
	}

	if r.Kind == protocol.KindSOSAck {
		inc, err := scanIncident(tx.QueryRow(ctx, `SELECT `+incidentColumns+` FROM incidents WHERE id = $1 FOR UPDATE`, id))
		if err != nil {
			return change, false, fmt.Errorf("lock incident %d: %w", id, err)
		}
		ev := store.ApplyLocalAck(&inc, agentID, r.Ack, now)
		change.Incident, err = scanIncident(tx.QueryRow(ctx, `
			UPDATE incidents SET state = $2, acknowledged_at = $3, updated_at = $4 WHERE id = $1
			RETURNING `+incidentColumns, id, string(inc.State), nullTime(inc.AcknowledgedAt), inc.UpdatedAt))
		if err != nil {
			return change, false, fmt.Errorf("update incident %d: %w", id, err)
		}
		change.Event, err = addEvent(ctx, tx, id, ev.Type, ev.Actor, ev.Detail, ev.At)
		return change, err == nil, err
	}

	an := r.Notified
	ch := store.Channel(an.Channel)
	if err := store.ValidateAddress(ch, an.Address); err != nil {
		fx.invalid = append(fx.invalid, invalidRecord{record: r, err: err})
		return change, false, nil
	}
	var existing *store.Notification
	old, err := scanNotification(tx.QueryRow(ctx, `
		SELECT `+notificationColumns+` FROM notifications
		WHERE incident_id = $1 AND channel = $2 AND address = $3 FOR UPDATE`, id, string(ch), an.Address))
	switch {
	case err == nil:
		existing = &old
	case !errors.Is(err, pgx.ErrNoRows):
		return change, false, fmt.Errorf("read %s notification of incident %d: %w", ch, id, err)
	}
	n, write, detail, err := store.ApplyAgentNotified(existing, id, agentID, an, now)
	if err != nil {
		fx.invalid = append(fx.invalid, invalidRecord{record: r, err: err})
		return change, false, nil
	}
	switch {
	case write && existing == nil:
		// The vehicle's advisory lock serialises the writers that insert
		// notifications, so the key is still free.
		var inserted bool
		if _, inserted, err = insertNotification(ctx, tx, n); err == nil && !inserted {
			err = fmt.Errorf("insert %s notification of incident %d: its key was taken by a concurrent transaction", ch, id)
		}
	case write:
		_, err = updateNotification(ctx, tx, n)
	}
	if err != nil {
		return change, false, err
	}
	change, err = incidentEvent(ctx, tx, id, store.EventNotification, "agent:"+agentID, detail, now)
	return change, err == nil, err
}

// vehicleRecords returns the records that are messages from vehicles
// (see store.VehicleRecord).
func vehicleRecords(records []protocol.Record) []protocol.Record {
	if !slices.ContainsFunc(records, func(r protocol.Record) bool { return !store.VehicleRecord(&r) }) {
		return records
	}
	out := make([]protocol.Record, 0, len(records))
	for i := range records {
		if store.VehicleRecord(&records[i]) {
			out = append(out, records[i])
		}
	}
	return out
}
