// Package embedded is the hub's store for single-node installs and
// `xpress dev`: one bbolt file, no PostgreSQL. It implements store.Store
// with the same rules as package postgres, and both pass the conformance
// suite in package storetest.
//
// # File layout
//
// Times in keys and values are microseconds since the Unix epoch, as a
// big-endian uint64 with the sign bit flipped, so byte order is time
// order. Times are stored at the microsecond precision PostgreSQL keeps.
// Vehicle ids never contain 0x00 (protocol.ValidateVehicleID), so "id +
// 0x00" is an unambiguous key prefix.
//
//	meta                  "version" → format version
//	agents                agent id → JSON {region, first_seen, last_seen}
//	vehicles              vehicle id → JSON {agent_id, region, first_seen, last_seen}
//	fixes                 vehicle + 0x00 + fix time + unique → fix (binary)
//	fixes_by_time         fix time + unique + vehicle → empty (retention index)
//	latest                vehicle → newest fix (binary), at most MaxFuture ahead
//	status                vehicle → online state (binary)
//	incidents             id → incident (JSON)
//	incidents_by_opened   opened_at + id → empty (Incidents, newest first)
//	incidents_active      vehicle + 0x00 + received_at + id → empty (open,
//	                      acknowledged or dispatched incidents, for the repeat window)
//	incident_sos          vehicle + 0x00 + SOS id → incident id
//	incident_events       incident id + event id → event (JSON)
//	cursors               agent, spool, lane (length-prefixed) → seq + updated_at
//	incident_presses      vehicle + 0x00 + SOS id + 0x00 + press time → incident id
//	                      (each counted press, to recognise a redelivered SOS)
//	contacts              id → contact (JSON)
//	notifications         id → notification (JSON)
//	notifications_by_key  incident id + channel + 0x00 + address → notification id
//	notifications_due     next attempt time + id → empty (pending and sending only)
//	notifications_by_provider  provider id → notification id
//	agent_credentials     agent id → credential with token hashes (JSON)
//	vehicle_credentials   vehicle id → credential or tombstone with token hashes (JSON);
//	                      the bucket's sequence is the last credential version
//	operators             user name → operator with password hash (JSON)
//	operator_sessions     SHA-256 of session id → session (JSON)
//	api_tokens            id → API token with its hash (JSON)
//	api_token_hashes      SHA-256 of token → id
//	audit_log             id → audit entry (JSON), append-only
//
// Integers in keys are big-endian uint64. "unique" is the next sequence
// number of the fixes bucket, so two fixes of one vehicle with the same
// fix time are both kept. Incident, event, contact and notification ids
// come from the sequences of the incidents, incident_events, contacts and
// notifications buckets. Open adds the buckets of the dispatch methods to
// a file written before they existed, so the format version stays 1.
//
// # Transactions
//
// CommitBatch runs in one bbolt read-write transaction, committed and
// fsynced before it returns, so a batch is stored whole or not at all,
// also when the process is killed. bbolt allows one writer at a time, so
// concurrent commits wait for each other, and a resent batch that waits
// behind its first delivery then finds the advanced cursor. The list
// reads (LatestPositions, Fixes, Incidents) visit at most readPageSize
// entries per read-only transaction, because a long read transaction
// keeps bbolt from reusing freed pages and blocks the remapping of a
// growing file.
package embedded

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

var _ store.Store = (*Store)(nil)

// Defaults for Config fields left zero.
const (
	DefaultTimeout           = time.Second
	DefaultRetention         = protocol.DefaultRetention
	DefaultRetentionInterval = time.Hour
)

// Read limits, the same as package postgres.
const (
	// DefaultFixLimit is the maximum number of fixes Fixes returns when its
	// limit is zero or less.
	DefaultFixLimit = 10000
	// DefaultIncidentLimit is the maximum number of incidents Incidents
	// returns when the filter's limit is zero or less.
	DefaultIncidentLimit = 100
)

const (
	// formatVersion is the file layout described in the package comment.
	formatVersion = 1
	// readPageSize is the most entries one read transaction visits.
	readPageSize = 1000
	// retentionChunk is the most fixes one retention transaction deletes,
	// so commits can run between chunks.
	retentionChunk = 10000
)

// Errors of the embedded store.
var (
	// ErrNotOpen means a method was called before Open or after Close. It
	// wraps store.ErrUnavailable.
	ErrNotOpen = fmt.Errorf("embedded store is not open: %w", store.ErrUnavailable)
	// ErrLocked means another process, or another Store in this process,
	// holds the file.
	ErrLocked = errors.New("embedded store file is locked by another process")
	// ErrCorrupt means the file does not have the layout this package writes.
	ErrCorrupt = errors.New("embedded store file is corrupt or of an unknown format")
)

// Config configures a Store.
type Config struct {
	// Path is the bbolt file, for example <data-dir>/hub.db. Open creates
	// it with mode 0600 when missing; its directory must exist. Required.
	Path string
	// Logger receives the store's log; nil discards it.
	Logger *slog.Logger
	// Registerer receives the store's metrics; nil means a private registry.
	Registerer prometheus.Registerer
	// Now is the hub's clock; nil means time.Now. It stamps incidents and
	// events, decides which fixes are too far in the future to become a
	// vehicle's latest position, and places the retention window.
	Now func() time.Time
	// Timeout is how long Open waits for the exclusive file lock before it
	// fails with ErrLocked. Zero or negative means DefaultTimeout (1 s).
	Timeout time.Duration
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
	// MaxFuture is how far ahead of Now a fix time may be and still become
	// a vehicle's latest position. Such fixes are always stored. Zero or
	// negative means protocol.DefaultMaxFuture (5 minutes).
	MaxFuture time.Duration
}

