package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// fixColumns are the columns COPY writes into fixes, in row order.
var fixColumns = []string{
	"vehicle_id", "agent_id", "region", "ts", "received_at", "lat", "lon",
	"speed_kmh", "heading_deg", "accuracy_m", "alt_m", "battery_pct", "historical",
}

// CommitBatch stores the records of b past the agent's cursor for (agent,
// spool, lane) and advances the cursor, in one transaction:
//
//  1. lock the cursor row (created at 0 if absent) with FOR UPDATE, so a
//     concurrent commit of the same lane waits and then skips what this
//     one stored, and create the agent's row if it is absent;
//  2. COPY the fixes into the partitioned fixes table;
//  3. upsert vehicle statuses, keeping the newest receive time;
//  4. apply SOS and SOS cancel records (see applySOSRecords);
//  5. upsert the vehicles, update the agent's row when its region changed
//     or its last_seen is more than agentSeenResolution old, move each
//     vehicle's latest position forward when a fix is newer and at most
//     MaxFuture ahead of the hub's clock, and set the cursor to the
//     batch's last sequence number.
//
// The agent's row is shared by the transactions of all its lanes, which
// commit at the same time on the agent's two connections (its SOS link
// and its main link). Writing it in every transaction, from the start,
// made an SOS batch wait for the GPS batch in progress to commit. So it is
// written rarely, and then only in step 5.
//
// Steps 1 and 5 each send their statements in one pipeline (pgx.Batch),
// so a batch of fixes costs five round trips to the server: BEGIN, step
// 1, the COPY, step 5 and COMMIT. The fixed cost per batch matters
// because one agent's batches commit one after another.
//
// A transaction that fails on a deadlock or serialization failure is run
// again, up to three times in all. A batch that breaks the envelope rules
// fails with protocol.ErrInvalidBatch; a lost database with
// store.ErrUnavailable. CommitBatch is safe for concurrent use.
func (s *Store) CommitBatch(ctx context.Context, b *protocol.Batch) (store.CommitResult, error) {
	if b == nil {
		return store.CommitResult{}, fmt.Errorf("commit batch: %w: nil batch", protocol.ErrInvalidBatch)
	}
	if err := b.Validate(); err != nil {
		s.metrics.commitErrors.WithLabelValues("invalid").Inc()
		return store.CommitResult{}, fmt.Errorf("commit batch: %w", err)
	}
	if b.Last() > math.MaxInt64 {
		s.metrics.commitErrors.WithLabelValues("invalid").Inc()
		return store.CommitResult{}, fmt.Errorf("commit batch: %w: seq %d exceeds the largest storable sequence number", protocol.ErrInvalidBatch, b.Last())
	}
	pool, err := s.getPool()
	if err != nil {
		return store.CommitResult{}, fmt.Errorf("commit batch %d-%d: %w", b.First(), b.Last(), err)
	}

	start := time.Now()
	var (
		res store.CommitResult
		fx  commitEffects
	)
	for attempt := 1; ; attempt++ {
		fx = commitEffects{}
		res, err = s.commitOnce(ctx, pool, b, &fx)
		if err == nil || !retryable(err) || attempt == maxCommitAttempts {
			break
		}
		s.metrics.commitRetries.Inc()
		s.log.Warn("retrying batch transaction", "agent", b.AgentID, "lane", b.Lane, "seq", b.First(), "attempt", attempt, "error", err)
	}
	s.metrics.commitSeconds.Observe(time.Since(start).Seconds())

	if err != nil {
		err = classify(err)
		switch {
		case errors.Is(err, store.ErrPrevMissing):
			s.metrics.commitErrors.WithLabelValues("prev_missing").Inc()
		case errors.Is(err, store.ErrUnavailable):
			s.metrics.commitErrors.WithLabelValues("unavailable").Inc()
		case invalidInput(err):
			s.metrics.commitErrors.WithLabelValues("invalid").Inc()
		default:
			s.metrics.commitErrors.WithLabelValues("other").Inc()
		}
		return store.CommitResult{}, fmt.Errorf("commit batch %s/%s/%s seq %d-%d: %w", b.AgentID, b.SpoolID, b.Lane, b.First(), b.Last(), err)
	}

	s.metrics.duplicates.Add(float64(res.Duplicates))
	s.countRecords(b, res)
	s.logSkipped(b, &fx)
	return res, nil
}

