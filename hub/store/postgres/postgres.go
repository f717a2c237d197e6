// Package postgres is the hub's production store on PostgreSQL 15 or
// newer. It applies the schema in package migrations, writes fixes with
// COPY into tables range-partitioned by day, and commits each agent batch
// together with the agent's cursor in one transaction.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/migrations"
	"github.com/xpress-ops/tower/protocol"
)

var _ store.Store = (*Store)(nil)

// Defaults for Config fields left zero.
const (
	DefaultMaxConns           = 10
	DefaultPartitionDaysAhead = 7
	DefaultPartitionInterval  = time.Hour
	DefaultRetention          = protocol.DefaultRetention
	DefaultRetentionInterval  = time.Hour
)

// DefaultFixLimit is the maximum number of fixes Fixes returns when its
// limit is zero or less.
const DefaultFixLimit = 10000

const (
	// maxCommitAttempts bounds the runs of one batch transaction that
	// fails on a deadlock or serialization failure.
	maxCommitAttempts = 3
	// maintenanceTimeout bounds one background EnsurePartitions run.
	maintenanceTimeout = time.Minute
	// retentionTimeout bounds one background retention run.
	retentionTimeout = 10 * time.Minute
)

// ErrNotOpen means a method was called before Open or after Close. It
// wraps store.ErrUnavailable.
var ErrNotOpen = fmt.Errorf("postgres store is not open: %w", store.ErrUnavailable)

// Config configures a Store.
type Config struct {
	// URL is the PostgreSQL connection URL or keyword/value string. Required.
	URL string
	// Logger receives the store's log; nil discards it.
	Logger *slog.Logger
	// Registerer receives the store's metrics; nil means a private registry.
	Registerer prometheus.Registerer
	// Now is the hub's clock; nil means time.Now. It stamps incidents and
	// events and decides which fixes are too far in the future to become a
	// vehicle's latest position.
	Now func() time.Time
	// MaxConns is the connection pool size. Zero means DefaultMaxConns.
	MaxConns int32
	// SkipMigrate makes Open leave the schema alone, for deployments that
	// run `xpress migrate` separately. Open then expects the schema to exist.
	SkipMigrate bool
	// PartitionDaysAhead is how many days of fixes partitions, after today
	// (UTC), are kept created. Zero means DefaultPartitionDaysAhead.
	PartitionDaysAhead int
	// PartitionInterval is how often the store re-runs EnsurePartitions
	// while open. Zero means DefaultPartitionInterval; negative disables
	// the background run, so only Open creates partitions.
	PartitionInterval time.Duration
	// MaxFuture is how far ahead of Now a fix time may be and still become
	// a vehicle's latest position. Such fixes are always stored. Zero means
	// protocol.DefaultMaxFuture (5 minutes).
	MaxFuture time.Duration
	// Retention is how long fixes are kept, counted back from Now by fix
	// time. The background retention run removes older fixes with
	// DeleteFixesBefore. Zero or negative means DefaultRetention (30 days).
	Retention time.Duration
	// RetentionInterval is how often the background retention run
	// repeats while the store is open. The first run starts right after
	// Open. Zero means DefaultRetentionInterval (1 hour); negative
	// disables the background run, so fixes stay until DeleteFixesBefore
	// is called.
	RetentionInterval time.Duration
}

// Store is the PostgreSQL store. Create it with New and call Open before
// use. It is safe for concurrent use.
type Store struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu   sync.Mutex
	pool *pgxpool.Pool

	stop   context.CancelFunc
	wg     sync.WaitGroup
	opened bool
	closed bool
}

// New returns a Store with the defaults of cfg filled in. It does no I/O.
func New(cfg Config) *Store {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.PartitionDaysAhead <= 0 {
		cfg.PartitionDaysAhead = DefaultPartitionDaysAhead
	}
	if cfg.PartitionInterval == 0 {
		cfg.PartitionInterval = DefaultPartitionInterval
	}
	if cfg.MaxFuture <= 0 {
		cfg.MaxFuture = protocol.DefaultMaxFuture
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.RetentionInterval == 0 {
		cfg.RetentionInterval = DefaultRetentionInterval
	}
	return &Store{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "store"),
		metrics: newMetrics(cfg.Registerer),
	}
}

// Open connects the pool, applies pending migrations unless SkipMigrate is
// set, creates the fixes partitions from yesterday to PartitionDaysAhead
// days ahead, and starts the background partition and retention runs. It
// fails with store.ErrUnavailable when the database cannot be reached.
func (s *Store) Open(ctx context.Context) error {
	if s.cfg.URL == "" {
		return errors.New("open postgres store: URL is empty")
	}

	s.mu.Lock()
	if s.opened || s.closed {
		s.mu.Unlock()
		return errors.New("open postgres store: already opened or closed")
	}
	s.opened = true
	s.mu.Unlock()

	pool, err := s.connect(ctx)
	if err != nil {
		return fmt.Errorf("open postgres store: %w", err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		pool.Close()
		return fmt.Errorf("open postgres store: %w", ErrNotOpen)
	}
	s.pool = pool
	loopCtx, stop := context.WithCancel(context.Background())
	s.stop = stop
	if s.cfg.PartitionInterval > 0 {
		s.wg.Add(1)
		go s.maintain(loopCtx)
	}
	if s.cfg.RetentionInterval > 0 {
		s.wg.Add(1)
		go s.retain(loopCtx)
	}
	s.log.Info("store opened", "max_conns", s.cfg.MaxConns, "migrated", !s.cfg.SkipMigrate,
		"retention", s.cfg.Retention, "retention_interval", s.cfg.RetentionInterval)
	return nil
}

// connect creates and checks the pool, migrates and creates partitions.
// On failure it closes the pool.
func (s *Store) connect(ctx context.Context) (*pgxpool.Pool, error) {
	poolCfg, err := pgxpool.ParseConfig(s.cfg.URL)
	if err != nil {
		// The parse error can contain the password, so it is not wrapped.
		return nil, errors.New("invalid database URL")
	}
	poolCfg.MaxConns = s.cfg.MaxConns
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return nil, classify(err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, classify(err)
	}

	if !s.cfg.SkipMigrate {
		db := stdlib.OpenDBFromPool(pool)
		err := migrations.Up(ctx, db, s.cfg.Logger)
		err = errors.Join(err, db.Close())
		if err != nil {
			pool.Close()
			return nil, classify(err)
		}
	}

	from, to := s.partitionRange()
	if err := s.ensurePartitions(ctx, pool, from, to); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// Close stops the background partition and retention runs, waits for
// them and closes the pool, after in-flight queries return. It is safe to
// call more than once.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	pool, stop := s.pool, s.stop
	s.mu.Unlock()

	if stop != nil {
		stop()
	}
	s.wg.Wait()
	if pool != nil {
		pool.Close()
		s.log.Info("store closed")
	}
	return nil
}

// Ping checks that the database responds to a ping.
func (s *Store) Ping(ctx context.Context) error {
	pool, err := s.getPool()
	if err != nil {
		return err
	}
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping postgres: %w", classify(err))
	}
	return nil
}

// Pool returns the connection pool for packages that keep their own tables
// in the same database, or nil before Open.
func (s *Store) Pool() *pgxpool.Pool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pool
}

func (s *Store) getPool() (*pgxpool.Pool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pool == nil || s.closed {
		return nil, ErrNotOpen
	}
	return s.pool, nil
}

// now returns the hub clock in UTC at the precision PostgreSQL stores.
func (s *Store) now() time.Time { return store.Time(s.cfg.Now()) }
