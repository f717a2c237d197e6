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
// version, the spool id, the id of the agent that owns the spool (see
// Config.AgentID) and each lane's next sequence number, so numbers keep
// increasing across restarts and after every record was deleted.
// The "rejected" bucket holds one sub-bucket per lane with records the hub
// rejected permanently, kept for inspection under their old keys.
//
// # Writes
//
// Append, DeleteThrough, RejectThrough and Flush go through a single
// writer goroutine. It takes the first waiting request and collects every
// other request already waiting (group commit). Under load it waits up to
// about 2 ms for more (see Config.CommitInterval and groupPacer), unless
// the group holds an SOS-lane record. It applies them all in one bbolt
// transaction and commits it, and bbolt's Commit writes and fsyncs the
// file. Only then does each caller return. A failed commit fails every
// request of its group, except for the disk-full case below.
//
// An SOS append should not wait behind the deletes of a drain. So the
// writer keeps deletes of GPS and status records out of groups with an
// SOS-lane record. It also spaces out commits of deletes alone, at most
// 100 ms apart, and held deletes join the next group of GPS or status
// appends. The type deleteHold has the details. DeleteThrough still
// returns only after its delete is committed.
//
// Records are stored with protocol.AppendRecordJSON and read with
// protocol.UnmarshalRecordJSON, which write and read the same JSON as
// encoding/json, faster for GPS fixes.
//
// # Disk policy
//
// Config.MaxBytes caps the live data: the encoded records waiting in the
// three lanes (the sum of LaneStats.Bytes). When an append would exceed
// the cap, the writer deletes the oldest GPS records, and once the GPS
// lane is empty the oldest status records, in the same transaction as
// the append, so the group still costs one fsync. Records of the SOS lane
// (SOS and SOS cancels) are never evicted. GPS and status appends must leave Config.SOSReserveBytes free;
// only SOS-lane appends may use that reserve. An append that does not fit
// even after evicting every GPS and status record fails with ErrFull,
// and only that append: the rest of its group is committed.
//
// When the file cannot grow (the disk or a quota is full, or the file
// reached Config.MaxFileBytes), a commit fails. The writer then caps the
// live data where it stood (the disk limit, see Usage.DiskLimitBytes),
// evicts old GPS and status records in a transaction of their own to free
// pages inside the file, and retries the group. From then on the disk
// limit works like MaxBytes, with its own SOS reserve, so new records
// reuse the pages of evicted ones and the file stops growing. The writer
// lifts the disk limit after a compaction or after five minutes. If the
// disk is still full, the next failed commit sets it again. An append
// that still finds no room fails with ErrNoSpace.
//
// A bbolt file never shrinks when records are deleted. After a drain,
// when the file is much larger than the data it holds, the writer copies
// the data into a new file (bbolt.Compact), fsyncs it, renames it over the
// old one and fsyncs the directory. Appends wait for the writer in the
// meantime, so none is acknowledged from the old file after the switch.
// The old file is closed, which frees its disk blocks, in the background.
// A crash leaves either the old or the new file complete under Path; a
// leftover Path+".compact" is deleted at Open. Open also compacts a file
// that qualifies, such as one drained just before a crash.
package spool

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"runtime/debug"
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
	// DefaultMaxBytes is the default cap on live data. As an estimate, a
	// fix record is about 250 bytes, so 2 GiB holds about 8.5 million
	// fixes: 1000 vehicles sending one fix every 5 s for about 12 hours.
	DefaultMaxBytes = 2 << 30
	// DefaultSOSReserveBytes is the default space kept for SOS records.
	// As an estimate, an SOS record is about 250 bytes without a note and
	// at most about 1.3 KiB with a 1000-byte note, so 8 MiB holds between
	// about 6,500 and 33,000 SOS records.
	DefaultSOSReserveBytes = 8 << 20
	// DefaultCompactMinFileBytes is the smallest file that is compacted.
	DefaultCompactMinFileBytes = 64 << 20
	// DefaultCompactRatio is how many times larger than its data a file
	// must be before it is compacted.
	DefaultCompactRatio = 4
	// DefaultCompactMaxCopyBytes is the most data a compaction copies.
	// Appends, SOS included, wait for the copy: in the drain benchmark
	// (bench drain) on a 2-core machine, copying 32 MiB took 0.76 s.
	DefaultCompactMaxCopyBytes = 4 << 20
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
	// ErrFull means records were not stored for lack of space: they do not
	// fit under Config.MaxBytes even after evicting every GPS and status
	// record, or the disk is full (ErrNoSpace, which matches ErrFull too).
	ErrFull = errors.New("spool is full")
	// ErrNoSpace means the file could not grow: the disk or a quota is
	// full, or the file reached Config.MaxFileBytes.
	ErrNoSpace = fmt.Errorf("%w: no space left for the spool file", ErrFull)
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
	// fixed wait. A group is then the first request plus every request
	// that queued while the previous commit was writing and fsyncing. When
	// requests arrive often enough that another is expected within about
	// one commit duration (at least 1 ms, at most 2 ms), the writer also
	// waits that long for them (see groupPacer). An idle spool commits at
	// once. A negative value means no wait at all. A group that contains
	// an SOS-lane record is committed without either wait.
	CommitInterval time.Duration
	// MaxBatch is the most records one group commit collects. A single
	// Append with more records is still committed whole, alone. Zero
	// means DefaultMaxBatch (4096).
	MaxBatch int
	// MaxBytes caps the live data in bytes: the encoded records waiting
	// in the sos, status and gps lanes, as counted by LaneStats.Bytes.
	// Keys, bbolt page overhead, free pages, the rejected records and the
	// meta bucket are not counted, so the file is larger than this. When
	// an append would exceed the cap, the oldest GPS records are evicted,
	// then the oldest status records; SOS records never are. Size it well
	// below the free space of the file system, because of the overhead.
	// Zero means DefaultMaxBytes (2 GiB); a negative value means no cap,
	// so only a full disk limits the spool (see the package comment).
	MaxBytes int64
	// SOSReserveBytes is the part of MaxBytes that only SOS-lane records
	// (SOS and SOS cancels) may use: an append holding any GPS or status
	// record must leave this much of MaxBytes free. It must be less than
	// MaxBytes. Under the limit set when the disk fills, the reserve is this
	// or a quarter of that limit, whichever is smaller. Zero means
	// DefaultSOSReserveBytes (8 MiB), or a quarter of MaxBytes when that
	// is smaller; a negative value means no reserve.
	SOSReserveBytes int64
	// MaxFileBytes is a hard limit on the size of the bbolt file in bytes,
	// like a disk quota: a commit that would grow the file past it fails as
	// on a full disk, with ErrNoSpace. bbolt grows the file in steps
	// (doubling up to 16 MiB, then 16 MiB at a time), so the limit is
	// reached up to one step early. It should be well above MaxBytes
	// because of the overhead MaxBytes does not count. Zero means no limit
	// beyond the disk's free space.
	MaxFileBytes int
	// CompactMinFileBytes is the file size in bytes below which the file
	// is never compacted. A negative value disables compaction. Zero means
	// DefaultCompactMinFileBytes (64 MiB).
	CompactMinFileBytes int64
	// CompactRatio is how many times larger than its data the file must be
	// to be compacted. The data is what a compaction copies: the bbolt
	// pages in use (records, keys, page headers, rejected records, meta),
	// that is the file's used pages minus its free pages. Zero means
	// DefaultCompactRatio (4); values below 1 are invalid.
	CompactRatio float64
	// CompactMaxCopyBytes is the most data in bytes a compaction copies,
	// measured like CompactRatio's data. Appends wait while the file is
	// copied, so this bounds the pause: compaction runs after a drain, not
	// under a backlog. Zero means DefaultCompactMaxCopyBytes (4 MiB); a
	// negative value means no bound.
	CompactMaxCopyBytes int64
	// Now is the clock behind the oldest-record age metric. Nil means time.Now.
	Now func() time.Time
	// AgentID is the agent that owns the spool. A new file records it in
	// its meta bucket, and Open fails with an *OwnerError (matching
	// ErrOtherOwner) when the file records another agent. A file that
	// records none, written before owners were recorded, is adopted: Open
	// records AgentID and logs it. Empty checks and records nothing.
	AgentID string
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

