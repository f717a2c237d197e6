// Package spool is the agent's durable queue: every vehicle message is
// stored in a bbolt file before the vehicle gets its PUBACK, and stays
// there until the hub acknowledges it.
//
// # File layout
//
// One bucket per lane (protocol.Lanes: "sos", "status", "gps"). Keys are
// big-endian uint64 sequence numbers, per lane, starting at 1. A value is
// the JSON encoding of protocol.Record with Seq left at zero: the key is
// the record's sequence number. The "meta" bucket holds the format
// version, the spool id and each lane's next sequence number, so numbers
// keep increasing across restarts and after every record was deleted.
// The "rejected" bucket holds one sub-bucket per lane with records the hub
// rejected permanently, kept for inspection under their old keys.
//
// # Writes
//
// Append, DeleteThrough, RejectThrough and Flush go through a single
// writer goroutine. It takes the first waiting request and collects every
// other request already waiting (group commit). It applies them all in
// one bbolt transaction and commits it, and bbolt's Commit writes and
// fsyncs the file. Only then does each caller return. A failed commit
// fails every request of its group.
package spool

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/xpress-ops/tower/protocol"
)

// Defaults of Config.
const (
	// DefaultTimeout is how long Open waits for the file lock.
	DefaultTimeout = time.Second
	// DefaultMaxBatch is the most records one group commit collects.
	DefaultMaxBatch = 4096
)

// formatVersion is the layout described in the package comment.
const formatVersion = 1

var (
	bucketMeta     = []byte("meta")
	bucketRejected = []byte("rejected")
	keyVersion     = []byte("version")
	keySpoolID     = []byte("spool_id")
	keyNextPrefix  = "next_seq/"
)

// Errors returned by the spool.
var (
	// ErrLocked means another process (or another Spool in this process) holds the file.
	ErrLocked = errors.New("spool file is locked by another process")
	// ErrClosed means the spool is not open.
	ErrClosed = errors.New("spool is not open")
	// ErrUnknownLane means a lane outside protocol.Lanes.
	ErrUnknownLane = errors.New("unknown lane")
	// ErrFull means the file reached Config.MaxFileBytes or the disk is full.
	ErrFull = errors.New("spool is full")
	// ErrCorrupt means the file does not have the layout this package writes.
	ErrCorrupt = errors.New("spool file is corrupt or of an unknown format")
)

// Config configures a Spool.
type Config struct {
	// Path is the bbolt file, created with mode 0600 if missing. Required.
	Path string
	// Logger receives the spool's logs. Nil means discard.
	Logger *slog.Logger
	// Registerer receives the spool's metrics on Open. Nil means a private registry.
	Registerer prometheus.Registerer
	// Timeout is how long Open waits for the exclusive file lock before it
	// fails with ErrLocked, so a second process fails fast. Zero means
	// DefaultTimeout (1 s).
	Timeout time.Duration
	// CommitInterval is how long the writer waits after the first request
	// of a group for more requests to join it. Zero (the default) means no
	// wait: a group is the first request plus every request that queued
	// while the previous commit was writing and fsyncing, which adds no
	// latency when the spool is idle. Negative values count as zero.
	CommitInterval time.Duration
	// MaxBatch is the most records one group commit collects. A single
	// Append with more records is still committed whole, alone. Zero
	// means DefaultMaxBatch (4096).
	MaxBatch int
	// MaxFileBytes caps the size of the bbolt file in bytes; an append
	// that would grow the file past it fails with ErrFull. bbolt grows the
	// file in steps (doubling up to 1 GiB), so the cap is reached one step
	// early. Zero means no cap beyond the disk's free space.
	//
	// TODO: evict the oldest GPS records under this cap and keep room for
	// SOS, so a full spool never rejects an SOS while it holds GPS.
	MaxFileBytes int
	// Now is the clock behind the oldest-record age metric. Nil means time.Now.
	Now func() time.Time
}

