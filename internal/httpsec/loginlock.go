package httpsec

import (
	"sync"
	"time"
)

// LoginLocks counts failed sign-ins in a row per pair of user name and
// remote address, in memory, and locks a pair after MaxFailures of them.
// Locking the pair rather than the user name keeps one address that
// guesses a supervisor's name from locking the supervisor out
// everywhere. Unknown user names are tracked like real ones, so a lock
// does not tell them apart. It is safe for concurrent use.
type LoginLocks struct {
	maxFailures int
	duration    time.Duration
	maxTracked  int

	mu    sync.Mutex
	pairs map[loginPair]*loginFailures
}

type loginPair struct{ name, addr string }

// loginFailures is the failed sign-ins in a row of one pair.
type loginFailures struct {
	count       int
	last        time.Time
	lockedUntil time.Time
}

// NewLoginLocks returns LoginLocks that lock a pair for duration after
// maxFailures failures in a row, and remember at most maxTracked pairs.
// A full table first drops the pairs idle for longer than duration, then
// the pairs that are not locked. While every pair in it is locked, a new
// pair is not tracked.
func NewLoginLocks(maxFailures int, duration time.Duration, maxTracked int) *LoginLocks {
	return &LoginLocks{maxFailures: maxFailures, duration: duration, maxTracked: maxTracked, pairs: map[loginPair]*loginFailures{}}
}

// Locked returns the end of the lock of the pair (name, addr) and true
// while it is locked at now.
func (l *LoginLocks) Locked(name, addr string, now time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.pairs[loginPair{name, addr}]
	if f == nil || !now.Before(f.lockedUntil) {
		return time.Time{}, false
	}
	return f.lockedUntil, true
}

// Fail counts a failed sign-in of the pair (name, addr). At the
// MaxFailures-th in a row it locks the pair and returns the lock's end
// and true.
func (l *LoginLocks) Fail(name, addr string, now time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := loginPair{name, addr}
	f := l.pairs[key]
	if f == nil {
		if len(l.pairs) >= l.maxTracked {
			l.prune(now)
		}
		if len(l.pairs) >= l.maxTracked {
			return time.Time{}, false
		}
		f = &loginFailures{}
		l.pairs[key] = f
	}
	f.count++
	f.last = now
	if f.count >= l.maxFailures {
		f.count, f.lockedUntil = 0, now.Add(l.duration)
		return f.lockedUntil, true
	}
	return time.Time{}, false
}

// prune deletes the pairs idle for longer than the lock duration. When
// the table is still full, it deletes every pair that is not locked.
func (l *LoginLocks) prune(now time.Time) {
	for k, f := range l.pairs {
		if now.Sub(f.last) > l.duration && !now.Before(f.lockedUntil) {
			delete(l.pairs, k)
		}
	}
	if len(l.pairs) < l.maxTracked {
		return
	}
	for k, f := range l.pairs {
		if !now.Before(f.lockedUntil) {
			delete(l.pairs, k)
		}
	}
}

// Succeed deletes the failures of the pair (name, addr) after a
// successful sign-in.
func (l *LoginLocks) Succeed(name, addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.pairs, loginPair{name, addr})
}

// Clear deletes the failures and locks of name from every address, when
// an admin unlocks the account.
func (l *LoginLocks) Clear(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k := range l.pairs {
		if k.name == name {
			delete(l.pairs, k)
		}
	}
}

// MaxFailures returns the failures in a row that lock a pair.
func (l *LoginLocks) MaxFailures() int { return l.maxFailures }
