package embedded

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// vehicleSeenStep is how far a vehicle's last_seen must advance before
// it is rewritten without a change of agent or region, as in package
// postgres: steady GPS traffic does not rewrite every vehicle on every
// batch.
const vehicleSeenStep = time.Minute

// buckets are the buckets of one transaction.
type buckets struct {
	agents, vehicles, fixes, fixesByTime, latest, status       *bolt.Bucket
	incidents, incidentsByOpened, incidentsActive, incidentSOS *bolt.Bucket
	incidentEvents, cursors, incidentPresses                   *bolt.Bucket
	contacts, notifications, notificationKeys                  *bolt.Bucket
	notificationsDue, notificationsByProvider                  *bolt.Bucket
}

// bucketsOf returns the data buckets of tx, or ErrCorrupt when one is
// missing.
func bucketsOf(tx *bolt.Tx) (*buckets, error) {
	bk := &buckets{}
	for _, b := range []struct {
		name []byte
		dst  **bolt.Bucket
	}{
		{bucketAgents, &bk.agents}, {bucketVehicles, &bk.vehicles}, {bucketFixes, &bk.fixes},
		{bucketFixesByTime, &bk.fixesByTime}, {bucketLatest, &bk.latest}, {bucketStatus, &bk.status},
		{bucketIncidents, &bk.incidents}, {bucketIncidentsByOpened, &bk.incidentsByOpened},
		{bucketIncidentsActive, &bk.incidentsActive}, {bucketIncidentSOS, &bk.incidentSOS},
		{bucketIncidentEvents, &bk.incidentEvents}, {bucketCursors, &bk.cursors},
		{bucketIncidentPresses, &bk.incidentPresses}, {bucketContacts, &bk.contacts},
		{bucketNotifications, &bk.notifications}, {bucketNotificationKeys, &bk.notificationKeys},
		{bucketNotificationsDue, &bk.notificationsDue}, {bucketNotificationsProv, &bk.notificationsByProvider},
	} {
		if *b.dst = tx.Bucket(b.name); *b.dst == nil {
			return nil, fmt.Errorf("%w: bucket %s missing", ErrCorrupt, b.name)
		}
	}
	return bk, nil
}

