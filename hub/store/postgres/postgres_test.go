package postgres

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/goleak"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/internal/pgtest"
	"github.com/xpress-ops/tower/migrations"
	"github.com/xpress-ops/tower/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testMaxConns keeps each test's pool small: tests run in parallel against
// one server with a limited number of connections.
const testMaxConns = 4

// openStore opens a store on a fresh database unless cfg names one, and
// closes it when the test ends. The background retention run is off
// unless cfg sets RetentionInterval.
func openStore(t testing.TB, cfg Config) *Store {
	t.Helper()
	if cfg.URL == "" {
		cfg.URL = pgtest.NewDatabase(t)
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = testMaxConns
	}
	if cfg.RetentionInterval == 0 {
		cfg.RetentionInterval = -1
	}
	if cfg.Now == nil {
		cfg.Now = storetest.NewClock(storetest.Epoch).Now
	}
	s := New(cfg)
	if err := s.Open(testContext(t)); err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return s
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestStore_Conformance runs the suite with each test on its own
// database. Reopening opens a new Store on the same database URL.
func TestStore_Conformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, now func() time.Time) func() store.Store {
		url := pgtest.NewDatabase(t)
		return func() store.Store {
			return openStore(t, Config{URL: url, Now: now})
		}
	})
}

// partitionOf returns the partition each of the vehicle's fixes is stored in.
func partitionOf(t *testing.T, s *Store, vehicle string) []string {
	t.Helper()
	rows, err := s.Pool().Query(testContext(t), `SELECT tableoid::regclass::text FROM fixes WHERE vehicle_id = $1 ORDER BY ts`, vehicle)
	if err != nil {
		t.Fatalf("query partitions: %v", err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatalf("scan partition: %v", err)
		}
		names = append(names, name)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("query partitions: %v", err)
	}
	return names
}

func commit(t *testing.T, s *Store, b *protocol.Batch) store.CommitResult {
	t.Helper()
	res, err := s.CommitBatch(testContext(t), b)
	if err != nil {
		t.Fatalf("CommitBatch: %v", err)
	}
	return res
}

func TestStore_OpenCreatesDailyPartitions(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{PartitionDaysAhead: 3})

	rows, err := s.Pool().Query(testContext(t), `
		SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'fixes'::regclass ORDER BY c.relname`)
	if err != nil {
		t.Fatalf("list partitions: %v", err)
	}
	var got []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatalf("scan: %v", err)
		}
		got = append(got, name)
	}
	rows.Close()

	// Epoch is 2026-03-10: yesterday through three days ahead, and the default partition.
	want := []string{"fixes_default", "fixes_p20260309", "fixes_p20260310", "fixes_p20260311", "fixes_p20260312", "fixes_p20260313"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("partitions = %v, want %v", got, want)
	}
}

func TestStore_FixOutsidePartitionsLandsInDefault(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	old := storetest.FixRecord(1, "veh-1", storetest.Epoch.AddDate(0, 0, -20), 14.6, 121.0)
	current := storetest.FixRecord(2, "veh-1", storetest.Epoch.Add(-time.Hour), 14.6, 121.0)
	commit(t, s, storetest.NewBatch(old, current))

	got := partitionOf(t, s, "veh-1")
	want := []string{"fixes_default", "fixes_p20260310"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("fixes stored in %v, want %v", got, want)
	}
}

func TestStore_EnsurePartitionsMovesFixesFromDefault(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	day := storetest.Epoch.AddDate(0, 0, 20)
	commit(t, s, storetest.NewBatch(
		storetest.FixRecord(1, "veh-1", day.Add(time.Hour), 14.6, 121.0),
		storetest.FixRecord(2, "veh-1", day.Add(25*time.Hour), 14.7, 121.0),
	))
	if got := partitionOf(t, s, "veh-1"); strings.Join(got, " ") != "fixes_default fixes_default" {
		t.Fatalf("before: fixes stored in %v, want the default partition", got)
	}

	if err := s.EnsurePartitions(testContext(t), day, day); err != nil {
		t.Fatalf("EnsurePartitions: %v", err)
	}
	if got := partitionOf(t, s, "veh-1"); strings.Join(got, " ") != "fixes_p20260330 fixes_default" {
		t.Errorf("after: fixes stored in %v, want [fixes_p20260330 fixes_default]", got)
	}
	// Running it again changes nothing.
	if err := s.EnsurePartitions(testContext(t), day, day.AddDate(0, 0, 1)); err != nil {
		t.Fatalf("EnsurePartitions again: %v", err)
	}
	if got := partitionOf(t, s, "veh-1"); strings.Join(got, " ") != "fixes_p20260330 fixes_p20260331" {
		t.Errorf("after the second run: fixes stored in %v, want [fixes_p20260330 fixes_p20260331]", got)
	}
}