// Usage describes the spool's space.
type Usage struct {
	// LiveBytes is the encoded size of the records waiting in the lanes,
	// the quantity Config.MaxBytes caps (the sum of LaneStats.Bytes).
	LiveBytes int64
	// MaxBytes is Config.MaxBytes, or 0 without a cap.
	MaxBytes int64
	// SOSReserveBytes is Config.SOSReserveBytes, the reserve for SOS-lane records.
	SOSReserveBytes int64
	// DiskLimitBytes is the cap on live data the writer set when the file
	// could not grow, or 0 when none is in force.
	DiskLimitBytes int64
	// FileBytes is the size of the bbolt file, 0 when it cannot be read.
	FileBytes int64
	// Full is set when an SOS-lane append failed for lack of space and no
	// space was freed since: no later commit stored an SOS-lane record or
	// deleted records (DeleteThrough, RejectThrough).
	Full bool
	// FullReason is "max_bytes" (the cap and its reserve are used up by
	// SOS records) or "disk" (the file could not grow); empty unless Full.
	FullReason string
	// FullSince is when Full was set, by Config.Now; zero unless Full.
	FullSince time.Time
}

// Spool is a durable, lane-ordered record queue in one bbolt file. Its
// methods are safe for concurrent use once Open returned.
type Spool struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	// db is replaced by a compaction on the writer goroutine, under dbMu.
	// The writer uses it without the lock; readers hold dbMu.RLock.
	dbMu     sync.RWMutex
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
	full    fullState

	// pacer sizes group commits unless noPacing (a negative
	// CommitInterval); writer-owned.
	pacer    groupPacer
	noPacing bool
	// deletes keeps deletes away from SOS appends. Writer-owned.
	deletes deleteHold
	// oldFiles tracks the closing of files replaced by a compaction.
	oldFiles sync.WaitGroup

	// pressure logs evictions and refused appends, rate-limited; compactAfter
	// delays the next compaction after one failed; diskLimitSince is when
	// diskLimit was set. Writer-owned.
	pressure       pressureLog
	compactAfter   time.Time
	diskLimitSince time.Time
	// diskLimit is the live-data cap set when the file could not grow, 0
	// when none. The writer sets it; Usage reads it.
	diskLimit atomic.Int64

	// configErr is cfg.Validate's result, checked before defaults were
	// filled and returned by Open.
	configErr error
	// owner is the agent id the file records; adopted is set when Open
	// recorded it in a file that had none.
	owner   string
	adopted bool

	closeOnce sync.Once
	closeErr  error
}