// commitEffects collects what a batch transaction skipped or recognised,
// to count and log once the transaction is committed, so a transaction
// that is rolled back or run again leaves no trace in the metrics.
type commitEffects struct {
	// unmatched are cancel and agent records whose SOS id matches no
	// incident of the vehicle.
	unmatched []*protocol.Record
	// invalid are agent records skipped for their content.
	invalid []invalidRecord
	// redelivered are SOS records recognised as a redelivered press.
	redelivered []*protocol.Record
}

// invalidRecord is an agent record skipped for its content, and why.
type invalidRecord struct {
	record *protocol.Record
	err    error
}

// logSkipped counts and logs the records a committed batch skipped or
// recognised as redelivered.
func (s *Store) logSkipped(b *protocol.Batch, fx *commitEffects) {
	for _, r := range fx.unmatched {
		if r.Kind == protocol.KindSOSCancel {
			s.metrics.cancelsUnmatched.Inc()
			s.log.Warn("SOS cancel matches no incident", "agent", b.AgentID, "vehicle", r.VehicleID, "sos", r.Cancel.ID, "seq", r.Seq)
			continue
		}
		s.metrics.agentRecordsSkipped.WithLabelValues(string(r.Kind), "unmatched").Inc()
		s.log.Warn("agent record matches no incident", "agent", b.AgentID, "kind", r.Kind, "vehicle", r.VehicleID,
			"sos", store.AgentRecordSOSID(r), "seq", r.Seq)
	}
	for _, inv := range fx.invalid {
		s.metrics.agentRecordsSkipped.WithLabelValues(string(inv.record.Kind), "invalid").Inc()
		s.log.Warn("agent record skipped", "agent", b.AgentID, "kind", inv.record.Kind, "vehicle", inv.record.VehicleID,
			"sos", store.AgentRecordSOSID(inv.record), "seq", inv.record.Seq, "error", inv.err)
	}
	for _, r := range fx.redelivered {
		s.metrics.redelivered.Inc()
		s.log.Info("SOS redelivered with the press time of a counted press", "agent", b.AgentID, "vehicle", r.VehicleID,
			"sos", r.SOS.ID, "seq", r.Seq)
	}
}

// commitOnce runs the batch transaction once.
func (s *Store) commitOnce(ctx context.Context, pool pgxBeginner, b *protocol.Batch, fx *commitEffects) (store.CommitResult, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return store.CommitResult{}, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit; on failure the first error is returned

	now := s.now()
	spoolID := store.CleanText(b.SpoolID)
	region := store.CleanText(b.Region)

	cursor, known, agent, err := lockCursor(ctx, tx, b, spoolID, region, now)
	if err != nil {
		return store.CommitResult{}, err
	}
	if b.Prev > cursor {
		return store.CommitResult{Through: cursor}, fmt.Errorf("%w: prev %d, cursor %d", store.ErrPrevMissing, b.Prev, cursor)
	}
	res := store.CommitResult{Through: cursor}
	first := len(b.Records)
	for i := range b.Records {
		if b.Records[i].Seq > cursor {
			first = i
			break
		}
	}
	fresh := b.Records[first:]
	res.Duplicates = first

	if len(fresh) == 0 {
		if err := tx.Commit(ctx); err != nil {
			return store.CommitResult{}, fmt.Errorf("commit: %w", err)
		}
		return res, nil
	}
	s.logGap(b, cursor, fresh[0].Seq)

	var statuses, sos []*protocol.Record
	res.Fixes, statuses, sos = store.SplitRecords(b.AgentID, region, fresh)

	if err := copyFixes(ctx, tx, res.Fixes); err != nil {
		return store.CommitResult{}, err
	}
	if res.Statuses, err = writeStatuses(ctx, tx, b.AgentID, statuses); err != nil {
		return store.CommitResult{}, err
	}
	if res.Incidents, err = s.applySOSRecords(ctx, tx, b, region, sos, now, fx); err != nil {
		return store.CommitResult{}, err
	}
	res.Unmatched, res.Invalid = len(fx.unmatched), len(fx.invalid)

	if err := s.finishBatch(ctx, tx, b, spoolID, region, known, agent, fresh, res.Fixes, now); err != nil {
		return store.CommitResult{}, err
	}
	if err := tx.Commit(ctx); err != nil {
		return store.CommitResult{}, fmt.Errorf("commit: %w", err)
	}
	res.Through = b.Last()
	return res, nil
}

