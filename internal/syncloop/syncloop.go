// Package syncloop runs the loop that the hub's syncers share: sync once
// at start, then again every interval or at once when notified, and after
// a failed sync wait a retry interval and sync again. The syncer provides
// the sync itself and the hooks that log and count failures.
package syncloop

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Timing holds the durations of a syncer's configuration. A zero field
// means the syncer's default.
type Timing struct {
	// Interval is how often the loop syncs without being notified.
	Interval time.Duration
	// RetryInterval is the wait after a failed sync.
	RetryInterval time.Duration
	// QueryTimeout bounds the store reads of one sync.
	QueryTimeout time.Duration
}

// Resolve returns t with each zero field taken from defaults. It returns
// an error naming each negative field.
func (t Timing) Resolve(defaults Timing) (Timing, error) {
	var errs []error
	for _, f := range []struct {
		name string
		d    *time.Duration
		def  time.Duration
	}{
		{"Interval", &t.Interval, defaults.Interval},
		{"RetryInterval", &t.RetryInterval, defaults.RetryInterval},
		{"QueryTimeout", &t.QueryTimeout, defaults.QueryTimeout},
	} {
		switch {
		case *f.d < 0:
			errs = append(errs, fmt.Errorf("%s %s is negative", f.name, *f.d))
		case *f.d == 0:
			*f.d = f.def
		}
	}
	return t, errors.Join(errs...)
}

// Config configures a Loop.
type Config struct {
	// Interval is how often the loop syncs without being notified. It
	// must be positive.
	Interval time.Duration
	// RetryInterval is the wait after a failed sync. It must be positive.
	RetryInterval time.Duration
	// Sync does one sync. Its context is canceled by Close. Required.
	Sync func(ctx context.Context) error
	// OnError is called with each error Sync returns, before the loop
	// waits RetryInterval. Nil ignores the errors.
	OnError func(err error)
	// OnFirstSync is called once, after the first sync that succeeds and
	// before Synced is closed. Nil does nothing.
	OnFirstSync func()
}

// Loop calls Config.Sync in its own goroutine. Start it once and Close it
// once; the zero value is not usable.
type Loop struct {
	cfg Config

	notify chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	synced chan struct{}

	startOnce, closeOnce sync.Once
	started              bool
}

// New returns a loop that is not started yet.
func New(cfg Config) *Loop {
	l := &Loop{
		cfg:    cfg,
		notify: make(chan struct{}, 1),
		done:   make(chan struct{}),
		synced: make(chan struct{}),
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

// Start starts the goroutine that syncs at once and then follows the
// interval and Notify. It returns at once. A Start after the first, or
// after Close, does nothing.
func (l *Loop) Start() {
	l.startOnce.Do(func() {
		l.started = true
		go l.run()
	})
}

// Notify requests a sync now. Requests that arrive while a sync runs
// lead to one more sync after it. It never blocks: the request channel
// has room for one request and a full channel drops the new one.
func (l *Loop) Notify() {
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

// Synced returns a channel closed after the first sync that succeeds.
func (l *Loop) Synced() <-chan struct{} { return l.synced }

// Close cancels the running sync, stops the loop and waits for its
// goroutine. It is safe to call more than once.
func (l *Loop) Close() {
	l.closeOnce.Do(func() {
		l.startOnce.Do(func() {}) // a later Start does nothing
		l.cancel()
		if l.started {
			<-l.done
		}
	})
}

func (l *Loop) run() {
	defer close(l.done)
	tick := time.NewTicker(l.cfg.Interval)
	defer tick.Stop()
	first := true
	for {
		if err := l.cfg.Sync(l.ctx); err != nil {
			if l.cfg.OnError != nil {
				l.cfg.OnError(err)
			}
			retry := time.NewTimer(l.cfg.RetryInterval)
			select {
			case <-l.ctx.Done():
				retry.Stop()
				return
			case <-retry.C:
				continue
			}
		}
		if first {
			first = false
			if l.cfg.OnFirstSync != nil {
				l.cfg.OnFirstSync()
			}
			close(l.synced)
		}
		select {
		case <-l.ctx.Done():
			return
		case <-l.notify:
		case <-tick.C:
		}
	}
}