// Store is the embedded store. Create it with New and call Open before
// use. It is safe for concurrent use.
type Store struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu     sync.Mutex
	db     *bolt.DB
	opened bool
	closed bool

	stop context.CancelFunc
	wg   sync.WaitGroup

	// afterRecord, when set by a test, runs inside the commit transaction
	// after each fresh record is applied, before the cursor moves. An
	// error from it rolls the transaction back.
	afterRecord func(r *protocol.Record) error
	// chunkSize, when set by a test, replaces retentionChunk.
	chunkSize int
}

// New returns a Store with the defaults of cfg filled in. It does no I/O.
func New(cfg Config) *Store {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.RetentionInterval == 0 {
		cfg.RetentionInterval = DefaultRetentionInterval
	}
	if cfg.MaxFuture <= 0 {
		cfg.MaxFuture = protocol.DefaultMaxFuture
	}
	return &Store{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "store"),
		metrics: newMetrics(cfg.Registerer, cfg.Path),
	}
}

// Open opens or creates the file, checks its format version, creates
// missing buckets and starts the background retention run. It fails with
// ErrLocked when another holder keeps the file lock for longer than
// Config.Timeout, and with ErrCorrupt when the file has another layout.
// A Store opens once: after Close, make a new one with New.
func (s *Store) Open(ctx context.Context) error {
	if s.cfg.Path == "" {
		return errors.New("open embedded store: Config.Path is empty")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("open embedded store %s: %w", s.cfg.Path, err)
	}
	s.mu.Lock()
	if s.opened || s.closed {
		s.mu.Unlock()
		return errors.New("open embedded store: already opened or closed")
	}
	s.opened = true
	s.mu.Unlock()

	db, err := bolt.Open(s.cfg.Path, 0o600, &bolt.Options{
		Timeout:      s.cfg.Timeout,
		FreelistType: bolt.FreelistMapType,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return fmt.Errorf("open embedded store %s: %w (waited %s for the file lock; is another hub running with this data directory?)",
			s.cfg.Path, ErrLocked, s.cfg.Timeout)
	}
	if err != nil {
		return fmt.Errorf("open embedded store %s: %w", s.cfg.Path, err)
	}
	if err := db.Update(initLayout); err != nil {
		return errors.Join(fmt.Errorf("open embedded store %s: %w", s.cfg.Path, err), db.Close())
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.Join(fmt.Errorf("open embedded store %s: %w", s.cfg.Path, ErrNotOpen), db.Close())
	}
	s.db = db
	if s.cfg.RetentionInterval > 0 {
		loopCtx, stop := context.WithCancel(context.Background())
		s.stop = stop
		s.wg.Add(1)
		go s.retain(loopCtx)
	}
	s.log.Info("store opened", "path", s.cfg.Path, "bytes", fileSize(s.cfg.Path),
		"retention", s.cfg.Retention, "retention_interval", s.cfg.RetentionInterval)
	return nil
}

// initLayout creates missing buckets and checks the format version of an
// existing file.
func initLayout(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return fmt.Errorf("create meta bucket: %w", err)
	}
	switch v := meta.Get(keyVersion); {
	case v == nil:
		if err := meta.Put(keyVersion, binary.BigEndian.AppendUint64(nil, formatVersion)); err != nil {
			return fmt.Errorf("write format version: %w", err)
		}
	case len(v) != 8 || binary.BigEndian.Uint64(v) != formatVersion:
		return fmt.Errorf("%w: format version %x, this build reads %d", ErrCorrupt, v, formatVersion)
	}
	for _, name := range dataBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return nil
}

// Close stops the background retention run, waits for it and for
// in-flight transactions, and closes the file. It is safe to call more
// than once.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	db, stop := s.db, s.stop
	s.mu.Unlock()

	if stop != nil {
		stop()
	}
	s.wg.Wait()
	if db == nil {
		return nil
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("close embedded store %s: %w", s.cfg.Path, err)
	}
	s.log.Info("store closed", "path", s.cfg.Path)
	return nil
}

// Ping checks that the file is open and readable.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.view(ctx, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) == nil {
			return fmt.Errorf("%w: meta bucket missing", ErrCorrupt)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("ping embedded store: %w", err)
	}
	return nil
}

// Path returns the bbolt file path.
func (s *Store) Path() string { return s.cfg.Path }

func (s *Store) getDB() (*bolt.DB, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil || s.closed {
		return nil, ErrNotOpen
	}
	return s.db, nil
}

// view runs fn in a read-only transaction, after checking ctx.
func (s *Store) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	db, err := s.getDB()
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return classify(db.View(fn))
}

// update runs fn in a read-write transaction and commits it. It checks
// ctx again once it holds bbolt's writer lock, so a caller that gave up
// while waiting writes nothing.
func (s *Store) update(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	db, err := s.getDB()
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return classify(db.Update(func(tx *bolt.Tx) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		return fn(tx)
	}))
}

// classify maps bbolt errors onto the store's error kinds, keeping the
// original in the chain: a closed database becomes ErrNotOpen, and a full
// disk store.ErrUnavailable, since a retry may succeed once space is
// freed.
func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotOpen):
		return err
	case errors.Is(err, bolterrors.ErrDatabaseNotOpen):
		return errors.Join(ErrNotOpen, err)
	case errors.Is(err, syscall.ENOSPC):
		return errors.Join(store.ErrUnavailable, err)
	}
	return err
}

// fileSize returns the size of the file at path in bytes, or 0 when it
// cannot be read.
func fileSize(path string) int64 {
	info, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return info.Size()
}

// now returns the hub clock at the precision the store keeps.
func (s *Store) now() time.Time { return store.Time(s.cfg.Now()) }