// pgxBeginner is the part of a pool CommitBatch needs.
type pgxBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// agentSeenResolution is how far the hub's clock must have moved past an
// agent's stored last_seen before a batch writes it again (see
// CommitBatch).
const agentSeenResolution = time.Minute

// agentSeen is an agent's stored row as a batch transaction read it.
type agentSeen struct {
	region   string
	lastSeen time.Time
}

// lockCursor returns the lane's cursor and holds its row lock until the
// transaction ends, creates the agent's row if it is absent and reads it,
// and reads the stored rows of the batch's vehicles (see readVehicles),
// in one round trip. The agent's row is not locked: INSERT ... ON
// CONFLICT DO NOTHING does not wait for a transaction that updates it. When two
// transactions create the same cursor at once, the second INSERT waits for
// the first to commit and then does nothing, and its SELECT, which takes a
// new snapshot under READ COMMITTED, reads the committed value.
func lockCursor(ctx context.Context, tx pgx.Tx, b *protocol.Batch, spoolID, region string, now time.Time) (uint64, map[string]vehicleSeen, agentSeen, error) {
	agentID, lane := b.AgentID, string(b.Lane)
	batch := &pgx.Batch{}
	batch.Queue(`
		INSERT INTO agent_cursors (agent_id, spool_id, lane, seq, updated_at) VALUES ($1, $2, $3, 0, $4)
		ON CONFLICT (agent_id, spool_id, lane) DO NOTHING`,
		agentID, spoolID, lane, now)
	batch.Queue(`
		SELECT seq FROM agent_cursors WHERE agent_id = $1 AND spool_id = $2 AND lane = $3 FOR UPDATE`,
		agentID, spoolID, lane)
	batch.Queue(`
		INSERT INTO agents (id, region, first_seen, last_seen) VALUES ($1, $2, $3, $3)
		ON CONFLICT (id) DO NOTHING`,
		agentID, region, now)
	batch.Queue(`SELECT region, last_seen FROM agents WHERE id = $1`, agentID)
	ids := vehicleIDs(b.Records)
	queueReadVehicles(batch, ids)
	results := tx.SendBatch(ctx, batch)
	defer results.Close()

	var agent agentSeen
	if _, err := results.Exec(); err != nil {
		return 0, nil, agent, fmt.Errorf("create cursor: %w", err)
	}
	var seq int64
	if err := results.QueryRow().Scan(&seq); err != nil {
		return 0, nil, agent, fmt.Errorf("lock cursor: %w", err)
	}
	if _, err := results.Exec(); err != nil {
		return 0, nil, agent, fmt.Errorf("create agent: %w", err)
	}
	if err := results.QueryRow().Scan(&agent.region, &agent.lastSeen); err != nil {
		return 0, nil, agent, fmt.Errorf("read agent: %w", err)
	}
	known, err := readVehicles(results, len(ids))
	if err != nil {
		return 0, nil, agent, err
	}
	if err := results.Close(); err != nil {
		return 0, nil, agent, fmt.Errorf("lock cursor: %w", err)
	}
	return uint64(seq), known, agent, nil
}