// commitEffects are the log lines and metric updates of a commit, made
// only once its transaction is committed, so a failed transaction leaves
// no trace in the metrics.
type commitEffects struct {
	cursor uint64
	opened []store.IncidentChange
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

// CommitBatch stores the records of b past the agent's cursor for (agent,
// spool, lane) and advances the cursor, in one bbolt transaction that is
// fsynced before CommitBatch returns:
//
//  1. read the cursor and skip the records at or below it;
//  2. upsert the agent and its vehicles;
//  3. store the fixes with their retention index entries and move each
//     vehicle's latest position forward when a fix is newer and at most
//     MaxFuture ahead of the hub's clock;
//  4. store vehicle statuses, keeping the newest receive time;
//  5. apply SOS and SOS cancel records in order (see applySOS);
//  6. set the cursor to the batch's last sequence number.
//
// The rules are those of package postgres. A batch that breaks the
// envelope rules, or holds a time outside the storable range, fails with
// protocol.ErrInvalidBatch; a closed store with store.ErrUnavailable.
// Concurrent calls wait for bbolt's single writer lock, whatever their
// contexts; a call whose ctx ends while it waits writes nothing.
func (s *Store) CommitBatch(ctx context.Context, b *protocol.Batch) (store.CommitResult, error) {
	if b == nil {
		return store.CommitResult{}, fmt.Errorf("commit batch: %w: nil batch", protocol.ErrInvalidBatch)
	}
	if err := validateBatch(b); err != nil {
		s.metrics.commitErrors.WithLabelValues("invalid").Inc()
		return store.CommitResult{}, fmt.Errorf("commit batch: %w", err)
	}

	start := time.Now()
	var (
		res store.CommitResult
		fx  commitEffects
	)
	err := s.update(ctx, func(tx *bolt.Tx) error {
		var err error
		res, err = s.commitTx(tx, b, &fx)
		return err
	})
	s.metrics.commitSeconds.Observe(time.Since(start).Seconds())

	if err != nil {
		switch {
		case errors.Is(err, store.ErrPrevMissing):
			s.metrics.commitErrors.WithLabelValues("prev_missing").Inc()
		case errors.Is(err, store.ErrUnavailable):
			s.metrics.commitErrors.WithLabelValues("unavailable").Inc()
		case errors.Is(err, protocol.ErrInvalidBatch):
			s.metrics.commitErrors.WithLabelValues("invalid").Inc()
		default:
			s.metrics.commitErrors.WithLabelValues("other").Inc()
		}
		return store.CommitResult{}, fmt.Errorf("commit batch %s/%s/%s seq %d-%d: %w", b.AgentID, b.SpoolID, b.Lane, b.First(), b.Last(), err)
	}

	s.afterCommit(b, res, &fx)
	return res, nil
}

// validateBatch checks the envelope rules and what the store can keep:
// sequence numbers up to math.MaxInt64, as in package postgres, and
// times within the storable range.
func validateBatch(b *protocol.Batch) error {
	if err := b.Validate(); err != nil {
		return err
	}
	if b.Last() > math.MaxInt64 {
		return fmt.Errorf("%w: seq %d exceeds the largest storable sequence number", protocol.ErrInvalidBatch, b.Last())
	}
	for i := range b.Records {
		r := &b.Records[i]
		times := []time.Time{r.ReceivedAt}
		switch {
		case r.Fix != nil:
			times = append(times, r.Fix.Time)
		case r.SOS != nil:
			times = append(times, r.SOS.Time)
		}
		for _, t := range times {
			if !storable(t) {
				return fmt.Errorf("%w: record %d has time %s outside the storable range %s to %s", protocol.ErrInvalidBatch,
					r.Seq, t.UTC().Format(time.RFC3339), minStorableTime.Format(time.RFC3339), maxStorableTime.Format(time.RFC3339))
			}
		}
	}
	return nil
}

// commitTx applies b inside tx. Anything it returns besides nil rolls
// the whole transaction back.
func (s *Store) commitTx(tx *bolt.Tx, b *protocol.Batch, fx *commitEffects) (store.CommitResult, error) {
	bk, err := bucketsOf(tx)
	if err != nil {
		return store.CommitResult{}, err
	}
	now := s.now()
	spoolID := store.CleanText(b.SpoolID)
	region := store.CleanText(b.Region)

	ckey := cursorKey(b.AgentID, spoolID, b.Lane)
	cursor, err := decodeCursor(bk.cursors.Get(ckey))
	if err != nil {
		return store.CommitResult{}, fmt.Errorf("read cursor: %w", err)
	}
	fx.cursor = cursor
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

	if err := upsertAgent(bk, b.AgentID, region, now); err != nil {
		return store.CommitResult{}, err
	}
	if len(fresh) == 0 {
		return res, nil
	}
	if err := upsertVehicles(bk, b.AgentID, region, vehicleRecords(fresh)); err != nil {
		return store.CommitResult{}, err
	}

	var statuses, sos []*protocol.Record
	res.Fixes, statuses, sos = store.SplitRecords(b.AgentID, region, fresh)

	if err := s.writeFixes(bk, res.Fixes, now); err != nil {
		return store.CommitResult{}, err
	}
	if res.Statuses, err = s.writeStatuses(bk, b.AgentID, statuses); err != nil {
		return store.CommitResult{}, err
	}
	for i := range fresh {
		if r := &fresh[i]; r.Kind == protocol.KindFix || r.Kind == protocol.KindStatus {
			if err := s.afterRecordHook(r); err != nil {
				return store.CommitResult{}, err
			}
		}
	}
	for _, r := range sos {
		change, ok, err := s.applySOS(bk, b, region, r, now, fx)
		if err != nil {
			return store.CommitResult{}, fmt.Errorf("record %d: %w", r.Seq, err)
		}
		if ok {
			res.Incidents = append(res.Incidents, change)
		}
		if err := s.afterRecordHook(r); err != nil {
			return store.CommitResult{}, err
		}
	}

	res.Unmatched, res.Invalid = len(fx.unmatched), len(fx.invalid)

	if err := bk.cursors.Put(ckey, encodeCursor(b.Last(), now)); err != nil {
		return store.CommitResult{}, fmt.Errorf("advance cursor: %w", err)
	}
	res.Through = b.Last()
	return res, nil
}

// afterRecordHook runs the test hook, if any.
func (s *Store) afterRecordHook(r *protocol.Record) error {
	if s.afterRecord == nil {
		return nil
	}
	return s.afterRecord(r)
}

// afterCommit logs and counts what a committed batch did.
func (s *Store) afterCommit(b *protocol.Batch, res store.CommitResult, fx *commitEffects) {
	s.metrics.duplicates.Add(float64(res.Duplicates))
	counts := make(map[protocol.RecordKind]int)
	for i := res.Duplicates; i < len(b.Records); i++ {
		counts[b.Records[i].Kind]++
	}
	for kind, n := range counts {
		s.metrics.recordsCommitted.WithLabelValues(string(kind)).Add(float64(n))
	}
	if res.Duplicates < len(b.Records) {
		s.logGap(b, fx.cursor, b.Records[res.Duplicates].Seq)
	}
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
	for _, c := range fx.opened {
		s.metrics.incidentsOpened.Inc()
		s.log.Info("incident opened", "incident", c.Incident.ID, "agent", b.AgentID, "vehicle", c.Incident.VehicleID,
			"sos", c.Incident.SOSID, "kind", c.Incident.Kind, "historical", c.Incident.Historical)
	}
}

// logGap logs records missing between the cursor and the batch. Gaps are
// expected in the GPS lane, where the agent evicts old fixes under disk
// pressure; elsewhere they mean lost data or a restored file.
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

// upsertAgent records the agent's region and when the hub last heard from it.
func upsertAgent(bk *buckets, agentID, region string, now time.Time) error {
	v := agentValue{Region: region, FirstSeen: micros(now), LastSeen: micros(now)}
	if old := bk.agents.Get([]byte(agentID)); old != nil {
		var prev agentValue
		if err := json.Unmarshal(old, &prev); err != nil {
			return fmt.Errorf("%w: agent %s: %v", ErrCorrupt, agentID, err)
		}
		v.FirstSeen = prev.FirstSeen
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode agent %s: %w", agentID, err)
	}
	if err := bk.agents.Put([]byte(agentID), data); err != nil {
		return fmt.Errorf("upsert agent: %w", err)
	}
	return nil
}

// upsertVehicles records the agent and region each vehicle was last seen
// through. last_seen moves only when it advances by more than
// vehicleSeenStep, or advances at all with another agent or region.
func upsertVehicles(bk *buckets, agentID, region string, records []protocol.Record) error {
	type seen struct{ first, last int64 }
	byVehicle := make(map[string]seen)
	for i := range records {
		r := &records[i]
		at := micros(store.Time(r.ReceivedAt))
		v, ok := byVehicle[r.VehicleID]
		if !ok {
			v = seen{at, at}
		}
		v.first, v.last = min(v.first, at), max(v.last, at)
		byVehicle[r.VehicleID] = v
	}

	for id, sn := range byVehicle {
		key := []byte(id)
		next := vehicleValue{AgentID: agentID, Region: region, FirstSeen: sn.first, LastSeen: sn.last}
		if old := bk.vehicles.Get(key); old != nil {
			var prev vehicleValue
			if err := json.Unmarshal(old, &prev); err != nil {
				return fmt.Errorf("%w: vehicle %s: %v", ErrCorrupt, id, err)
			}
			moved := prev.AgentID != agentID || prev.Region != region
			step := vehicleSeenStep.Microseconds()
			if !(sn.last > prev.LastSeen+step || (sn.last > prev.LastSeen && moved)) {
				continue
			}
			next.FirstSeen = prev.FirstSeen
		}
		data, err := json.Marshal(next)
		if err != nil {
			return fmt.Errorf("encode vehicle %s: %w", id, err)
		}
		if err := bk.vehicles.Put(key, data); err != nil {
			return fmt.Errorf("upsert vehicle %s: %w", id, err)
		}
	}
	return nil
}

// writeFixes stores fixes with their retention index entries and updates
// latest positions. A vehicle's latest position moves only to a fix with
// a newer fix time that is at most MaxFuture ahead of now. So buffered
// fixes that arrive late do not move it back, and a fix from a device
// clock set years ahead does not freeze it.
func (s *Store) writeFixes(bk *buckets, fixes []store.StoredFix, now time.Time) error {
	if len(fixes) == 0 {
		return nil
	}
	for i := range fixes {
		f := &fixes[i]
		unique, err := bk.fixes.NextSequence()
		if err != nil {
			return fmt.Errorf("number fix of vehicle %s: %w", f.VehicleID, err)
		}
		if err := bk.fixes.Put(fixKey(f.VehicleID, f.Fix.Time, unique), encodeFix(f)); err != nil {
			return fmt.Errorf("store fix of vehicle %s: %w", f.VehicleID, err)
		}
		if err := bk.fixesByTime.Put(fixIndexKey(f.VehicleID, f.Fix.Time, unique), nil); err != nil {
			return fmt.Errorf("index fix of vehicle %s: %w", f.VehicleID, err)
		}
	}

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
	for vehicle, i := range newest {
		key := []byte(vehicle)
		if old := bk.latest.Get(key); old != nil {
			prev, err := decodeFix(old)
			if err != nil {
				return fmt.Errorf("latest position of vehicle %s: %w", vehicle, err)
			}
			if !fixes[i].Fix.Time.After(prev.Fix.Time) {
				continue
			}
		}
		latest := fixes[i]
		latest.Historical = false
		if err := bk.latest.Put(key, encodeFix(&latest)); err != nil {
			return fmt.Errorf("update latest position of vehicle %s: %w", vehicle, err)
		}
	}
	return nil
}

// writeStatuses stores each status record in order and returns those
// that changed the stored status. A status received before the stored one
// is dropped, since it is already superseded; one received at the same
// time replaces it.
func (s *Store) writeStatuses(bk *buckets, agentID string, records []*protocol.Record) ([]store.VehicleStatus, error) {
	var stored []store.VehicleStatus
	for _, r := range records {
		key := []byte(r.VehicleID)
		received := store.Time(r.ReceivedAt)
		if old := bk.status.Get(key); old != nil {
			prev, err := decodeStatus(old)
			if err != nil {
				return nil, fmt.Errorf("status of vehicle %s: %w", r.VehicleID, err)
			}
			if received.Before(prev.ReceivedAt) {
				continue
			}
		}
		if err := bk.status.Put(key, encodeStatus(statusValue{Online: r.Status.Online, AgentID: agentID, ReceivedAt: received})); err != nil {
			return nil, fmt.Errorf("store status of vehicle %s: %w", r.VehicleID, err)
		}
		stored = append(stored, store.VehicleStatus{
			VehicleID:  r.VehicleID,
			AgentID:    agentID,
			Online:     r.Status.Online,
			ReceivedAt: received,
		})
	}
	return stored, nil
}
