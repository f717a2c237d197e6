package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xpress-ops/tower/hub/store"
)

// retentionLockTimeout bounds the wait of DETACH PARTITION for its ACCESS
// EXCLUSIVE lock on fixes. Batches that arrive while it waits queue
// behind it, so a long wait would stall ingest; after a timeout the next
// run tries again.
const retentionLockTimeout = "5s"

// partitionPrefix starts the name of every daily fixes partition.
const partitionPrefix = "fixes_p"

// DeleteFixesBefore removes the fixes whose fix time is before before:
//
//  1. it drops each daily partition whose day ends at or before before,
//     each in its own transaction (DETACH PARTITION, then DROP TABLE);
//  2. it deletes the earlier fixes row by row from fixes_default and from
//     the partition of the day before falls in.
//
// It returns the number of fixes it deleted in step 2, or
// store.CountUnknown when step 1 dropped a partition that held fixes,
// because counting them would read the whole partition. Latest
// positions, statuses, incidents and cursors stay. It is safe to call
// from several hub replicas at once. When it fails, the partitions
// dropped before the failure stay dropped; the returned count is then
// store.CountUnknown if any were.
func (s *Store) DeleteFixesBefore(ctx context.Context, before time.Time) (int64, error) {
	pool, err := s.getPool()
	if err != nil {
		return 0, fmt.Errorf("delete fixes: %w", err)
	}
	before = store.Time(before)

	partitions, err := listPartitions(ctx, pool)
	if err != nil {
		return 0, fmt.Errorf("delete fixes before %s: list partitions: %w", before.Format(time.RFC3339), classify(err))
	}
	dropped := 0 // partitions dropped with fixes in them
	straddling := ""
	for _, p := range partitions {
		switch {
		case !p.upper().After(before):
			held, err := s.dropPartition(ctx, pool, p.name)
			if err != nil {
				return droppedCount(dropped), fmt.Errorf("delete fixes before %s: drop partition %s: %w", before.Format(time.RFC3339), p.name, classify(err))
			}
			if held {
				dropped++
			}
		case p.day.Before(before):
			straddling = p.name
		}
	}

	tables := []string{"fixes_default"}
	if straddling != "" {
		tables = append(tables, straddling)
	}
	var deleted int64
	for _, table := range tables {
		tag, err := pool.Exec(ctx, "DELETE FROM "+pgx.Identifier{table}.Sanitize()+" WHERE ts < $1", before)
		if err != nil {
			s.metrics.retentionDeleted.Add(float64(deleted))
			return droppedCount(dropped), fmt.Errorf("delete fixes before %s from %s: %w", before.Format(time.RFC3339), table, classify(err))
		}
		deleted += tag.RowsAffected()
	}
	s.metrics.retentionDeleted.Add(float64(deleted))
	if dropped > 0 {
		return store.CountUnknown, nil
	}
	return deleted, nil
}

// droppedCount is the count DeleteFixesBefore returns after an error.
func droppedCount(dropped int) int64 {
	if dropped > 0 {
		return store.CountUnknown
	}
	return 0
}

// partition is one daily partition of fixes.
type partition struct {
	name string
	// day is the partition's lower bound, midnight UTC.
	day time.Time
}

// upper returns the partition's exclusive upper bound.
func (p partition) upper() time.Time { return p.day.AddDate(0, 0, 1) }

// listPartitions returns the daily partitions attached to fixes, oldest
// first. Tables whose names do not follow fixes_pYYYYMMDD are left out.
func listPartitions(ctx context.Context, pool *pgxpool.Pool) ([]partition, error) {
	rows, err := pool.Query(ctx, `
		SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'fixes'::regclass`)
	if err != nil {
		return nil, err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	var partitions []partition
	for _, name := range names {
		suffix, ok := strings.CutPrefix(name, partitionPrefix)
		if !ok {
			continue
		}
		day, err := time.Parse("20060102", suffix)
		if err != nil || partitionName(day) != name {
			continue
		}
		partitions = append(partitions, partition{name: name, day: day})
	}
	slices.SortFunc(partitions, func(a, b partition) int { return a.day.Compare(b.day) })
	return partitions, nil
}

// dropPartition detaches and drops one partition in one transaction,
// under the advisory lock that EnsurePartitions takes too, and reports
// whether the partition held any fix. It does nothing when another
// replica dropped the partition first.
func (s *Store) dropPartition(ctx context.Context, pool *pgxpool.Pool, name string) (held bool, err error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit

	if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '"+retentionLockTimeout+"'"); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, 0)`, lockClassPartitions); err != nil {
		return false, err
	}
	if exists, err := partitionExists(ctx, tx, name); err != nil || !exists {
		return false, err
	}
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := tx.Exec(ctx, "ALTER TABLE fixes DETACH PARTITION "+ident); err != nil {
		return false, fmt.Errorf("detach: %w", err)
	}
	// Detached and locked, the table takes no more rows, so this is exact.
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+ident+")").Scan(&held); err != nil {
		return false, fmt.Errorf("check for fixes: %w", err)
	}
	if _, err := tx.Exec(ctx, "DROP TABLE "+ident); err != nil {
		return false, fmt.Errorf("drop: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, err
	}
	s.metrics.partitionsDropped.Inc()
	s.log.Info("dropped fixes partition", "partition", name, "held_fixes", held)
	return held, nil
}

// retain runs retention right away and then every RetentionInterval
// until ctx ends.
func (s *Store) retain(ctx context.Context) {
	defer s.wg.Done()
	ticker := time.NewTicker(s.cfg.RetentionInterval)
	defer ticker.Stop()
	for {
		s.runRetention(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// runRetention removes the fixes older than Retention once.
func (s *Store) runRetention(ctx context.Context) {
	runCtx, cancel := context.WithTimeout(ctx, retentionTimeout)
	defer cancel()
	before := s.cfg.Now().Add(-s.cfg.Retention)
	n, err := s.DeleteFixesBefore(runCtx, before)
	switch {
	case err != nil && ctx.Err() == nil:
		s.metrics.retentionErrors.Inc()
		s.log.Error("fixes retention failed; old fixes stay until the next run", "before", before, "error", err)
	case err == nil && n != 0:
		s.log.Info("removed fixes older than the retention window", "before", before, "fixes", n)
	}
}