// LaneStats describes one lane of the spool.
type LaneStats struct {
	// Records is the number of records waiting for the hub's acknowledgement.
	Records int
	// Bytes is the encoded size of those records.
	Bytes int64
	// Oldest is the receive time of the lane's first (lowest sequence
	// number) record, zero when the lane is empty.
	Oldest time.Time
	// NextSeq is the sequence number the next appended record gets.
	NextSeq uint64
	// Rejected is the number of records moved to the rejected bucket.
	Rejected int
}

// Spool is a durable, lane-ordered record queue in one bbolt file. Its
// methods are safe for concurrent use once Open returned.
type Spool struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	db       *bolt.DB
	spoolID  string
	requests chan *request
	quit     chan struct{}
	stopped  chan struct{}
	notify   chan struct{}
	running  atomic.Bool

	// writer-owned state: changed only by the writer goroutine (and by
	// Open before it starts); statsMu guards reads from other goroutines.
	statsMu sync.RWMutex
	lanes   map[protocol.Lane]*LaneStats

	closeOnce sync.Once
	closeErr  error
}

// New returns a spool for cfg with defaults filled in. It does no I/O.
func New(cfg Config) *Spool {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.CommitInterval < 0 {
		cfg.CommitInterval = 0
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Spool{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "spool"),
		requests: make(chan *request),
		quit:     make(chan struct{}),
		stopped:  make(chan struct{}),
		notify:   make(chan struct{}, 1),
		lanes:    make(map[protocol.Lane]*LaneStats, len(protocol.Lanes)),
	}
	for _, lane := range protocol.Lanes {
		s.lanes[lane] = &LaneStats{NextSeq: 1}
	}
	s.metrics = newMetrics(s)
	return s
}

// Open opens or creates the file, checks its layout, loads lane
// statistics and starts the writer. It fails with ErrLocked when another
// holder keeps the file lock for longer than Config.Timeout. A spool
// opens once: after Close, make a new one with New.
func (s *Spool) Open() error {
	if s.cfg.Path == "" {
		return errors.New("open spool: Config.Path is empty")
	}
	select {
	case <-s.quit:
		return fmt.Errorf("open spool %s: %w", s.cfg.Path, ErrClosed)
	default:
	}

	db, err := bolt.Open(s.cfg.Path, 0o600, &bolt.Options{
		Timeout:      s.cfg.Timeout,
		FreelistType: bolt.FreelistMapType,
		MaxSize:      s.cfg.MaxFileBytes,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return fmt.Errorf("open spool %s: %w (waited %s for the file lock; is another agent running with this data dir?)",
			s.cfg.Path, ErrLocked, s.cfg.Timeout)
	}
	if err != nil {
		return fmt.Errorf("open spool %s: %w", s.cfg.Path, err)
	}

	if err := db.Update(s.initLayout); err != nil {
		return errors.Join(fmt.Errorf("initialise spool %s: %w", s.cfg.Path, err), db.Close())
	}
	if err := db.View(s.loadStats); err != nil {
		return errors.Join(fmt.Errorf("load spool %s: %w", s.cfg.Path, err), db.Close())
	}
	if err := s.metrics.register(s.cfg.Registerer); err != nil {
		return errors.Join(fmt.Errorf("register spool metrics: %w", err), db.Close())
	}

	s.db = db
	s.running.Store(true)
	go s.run()

	st := s.Stats()
	s.log.Info("spool opened", "path", s.cfg.Path, "spool", s.spoolID,
		"sos_records", st[protocol.LaneSOS].Records,
		"status_records", st[protocol.LaneStatus].Records,
		"gps_records", st[protocol.LaneGPS].Records)
	return nil
}

// initLayout creates missing buckets and the spool id, and checks the
// format version of an existing file.
func (s *Spool) initLayout(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return fmt.Errorf("create meta bucket: %w", err)
	}
	if v := meta.Get(keyVersion); v == nil {
		if err := meta.Put(keyVersion, seqKey(formatVersion)); err != nil {
			return fmt.Errorf("write format version: %w", err)
		}
	} else if len(v) != 8 || binary.BigEndian.Uint64(v) != formatVersion {
		return fmt.Errorf("%w: format version %x, this build reads %d", ErrCorrupt, v, formatVersion)
	}

	if id := meta.Get(keySpoolID); id != nil {
		s.spoolID = string(id)
	} else {
		var raw [16]byte
		if _, err := rand.Read(raw[:]); err != nil {
			return fmt.Errorf("generate spool id: %w", err)
		}
		s.spoolID = hex.EncodeToString(raw[:])
		if err := meta.Put(keySpoolID, []byte(s.spoolID)); err != nil {
			return fmt.Errorf("write spool id: %w", err)
		}
	}

	rejected, err := tx.CreateBucketIfNotExists(bucketRejected)
	if err != nil {
		return fmt.Errorf("create rejected bucket: %w", err)
	}
	for _, lane := range protocol.Lanes {
		if _, err := tx.CreateBucketIfNotExists([]byte(lane)); err != nil {
			return fmt.Errorf("create %s bucket: %w", lane, err)
		}
		if _, err := rejected.CreateBucketIfNotExists([]byte(lane)); err != nil {
			return fmt.Errorf("create rejected %s bucket: %w", lane, err)
		}
	}
	return nil
}