func TestStore_EnsurePartitionsRejectsHugeRange(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	if err := s.EnsurePartitions(testContext(t), time.Time{}, storetest.Epoch); err == nil {
		t.Error("EnsurePartitions from the zero time succeeded, want an error")
	}
	if err := s.EnsurePartitions(testContext(t), storetest.Epoch, storetest.Epoch.AddDate(0, 0, -1)); err == nil {
		t.Error("EnsurePartitions with to before from succeeded, want an error")
	}
}

func TestStore_ConcurrentEnsurePartitions(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	from := storetest.Epoch.AddDate(0, 1, 0)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() { errs[i] = s.EnsurePartitions(context.Background(), from, from.AddDate(0, 0, 5)) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Errorf("concurrent EnsurePartitions: %v", err)
	}
}

func TestStore_TextWithNULIsStored(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	rec := storetest.SOSRecord(1, "veh-1", "sos-1", storetest.Epoch)
	rec.SOS.Note = "help\x00me"
	b := storetest.NewBatch(rec)
	b.Region = "NCR\x00"
	res := commit(t, s, b)
	if got := res.Incidents[0].Incident.Note; got != "helpme" {
		t.Errorf("note = %q, want %q", got, "helpme")
	}
	if got := res.Incidents[0].Incident.Region; got != "NCR" {
		t.Errorf("region = %q, want %q", got, "NCR")
	}
}

func TestStore_OpenUnreachableIsUnavailable(t *testing.T) {
	t.Parallel()
	// Port 1 on loopback refuses connections.
	s := New(Config{URL: "postgres://root@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2"})
	err := s.Open(testContext(t))
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Open on a closed port: error %v, want store.ErrUnavailable", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close after a failed Open: %v", err)
	}
}

func TestStore_ClosedStoreIsUnavailable(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.CommitBatch(testContext(t), storetest.FixBatch(1, 1, "veh-1")); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("CommitBatch after Close: error %v, want store.ErrUnavailable", err)
	}
	if err := s.Ping(testContext(t)); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Ping after Close: error %v, want store.ErrUnavailable", err)
	}
}

