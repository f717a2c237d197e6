package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// applySOSRecords applies a batch's SOS-lane records and returns the
// incident changes in record order.
//
// Applying one SOS with applySOS takes about eight round trips to the
// server, one after the other, and a burst of SOS from many vehicles
// arrives as batches of hundreds of them. So the SOS records that plainly
// open a new incident go together (see openIncidentsBulk): three round
// trips for the whole set. A record qualifies when it is an SOS and its
// vehicle's only record in the batch. It opens an incident there when the
// vehicle has no press of it, no mapping of its SOS id and no active
// incident within store.RepeatWindow. All three are checked under the
// vehicles' advisory locks.
// Every other record goes through applySOS, after the set, in batch
// order. Records of different vehicles touch different rows, so the
// result is what applying them one by one gives.
func (s *Store) applySOSRecords(ctx context.Context, tx pgx.Tx, b *protocol.Batch, region string, recs []*protocol.Record, now time.Time, fx *commitEffects) ([]store.IncidentChange, error) {
	var opened map[*protocol.Record]store.IncidentChange
	if candidates := bulkCandidates(recs); len(candidates) > 0 {
		var err error
		if opened, err = s.openIncidentsBulk(ctx, tx, b, region, candidates, now); err != nil {
			return nil, err
		}
	}
	var changes []store.IncidentChange
	for _, r := range recs {
		if change, ok := opened[r]; ok {
			changes = append(changes, change)
			continue
		}
		change, ok, err := s.applySOS(ctx, tx, b, region, r, now, fx)
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", r.Seq, err)
		}
		if ok {
			changes = append(changes, change)
		}
	}
	return changes, nil
}

// activeStatesList is activeStates as an SQL list of literals. With the
// states as literals the planner can use incidents_active_vehicle_idx,
// whose predicate lists them. With an array parameter it scanned the
// whole incidents table once per SOS of the batch: a batch of 1,000 SOS
// took 1.2 s with 10,000 incidents stored (BenchmarkCommitBatch_SOSBurst).
var activeStatesList = "'" + strings.Join(activeStates, "', '") + "'"

// bulkCandidates returns the SOS records of recs whose vehicle has no
// other record in recs, in batch order.
func bulkCandidates(recs []*protocol.Record) []*protocol.Record {
	perVehicle := make(map[string]int, len(recs))
	for _, r := range recs {
		perVehicle[r.VehicleID]++
	}
	var out []*protocol.Record
	for _, r := range recs {
		if r.Kind == protocol.KindSOS && perVehicle[r.VehicleID] == 1 {
			out = append(out, r)
		}
	}
	return out
}

