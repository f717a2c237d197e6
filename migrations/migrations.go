// Package migrations holds the hub's PostgreSQL schema as goose SQL
// migrations embedded in the binary, and applies them.
//
// Migrations run under a PostgreSQL session advisory lock, so hub replicas
// that start together apply each migration once: the first takes the lock
// and migrates, the others wait for it and then find nothing pending.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver for UpURL
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var files embed.FS

// LockWait is the longest Up waits for another process that holds the
// migration lock.
const LockWait = 5 * time.Minute

// Migration is the state of one schema migration.
type Migration struct {
	Version int64
	// Source is the migration's file name.
	Source string
	// Applied is true once the migration ran on this database.
	Applied bool
	// AppliedAt is when it ran; zero when it has not.
	AppliedAt time.Time
}

// Up applies every pending migration to db in version order and logs each
// one. db must be a PostgreSQL database/sql handle, for example from the
// pgx stdlib driver. Up blocks while another process holds the migration
// lock, for at most LockWait. A nil logger discards the log.
func Up(ctx context.Context, db *sql.DB, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "migrations")

	// The provider is not closed: goose's Provider.Close would close db, which belongs to the caller.
	provider, err := newProvider(db, logger)
	if err != nil {
		return err
	}

	results, err := provider.Up(ctx)
	if err != nil {
		return fmt.Errorf("apply migrations: %w", err)
	}
	for _, r := range results {
		logger.Info("applied migration", "version", r.Source.Version, "source", r.Source.Path, "duration", r.Duration)
	}
	return nil
}

// UpURL connects to the database at url, applies every pending migration
// as Up does, and disconnects.
func UpURL(ctx context.Context, url string, logger *slog.Logger) error {
	db, err := sql.Open("pgx", url)
	if err != nil {
		// The parse error can contain the password, so it is not wrapped.
		return errors.New("apply migrations: invalid database URL")
	}
	return errors.Join(Up(ctx, db, logger), db.Close())
}

// Status returns every known migration in version order and whether it is
// applied to db.
func Status(ctx context.Context, db *sql.DB) ([]Migration, error) {
	provider, err := newProvider(db, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}

	statuses, err := provider.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("read migration status: %w", err)
	}
	out := make([]Migration, 0, len(statuses))
	for _, s := range statuses {
		out = append(out, Migration{
			Version:   s.Source.Version,
			Source:    s.Source.Path,
			Applied:   s.State == goose.StateApplied,
			AppliedAt: s.AppliedAt,
		})
	}
	return out, nil
}

// newProvider builds a goose provider over the embedded files. It uses no
// goose global state: Go migrations registered elsewhere are ignored.
func newProvider(db *sql.DB, logger *slog.Logger) (*goose.Provider, error) {
	// The lock is retried every second; the minimum period goose accepts is one second.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, uint64(LockWait/time.Second)))
	if err != nil {
		return nil, fmt.Errorf("migration lock: %w", err)
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, files,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(logger),
	)
	if err != nil {
		return nil, fmt.Errorf("migration provider: %w", err)
	}
	return provider, nil
}
