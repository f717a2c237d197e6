package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// Cursor returns the last committed sequence number of an agent's spool
// lane, or 0 when nothing was committed from that spool.
func (s *Store) Cursor(ctx context.Context, agentID, spoolID string, lane protocol.Lane) (uint64, error) {
	pool, err := s.getPool()
	if err != nil {
		return 0, fmt.Errorf("read cursor: %w", err)
	}
	var seq int64
	err = pool.QueryRow(ctx, `SELECT seq FROM agent_cursors WHERE agent_id = $1 AND spool_id = $2 AND lane = $3`,
		agentID, store.CleanText(spoolID), string(lane)).Scan(&seq)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("read cursor of agent %s lane %s: %w", agentID, lane, classify(err))
	}
	return uint64(seq), nil
}

// LatestPositions returns each vehicle's fix with the newest fix time,
// ordered by vehicle id, with its last reported online state.
func (s *Store) LatestPositions(ctx context.Context) ([]store.Position, error) {
	pool, err := s.getPool()
	if err != nil {
		return nil, fmt.Errorf("read latest positions: %w", err)
	}
	rows, err := pool.Query(ctx, `
		SELECT p.vehicle_id, p.agent_id, p.region, p.ts, p.received_at, p.lat, p.lon,
			p.speed_kmh, p.heading_deg, p.accuracy_m, p.alt_m, p.battery_pct, st.online
		FROM latest_positions p
		LEFT JOIN vehicle_status st ON st.vehicle_id = p.vehicle_id
		ORDER BY p.vehicle_id`)
	if err != nil {
		return nil, fmt.Errorf("read latest positions: %w", classify(err))
	}
	positions, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Position, error) {
		var p store.Position
		err := row.Scan(&p.VehicleID, &p.AgentID, &p.Region, &p.Fix.Time, &p.ReceivedAt, &p.Fix.Lat, &p.Fix.Lon,
			&p.Fix.SpeedKmh, &p.Fix.HeadingDeg, &p.Fix.AccuracyM, &p.Fix.AltM, &p.Fix.BatteryPct, &p.Online)
		p.Fix.Time, p.ReceivedAt = p.Fix.Time.UTC(), p.ReceivedAt.UTC()
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("read latest positions: %w", classify(err))
	}
	return positions, nil
}

// Fixes returns a vehicle's fixes with fix time in [from, to), oldest
// first, at most limit of them. A limit of zero or less means
// DefaultFixLimit.
func (s *Store) Fixes(ctx context.Context, vehicleID string, from, to time.Time, limit int) ([]store.StoredFix, error) {
	pool, err := s.getPool()
	if err != nil {
		return nil, fmt.Errorf("read fixes: %w", err)
	}
	if limit <= 0 {
		limit = DefaultFixLimit
	}
	rows, err := pool.Query(ctx, `
		SELECT vehicle_id, agent_id, region, ts, received_at, lat, lon,
			speed_kmh, heading_deg, accuracy_m, alt_m, battery_pct, historical
		FROM fixes
		WHERE vehicle_id = $1 AND ts >= $2 AND ts < $3
		ORDER BY ts
		LIMIT $4`, vehicleID, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("read fixes of vehicle %s: %w", vehicleID, classify(err))
	}
	fixes, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.StoredFix, error) {
		var f store.StoredFix
		err := row.Scan(&f.VehicleID, &f.AgentID, &f.Region, &f.Fix.Time, &f.ReceivedAt, &f.Fix.Lat, &f.Fix.Lon,
			&f.Fix.SpeedKmh, &f.Fix.HeadingDeg, &f.Fix.AccuracyM, &f.Fix.AltM, &f.Fix.BatteryPct, &f.Historical)
		f.Fix.Time, f.ReceivedAt = f.Fix.Time.UTC(), f.ReceivedAt.UTC()
		return f, err
	})
	if err != nil {
		return nil, fmt.Errorf("read fixes of vehicle %s: %w", vehicleID, classify(err))
	}
	return fixes, nil
}
