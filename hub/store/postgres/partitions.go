package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// lockClassPartitions is the first key of the transaction advisory lock
// that serializes partition changes across hub replicas.
const lockClassPartitions = 2

// maxPartitionDays bounds one EnsurePartitions call, so a zero time passed
// by mistake cannot create thousands of tables.
const maxPartitionDays = 400

// EnsurePartitions creates the daily partitions of the fixes table, named
// fixes_pYYYYMMDD, for every UTC day from the day of from through the day
// of to, and skips days that already have one. Fixes of a day without a
// partition are kept in fixes_default. When their day's partition is
// created, the same transaction moves them into it. Open calls it
// for yesterday through PartitionDaysAhead days ahead, and the store
// repeats that every PartitionInterval while open. It is safe to call
// from several hub replicas at once. DeleteFixesBefore drops the
// partitions that fall out of the retention window.
func (s *Store) EnsurePartitions(ctx context.Context, from, to time.Time) error {
	pool, err := s.getPool()
	if err != nil {
		return fmt.Errorf("ensure partitions: %w", err)
	}
	return s.ensurePartitions(ctx, pool, from, to)
}

func (s *Store) ensurePartitions(ctx context.Context, pool *pgxpool.Pool, from, to time.Time) error {
	first, last := utcDay(from), utcDay(to)
	if last.Before(first) {
		return fmt.Errorf("ensure partitions: range ends %s before it starts %s", last.Format(time.DateOnly), first.Format(time.DateOnly))
	}
	if days := int(last.Sub(first)/(24*time.Hour)) + 1; days > maxPartitionDays {
		return fmt.Errorf("ensure partitions: %d days requested, limit %d", days, maxPartitionDays)
	}
	for day := first; !day.After(last); day = day.AddDate(0, 0, 1) {
		if err := s.ensurePartition(ctx, pool, day); err != nil {
			return fmt.Errorf("ensure partition for %s: %w", day.Format(time.DateOnly), classify(err))
		}
	}
	return nil
}

// ensurePartition creates the partition of one UTC day. It builds the
// table first and attaches it afterwards, because ATTACH PARTITION takes
// only a SHARE UPDATE EXCLUSIVE lock on fixes and so does not stop
// concurrent COPYs, while CREATE TABLE … PARTITION OF would lock the whole
// table.
func (s *Store) ensurePartition(ctx context.Context, pool *pgxpool.Pool, day time.Time) error {
	name := partitionName(day)
	exists, err := partitionExists(ctx, pool, name)
	if err != nil || exists {
		return err
	}

	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit

	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, 0)`, lockClassPartitions); err != nil {
		return err
	}
	// Another replica may have created it while this one waited for the lock.
	if exists, err := partitionExists(ctx, tx, name); err != nil || exists {
		return err
	}

	ident := pgx.Identifier{name}.Sanitize()
	lower, upper := day, day.AddDate(0, 0, 1)
	if _, err := tx.Exec(ctx, "CREATE TABLE "+ident+" (LIKE fixes INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"); err != nil {
		return err
	}
	columns := strings.Join(fixColumns, ", ")
	moved, err := tx.Exec(ctx, `
		WITH moved AS (DELETE FROM fixes_default WHERE ts >= $1 AND ts < $2 RETURNING `+columns+`)
		INSERT INTO `+ident+` (`+columns+`) SELECT `+columns+` FROM moved`, lower, upper)
	if err != nil {
		return fmt.Errorf("move fixes out of the default partition: %w", err)
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf("ALTER TABLE fixes ATTACH PARTITION %s FOR VALUES FROM ('%s') TO ('%s')",
		ident, lower.Format(time.RFC3339), upper.Format(time.RFC3339))); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	s.log.Info("created fixes partition", "partition", name, "moved_from_default", moved.RowsAffected())
	return nil
}

// querier is the query method shared by a pool and a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// partitionExists reports whether name is attached to fixes. It queries
// the catalog with the statement's snapshot, so it finds a partition that
// another session committed a moment ago. to_regclass can miss it, because
// it reads through the catalog cache.
func partitionExists(ctx context.Context, q querier, name string) (bool, error) {
	var exists bool
	err := q.QueryRow(ctx, `
		SELECT EXISTS (
			SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			WHERE i.inhparent = 'fixes'::regclass AND c.relname = $1)`, name).Scan(&exists)
	return exists, err
}

// maintain re-runs EnsurePartitions every PartitionInterval until ctx ends.
func (s *Store) maintain(ctx context.Context) {
	defer s.wg.Done()
	ticker := time.NewTicker(s.cfg.PartitionInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		runCtx, cancel := context.WithTimeout(ctx, maintenanceTimeout)
		from, to := s.partitionRange()
		if err := s.EnsurePartitions(runCtx, from, to); err != nil && ctx.Err() == nil {
			s.metrics.partitionErrors.Inc()
			s.log.Error("fixes partition maintenance failed; fixes of missing days go to fixes_default", "error", err)
		}
		cancel()
	}
}

// partitionRange is the range of days Open and the background run keep
// partitioned: yesterday through PartitionDaysAhead days after today.
func (s *Store) partitionRange() (from, to time.Time) {
	today := utcDay(s.cfg.Now())
	return today.AddDate(0, 0, -1), today.AddDate(0, 0, s.cfg.PartitionDaysAhead)
}

func utcDay(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

func partitionName(day time.Time) string { return "fixes_p" + day.Format("20060102") }
