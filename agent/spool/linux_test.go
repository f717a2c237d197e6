//go:build linux

package spool_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

const (
	// fileSizeLimitChildEnv names the spool file the helper process fills.
	fileSizeLimitChildEnv = "XPRESS_SPOOL_TEST_FSIZE_CHILD"
	// fileSizeLimit is the helper process's RLIMIT_FSIZE.
	fileSizeLimit = 512 << 10
	childGPSTotal = 6000
)

// childResult is what the helper process reports on stdout.
type childResult struct {
	GPSAcked       int    `json:"gps_acked"`
	GPSError       string `json:"gps_error"`
	SOSAcked       int    `json:"sos_acked"`
	SOSError       string `json:"sos_error"`
	SOSNoSpace     bool   `json:"sos_no_space"`
	DiskLimitBytes int64  `json:"disk_limit_bytes"`
	Full           bool   `json:"full"`
	FullReason     string `json:"full_reason"`
}

// runFileSizeLimitChild runs in the helper process. It lowers the
// process's file size limit (RLIMIT_FSIZE, the soft limit only), so the
// kernel fails writes past it with EFBIG as it would fail them with
// ENOSPC on a full disk, and only in this process. Then it fills a spool
// with fixes and SOS records and reports what was acknowledged. Go
// ignores the SIGXFSZ signal that comes with EFBIG.
func runFileSizeLimitChild(path string) int {
	var limit syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &limit); err != nil {
		fmt.Fprintln(os.Stderr, "get RLIMIT_FSIZE:", err)
		return 2
	}
	limit.Cur = fileSizeLimit
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &limit); err != nil {
		fmt.Fprintln(os.Stderr, "set RLIMIT_FSIZE:", err)
		return 2
	}

	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	s := spool.New(spool.Config{Path: path, MaxBytes: -1, Logger: logger})
	if err := s.Open(); err != nil {
		fmt.Fprintln(os.Stderr, "open spool:", err)
		return 2
	}
	var res childResult
	for n := 1; n <= childGPSTotal; n += 100 {
		batch := make([]protocol.Record, 100)
		for i := range batch {
			batch[i] = gpsFix(n + i)
		}
		if err := s.Append(context.Background(), batch); err != nil {
			res.GPSError = err.Error()
			break
		}
		res.GPSAcked += len(batch)
	}
	// Five SOS records per append keep the number of commits down.
	for n := 1; n < 100000; n += 5 {
		batch := []protocol.Record{sosAlert(n), sosAlert(n + 1), sosAlert(n + 2), sosAlert(n + 3), sosAlert(n + 4)}
		if err := s.Append(context.Background(), batch); err != nil {
			res.SOSError = err.Error()
			res.SOSNoSpace = errors.Is(err, spool.ErrNoSpace)
			break
		}
		res.SOSAcked += len(batch)
	}
	u := s.Usage()
	res.DiskLimitBytes, res.Full, res.FullReason = u.DiskLimitBytes, u.Full, u.FullReason
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "close spool:", err)
		return 2
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return 2
	}
	return 0
}

func TestSpool_FileSizeLimitOfProcess(t *testing.T) {
	path := tempPath(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fileSizeLimitChildEnv+"="+path)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper process failed: %v\nstderr:\n%s", err, stderr.String())
	}
	var res childResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("decode helper result %q: %v", stdout.String(), err)
	}

	// The kernel refused to grow the file, and the spool took it for a full disk.
	if !strings.Contains(stderr.String(), syscall.EFBIG.Error()) {
		t.Errorf("helper logs do not show %q; the file size limit was never hit:\n%s", syscall.EFBIG.Error(), stderr.String())
	}
	if res.GPSAcked != childGPSTotal || res.GPSError != "" {
		t.Errorf("helper stored %d of %d fixes (error %q), want all: old fixes make room once the file cannot grow",
			res.GPSAcked, childGPSTotal, res.GPSError)
	}
	if res.DiskLimitBytes == 0 {
		t.Error("helper's spool set no disk limit")
	}
	if !res.SOSNoSpace || !res.Full || res.FullReason != "disk" || res.SOSAcked == 0 {
		t.Errorf("helper result = %+v, want some SOS stored, then ErrNoSpace and full for reason disk", res)
	}
	if size := mustFileSize(t, path); size > fileSizeLimit {
		t.Errorf("spool file is %d bytes, above the limit of %d", size, fileSizeLimit)
	}

	// Every acknowledged SOS is in the file, and the fixes left are the newest.
	s := openSpool(t, spool.Config{Path: path, MaxBytes: -1})
	sos := mustRead(t, s, protocol.LaneSOS, 0)
	if len(sos) != res.SOSAcked {
		t.Fatalf("sos lane holds %d records, want the %d the helper got acknowledged", len(sos), res.SOSAcked)
	}
	for i, rec := range sos {
		if want := fmt.Sprintf("sos-%06d", i+1); rec.SOS.ID != want {
			t.Fatalf("sos record %d is %s, want %s", i, rec.SOS.ID, want)
		}
	}
	gps := mustRead(t, s, protocol.LaneGPS, 0)
	if len(gps) > 0 && (gps[len(gps)-1].Seq != childGPSTotal || gps[0].Seq != uint64(childGPSTotal-len(gps)+1)) {
		t.Errorf("gps records left run from seq %d to %d, want the newest up to %d", gps[0].Seq, gps[len(gps)-1].Seq, childGPSTotal)
	}
}

// openFDsOf returns how many of this process's file descriptors refer to path.
func openFDsOf(t *testing.T, path string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && target == path {
			n++
		}
	}
	return n
}

// A spool that waits for the lock while another process compacts the
// file must end up with the new file, not the old one it first opened.
func TestSpool_OpenWaitingForLockFollowsCompaction(t *testing.T) {
	path := tempPath(t)
	holder := spool.New(spool.Config{Path: path, MaxBytes: -1, CompactMinFileBytes: compactMinFileBytes})
	if err := holder.Open(); err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	fillGPS(t, holder, 20000)

	waiter := spool.New(spool.Config{Path: path, Timeout: 30 * time.Second})
	opened := make(chan error, 1)
	go func() { opened <- waiter.Open() }()
	t.Cleanup(func() {
		if err := waiter.Close(); err != nil {
			t.Errorf("close waiting spool: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for openFDsOf(t, path) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("timed out after 10 s waiting for the second spool to open the file")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// The holder compacts: the waiter's open file is now the old, deleted one.
	if err := holder.DeleteThrough(protocol.LaneGPS, 20000); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, holder, sosAlert(1))
	if err := holder.Close(); err != nil {
		t.Fatal(err)
	}

	if err := <-opened; err != nil {
		t.Fatalf("open of the waiting spool: %v", err)
	}
	sos, err := waiter.Read(protocol.LaneSOS, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(sos) != 1 || sos[0].SOS.ID != "sos-000001" {
		t.Errorf("waiting spool reads sos lane %s, want sos-000001 appended after the compaction", jsonOf(t, sos))
	}
}
