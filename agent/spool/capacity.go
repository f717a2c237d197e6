package spool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/xpress-ops/tower/protocol"
)

// Values of Usage.FullReason.
const (
	fullMaxBytes = "max_bytes"
	fullDisk     = "disk"
)

const (
	// pressureLogInterval is the shortest time between two log lines about
	// evicted or refused records; the lines in between are summed up.
	pressureLogInterval = 10 * time.Second
	// maxReliefAttempts is how often a group is retried on a full disk,
	// each time after evicting more records.
	maxReliefAttempts = 3
	// minReliefBytes is the least a disk-full retry evicts. Deleting
	// records frees whole bbolt pages only once they are empty, so the
	// writer evicts well beyond the size of the records it must store.
	minReliefBytes = 256 << 10
	// diskLimitProbeInterval is how long the disk limit stays in force
	// before the writer lifts it to see whether the disk has room again.
	diskLimitProbeInterval = 5 * time.Minute
)

// evictionOrder is the order in which lanes give up records for space.
// The SOS lane is never evicted.
var evictionOrder = []protocol.Lane{protocol.LaneGPS, protocol.LaneStatus}

// fullState records that an SOS-lane append failed for lack of space.
type fullState struct {
	reason string
	since  time.Time
}

// limitFor returns the most live data, in bytes, that may be stored
// after req, and which cap sets it (fullMaxBytes or fullDisk): the
// smaller of MaxBytes and the disk limit, minus the SOS reserve unless
// req holds SOS-lane records only. ok is false when no cap is in force.
func (s *Spool) limitFor(req *request) (limit int64, reason string, ok bool) {
	capBytes, reserve, reason := s.cfg.MaxBytes, s.cfg.SOSReserveBytes, fullMaxBytes
	if d := s.diskLimit.Load(); d > 0 && (capBytes <= 0 || d < capBytes) {
		capBytes, reserve, reason = d, min(s.cfg.SOSReserveBytes, d/4), fullDisk
	}
	if capBytes <= 0 {
		return 0, "", false
	}
	if req.sosOnly {
		return capBytes, reason, true
	}
	return capBytes - reserve, reason, true
}

// makeRoom evicts the oldest GPS records, then the oldest status records,
// until req's records fit under their limit. If evicting every one of
// them would not be enough, it evicts nothing and returns an error
// matching ErrFull, and ErrNoSpace too when the disk limit is the cap.
func (s *Spool) makeRoom(tx *bolt.Tx, req *request, states map[protocol.Lane]*laneState) error {
	limit, reason, ok := s.limitFor(req)
	if !ok {
		return nil
	}
	live := liveOf(states)
	excess := live + req.bytes - limit
	if excess <= 0 {
		return nil
	}
	var evictable int64
	for _, lane := range evictionOrder {
		evictable += states[lane].Bytes
	}
	if evictable < excess {
		sentinel := ErrFull
		if reason == fullDisk {
			sentinel = ErrNoSpace
		}
		return fmt.Errorf("%w: %d bytes of %s records do not fit under the %s limit of %d bytes "+
			"(%d bytes stored, of which %d bytes are GPS and status records that may be evicted)",
			sentinel, req.bytes, req.lanes(), reason, limit, live, evictable)
	}
	for _, lane := range evictionOrder {
		if excess <= 0 {
			break
		}
		freed, err := evictHead(tx, lane, states[lane], excess)
		if err != nil {
			return err
		}
		excess -= freed
	}
	return nil
}

// evictHead deletes the lane's oldest records until at least need bytes
// of records are gone or the lane is empty, and returns the bytes freed.
func evictHead(tx *bolt.Tx, lane protocol.Lane, st *laneState, need int64) (int64, error) {
	b := laneBucket(tx, lane)
	var keys [][]byte
	var freed int64
	c := b.Cursor()
	for k, v := c.First(); k != nil && freed < need; k, v = c.Next() {
		if len(keys) == 0 && st.evictedOldest.IsZero() {
			oldest, err := receivedAt(k, v)
			if err != nil {
				return 0, fmt.Errorf("evict %s records: %w", lane, err)
			}
			st.evictedOldest = oldest
		}
		keys = append(keys, append([]byte(nil), k...))
		freed += int64(len(v))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return 0, fmt.Errorf("evict %s record %d: %w", lane, seqOf(k), err)
		}
	}
	if len(keys) > 0 {
		st.Records -= len(keys)
		st.Bytes -= freed
		st.firstChanged = true
		st.evicted += len(keys)
		st.evictedBytes += freed
	}
	return freed, nil
}

