package embedded

import (
	"bytes"
	"context"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/hub/store"
)

// retentionTimeout bounds one background retention run.
const retentionTimeout = 10 * time.Minute

// DeleteFixesBefore removes the fixes whose fix time is before before and
// returns how many it removed. It walks the fixes_by_time index from the
// oldest entry, so it reads only the fixes it deletes, and deletes at
// most retentionChunk fixes per transaction, so commits run between the
// chunks. Latest positions, statuses, incidents and cursors stay. When
// it fails, the chunks committed before the failure stay deleted and the
// count of them is returned with the error.
//
// NOTE: bbolt never shrinks its file. Deleted fixes leave free pages that
// later writes reuse, so the file stays at its largest size. Compacting
// it offline (bbolt compact) gives the space back.
func (s *Store) DeleteFixesBefore(ctx context.Context, before time.Time) (int64, error) {
	bound := appendTime(nil, clampTime(store.Time(before)))
	var total int64
	for {
		var n int
		err := s.update(ctx, func(tx *bolt.Tx) error {
			var err error
			n, err = deleteChunk(tx, bound, s.chunk())
			return err
		})
		if err != nil {
			s.metrics.retentionDeleted.Add(float64(total))
			return total, fmt.Errorf("delete fixes before %s: %w", before.UTC().Format(time.RFC3339), err)
		}
		total += int64(n)
		if n < s.chunk() {
			break
		}
	}
	s.metrics.retentionDeleted.Add(float64(total))
	return total, nil
}

// chunk returns the most fixes one retention transaction deletes.
func (s *Store) chunk() int {
	if s.chunkSize > 0 {
		return s.chunkSize
	}
	return retentionChunk
}

// deleteChunk deletes up to limit of the oldest fixes whose index key
// sorts before bound, with their index entries, and returns how many it
// deleted.
func deleteChunk(tx *bolt.Tx, bound []byte, limit int) (int, error) {
	index, fixes := tx.Bucket(bucketFixesByTime), tx.Bucket(bucketFixes)
	if index == nil || fixes == nil {
		return 0, fmt.Errorf("%w: fixes buckets missing", ErrCorrupt)
	}

	// Collect first: deleting through a cursor while it moves can skip keys.
	var keys [][]byte
	c := index.Cursor()
	for k, _ := c.First(); k != nil && len(keys) < limit && bytes.Compare(k, bound) < 0; k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		fk, err := fixKeyFromIndex(k)
		if err != nil {
			return 0, err
		}
		if fixes.Get(fk) == nil {
			return 0, fmt.Errorf("%w: fixes_by_time entry %x names a missing fix", ErrCorrupt, k)
		}
		if err := fixes.Delete(fk); err != nil {
			return 0, fmt.Errorf("delete fix: %w", err)
		}
		if err := index.Delete(k); err != nil {
			return 0, fmt.Errorf("delete fix index entry: %w", err)
		}
	}
	return len(keys), nil
}

// retain runs retention right away and then every RetentionInterval
// until ctx ends.
func (s *Store) retain(ctx context.Context) {
	defer s.wg.Done()
	ticker := time.NewTicker(s.cfg.RetentionInterval)
	defer ticker.Stop()
	for {
		s.runRetention(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// runRetention removes the fixes older than Retention once.
func (s *Store) runRetention(ctx context.Context) {
	runCtx, cancel := context.WithTimeout(ctx, retentionTimeout)
	defer cancel()
	before := s.cfg.Now().Add(-s.cfg.Retention)
	n, err := s.DeleteFixesBefore(runCtx, before)
	switch {
	case err != nil && ctx.Err() == nil:
		s.metrics.retentionErrors.Inc()
		s.log.Error("fixes retention failed; old fixes stay until the next run", "before", before, "deleted", n, "error", err)
	case err == nil && n != 0:
		s.log.Info("removed fixes older than the retention window", "before", before, "fixes", n)
	}
}