func TestStore_Ping(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	if err := s.Ping(testContext(t)); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

func TestStore_SkipMigrateNeedsSchema(t *testing.T) {
	t.Parallel()
	s := New(Config{URL: pgtest.NewDatabase(t), SkipMigrate: true, MaxConns: testMaxConns})
	if err := s.Open(testContext(t)); err == nil {
		t.Error("Open with SkipMigrate on an empty database succeeded, want an error")
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestStore_ReopenMigratesIdempotently(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	first := New(Config{URL: url, MaxConns: testMaxConns})
	if err := first.Open(testContext(t)); err != nil {
		t.Fatalf("first Open: %v", err)
	}
	if _, err := first.CommitBatch(testContext(t), storetest.FixBatch(1, 3, "veh-1")); err != nil {
		t.Fatalf("CommitBatch: %v", err)
	}
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	second := openStore(t, Config{URL: url})
	if got, err := second.Cursor(testContext(t), storetest.Agent, storetest.Spool, protocol.LaneGPS); err != nil || got != 3 {
		t.Errorf("cursor after reopening = %d, %v, want 3", got, err)
	}
}

func TestStore_ConcurrentOpenMigratesOnce(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	stores := []*Store{New(Config{URL: url, MaxConns: 2}), New(Config{URL: url, MaxConns: 2})}
	errs := make([]error, len(stores))
	var wg sync.WaitGroup
	for i, s := range stores {
		wg.Go(func() { errs[i] = s.Open(context.Background()) })
	}
	wg.Wait()
	for i, s := range stores {
		if errs[i] != nil {
			t.Errorf("Open %d: %v", i, errs[i])
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close %d: %v", i, err)
		}
	}

	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatalf("sql.Open: %v", err)
	}
	defer db.Close()
	var applied int
	if err := db.QueryRow(`SELECT count(*) FROM goose_db_version WHERE version_id > 0`).Scan(&applied); err != nil {
		t.Fatalf("count applied migrations: %v", err)
	}
	status, err := migrations.Status(testContext(t), db)
	if err != nil {
		t.Fatalf("migrations.Status: %v", err)
	}
	if applied != len(status) {
		t.Errorf("%d migrations recorded as applied, want %d, each once", applied, len(status))
	}
}

func TestStore_Metrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	s := openStore(t, Config{Registerer: reg})
	b := storetest.FixBatch(1, 4, "veh-1")
	commit(t, s, b)
	commit(t, s, b)
	commit(t, s, storetest.NewBatch(storetest.SOSRecord(1, "veh-1", "sos-1", storetest.Epoch)))

	if got := testutil.ToFloat64(s.metrics.recordsCommitted.WithLabelValues("fix")); got != 4 {
		t.Errorf("records committed (fix) = %v, want 4", got)
	}
	if got := testutil.ToFloat64(s.metrics.recordsCommitted.WithLabelValues("sos")); got != 1 {
		t.Errorf("records committed (sos) = %v, want 1", got)
	}
	if got := testutil.ToFloat64(s.metrics.duplicates); got != 4 {
		t.Errorf("duplicates skipped = %v, want 4", got)
	}
	if got := testutil.ToFloat64(s.metrics.incidentsOpened); got != 1 {
		t.Errorf("incidents opened = %v, want 1", got)
	}
	if n := testutil.CollectAndCount(s.metrics.commitSeconds); n != 1 {
		t.Errorf("commit histogram series = %d, want 1", n)
	}

	// Operator actions are counted by action and result.
	incidents, err := s.Incidents(testContext(t), store.IncidentFilter{})
	if err != nil || len(incidents) != 1 {
		t.Fatalf("Incidents = %d, %v, want 1", len(incidents), err)
	}
	id := incidents[0].ID
	if _, err := s.AcknowledgeIncident(testContext(t), id, storetest.Operator); err != nil {
		t.Fatalf("acknowledge: %v", err)
	}
	s.AcknowledgeIncident(testContext(t), id, storetest.Operator)    //nolint:errcheck // counted as a conflict
	s.AddIncidentNote(testContext(t), id, storetest.Operator, " ")   //nolint:errcheck // counted as invalid
	s.ResolveIncident(testContext(t), id+1, storetest.Operator, "x") //nolint:errcheck // counted as not found
	for _, c := range []struct{ action, result string }{
		{"acknowledge", "ok"}, {"acknowledge", "conflict"}, {"note", "invalid"}, {"resolve", "not_found"},
	} {
		if got := testutil.ToFloat64(s.metrics.incidentActions.WithLabelValues(c.action, c.result)); got != 1 {
			t.Errorf("incident actions (%s, %s) = %v, want 1", c.action, c.result, got)
		}
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	problems, err := promlint.NewWithMetricFamilies(families).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	// A second store may share the registry.
	New(Config{URL: "postgres://unused", Registerer: reg})
}

func TestStore_BackgroundRunCreatesPartitions(t *testing.T) {
	t.Parallel()
	clock := storetest.NewClock(storetest.Epoch)
	s := openStore(t, Config{Now: clock.Now, PartitionDaysAhead: 1, PartitionInterval: 20 * time.Millisecond})
	clock.Set(storetest.Epoch.AddDate(0, 0, 30))

	// Thirty days on, the run must cover 2026-04-10 (the new "tomorrow").
	deadline := time.Now().Add(10 * time.Second)
	for {
		exists, err := partitionExists(testContext(t), s.Pool(), "fixes_p20260410")
		if err != nil {
			t.Fatalf("check partition: %v", err)
		}
		if exists {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("background run did not create fixes_p20260410 within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