// New returns a spool for cfg with defaults filled in. It does no I/O;
// Open reports an invalid cfg.
func New(cfg Config) *Spool {
	configErr := cfg.Validate()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	noPacing := cfg.CommitInterval < 0
	if noPacing {
		cfg.CommitInterval = 0
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}

	switch {
	case cfg.MaxBytes == 0:
		cfg.MaxBytes = DefaultMaxBytes
	case cfg.MaxBytes < 0:
		cfg.MaxBytes = 0
	}
	switch {
	case cfg.SOSReserveBytes < 0:
		cfg.SOSReserveBytes = 0
	case cfg.SOSReserveBytes == 0 && cfg.MaxBytes > 0:
		cfg.SOSReserveBytes = min(DefaultSOSReserveBytes, cfg.MaxBytes/4)
	case cfg.SOSReserveBytes == 0:
		cfg.SOSReserveBytes = DefaultSOSReserveBytes
	}

	if cfg.CompactMinFileBytes == 0 {
		cfg.CompactMinFileBytes = DefaultCompactMinFileBytes
	}
	if cfg.CompactRatio == 0 {
		cfg.CompactRatio = DefaultCompactRatio
	}
	if cfg.CompactMaxCopyBytes == 0 {
		cfg.CompactMaxCopyBytes = DefaultCompactMaxCopyBytes
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
		pressure: newPressureLog(),
		noPacing: noPacing,

		configErr: configErr,
	}
	for _, lane := range protocol.Lanes {
		s.lanes[lane] = &LaneStats{NextSeq: 1}
	}
	s.metrics = newMetrics(s)
	return s
}