// loadStats counts each lane's records and bytes and reads its next
// sequence number. It runs before the writer starts.
func (s *Spool) loadStats(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	rejected := tx.Bucket(bucketRejected)
	for _, lane := range protocol.Lanes {
		st := s.lanes[lane]
		b := tx.Bucket([]byte(lane))
		c := b.Cursor()
		var last uint64
		for k, v := c.First(); k != nil; k, v = c.Next() {
			st.Records++
			st.Bytes += int64(len(v))
			last = binary.BigEndian.Uint64(k)
		}
		st.NextSeq = last + 1
		if v := meta.Get(nextSeqKey(lane)); v != nil {
			if len(v) != 8 {
				return fmt.Errorf("%w: next sequence number of lane %s is %d bytes", ErrCorrupt, lane, len(v))
			}
			st.NextSeq = max(st.NextSeq, binary.BigEndian.Uint64(v))
		}
		oldest, err := firstReceivedAt(b)
		if err != nil {
			return fmt.Errorf("lane %s: %w", lane, err)
		}
		st.Oldest = oldest
		st.Rejected = rejected.Bucket([]byte(lane)).Stats().KeyN
	}
	return nil
}

// SpoolID returns the random id of the spool file, generated when the
// file was created. It is empty before Open.
func (s *Spool) SpoolID() string { return s.spoolID }

// Path returns the bbolt file path.
func (s *Spool) Path() string { return s.cfg.Path }

// Stats returns a snapshot of every lane's statistics.
func (s *Spool) Stats() map[protocol.Lane]LaneStats {
	s.statsMu.RLock()
	defer s.statsMu.RUnlock()
	out := make(map[protocol.Lane]LaneStats, len(s.lanes))
	for lane, st := range s.lanes {
		out[lane] = *st
	}
	return out
}

// Notify returns a channel that receives a value after a commit that
// appended records. It has a buffer of one, so a slow receiver gets one
// value for many commits. It is meant for one receiver (the uplink).
func (s *Spool) Notify() <-chan struct{} { return s.notify }

// Close stops the writer after its current group commit, then closes the
// file. Calls to Append that have not reached the writer fail with
// ErrClosed. Close is safe to call more than once.
func (s *Spool) Close() error {
	s.closeOnce.Do(func() {
		close(s.quit)
		if !s.running.Load() {
			return
		}
		<-s.stopped
		s.running.Store(false)
		s.metrics.unregister(s.cfg.Registerer)
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("close spool %s: %w", s.cfg.Path, err)
		}
		s.log.Info("spool closed", "path", s.cfg.Path, "spool", s.spoolID)
	})
	return s.closeErr
}

func checkLane(lane protocol.Lane) error {
	if !lane.Valid() {
		return fmt.Errorf("%w: %q", ErrUnknownLane, lane)
	}
	return nil
}

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

func nextSeqKey(lane protocol.Lane) []byte { return []byte(keyNextPrefix + string(lane)) }
