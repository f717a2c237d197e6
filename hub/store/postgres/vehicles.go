package postgres

import (
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// vehicleSeen is a vehicle's stored row: the agent and region it was last
// seen through, and when.
type vehicleSeen struct {
	agentID, region string
	lastSeen        time.Time
}

// vehicleIDs returns the distinct vehicle ids of the records that are
// messages from vehicles (see store.VehicleRecord), sorted.
func vehicleIDs(records []protocol.Record) []string {
	ids := make([]string, 0, len(records))
	for i := range records {
		if store.VehicleRecord(&records[i]) {
			ids = append(ids, records[i].VehicleID)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// queueReadVehicles queues the read of the vehicles rows of ids, when there
// are any.
func queueReadVehicles(batch *pgx.Batch, ids []string) {
	if len(ids) == 0 {
		return
	}
	batch.Queue(`
		SELECT v.id, v.agent_id, v.region, v.last_seen
		FROM unnest($1::text[]) AS u(id) JOIN vehicles v ON v.id = u.id`, ids)
}

// readVehicles reads the result of queueReadVehicles for ids vehicles.
func readVehicles(results pgx.BatchResults, ids int) (map[string]vehicleSeen, error) {
	if ids == 0 {
		return nil, nil
	}
	rows, err := results.Query()
	if err != nil {
		return nil, fmt.Errorf("read vehicles: %w", err)
	}
	defer rows.Close()
	known := make(map[string]vehicleSeen, ids)
	for rows.Next() {
		var id string
		var v vehicleSeen
		if err := rows.Scan(&id, &v.agentID, &v.region, &v.lastSeen); err != nil {
			return nil, fmt.Errorf("read vehicles: %w", err)
		}
		known[id] = v
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read vehicles: %w", err)
	}
	return known, nil
}

// changes reports whether a vehicle seen through agentID and region at
// last changes its stored row v. By the rule of queueVehicles' WHERE
// clause, last_seen moves only when it advances by more than a minute, or
// advances at all while the agent or region changes.
func (v vehicleSeen) changes(agentID, region string, last time.Time) bool {
	if last.After(v.lastSeen.Add(time.Minute)) {
		return true
	}
	return last.After(v.lastSeen) && (agentID != v.agentID || region != v.region)
}

// queueVehicles queues the upsert that records the agent and region each
// vehicle was last seen through, and reports whether there was one. Rows
// are written in vehicle id order, so concurrent batches lock them in the
// same order. last_seen moves only when it advances by more than a minute
// or the agent or region changes, which keeps steady GPS traffic from
// rewriting every vehicle row on every batch.
//
// Vehicles whose row in known would not change are left out: the upsert
// locks every row it conflicts with, even one its WHERE clause then
// leaves alone, and a row lock is a write. The WHERE clause still decides,
// because another transaction may have changed a row since known was read.
// Such a change only moves last_seen forward, so it never makes a
// left-out vehicle need an update.
func queueVehicles(batch *pgx.Batch, agentID, region string, known map[string]vehicleSeen, records []protocol.Record) bool {
	if len(records) == 0 {
		return false
	}
	type seen struct{ first, last time.Time }
	byVehicle := make(map[string]seen)
	for i := range records {
		r := &records[i]
		at := store.Time(r.ReceivedAt)
		v, ok := byVehicle[r.VehicleID]
		if !ok {
			v = seen{at, at}
		}
		if at.Before(v.first) {
			v.first = at
		}
		if at.After(v.last) {
			v.last = at
		}
		byVehicle[r.VehicleID] = v
	}
	ids := make([]string, 0, len(byVehicle))
	for id, v := range byVehicle {
		if stored, ok := known[id]; ok && !stored.changes(agentID, region, v.last) {
			continue
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return false
	}
	slices.Sort(ids)
	firsts := make([]time.Time, len(ids))
	lasts := make([]time.Time, len(ids))
	for i, id := range ids {
		firsts[i], lasts[i] = byVehicle[id].first, byVehicle[id].last
	}

	batch.Queue(`
		INSERT INTO vehicles (id, agent_id, region, first_seen, last_seen)
		SELECT u.id, $2, $3, u.first_seen, u.last_seen
		FROM unnest($1::text[], $4::timestamptz[], $5::timestamptz[]) AS u(id, first_seen, last_seen)
		ORDER BY u.id
		ON CONFLICT (id) DO UPDATE
		SET agent_id = excluded.agent_id, region = excluded.region, last_seen = excluded.last_seen
		WHERE excluded.last_seen > vehicles.last_seen + interval '1 minute'
		   OR (excluded.last_seen > vehicles.last_seen
		       AND (excluded.agent_id, excluded.region) IS DISTINCT FROM (vehicles.agent_id, vehicles.region))`,
		ids, agentID, region, firsts, lasts)
	return true
}