// Open opens or creates the file, checks its layout, loads lane
// statistics and starts the writer. It fails with ErrLocked when another
// holder keeps the file lock for longer than Config.Timeout. It deletes
// a leftover compaction file and compacts the spool file if it qualifies
// (see Config.CompactRatio); a failed compaction is logged, not returned.
// A spool opens once: after Close, make a new one with New.
func (s *Spool) Open() error {
	if err := s.validate(); err != nil {
		return fmt.Errorf("open spool: %w", err)
	}
	select {
	case <-s.quit:
		return fmt.Errorf("open spool %s: %w", s.cfg.Path, ErrClosed)
	default:
	}

	// bbolt.Open reads the meta and freelist pages, and panics on some
	// damaged ones. NOTE: after such a panic bbolt's file handle and lock
	// are not released; the agent exits on this error anyway.
	var db *bolt.DB
	err := guardCorrupt(func() error {
		var err error
		db, err = s.openFile()
		return err
	})
	if errors.Is(err, ErrCorrupt) {
		return fmt.Errorf("open spool %s: %w", s.cfg.Path, err)
	}
	if err != nil {
		return err
	}
	if err := s.removeStaleCompactFile(); err != nil {
		return errors.Join(fmt.Errorf("open spool %s: %w", s.cfg.Path, err), db.Close())
	}
	if err := guardCorrupt(func() error { return db.Update(s.initLayout) }); err != nil {
		var owner *OwnerError
		if errors.As(err, &owner) {
			return errors.Join(owner, db.Close())
		}
		return errors.Join(fmt.Errorf("initialise spool %s: %w", s.cfg.Path, err), db.Close())
	}
	// loadStats reads every record, so a damaged page shows up here, at
	// Open, rather than in the middle of a drain.
	if err := guardCorrupt(func() error { return db.View(s.loadStats) }); err != nil {
		return errors.Join(fmt.Errorf("load spool %s: %w", s.cfg.Path, err), db.Close())
	}
	if err := s.metrics.register(s.cfg.Registerer); err != nil {
		return errors.Join(fmt.Errorf("register spool metrics: %w", err), db.Close())
	}

	s.db = db
	s.maybeCompact("open")
	s.running.Store(true)
	go s.run()

	if s.adopted {
		s.log.Info("spool adopted: recorded its owner agent id, which spool files of earlier versions lack",
			"path", s.cfg.Path, "spool", s.spoolID, "agent", s.owner)
	}
	st := s.Stats()
	s.log.Info("spool opened", "path", s.cfg.Path, "spool", s.spoolID, "agent", s.owner,
		"sos_records", st[protocol.LaneSOS].Records,
		"status_records", st[protocol.LaneStatus].Records,
		"gps_records", st[protocol.LaneGPS].Records,
		"live_bytes", s.liveBytes(), "max_bytes", s.cfg.MaxBytes, "sos_reserve_bytes", s.cfg.SOSReserveBytes)
	return nil
}

// validate returns the result of Config.Validate on the config given to New.
func (s *Spool) validate() error {
	if s.configErr != nil {
		return fmt.Errorf("invalid spool config: %w", s.configErr)
	}
	return nil
}

// boltOptions returns the options every bbolt file of the spool is opened with.
func (s *Spool) boltOptions() *bolt.Options {
	// NoFreelistSync would save writing the freelist on every commit, but
	// then bbolt v1.5.0 rebuilds the freelist at open on a goroutine of its
	// own, which panics on a damaged page where guardCorrupt cannot catch
	// it, and TestSpool_DiskFullCapsSpoolAndKeepsSOS failed with it.
	return &bolt.Options{
		Timeout:      s.cfg.Timeout,
		FreelistType: bolt.FreelistMapType,
		MaxSize:      s.cfg.MaxFileBytes,
	}
}