func liveOf(states map[protocol.Lane]*laneState) int64 {
	var n int64
	for _, st := range states {
		n += st.Bytes
	}
	return n
}

// isNoSpace reports whether err means the file could not grow.
func isNoSpace(err error) bool {
	if errors.Is(err, bolterrors.ErrMaxSizeReached) || errors.Is(err, syscall.ENOSPC) ||
		errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG) {
		return true
	}
	// NOTE: bbolt v1.5.0 formats the error of growing the file with %s
	// ("file resize error: ..."), which drops the errno, so the errno's
	// text is the only trace of it.
	msg := err.Error()
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG} {
		if strings.Contains(msg, errno.Error()) {
			return true
		}
	}
	return false
}

// relieve runs after a commit failed because the file could not grow. It
// caps the live data at its current size (the disk limit) and evicts old
// GPS and status records in a transaction of their own, down to the disk
// limit minus its SOS reserve, but at least minReliefBytes. A retry can
// then reuse the freed pages. Each further attempt lowers the limit to
// the live data again, so it evicts more. It returns an error wrapping
// ErrNoSpace when there is nothing to evict or the eviction itself
// cannot be committed.
func (s *Spool) relieve(attempt int) error {
	live := s.liveBytes()
	if d := s.diskLimit.Load(); d == 0 || live < d {
		if d == 0 {
			s.diskLimitSince = s.cfg.Now()
		}
		// Zero would mean no limit.
		s.diskLimit.Store(max(live, 1))
	}
	limit := s.diskLimit.Load()
	target := limit - min(s.cfg.SOSReserveBytes, limit/4)
	amount := max(live-target, minReliefBytes)

	states := s.snapshotStates()
	tx, err := s.db.Begin(true)
	if err != nil {
		return fmt.Errorf("begin eviction transaction: %w", err)
	}
	var freed int64
	for _, lane := range evictionOrder {
		if freed >= amount {
			break
		}
		n, err := evictHead(tx, lane, states[lane], amount-freed)
		if err != nil {
			_ = tx.Rollback()
			return err
		}
		freed += n
	}
	if freed == 0 {
		_ = tx.Rollback()
		return fmt.Errorf("%w: no GPS or status records left to evict", ErrNoSpace)
	}
	if err := refreshOldest(tx, states); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		if isNoSpace(err) {
			return fmt.Errorf("commit eviction of %d bytes: %w: %w", freed, ErrNoSpace, err)
		}
		return fmt.Errorf("commit eviction of %d bytes: %w", freed, err)
	}

	s.storeStates(states)
	s.countEvictions(states)
	s.log.Warn("disk full: capped the spool at its current size and evicted old records",
		"disk_limit_bytes", limit, "freed_bytes", freed, "attempt", attempt+1,
		"gps_evicted", states[protocol.LaneGPS].evicted, "status_evicted", states[protocol.LaneStatus].evicted)
	return nil
}

// maybeLiftDiskLimit lifts the disk limit once diskLimitProbeInterval
// passed, so the spool finds out whether the disk has room again.
func (s *Spool) maybeLiftDiskLimit() {
	if s.diskLimit.Load() == 0 || s.cfg.Now().Sub(s.diskLimitSince) < diskLimitProbeInterval {
		return
	}
	s.liftDiskLimit("probe")
}

func (s *Spool) liftDiskLimit(trigger string) {
	if limit := s.diskLimit.Swap(0); limit != 0 {
		s.log.Info("spool lifted its disk limit", "disk_limit_bytes", limit, "trigger", trigger)
	}
}

