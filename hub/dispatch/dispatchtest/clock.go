// Package dispatchtest provides the fakes that dispatcher tests put at the
// hub's seams: a clock moved by hand, a fake Twilio REST API, a local
// SMTP server and a webhook receiver. Every server listens on 127.0.0.1
// only, and the HTTP clients it hands out refuse any other host.
package dispatchtest

import (
	"sync"
	"time"

	"github.com/xpress-ops/tower/hub/dispatch"
)

// Clock is a dispatch.Clock that moves only when Advance or Set is
// called. It is safe for concurrent use.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	tickers []*ticker
}

var _ dispatch.Clock = (*Clock)(nil)

// NewClock returns a clock set to t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTicker returns a ticker that fires when Advance or Set moves the
// clock past its next tick. Like time.Ticker it drops ticks that its
// reader has not taken.
func (c *Clock) NewTicker(d time.Duration) dispatch.Ticker {
	if d <= 0 {
		panic("dispatchtest: non-positive ticker interval")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &ticker{clock: c, every: d, next: c.now.Add(d), ch: make(chan time.Time, 1)}
	c.tickers = append(c.tickers, t)
	return t
}

// Advance moves the clock forward by d and fires the tickers that are due.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLocked(c.now.Add(d))
}

// Set moves the clock to t, which must not be before Now.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.Before(c.now) {
		panic("dispatchtest: Clock.Set moves time backwards")
	}
	c.setLocked(t)
}

func (c *Clock) setLocked(t time.Time) {
	c.now = t
	for _, tk := range c.tickers {
		if tk.stopped || t.Before(tk.next) {
			continue
		}
		for !t.Before(tk.next) {
			tk.next = tk.next.Add(tk.every)
		}
		select {
		case tk.ch <- t:
		default:
		}
	}
}

type ticker struct {
	clock   *Clock
	every   time.Duration
	next    time.Time
	ch      chan time.Time
	stopped bool
}

func (t *ticker) C() <-chan time.Time { return t.ch }

func (t *ticker) Stop() {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	t.stopped = true
}
