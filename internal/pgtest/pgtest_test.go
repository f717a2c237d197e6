package pgtest

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

func databaseExists(t *testing.T, name string) bool {
	t.Helper()
	base, err := resolveBaseURL()
	if err != nil {
		t.Fatalf("resolve base URL: %v", err)
	}
	conn, err := pgx.Connect(context.Background(), base)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		t.Fatalf("query pg_database: %v", err)
	}
	return exists
}

func TestNewDatabase_CreatesAndDrops(t *testing.T) {
	var name string
	t.Run("use", func(t *testing.T) {
		dsn := NewDatabase(t)
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("parse %s: %v", dsn, err)
		}
		name = strings.TrimPrefix(u.Path, "/")
		if !strings.HasPrefix(name, "xpress_test_") {
			t.Errorf("database name %q lacks the xpress_test_ prefix", name)
		}

		conn, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			t.Fatalf("connect to the new database: %v", err)
		}
		var current string
		err = conn.QueryRow(context.Background(), `SELECT current_database()`).Scan(&current)
		// The open connection is left to the cleanup: DROP … WITH (FORCE) must end it.
		if err != nil {
			t.Fatalf("query: %v", err)
		}
		if current != name {
			t.Errorf("connected to %q, want %q", current, name)
		}
		if !databaseExists(t, name) {
			t.Errorf("database %s not found in pg_database", name)
		}
	})
	if name == "" {
		t.Fatal("subtest returned no database name")
	}
	if databaseExists(t, name) {
		t.Errorf("database %s still exists after its test ended", name)
	}
}

func TestNewDatabase_NamesAreUnique(t *testing.T) {
	a, b := NewDatabase(t), NewDatabase(t)
	if a == b {
		t.Errorf("two calls returned the same database %s", a)
	}
}