// refuse counts and logs an append that failed for lack of space, and
// marks the spool full if it held SOS-lane records.
func (s *Spool) refuse(req *request, reason string) {
	perLane := map[protocol.Lane]int{}
	for _, rec := range req.records {
		perLane[rec.lane]++
	}
	for lane, n := range perLane {
		s.metrics.refused.WithLabelValues(string(lane), reason).Add(float64(n))
		s.pressure.refused[lane] += n
	}
	s.pressure.refusedReason = reason
	if req.sosOnly {
		s.statsMu.Lock()
		if s.full.reason == "" {
			s.full = fullState{reason: reason, since: s.cfg.Now()}
		}
		s.statsMu.Unlock()
	}
	s.pressure.maybeLog(s.log, s.cfg.Now())
}

// clearFull resets the full state after a commit that stored SOS-lane
// records or deleted records.
func (s *Spool) clearFull() {
	s.statsMu.Lock()
	was := s.full
	s.full = fullState{}
	s.statsMu.Unlock()
	if was.reason != "" {
		s.log.Info("spool accepts SOS records again", "full_reason", was.reason, "full_since", was.since)
	}
}

// countEvictions adds the evictions recorded in states to the metrics and
// the rate-limited log.
func (s *Spool) countEvictions(states map[protocol.Lane]*laneState) {
	for lane, st := range states {
		if st.evicted == 0 {
			continue
		}
		s.metrics.evicted.WithLabelValues(string(lane)).Add(float64(st.evicted))
		s.metrics.evictedBytes.WithLabelValues(string(lane)).Add(float64(st.evictedBytes))
		s.pressure.evicted[lane] += st.evicted
		s.pressure.evictedBytes += st.evictedBytes
		if o := st.evictedOldest; !o.IsZero() && (s.pressure.evictedOldest.IsZero() || o.Before(s.pressure.evictedOldest)) {
			s.pressure.evictedOldest = o
		}
	}
	s.pressure.maybeLog(s.log, s.cfg.Now())
}

// pressureLog sums up evicted and refused records between log lines, so
// a spool under steady pressure logs at most once per
// pressureLogInterval. Only the writer goroutine uses it.
type pressureLog struct {
	last          time.Time
	evicted       map[protocol.Lane]int
	evictedBytes  int64
	evictedOldest time.Time
	refused       map[protocol.Lane]int
	refusedReason string
}

func newPressureLog() pressureLog {
	return pressureLog{evicted: map[protocol.Lane]int{}, refused: map[protocol.Lane]int{}}
}

// maybeLog logs the sums if pressureLogInterval passed since the last line.
func (p *pressureLog) maybeLog(log *slog.Logger, now time.Time) {
	if !p.last.IsZero() && now.Sub(p.last) < pressureLogInterval {
		return
	}
	if p.flush(log) {
		p.last = now
	}
}

// flush logs and resets the sums, and reports whether it logged.
func (p *pressureLog) flush(log *slog.Logger) bool {
	logged := false
	if len(p.evicted) > 0 {
		log.Warn("spool at its size limit: evicted the oldest records to make room",
			"gps_evicted", p.evicted[protocol.LaneGPS], "status_evicted", p.evicted[protocol.LaneStatus],
			"evicted_bytes", p.evictedBytes, "oldest_evicted_received_at", p.evictedOldest)
		clear(p.evicted)
		p.evictedBytes, p.evictedOldest = 0, time.Time{}
		logged = true
	}
	if len(p.refused) > 0 {
		level := slog.LevelWarn
		if p.refused[protocol.LaneSOS] > 0 {
			level = slog.LevelError
		}
		log.Log(context.Background(), level, "spool full: records not stored",
			"sos_refused", p.refused[protocol.LaneSOS], "status_refused", p.refused[protocol.LaneStatus],
			"gps_refused", p.refused[protocol.LaneGPS], "full_reason", p.refusedReason)
		clear(p.refused)
		logged = true
	}
	return logged
}

// fileSize returns the size of the file at path.
func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}
