package httpsec

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// capLogInterval is the least time between two log lines of one
// listener about its cap.
const capLogInterval = time.Minute

// LimitListener returns a listener that keeps at most n connections of ln
// open at once, as golang.org/x/net/netutil.LimitListener does: Accept
// waits until one of them is closed. Unlike netutil's, it logs a warning
// through log, at most once a minute, when a connection has to wait, so
// that a full server (every slot held by dashboards, or by slow clients)
// is visible. flag names the setting that raises n, for the message, or
// is empty when n is fixed.
func LimitListener(ln net.Listener, n int, log *slog.Logger, flag string) net.Listener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, n), done: make(chan struct{}), log: log, flag: flag}
}

type limitListener struct {
	net.Listener
	slots     chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	log       *slog.Logger
	flag      string
	// lastLog is when the last warning was logged, in Unix nanoseconds.
	lastLog atomic.Int64
	// waited counts the connections that waited since the last warning.
	waited atomic.Int64
}

// Accept takes a slot, waiting for one to free up when all are held, and
// then accepts a connection that gives the slot back when it closes.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	default:
		l.full()
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

// full logs that the cap is reached, at most once per capLogInterval.
func (l *limitListener) full() {
	waited := l.waited.Add(1)
	now := time.Now().UnixNano()
	last := l.lastLog.Load()
	if now-last < int64(capLogInterval) || !l.lastLog.CompareAndSwap(last, now) {
		return
	}
	l.waited.Store(0)
	msg := "HTTP connection cap reached: new connections wait until one closes"
	if l.flag != "" {
		msg += "; raise " + l.flag + " if this server must hold more"
	}
	l.log.Warn(msg, "max_connections", cap(l.slots), "waited_since_last_warning", waited, "addr", l.Addr().String())
}

// Close closes the listener and ends an Accept that waits for a slot.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitConn gives its listener's slot back on its first Close.
type limitConn struct {
	net.Conn
	releaseOnce sync.Once
	release     func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.releaseOnce.Do(c.release)
	return err
}
