package migrations_test

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver

	"github.com/xpress-ops/tower/internal/pgtest"
	"github.com/xpress-ops/tower/migrations"
)

func openDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", pgtest.NewDatabase(t))
	if err != nil {
		t.Fatalf("sql.Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestUp_Twice(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	for i := range 2 {
		if err := migrations.Up(testContext(t), db, nil); err != nil {
			t.Fatalf("Up #%d: %v", i+1, err)
		}
	}
	status, err := migrations.Status(testContext(t), db)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if len(status) == 0 {
		t.Fatal("Status lists no migrations")
	}
	for _, m := range status {
		if !m.Applied || m.AppliedAt.IsZero() {
			t.Errorf("migration %d (%s): applied %v at %s, want applied", m.Version, m.Source, m.Applied, m.AppliedAt)
		}
	}
	// The caller's handle stays open.
	if err := db.PingContext(testContext(t)); err != nil {
		t.Errorf("db unusable after Up: %v", err)
	}
}

func TestStatus_PendingBeforeUp(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	status, err := migrations.Status(testContext(t), db)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	for _, m := range status {
		if m.Applied {
			t.Errorf("migration %d applied on an empty database", m.Version)
		}
	}
}

func TestUp_Concurrent(t *testing.T) {
	t.Parallel()
	db := openDB(t)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() { errs[i] = migrations.Up(testContext(t), db, nil) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent Up: %v", err)
	}
	var rows int
	if err := db.QueryRowContext(testContext(t), `SELECT count(*) FROM goose_db_version WHERE version_id > 0`).Scan(&rows); err != nil {
		t.Fatalf("count versions: %v", err)
	}
	status, err := migrations.Status(testContext(t), db)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if rows != len(status) {
		t.Errorf("%d version rows, want %d: a migration ran twice", rows, len(status))
	}
}

func TestUpURL_AppliesAndDisconnects(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	if err := migrations.UpURL(testContext(t), url, nil); err != nil {
		t.Fatalf("UpURL: %v", err)
	}
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatalf("sql.Open: %v", err)
	}
	defer db.Close()
	status, err := migrations.Status(testContext(t), db)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	for _, m := range status {
		if !m.Applied {
			t.Errorf("migration %d not applied by UpURL", m.Version)
		}
	}
}

func TestUpURL_UnreachableServerFails(t *testing.T) {
	t.Parallel()
	// Port 1 on loopback refuses connections.
	if err := migrations.UpURL(testContext(t), "postgres://root@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2", nil); err == nil {
		t.Error("UpURL against a closed port succeeded")
	}
}