// openFile opens the bbolt file and takes its lock. Another process may
// compact the file while this one waits for the lock of the old file,
// which would leave this process with a deleted file. So openFile checks
// that Path still names the file it locked, and tries once more if not.
func (s *Spool) openFile() (*bolt.DB, error) {
	for attempt := 1; ; attempt++ {
		var opened *os.File
		opts := s.boltOptions()
		opts.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			opened = f
			return f, err
		}
		db, err := bolt.Open(s.cfg.Path, 0o600, opts)
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("open spool %s: %w (waited %s for the file lock; is another agent running with this data dir?)",
				s.cfg.Path, ErrLocked, s.cfg.Timeout)
		}
		if err != nil {
			return nil, fmt.Errorf("open spool %s: %w", s.cfg.Path, err)
		}

		same, err := namesFile(s.cfg.Path, opened)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("open spool %s: %w", s.cfg.Path, err), db.Close())
		}
		if same {
			return db, nil
		}
		if err := db.Close(); err != nil {
			return nil, fmt.Errorf("open spool %s: close the replaced file: %w", s.cfg.Path, err)
		}
		if attempt == 2 {
			return nil, fmt.Errorf("open spool %s: %w (the file was replaced twice while this process waited for its lock)",
				s.cfg.Path, ErrLocked)
		}
	}
}

// namesFile reports whether path names the open file f.
func namesFile(path string, f *os.File) (bool, error) {
	if f == nil {
		return false, errors.New("bbolt did not open the file through Options.OpenFile")
	}
	opened, err := f.Stat()
	if err != nil {
		return false, err
	}
	named, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(opened, named), nil
}

// initLayout creates missing buckets and the spool id, checks the
// format version of an existing file, and checks or records its owner
// (see Config.AgentID).
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

	created := false
	if id := meta.Get(keySpoolID); id != nil {
		s.spoolID = string(id)
	} else {
		created = true
		var raw [16]byte
		if _, err := rand.Read(raw[:]); err != nil {
			return fmt.Errorf("generate spool id: %w", err)
		}
		s.spoolID = hex.EncodeToString(raw[:])
		if err := meta.Put(keySpoolID, []byte(s.spoolID)); err != nil {
			return fmt.Errorf("write spool id: %w", err)
		}
	}
	if err := s.checkOwner(meta, created); err != nil {
		return err
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

// Usage returns a snapshot of the spool's space. It reads the file size
// from the file system.
func (s *Spool) Usage() Usage {
	s.statsMu.RLock()
	u := Usage{
		LiveBytes:       s.liveBytesLocked(),
		MaxBytes:        s.cfg.MaxBytes,
		SOSReserveBytes: s.cfg.SOSReserveBytes,
		DiskLimitBytes:  s.diskLimit.Load(),
		Full:            s.full.reason != "",
		FullReason:      s.full.reason,
		FullSince:       s.full.since,
	}
	s.statsMu.RUnlock()
	if size, err := fileSize(s.cfg.Path); err == nil {
		u.FileBytes = size
	}
	return u
}

// liveBytes returns the encoded size of the records in every lane.
func (s *Spool) liveBytes() int64 {
	s.statsMu.RLock()
	defer s.statsMu.RUnlock()
	return s.liveBytesLocked()
}

func (s *Spool) liveBytesLocked() int64 {
	var n int64
	for _, st := range s.lanes {
		n += st.Bytes
	}
	return n
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
		s.pressure.flush(s.log)
		s.metrics.unregister(s.cfg.Registerer)
		s.dbMu.Lock()
		err := s.db.Close()
		s.dbMu.Unlock()
		s.oldFiles.Wait()
		if err != nil {
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

// guardCorrupt runs fn and turns a panic or memory fault inside bbolt,
// which is how bbolt reacts to a damaged page, into ErrCorrupt, so the
// agent stops with a message instead of a stack trace.
func guardCorrupt(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v; move the file aside and restore a backup, or remove it to start an empty spool", ErrCorrupt, r)
		}
	}()
	return fn()
}
