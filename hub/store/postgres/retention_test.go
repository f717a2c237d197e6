package postgres

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/storetest"
)

// partitionNames returns the names of the tables attached to fixes, sorted.
func partitionNames(t *testing.T, s *Store) []string {
	t.Helper()
	rows, err := s.Pool().Query(testContext(t), `
		SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'fixes'::regclass ORDER BY c.relname`)
	if err != nil {
		t.Fatalf("list partitions: %v", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("list partitions: %v", err)
	}
	return names
}

func tableExists(t *testing.T, s *Store, name string) bool {
	t.Helper()
	var exists bool
	if err := s.Pool().QueryRow(testContext(t), `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&exists); err != nil {
		t.Fatalf("look up table %s: %v", name, err)
	}
	return exists
}

func vehicleFixTimes(t *testing.T, s *Store, vehicle string) []time.Time {
	t.Helper()
	fixes, err := s.Fixes(testContext(t), vehicle, storetest.Epoch.AddDate(-1, 0, 0), storetest.Epoch.AddDate(1, 0, 0), 0)
	if err != nil {
		t.Fatalf("Fixes: %v", err)
	}
	times := make([]time.Time, len(fixes))
	for i, f := range fixes {
		times[i] = f.Fix.Time
	}
	return times
}

func TestStore_RetentionDropsOldPartitions(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	day := time.Date(2026, 1, 29, 0, 0, 0, 0, time.UTC)
	if err := s.EnsurePartitions(testContext(t), day.AddDate(0, 0, -3), day.AddDate(0, 0, 1)); err != nil {
		t.Fatalf("EnsurePartitions: %v", err)
	}
	kept := []time.Time{day.Add(13 * time.Hour), day.AddDate(0, 0, 1).Add(time.Hour)}
	commit(t, s, storetest.NewBatch(
		storetest.FixRecord(1, "veh-1", day.AddDate(0, 0, -10), 14.0, 121.0), // fixes_default
		storetest.FixRecord(2, "veh-1", day.AddDate(0, 0, -3).Add(time.Hour), 14.1, 121.0),
		storetest.FixRecord(3, "veh-1", day.AddDate(0, 0, -1).Add(time.Hour), 14.2, 121.0),
		storetest.FixRecord(4, "veh-1", day.Add(time.Hour), 14.3, 121.0), // straddles the cutoff
		storetest.FixRecord(5, "veh-1", kept[0], 14.4, 121.0),
		storetest.FixRecord(6, "veh-1", kept[1], 14.5, 121.0),
	))

	n, err := s.DeleteFixesBefore(testContext(t), day.Add(12*time.Hour))
	if err != nil {
		t.Fatalf("DeleteFixesBefore: %v", err)
	}
	if n != store.CountUnknown {
		t.Errorf("DeleteFixesBefore = %d, want store.CountUnknown after dropping partitions with fixes", n)
	}
	if got := vehicleFixTimes(t, s, "veh-1"); !slices.Equal(got, kept) {
		t.Errorf("fixes after retention at %v, want %v", got, kept)
	}
	for _, gone := range []string{"fixes_p20260126", "fixes_p20260127", "fixes_p20260128"} {
		if tableExists(t, s, gone) {
			t.Errorf("partition %s still exists, want it dropped", gone)
		}
	}
	names := partitionNames(t, s)
	for _, want := range []string{"fixes_default", "fixes_p20260129", "fixes_p20260130"} {
		if !slices.Contains(names, want) {
			t.Errorf("partitions = %v, want %s kept", names, want)
		}
	}
	if got := testutil.ToFloat64(s.metrics.partitionsDropped); got != 3 {
		t.Errorf("partitions dropped metric = %v, want 3", got)
	}
	if got := testutil.ToFloat64(s.metrics.retentionDeleted); got != 2 {
		t.Errorf("fixes deleted metric = %v, want 2 (one from fixes_default, one from fixes_p20260129)", got)
	}

	// Fixes of a dropped day go to fixes_default and are deleted from there.
	commit(t, s, storetest.NewBatch(storetest.FixRecord(7, "veh-1", day.AddDate(0, 0, -2), 14.6, 121.0)))
	if got := partitionOf(t, s, "veh-1"); got[0] != "fixes_default" {
		t.Errorf("fix of a dropped day stored in %s, want fixes_default", got[0])
	}
	if n, err := s.DeleteFixesBefore(testContext(t), day.Add(12*time.Hour)); err != nil || n != 1 {
		t.Errorf("second DeleteFixesBefore = %d, %v, want exactly 1: no partition with fixes was dropped", n, err)
	}
}

func TestStore_RetentionCountsEmptyPartitions(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	day := time.Date(2026, 1, 29, 0, 0, 0, 0, time.UTC)
	if err := s.EnsurePartitions(testContext(t), day.AddDate(0, 0, -2), day.AddDate(0, 0, -1)); err != nil {
		t.Fatalf("EnsurePartitions: %v", err)
	}
	commit(t, s, storetest.NewBatch(
		storetest.FixRecord(1, "veh-1", day.AddDate(0, 0, -5), 14.0, 121.0),
		storetest.FixRecord(2, "veh-1", day.AddDate(0, 0, -4), 14.0, 121.0),
	))

	n, err := s.DeleteFixesBefore(testContext(t), day)
	if err != nil || n != 2 {
		t.Errorf("DeleteFixesBefore = %d, %v, want exactly 2: the dropped partitions were empty", n, err)
	}
	if tableExists(t, s, "fixes_p20260127") || tableExists(t, s, "fixes_p20260128") {
		t.Errorf("partitions = %v, want the empty ones before %s dropped", partitionNames(t, s), day.Format(time.DateOnly))
	}
}

func TestStore_RetentionKeepsOtherTables(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	// A table attached under another naming scheme is not the store's to drop.
	for _, sql := range []string{
		`CREATE TABLE fixes_archive (LIKE fixes INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`,
		`ALTER TABLE fixes ATTACH PARTITION fixes_archive FOR VALUES FROM ('2025-01-01T00:00:00Z') TO ('2025-02-01T00:00:00Z')`,
	} {
		if _, err := s.Pool().Exec(testContext(t), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if _, err := s.DeleteFixesBefore(testContext(t), storetest.Epoch); err != nil {
		t.Fatalf("DeleteFixesBefore: %v", err)
	}
	if !slices.Contains(partitionNames(t, s), "fixes_archive") {
		t.Errorf("partitions = %v, want fixes_archive kept", partitionNames(t, s))
	}
}

func TestStore_BackgroundRetentionRun(t *testing.T) {
	t.Parallel()
	clock := storetest.NewClock(storetest.Epoch)
	s := openStore(t, Config{Now: clock.Now, RetentionInterval: 20 * time.Millisecond})
	recent := storetest.Epoch.Add(-time.Hour)
	commit(t, s, storetest.NewBatch(
		storetest.FixRecord(1, "veh-1", storetest.Epoch.AddDate(0, 0, -31), 14.0, 121.0),
		storetest.FixRecord(2, "veh-1", recent, 14.1, 121.0),
	))

	waitFor(t, "the fix older than 30 days to be removed", func() bool {
		return slices.Equal(vehicleFixTimes(t, s, "veh-1"), []time.Time{recent})
	})

	// Thirty-one days on, the partition of the recent fix is dropped too.
	clock.Set(storetest.Epoch.AddDate(0, 0, 31))
	waitFor(t, "fixes_p20260310 to be dropped", func() bool {
		return !tableExists(t, s, "fixes_p20260310")
	})
	if got := vehicleFixTimes(t, s, "veh-1"); len(got) != 0 {
		t.Errorf("fixes after the second run at %v, want none", got)
	}
	if _, ok := latestOf(t, s, "veh-1"); !ok {
		t.Error("veh-1 lost its latest position to retention")
	}
}

func latestOf(t *testing.T, s *Store, vehicle string) (store.Position, bool) {
	t.Helper()
	positions, err := s.LatestPositions(testContext(t))
	if err != nil {
		t.Fatalf("LatestPositions: %v", err)
	}
	for _, p := range positions {
		if p.VehicleID == vehicle {
			return p, true
		}
	}
	return store.Position{}, false
}

// waitFor polls cond until it holds, failing the test after 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ticker := time.NewTicker(10 * time.Millisecond)
	defer ticker.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after 10s waiting for %s", what)
		case <-ticker.C:
		}
	}
}
