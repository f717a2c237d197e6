package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

const (
	// compactSuffix names the file a compaction writes, next to the spool
	// file, before renaming it over the spool file.
	compactSuffix = ".compact"
	// compactTxMaxBytes bounds the bbolt transactions a compaction writes,
	// so the copy does not hold all the data in memory at once.
	compactTxMaxBytes = 8 << 20
	// compactRetryDelay is how long the writer waits after a failed
	// compaction (a full disk, say) before it tries again.
	compactRetryDelay = 5 * time.Minute
)

func (s *Spool) compactPath() string { return s.cfg.Path + compactSuffix }

// removeStaleCompactFile deletes the file a compaction interrupted by a
// crash left behind. The spool file itself is complete either way,
// because a compaction renames its file over the spool file only after
// fsyncing it.
func (s *Spool) removeStaleCompactFile() error {
	err := os.Remove(s.compactPath())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("remove leftover compaction file: %w", err)
	}
	s.log.Warn("deleted a leftover compaction file; a compaction was interrupted", "path", s.compactPath())
	return nil
}

// maybeCompact compacts the file if compactionDue reports it due. It runs on the
// writer goroutine, or in Open before the writer starts, so no write is
// in progress and appends wait until it returns. A failure is logged and
// counted, and delays the next attempt by compactRetryDelay.
func (s *Spool) maybeCompact(trigger string) {
	fileBytes, dataBytes, due := s.compactionDue()
	if !due {
		return
	}
	if err := s.compact(trigger, fileBytes, dataBytes); err != nil {
		s.metrics.compactionErrors.Inc()
		s.compactAfter = s.cfg.Now().Add(compactRetryDelay)
		s.log.Error("spool compaction failed; the spool keeps its old file", "trigger", trigger,
			"file_bytes", fileBytes, "data_bytes", dataBytes, "retry_after", compactRetryDelay, "error", err)
	}
}

// compactionDue reports whether the file should be compacted: it is at
// least CompactMinFileBytes, more than CompactRatio times its data, and
// the data is at most CompactMaxCopyBytes.
func (s *Spool) compactionDue() (fileBytes, dataBytes int64, due bool) {
	if s.cfg.CompactMinFileBytes < 0 || s.cfg.Now().Before(s.compactAfter) {
		return 0, 0, false
	}
	fileBytes, err := fileSize(s.cfg.Path)
	if err != nil {
		s.log.Warn("cannot read the spool file size for compaction", "error", err)
		return 0, 0, false
	}
	if fileBytes < s.cfg.CompactMinFileBytes {
		return fileBytes, 0, false
	}
	dataBytes, err = s.dataBytes()
	if err != nil {
		s.log.Warn("cannot measure the spool data for compaction", "error", err)
		return fileBytes, 0, false
	}
	if s.cfg.CompactMaxCopyBytes > 0 && dataBytes > s.cfg.CompactMaxCopyBytes {
		return fileBytes, dataBytes, false
	}
	return fileBytes, dataBytes, float64(fileBytes) > s.cfg.CompactRatio*float64(dataBytes)
}

// dataBytes returns the size of the pages holding data: the pages up to
// bbolt's high-water mark minus the free and pending pages. It is what a
// compaction copies. bbolt updates its free page count when a read-write
// transaction closes, and Open runs one before the first call.
func (s *Spool) dataBytes() (int64, error) {
	var used int64
	if err := s.db.View(func(tx *bolt.Tx) error {
		used = tx.Size()
		return nil
	}); err != nil {
		return 0, err
	}
	return max(used-int64(s.db.Stats().FreeAlloc), 0), nil
}

// compact copies the data into Path+".compact", fsyncs it, renames it
// over Path, fsyncs the directory and switches the spool to the new file.
// A failure before the rename removes the copy and leaves the old file
// in use. The new file is opened (and locked) before the rename, so the
// file lock never lapses.
func (s *Spool) compact(trigger string, before, data int64) error {
	start := time.Now()
	tmp := s.compactPath()
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove old %s: %w", tmp, err)
	}

	opts := s.boltOptions()
	// One fsync at the end instead of one per copy transaction.
	opts.NoSync = true
	dst, err := bolt.Open(tmp, 0o600, opts)
	if err != nil {
		return errors.Join(fmt.Errorf("create %s: %w", tmp, err), removeIfExists(tmp))
	}
	discard := func(step string, err error) error {
		return errors.Join(fmt.Errorf("%s: %w", step, err), dst.Close(), removeIfExists(tmp))
	}
	if err := bolt.Compact(dst, s.db, compactTxMaxBytes); err != nil {
		return discard("copy the data", err)
	}
	dst.NoSync = false
	if err := dst.Sync(); err != nil {
		return discard("fsync the copy", err)
	}
	if err := os.Rename(tmp, s.cfg.Path); err != nil {
		return discard("rename the copy over the spool file", err)
	}

	// The new file is the spool file from here on, whatever fails below.
	// NOTE: if the directory fsync fails, a crash may bring back the old
	// file and lose the records appended to the new one since; nothing
	// can undo the rename, so the failure is only logged.
	dirErr := syncDir(filepath.Dir(s.cfg.Path))
	s.dbMu.Lock()
	old := s.db
	s.db = dst
	s.dbMu.Unlock()
	// Closing the old file frees its disk blocks, because the rename
	// unlinked it. That took 0.4 s for a 277 MB file in the drain
	// benchmark (bench drain), so appends do not wait for it.
	s.oldFiles.Go(func() {
		if err := old.Close(); err != nil {
			s.log.Error("closing the spool file replaced by a compaction failed", "path", s.cfg.Path, "error", err)
		}
	})
	// The smaller file gave disk space back.
	s.liftDiskLimit("compaction")

	after, _ := fileSize(s.cfg.Path)
	elapsed := time.Since(start)
	s.metrics.compactions.Inc()
	s.metrics.compactionSeconds.Observe(elapsed.Seconds())
	if after < before {
		s.metrics.reclaimed.Add(float64(before - after))
	}
	s.log.Info("spool compacted", "trigger", trigger, "before_bytes", before, "after_bytes", after,
		"data_bytes", data, "duration", elapsed)
	if dirErr != nil {
		s.log.Error("spool compacted, but a step after the rename failed", "error", dirErr)
	}
	return nil
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// syncDir fsyncs a directory, which makes a rename inside it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	if err := d.Sync(); err != nil {
		return errors.Join(fmt.Errorf("fsync directory %s: %w", dir, err), d.Close())
	}
	return d.Close()
}