// openIncidentsBulk opens one incident for each of the candidates that
// is a new emergency, and returns their changes by record. It takes the
// advisory locks of all the candidates' vehicles in the order of their
// lock keys, so two such transactions do not deadlock on them. PostgreSQL
// detects a deadlock with applySOS, which locks in batch order, and
// CommitBatch then runs the transaction again. In the same round trip it
// finds the candidates that are not plainly new. Those are
// left out of the result for applySOS to handle; it takes the same lock
// again, which a transaction already holding it gets at once.
func (s *Store) openIncidentsBulk(ctx context.Context, tx pgx.Tx, b *protocol.Batch, region string, candidates []*protocol.Record, now time.Time) (map[*protocol.Record]store.IncidentChange, error) {
	n := len(candidates)
	vehicles, sosIDs := make([]string, n), make([]string, n)
	pressed, received := make([]time.Time, n), make([]time.Time, n)
	for i, r := range candidates {
		vehicles[i], sosIDs[i] = r.VehicleID, r.SOS.ID
		pressed[i], received[i] = store.PressTime(r), store.Time(r.ReceivedAt)
	}

	// Round trip 1: lock the vehicles, then find the candidates that are
	// not new. The statements of a pipeline run in order, so the check
	// runs under the locks. Under READ COMMITTED its snapshot includes
	// every transaction that held one of them before.
	check := &pgx.Batch{}
	check.Queue(`
		SELECT count(pg_advisory_xact_lock($1, k))
		FROM (SELECT DISTINCT hashtext(v) AS k FROM unnest($2::text[]) AS v ORDER BY k OFFSET 0) AS keys`,
		lockClassSOS, vehicles)
	check.Queue(`
		SELECT t.ord FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
			WITH ORDINALITY AS t(vehicle_id, sos_id, pressed_at, received_at, ord)
		WHERE EXISTS (SELECT 1 FROM incident_presses p
		              WHERE p.vehicle_id = t.vehicle_id AND p.sos_id = t.sos_id AND p.pressed_at = t.pressed_at)
		   OR EXISTS (SELECT 1 FROM incident_sos_ids m WHERE m.vehicle_id = t.vehicle_id AND m.sos_id = t.sos_id)
		   OR EXISTS (SELECT 1 FROM incidents i
		              WHERE i.vehicle_id = t.vehicle_id AND i.state IN (`+activeStatesList+`)
		                AND i.received_at BETWEEN t.received_at - make_interval(secs => $5)
		                                      AND t.received_at + make_interval(secs => $5))`,
		vehicles, sosIDs, pressed, received, store.RepeatWindow.Seconds())
	results := tx.SendBatch(ctx, check)
	if _, err := results.Exec(); err != nil {
		results.Close()
		return nil, fmt.Errorf("lock the vehicles of %d SOS: %w", n, err)
	}
	notNew := make(map[int]bool)
	rows, err := results.Query()
	if err == nil {
		var ord int64
		_, err = pgx.ForEachRow(rows, []any{&ord}, func() error {
			notNew[int(ord)-1] = true
			return nil
		})
	}
	if cerr := results.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("check %d SOS for earlier presses and active incidents: %w", n, err)
	}

	fresh := make([]*protocol.Record, 0, n-len(notNew))
	for i, r := range candidates {
		if !notNew[i] {
			fresh = append(fresh, r)
		}
	}
	if len(fresh) == 0 {
		return nil, nil
	}

	// Round trip 2: insert the incidents, numbered in batch order.
	m := len(fresh)
	var (
		cols = struct {
			sosID, vehicle, kind, note []string
			hasLoc, historical         []bool
			lat, lon                   []*float64
			pressed, received          []time.Time
		}{
			sosID: make([]string, m), vehicle: make([]string, m), kind: make([]string, m), note: make([]string, m),
			hasLoc: make([]bool, m), historical: make([]bool, m),
			lat: make([]*float64, m), lon: make([]*float64, m),
			pressed: make([]time.Time, m), received: make([]time.Time, m),
		}
		byVehicle = make(map[string]*protocol.Record, m)
	)
	for i, r := range fresh {
		sos := r.SOS
		cols.sosID[i], cols.vehicle[i] = sos.ID, r.VehicleID
		cols.kind[i] = store.CleanText(string(sosKind(sos)))
		cols.note[i] = store.CleanText(sos.Note)
		cols.hasLoc[i], cols.historical[i] = sos.HasLocation, r.Historical
		if sos.HasLocation {
			lat, lon := sos.Lat, sos.Lon
			cols.lat[i], cols.lon[i] = &lat, &lon
		}
		cols.pressed[i], cols.received[i] = store.PressTime(r), store.Time(r.ReceivedAt)
		byVehicle[r.VehicleID] = r
	}
	rows, err = tx.Query(ctx, `
		INSERT INTO incidents (sos_id, vehicle_id, agent_id, region, kind, state, note, has_location,
			lat, lon, pressed_at, received_at, opened_at, updated_at, presses, cancel_requested, historical)
		SELECT t.sos_id, t.vehicle_id, $11, $12, t.kind, $13, t.note, t.has_location,
			t.lat, t.lon, t.pressed_at, t.received_at, $14, $14, 1, false, t.historical
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::float8[], $7::float8[],
			$8::timestamptz[], $9::timestamptz[], $10::bool[])
			WITH ORDINALITY AS t(sos_id, vehicle_id, kind, note, has_location, lat, lon, pressed_at, received_at, historical, ord)
		ORDER BY t.ord
		RETURNING `+incidentColumns,
		cols.sosID, cols.vehicle, cols.kind, cols.note, cols.hasLoc, cols.lat, cols.lon, cols.pressed, cols.received, cols.historical,
		b.AgentID, region, string(store.StateOpen), now)
	if err != nil {
		return nil, fmt.Errorf("open %d incidents: %w", m, err)
	}
	opened := make(map[*protocol.Record]store.IncidentChange, m)
	ids := make(map[int64]*protocol.Record, m)
	for rows.Next() {
		inc, err := scanIncident(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("open %d incidents: %w", m, err)
		}
		r := byVehicle[inc.VehicleID]
		opened[r] = store.IncidentChange{Incident: inc, Opened: true}
		ids[inc.ID] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("open %d incidents: %w", m, err)
	}
	if len(opened) != m {
		return nil, fmt.Errorf("open %d incidents: %d rows returned", m, len(opened))
	}

	// Round trip 3: map the SOS ids, record the presses, add the opened
	// events.
	incIDs, actors, details := make([]int64, m), make([]string, m), make([]string, m)
	for i, r := range fresh {
		incIDs[i] = opened[r].Incident.ID
		actors[i] = "vehicle:" + r.VehicleID
		details[i] = openedDetail(r.SOS)
	}
	rest := &pgx.Batch{}
	rest.Queue(`
		INSERT INTO incident_sos_ids (vehicle_id, sos_id, incident_id)
		SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
		ON CONFLICT (vehicle_id, sos_id) DO UPDATE SET incident_id = excluded.incident_id`,
		cols.vehicle, cols.sosID, incIDs)
	rest.Queue(`
		INSERT INTO incident_presses (vehicle_id, sos_id, pressed_at, incident_id)
		SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[])
		ON CONFLICT (vehicle_id, sos_id, pressed_at) DO UPDATE SET incident_id = excluded.incident_id`,
		cols.vehicle, cols.sosID, cols.pressed, incIDs)
	rest.Queue(`
		INSERT INTO incident_events (incident_id, type, actor, detail, at)
		SELECT t.incident_id, $4, t.actor, t.detail, $5
		FROM unnest($1::bigint[], $2::text[], $3::text[]) WITH ORDINALITY AS t(incident_id, actor, detail, ord)
		ORDER BY t.ord
		RETURNING id, incident_id`,
		incIDs, actors, details, store.EventOpened, now)
	results = tx.SendBatch(ctx, rest)
	defer results.Close()
	if _, err := results.Exec(); err != nil {
		return nil, fmt.Errorf("map the SOS ids of %d incidents: %w", m, err)
	}
	if _, err := results.Exec(); err != nil {
		return nil, fmt.Errorf("record the presses of %d incidents: %w", m, err)
	}
	rows, err = results.Query()
	if err != nil {
		return nil, fmt.Errorf("add the opened events of %d incidents: %w", m, err)
	}
	var evID, incID int64
	events := 0
	if _, err := pgx.ForEachRow(rows, []any{&evID, &incID}, func() error {
		r, ok := ids[incID]
		if !ok {
			return fmt.Errorf("event %d names incident %d, which this batch did not open", evID, incID)
		}
		change := opened[r]
		change.Event = store.IncidentEvent{
			ID: evID, IncidentID: incID, Type: store.EventOpened, Actor: "vehicle:" + r.VehicleID,
			Detail: openedDetail(r.SOS), At: now,
		}
		opened[r] = change
		events++
		return nil
	}); err != nil {
		return nil, fmt.Errorf("add the opened events of %d incidents: %w", m, err)
	}
	if events != m {
		return nil, fmt.Errorf("add the opened events of %d incidents: %d rows returned", m, events)
	}

	for _, r := range fresh {
		inc := opened[r].Incident
		s.metrics.incidentsOpened.Inc()
		s.log.Info("incident opened", "incident", inc.ID, "agent", b.AgentID, "vehicle", r.VehicleID, "sos", r.SOS.ID,
			"kind", sosKind(r.SOS), "historical", r.Historical)
	}
	return opened, nil
}
