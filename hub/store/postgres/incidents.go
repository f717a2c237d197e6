package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// lockClassSOS is the first key of the transaction advisory lock that
// serializes SOS handling per vehicle. The second key is a hash of the
// vehicle id.
const lockClassSOS = 1

// activeStates are the states in which an incident takes repeat presses.
var activeStates = []string{string(store.StateOpen), string(store.StateAcknowledged), string(store.StateDispatched)}

const incidentColumns = `id, sos_id, vehicle_id, agent_id, region, kind, state, note, has_location,
	lat, lon, pressed_at, received_at, opened_at, updated_at, presses, cancel_requested, historical,
	assigned_to, acknowledged_at, dispatched_at, resolved_at, cancelled_at, escalation_level`

// applySOS applies one SOS or SOS cancel record and returns the incident
// it changed. An SOS is, in order of precedence:
//
//   - a redelivery: the SOS id and press time of a press already counted,
//     such as a QoS 1 redelivery the agent stored twice. Presses stays
//     and a redelivered event is added to that press's incident;
//   - a repeat of an SOS id already attached to an incident of the
//     vehicle (a re-press that kept its id): presses goes up and a
//     repeat_press event is added;
//   - a new SOS id from a vehicle with an open, acknowledged or dispatched
//     incident whose first SOS the agent received within
//     store.RepeatWindow of this one: the id attaches to that incident as a
//     repeat press;
//   - otherwise a new incident, with an opened event.
//
// A cancel sets cancel_requested and adds a cancel_requested event; the
// state stays, because an operator must confirm a cancel. A cancel for an
// SOS id the vehicle never sent is skipped (ok false) and left in fx to
// be counted and logged after the commit. Local acknowledgements and agent
// notifications go to applyAgentRecord. A transaction advisory lock per
// vehicle keeps two batches from opening two incidents for one emergency.
func (s *Store) applySOS(ctx context.Context, tx pgx.Tx, b *protocol.Batch, region string, r *protocol.Record, now time.Time, fx *commitEffects) (change store.IncidentChange, ok bool, err error) {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, lockClassSOS, r.VehicleID); err != nil {
		return change, false, fmt.Errorf("lock vehicle %s: %w", r.VehicleID, err)
	}
	actor := "vehicle:" + r.VehicleID

	if r.Kind == protocol.KindSOSAck || r.Kind == protocol.KindSOSNotified {
		return applyAgentRecord(ctx, tx, b.AgentID, r, now, fx)
	}

	if r.Kind == protocol.KindSOSCancel {
		id, found, err := incidentForSOS(ctx, tx, r.VehicleID, r.Cancel.ID)
		if err != nil {
			return change, false, err
		}
		if !found {
			fx.unmatched = append(fx.unmatched, r)
			return change, false, nil
		}
		change.Incident, err = scanIncident(tx.QueryRow(ctx, `
			UPDATE incidents SET cancel_requested = true, updated_at = $2 WHERE id = $1
			RETURNING `+incidentColumns, id, now))
		if err != nil {
			return change, false, fmt.Errorf("request cancel of incident %d: %w", id, err)
		}
		detail := "driver cancelled SOS " + r.Cancel.ID
		if reason := store.CleanText(r.Cancel.Reason); reason != "" {
			detail += ": " + reason
		}
		change.Event, err = addEvent(ctx, tx, id, store.EventCancelRequested, actor, detail, now)
		return change, err == nil, err
	}

	sos := r.SOS
	pressed := store.PressTime(r)
	if id, found, err := pressedIncident(ctx, tx, r.VehicleID, sos.ID, pressed); err != nil || found {
		if err != nil {
			return change, false, err
		}
		fx.redelivered = append(fx.redelivered, r)
		change, err = incidentEvent(ctx, tx, id, store.EventRedelivered, actor, store.RedeliveredDetail(sos, pressed), now)
		return change, err == nil, err
	}

	id, found, err := incidentForSOS(ctx, tx, r.VehicleID, sos.ID)
	if err != nil {
		return change, false, err
	}
	if found {
		inc, err := scanIncident(tx.QueryRow(ctx, `SELECT `+incidentColumns+` FROM incidents WHERE id = $1`, id))
		if err != nil {
			return change, false, fmt.Errorf("read incident %d: %w", id, err)
		}
		// The id's mapping moves below, to the active incident it attaches
		// to or to a new one.
		found = !store.NewEmergencyAfterClose(&inc, r.ReceivedAt)
	}
	detail := "SOS " + sos.ID + " received again"
	if !found {
		received := store.Time(r.ReceivedAt)
		err = tx.QueryRow(ctx, `
			SELECT id FROM incidents
			WHERE vehicle_id = $1 AND state IN (`+activeStatesList+`)
			  AND received_at BETWEEN $2::timestamptz - make_interval(secs => $3)
			                      AND $2::timestamptz + make_interval(secs => $3)
			ORDER BY received_at DESC, id DESC
			LIMIT 1`,
			r.VehicleID, received, store.RepeatWindow.Seconds()).Scan(&id)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return s.openIncident(ctx, tx, b, region, r, now)
		case err != nil:
			return change, false, fmt.Errorf("find active incident of vehicle %s: %w", r.VehicleID, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO incident_sos_ids (vehicle_id, sos_id, incident_id) VALUES ($1, $2, $3)
			ON CONFLICT (vehicle_id, sos_id) DO UPDATE SET incident_id = excluded.incident_id`,
			r.VehicleID, sos.ID, id); err != nil {
			return change, false, fmt.Errorf("attach SOS %s to incident %d: %w", sos.ID, id, err)
		}
		detail = fmt.Sprintf("SOS %s pressed within %s of the incident's first SOS", sos.ID, store.RepeatWindow)
	}

	// The rule lives in store.ApplyRepeatPress, shared with the embedded
	// store: read the incident, apply it, write the changed columns back.
	inc, err := scanIncident(tx.QueryRow(ctx, `SELECT `+incidentColumns+` FROM incidents WHERE id = $1`, id))
	if err != nil {
		return change, false, fmt.Errorf("read incident %d: %w", id, err)
	}
	detail = store.ApplyRepeatPress(&inc, sos, detail)
	var lat, lon *float64
	if inc.HasLocation {
		lat, lon = &inc.Lat, &inc.Lon
	}
	change.Incident, err = scanIncident(tx.QueryRow(ctx, `
		UPDATE incidents SET presses = $2, updated_at = $3, has_location = $4, lat = $5, lon = $6, note = $7
		WHERE id = $1
		RETURNING `+incidentColumns, id, inc.Presses, now, inc.HasLocation, lat, lon, store.CleanText(inc.Note)))
	if err != nil {
		return change, false, fmt.Errorf("count press on incident %d: %w", id, err)
	}
	if err := recordPress(ctx, tx, r.VehicleID, sos.ID, pressed, id); err != nil {
		return change, false, err
	}
	change.Event, err = addEvent(ctx, tx, id, store.EventRepeatPress, actor, store.CleanText(detail), now)
	return change, err == nil, err
}

// openIncident inserts a new incident for an SOS record, maps its SOS id
// and adds the opened event.
func (s *Store) openIncident(ctx context.Context, tx pgx.Tx, b *protocol.Batch, region string, r *protocol.Record, now time.Time) (change store.IncidentChange, ok bool, err error) {
	sos := r.SOS
	pressed := store.PressTime(r)
	var lat, lon *float64
	if sos.HasLocation {
		lat, lon = &sos.Lat, &sos.Lon
	}
	kind := sosKind(sos)

	change.Incident, err = scanIncident(tx.QueryRow(ctx, `
		INSERT INTO incidents (sos_id, vehicle_id, agent_id, region, kind, state, note, has_location,
			lat, lon, pressed_at, received_at, opened_at, updated_at, presses, cancel_requested, historical)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, 1, false, $14)
		RETURNING `+incidentColumns,
		sos.ID, r.VehicleID, b.AgentID, region, store.CleanText(string(kind)), string(store.StateOpen),
		store.CleanText(sos.Note), sos.HasLocation, lat, lon, pressed, store.Time(r.ReceivedAt), now, r.Historical))
	if err != nil {
		return change, false, fmt.Errorf("open incident for SOS %s: %w", sos.ID, err)
	}
	id := change.Incident.ID
	if _, err := tx.Exec(ctx, `INSERT INTO incident_sos_ids (vehicle_id, sos_id, incident_id) VALUES ($1, $2, $3)
			ON CONFLICT (vehicle_id, sos_id) DO UPDATE SET incident_id = excluded.incident_id`,
		r.VehicleID, sos.ID, id); err != nil {
		return change, false, fmt.Errorf("map SOS %s to incident %d: %w", sos.ID, id, err)
	}
	if err := recordPress(ctx, tx, r.VehicleID, sos.ID, pressed, id); err != nil {
		return change, false, err
	}

	change.Event, err = addEvent(ctx, tx, id, store.EventOpened, "vehicle:"+r.VehicleID, openedDetail(sos), now)
	if err != nil {
		return change, false, err
	}
	change.Opened = true
	s.metrics.incidentsOpened.Inc()
	s.log.Info("incident opened", "incident", id, "agent", b.AgentID, "vehicle", r.VehicleID, "sos", sos.ID, "kind", kind, "historical", r.Historical)
	return change, true, nil
}

// sosKind returns the kind an incident opened by sos gets: its own, or
// protocol.SOSPanic when it names none.
func sosKind(sos *protocol.SOS) protocol.SOSKind {
	if sos.Kind == "" {
		return protocol.SOSPanic
	}
	return sos.Kind
}

// openedDetail returns the detail of the opened event of an incident
// that sos opens.
func openedDetail(sos *protocol.SOS) string {
	detail := []string{fmt.Sprintf("SOS %s (%s)", sos.ID, sosKind(sos))}
	if sos.IDAssigned {
		detail = append(detail, "id assigned by the agent")
	}
	if sos.LocationError != "" {
		detail = append(detail, "no location: "+store.CleanText(sos.LocationError))
	}
	if sos.TimeError != "" {
		detail = append(detail, "device time replaced by receive time: "+store.CleanText(sos.TimeError))
	}
	return strings.Join(detail, "; ")
}

// incidentForSOS returns the incident an SOS id of the vehicle is attached to.
func incidentForSOS(ctx context.Context, tx pgx.Tx, vehicleID, sosID string) (id int64, found bool, err error) {
	err = tx.QueryRow(ctx, `SELECT incident_id FROM incident_sos_ids WHERE vehicle_id = $1 AND sos_id = $2`,
		vehicleID, sosID).Scan(&id)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, false, nil
	case err != nil:
		return 0, false, fmt.Errorf("look up SOS %s of vehicle %s: %w", sosID, vehicleID, err)
	}
	return id, true, nil
}

// pressedIncident returns the incident a press of the vehicle's SOS id at
// pressed was already counted on. Presses counted before the
// incident_presses table existed are known only by each incident's first
// press, so that is checked too.
func pressedIncident(ctx context.Context, tx pgx.Tx, vehicleID, sosID string, pressed time.Time) (id int64, found bool, err error) {
	err = tx.QueryRow(ctx, `
		SELECT incident_id FROM incident_presses WHERE vehicle_id = $1 AND sos_id = $2 AND pressed_at = $3
		UNION ALL
		SELECT i.id FROM incident_sos_ids m JOIN incidents i ON i.id = m.incident_id
		WHERE m.vehicle_id = $1 AND m.sos_id = $2 AND i.sos_id = $2 AND i.pressed_at = $3
		LIMIT 1`, vehicleID, sosID, pressed).Scan(&id)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, false, nil
	case err != nil:
		return 0, false, fmt.Errorf("look up press of SOS %s of vehicle %s: %w", sosID, vehicleID, err)
	}
	return id, true, nil
}

// recordPress records a counted press of the vehicle's SOS id, so a
// redelivery of it is recognised.
func recordPress(ctx context.Context, tx pgx.Tx, vehicleID, sosID string, pressed time.Time, incidentID int64) error {
	if _, err := tx.Exec(ctx, `
		INSERT INTO incident_presses (vehicle_id, sos_id, pressed_at, incident_id) VALUES ($1, $2, $3, $4)
		ON CONFLICT (vehicle_id, sos_id, pressed_at) DO UPDATE SET incident_id = excluded.incident_id`,
		vehicleID, sosID, pressed, incidentID); err != nil {
		return fmt.Errorf("record press of SOS %s on incident %d: %w", sosID, incidentID, err)
	}
	return nil
}

// incidentEvent adds an event to an incident, sets its UpdatedAt and
// returns the change.
func incidentEvent(ctx context.Context, tx pgx.Tx, id int64, typ, actor, detail string, now time.Time) (store.IncidentChange, error) {
	var change store.IncidentChange
	var err error
	change.Incident, err = scanIncident(tx.QueryRow(ctx, `
		UPDATE incidents SET updated_at = $2 WHERE id = $1 RETURNING `+incidentColumns, id, now))
	if err != nil {
		return change, fmt.Errorf("update incident %d: %w", id, err)
	}
	change.Event, err = addEvent(ctx, tx, id, typ, actor, store.CleanText(detail), now)
	return change, err
}

func addEvent(ctx context.Context, tx pgx.Tx, incidentID int64, typ, actor, detail string, at time.Time) (store.IncidentEvent, error) {
	ev := store.IncidentEvent{IncidentID: incidentID, Type: typ, Actor: actor, Detail: detail, At: at}
	err := tx.QueryRow(ctx, `
		INSERT INTO incident_events (incident_id, type, actor, detail, at) VALUES ($1, $2, $3, $4, $5)
		RETURNING id`, incidentID, typ, actor, detail, at).Scan(&ev.ID)
	if err != nil {
		return ev, fmt.Errorf("add %s event to incident %d: %w", typ, incidentID, err)
	}
	return ev, nil
}

func scanIncident(row pgx.Row) (store.Incident, error) {
	var (
		inc                      store.Incident
		kind, state              string
		lat, lon                 *float64
		pressed, recvd           time.Time
		opened, updated          time.Time
		acknowledged, dispatched *time.Time
		resolved, cancelled      *time.Time
	)
	err := row.Scan(&inc.ID, &inc.SOSID, &inc.VehicleID, &inc.AgentID, &inc.Region, &kind, &state, &inc.Note,
		&inc.HasLocation, &lat, &lon, &pressed, &recvd, &opened, &updated, &inc.Presses, &inc.CancelRequested, &inc.Historical,
		&inc.AssignedTo, &acknowledged, &dispatched, &resolved, &cancelled, &inc.EscalationLevel)
	if err != nil {
		return store.Incident{}, err
	}
	inc.Kind, inc.State = protocol.SOSKind(kind), store.IncidentState(state)
	if lat != nil && lon != nil {
		inc.Lat, inc.Lon = *lat, *lon
	}
	inc.PressedAt, inc.ReceivedAt = pressed.UTC(), recvd.UTC()
	inc.OpenedAt, inc.UpdatedAt = opened.UTC(), updated.UTC()
	inc.AcknowledgedAt, inc.DispatchedAt = optionalTime(acknowledged), optionalTime(dispatched)
	inc.ResolvedAt, inc.CancelledAt = optionalTime(resolved), optionalTime(cancelled)
	return inc, nil
}

// optionalTime returns *t in UTC, or the zero time for NULL.
func optionalTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

// nullTime returns nil for the zero time, which is stored as NULL.
func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// Incidents returns incidents matching f, newest opened first, after
// skipping f.Offset of them.
func (s *Store) Incidents(ctx context.Context, f store.IncidentFilter) ([]store.Incident, error) {
	pool, err := s.getPool()
	if err != nil {
		return nil, fmt.Errorf("list incidents: %w", err)
	}

	var where []string
	var args []any
	if len(f.States) > 0 {
		states := make([]string, len(f.States))
		for i, st := range f.States {
			states[i] = string(st)
		}
		args = append(args, states)
		where = append(where, fmt.Sprintf("state = ANY($%d)", len(args)))
	}
	if f.Region != "" {
		args = append(args, f.Region)
		where = append(where, fmt.Sprintf("region = $%d", len(args)))
	}
	if f.VehicleID != "" {
		args = append(args, f.VehicleID)
		where = append(where, fmt.Sprintf("vehicle_id = $%d", len(args)))
	}
	if f.AssignedTo != "" {
		args = append(args, f.AssignedTo)
		where = append(where, fmt.Sprintf("assigned_to = $%d", len(args)))
	}
	if !f.Since.IsZero() {
		args = append(args, store.Time(f.Since))
		where = append(where, fmt.Sprintf("opened_at >= $%d", len(args)))
	}
	if !f.Until.IsZero() {
		args = append(args, store.Time(f.Until))
		where = append(where, fmt.Sprintf("opened_at < $%d", len(args)))
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	args = append(args, limit, max(f.Offset, 0))

	query := "SELECT " + incidentColumns + " FROM incidents"
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += fmt.Sprintf(" ORDER BY opened_at DESC, id DESC LIMIT $%d OFFSET $%d", len(args)-1, len(args))

	rows, err := pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("list incidents: %w", classify(err))
	}
	defer rows.Close()
	var out []store.Incident
	for rows.Next() {
		inc, err := scanIncident(rows)
		if err != nil {
			return nil, fmt.Errorf("list incidents: %w", classify(err))
		}
		out = append(out, inc)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list incidents: %w", classify(err))
	}
	return out, nil
}

// Incident returns one incident with its events, oldest event first, or
// store.ErrNotFound.
func (s *Store) Incident(ctx context.Context, id int64) (store.Incident, []store.IncidentEvent, error) {
	pool, err := s.getPool()
	if err != nil {
		return store.Incident{}, nil, fmt.Errorf("get incident %d: %w", id, err)
	}
	inc, err := scanIncident(pool.QueryRow(ctx, "SELECT "+incidentColumns+" FROM incidents WHERE id = $1", id))
	if err != nil {
		return store.Incident{}, nil, fmt.Errorf("get incident %d: %w", id, classify(err))
	}

	rows, err := pool.Query(ctx, `
		SELECT id, incident_id, type, actor, detail, at FROM incident_events
		WHERE incident_id = $1 ORDER BY at, id`, id)
	if err != nil {
		return store.Incident{}, nil, fmt.Errorf("get events of incident %d: %w", id, classify(err))
	}
	events, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.IncidentEvent, error) {
		var ev store.IncidentEvent
		err := row.Scan(&ev.ID, &ev.IncidentID, &ev.Type, &ev.Actor, &ev.Detail, &ev.At)
		ev.At = ev.At.UTC()
		return ev, err
	})
	if err != nil {
		return store.Incident{}, nil, fmt.Errorf("get events of incident %d: %w", id, classify(err))
	}
	return inc, events, nil
}