// finishBatch sends the batch transaction's last statements in one
// round trip: the vehicles of fresh whose row must change (known holds the
// rows lockCursor read), the agent's row when it must change (see
// CommitBatch), the latest positions of fixes, and the cursor moved to
// the batch's last sequence number.
func (s *Store) finishBatch(ctx context.Context, tx pgx.Tx, b *protocol.Batch, spoolID, region string,
	known map[string]vehicleSeen, agent agentSeen, fresh []protocol.Record, fixes []store.StoredFix, now time.Time) error {
	batch := &pgx.Batch{}
	steps := make([]string, 0, 4)
	if agent.region != region || now.Sub(agent.lastSeen) > agentSeenResolution {
		batch.Queue(`UPDATE agents SET region = $2, last_seen = GREATEST(last_seen, $3) WHERE id = $1`, b.AgentID, region, now)
		steps = append(steps, "update agent")
	}
	if queueVehicles(batch, b.AgentID, region, known, vehicleRecords(fresh)) {
		steps = append(steps, "upsert vehicles")
	}
	if s.queueLatestPositions(batch, fixes, now) {
		steps = append(steps, "update latest positions")
	}
	batch.Queue(`
		UPDATE agent_cursors SET seq = $4, updated_at = $5
		WHERE agent_id = $1 AND spool_id = $2 AND lane = $3`,
		b.AgentID, spoolID, string(b.Lane), int64(b.Last()), now)
	steps = append(steps, "advance cursor")

	results := tx.SendBatch(ctx, batch)
	defer results.Close()
	for _, step := range steps {
		if _, err := results.Exec(); err != nil {
			return fmt.Errorf("%s: %w", step, err)
		}
	}
	if err := results.Close(); err != nil {
		return fmt.Errorf("advance cursor: %w", err)
	}
	return nil
}

// copyFixes copies fixes into the fixes table.
func copyFixes(ctx context.Context, tx pgx.Tx, fixes []store.StoredFix) error {
	if len(fixes) == 0 {
		return nil
	}
	_, err := tx.CopyFrom(ctx, pgx.Identifier{"fixes"}, fixColumns, pgx.CopyFromSlice(len(fixes), func(i int) ([]any, error) {
		f := &fixes[i]
		return []any{
			f.VehicleID, f.AgentID, f.Region, f.Fix.Time, f.ReceivedAt, f.Fix.Lat, f.Fix.Lon,
			f.Fix.SpeedKmh, f.Fix.HeadingDeg, f.Fix.AccuracyM, f.Fix.AltM, f.Fix.BatteryPct, f.Historical,
		}, nil
	}))
	if err != nil {
		return fmt.Errorf("copy fixes: %w", err)
	}
	return nil
}

// queueLatestPositions queues the upsert of latest positions, and reports
// whether there was one. A vehicle's latest position moves only to a fix
// with a newer fix time that is at most MaxFuture ahead of now. So
// buffered fixes that arrive late do not move it back, and a fix from a
// device clock set years ahead does not freeze it.
func (s *Store) queueLatestPositions(batch *pgx.Batch, fixes []store.StoredFix, now time.Time) bool {
	// One candidate per vehicle: ON CONFLICT cannot update a row twice in one statement.
	limit := now.Add(s.cfg.MaxFuture)
	newest := make(map[string]int)
	for i := range fixes {
		f := &fixes[i]
		if f.Fix.Time.After(limit) {
			continue
		}
		if j, ok := newest[f.VehicleID]; !ok || f.Fix.Time.After(fixes[j].Fix.Time) {
			newest[f.VehicleID] = i
		}
	}
	if len(newest) == 0 {
		return false
	}
	picked := make([]int, 0, len(newest))
	for _, i := range newest {
		picked = append(picked, i)
	}
	slices.SortFunc(picked, func(a, b int) int { return strings.Compare(fixes[a].VehicleID, fixes[b].VehicleID) })

	n := len(picked)
	var (
		vehicles, agents, regions = make([]string, n), make([]string, n), make([]string, n)
		times, received           = make([]time.Time, n), make([]time.Time, n)
		lats, lons                = make([]float64, n), make([]float64, n)
		speeds, headings          = make([]*float64, n), make([]*float64, n)
		accuracies, alts, battery = make([]*float64, n), make([]*float64, n), make([]*float64, n)
	)
	for k, i := range picked {
		f := &fixes[i]
		vehicles[k], agents[k], regions[k] = f.VehicleID, f.AgentID, f.Region
		times[k], received[k] = f.Fix.Time, f.ReceivedAt
		lats[k], lons[k] = f.Fix.Lat, f.Fix.Lon
		speeds[k], headings[k] = f.Fix.SpeedKmh, f.Fix.HeadingDeg
		accuracies[k], alts[k], battery[k] = f.Fix.AccuracyM, f.Fix.AltM, f.Fix.BatteryPct
	}
	batch.Queue(`
		INSERT INTO latest_positions (vehicle_id, agent_id, region, ts, received_at, lat, lon,
			speed_kmh, heading_deg, accuracy_m, alt_m, battery_pct, updated_at)
		SELECT u.*, $13::timestamptz
		FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
			$6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::float8[], $11::float8[], $12::float8[]) AS u
		ORDER BY 1
		ON CONFLICT (vehicle_id) DO UPDATE SET
			agent_id = excluded.agent_id, region = excluded.region, ts = excluded.ts,
			received_at = excluded.received_at, lat = excluded.lat, lon = excluded.lon,
			speed_kmh = excluded.speed_kmh, heading_deg = excluded.heading_deg,
			accuracy_m = excluded.accuracy_m, alt_m = excluded.alt_m,
			battery_pct = excluded.battery_pct, updated_at = excluded.updated_at
		WHERE excluded.ts > latest_positions.ts`,
		vehicles, agents, regions, times, received, lats, lons,
		speeds, headings, accuracies, alts, battery, now)
	return true
}

