package spool_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

// writeSpool fills a spool file with n fixes and closes it.
func writeSpool(t *testing.T, path string, n int) {
	t.Helper()
	s := spool.New(spool.Config{Path: path})
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	recs := make([]protocol.Record, n)
	for i := range recs {
		recs[i] = fixRecord("veh-001", i)
	}
	if err := s.Append(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// A damaged spool file fails Open with ErrCorrupt instead of crashing the
// agent inside bbolt.
func TestSpool_DamagedFileFailsOpenWithErrCorrupt(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, path string, size int64)
	}{
		{"zeroed data page", func(t *testing.T, path string, size int64) {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(make([]byte, 4096), 16*4096); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncated to half", func(t *testing.T, path string, size int64) {
			if err := os.Truncate(path, size/2); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "spool.db")
			writeSpool(t, path, 3000)
			info, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if info.Size() < 20*4096 {
				t.Fatalf("spool file is %d bytes, too small to damage page 16", info.Size())
			}
			tc.damage(t, path, info.Size())

			s := spool.New(spool.Config{Path: path})
			err = s.Open()
			if err == nil {
				s.Close()
				t.Fatal("a damaged spool file opened without error")
			}
			if !errors.Is(err, spool.ErrCorrupt) {
				t.Errorf("error = %v, want ErrCorrupt", err)
			}
		})
	}
}
