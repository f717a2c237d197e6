package httpsec_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/xpress-ops/tower/internal/httpsec"
)

func TestLoginLocks(t *testing.T) {
	now := time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC)
	l := httpsec.NewLoginLocks(3, 15*time.Minute, 100)
	for i := range 2 {
		if _, locked := l.Fail("ana", "192.0.2.1", now); locked {
			t.Fatalf("failure %d locked", i+1)
		}
	}
	until, locked := l.Fail("ana", "192.0.2.1", now)
	if !locked || !until.Equal(now.Add(15*time.Minute)) {
		t.Fatalf("third failure = %v %t, want locked for 15 minutes", until, locked)
	}
	if _, locked := l.Locked("ana", "192.0.2.1", now.Add(time.Minute)); !locked {
		t.Error("pair not locked after the third failure")
	}
	if _, locked := l.Locked("ana", "192.0.2.2", now); locked {
		t.Error("another address is locked too")
	}
	if _, locked := l.Locked("bea", "192.0.2.1", now); locked {
		t.Error("another user name is locked too")
	}
	if _, locked := l.Locked("ana", "192.0.2.1", now.Add(15*time.Minute)); locked {
		t.Error("lock outlives its duration")
	}
	l.Clear("ana")
	if _, locked := l.Locked("ana", "192.0.2.1", now); locked {
		t.Error("Clear kept the lock")
	}
	// A success resets the failures in a row.
	l.Fail("ana", "192.0.2.1", now)
	l.Fail("ana", "192.0.2.1", now)
	l.Succeed("ana", "192.0.2.1")
	if _, locked := l.Fail("ana", "192.0.2.1", now); locked {
		t.Error("failures before a success still count")
	}
}

// A full table keeps its locked pairs: a flood of new pairs cannot push
// a lock out.
func TestLoginLocks_Bounded(t *testing.T) {
	now := time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC)
	l := httpsec.NewLoginLocks(2, 15*time.Minute, 10)
	l.Fail("ana", "192.0.2.1", now)
	l.Fail("ana", "192.0.2.1", now)
	for i := range 1000 {
		l.Fail(fmt.Sprintf("name-%d", i), "192.0.2.9", now)
	}
	if _, locked := l.Locked("ana", "192.0.2.1", now); !locked {
		t.Error("a flood of new pairs ended a lock")
	}
}