// writeStatuses upserts each status record in order and returns those
// that changed the stored status. A status older, by agent receive time,
// than the stored one is kept in no table, since it is already superseded.
func writeStatuses(ctx context.Context, tx pgx.Tx, agentID string, records []*protocol.Record) ([]store.VehicleStatus, error) {
	if len(records) == 0 {
		return nil, nil
	}
	batch := &pgx.Batch{}
	for _, r := range records {
		batch.Queue(`
			INSERT INTO vehicle_status (vehicle_id, online, agent_id, received_at) VALUES ($1, $2, $3, $4)
			ON CONFLICT (vehicle_id) DO UPDATE
			SET online = excluded.online, agent_id = excluded.agent_id, received_at = excluded.received_at
			WHERE excluded.received_at >= vehicle_status.received_at
			RETURNING vehicle_id`,
			r.VehicleID, r.Status.Online, agentID, store.Time(r.ReceivedAt))
	}
	results := tx.SendBatch(ctx, batch)
	var stored []store.VehicleStatus
	for _, r := range records {
		var id string
		err := results.QueryRow().Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			results.Close()
			return nil, fmt.Errorf("upsert status of vehicle %s: %w", r.VehicleID, err)
		}
		stored = append(stored, store.VehicleStatus{
			VehicleID:  r.VehicleID,
			AgentID:    agentID,
			Online:     r.Status.Online,
			ReceivedAt: store.Time(r.ReceivedAt),
		})
	}
	if err := results.Close(); err != nil {
		return nil, fmt.Errorf("upsert statuses: %w", err)
	}
	return stored, nil
}

// logGap logs records missing between the cursor and the batch. Gaps are
// expected in the GPS lane, where the agent evicts old fixes under disk
// pressure; elsewhere they mean lost data or a restored database.
func (s *Store) logGap(b *protocol.Batch, cursor, first uint64) {
	if first <= cursor+1 {
		return
	}
	attrs := []any{"agent", b.AgentID, "spool", b.SpoolID, "lane", b.Lane, "cursor", cursor, "seq", first}
	if b.Lane == protocol.LaneGPS {
		s.log.Debug("sequence gap in batch", attrs...)
		return
	}
	s.log.Warn("sequence gap in batch", attrs...)
}

// countRecords adds the stored records to the metrics by kind.
func (s *Store) countRecords(b *protocol.Batch, res store.CommitResult) {
	counts := make(map[protocol.RecordKind]int)
	for i := res.Duplicates; i < len(b.Records); i++ {
		counts[b.Records[i].Kind]++
	}
	for kind, n := range counts {
		s.metrics.recordsCommitted.WithLabelValues(string(kind)).Add(float64(n))
	}
}
