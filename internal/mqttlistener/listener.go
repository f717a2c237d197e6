// Package mqttlistener is a mochi-mqtt listener over a net.Listener that
// closes without the deadlock and data race of mochi v2.7.9's own
// listeners; see Listener.
package mqttlistener

import (
	"crypto/tls"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// disconnectWriteTimeout bounds the write of each DISCONNECT in Close.
const disconnectWriteTimeout = time.Second

// Defaults of the Listener's limits.
const (
	// DefaultConnectTimeout is how long a new connection may take to send CONNECT.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultMaxConnections caps open connections, connected or not yet.
	DefaultMaxConnections = 100_000
)

// Listener is a mochi listener for TCP connections.
//
// It replaces mochi's listeners.Net because of how that one closes: it
// requests the server to disconnect its clients through
// Clients.GetByListener, which in mochi v2.7.9 takes the clients' read
// lock twice. A client connecting or disconnecting at that moment queues
// a write lock between the two, and the broker deadlocks. This listener
// never calls GetByListener: it stops accepting, disconnects its clients
// from a GetAll snapshot, closes every connection it accepted and waits
// for their handlers. The wait also keeps mochi's client WaitGroup from
// being incremented while Server.Close waits on it, which the race
// detector reports for listeners.Net.
type Listener struct {
	// ConnectTimeout is how long a new connection may take to send its
	// CONNECT packet before it is closed; mochi sets no deadline before
	// CONNECT. After CONNECT mochi applies the client's keep-alive. Set it
	// before the listener is added to the server. Default DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// MaxConnections caps open connections; a connection past it is closed
	// at once and counted in Rejected. Default DefaultMaxConnections.
	MaxConnections int
	// Rejected counts connections closed because MaxConnections was reached.
	Rejected atomic.Uint64

	id     string
	ln     net.Listener
	server *mqtt.Server
	log    *slog.Logger

	closed atomic.Bool
	// establishing counts the goroutines that run mochi's connection
	// handler; Close waits for them.
	establishing sync.WaitGroup

	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

var _ listeners.Listener = (*Listener)(nil)

// New returns a listener with the given id that serves ln for server.
// It logs connection ends at Debug level to log.
func New(id string, ln net.Listener, server *mqtt.Server, log *slog.Logger) *Listener {
	return &Listener{
		ConnectTimeout: DefaultConnectTimeout,
		MaxConnections: DefaultMaxConnections,
		id:             id, ln: ln, server: server, log: log, conns: map[*trackedConn]struct{}{},
	}
}

// NewTLS returns a listener like New whose connections speak MQTT over
// TLS with cfg, the TLSConfig of mochi's listeners.Config. The handshake
// runs on mochi's first read, so it counts against ConnectTimeout.
func NewTLS(id string, ln net.Listener, cfg *tls.Config, server *mqtt.Server, log *slog.Logger) *Listener {
	return New(id, tls.NewListener(ln, cfg), server, log)
}

// ID returns the listener id that mochi stores on each client.
func (l *Listener) ID() string { return l.id }

// Address returns the bound address.
func (l *Listener) Address() string { return l.ln.Addr().String() }

// Protocol returns the network of the listener.
func (l *Listener) Protocol() string { return l.ln.Addr().Network() }

// Init does nothing, because the net.Listener is bound before mochi receives it.
func (l *Listener) Init(*slog.Logger) error { return nil }

// Serve accepts connections until Close and hands each to mochi.
func (l *Listener) Serve(establish listeners.EstablishFn) {
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			return
		}
		conn := &trackedConn{Conn: raw, owner: l}
		if l.full() {
			l.Rejected.Add(1)
			l.log.Warn("mqtt connection rejected: too many open connections",
				"remote", raw.RemoteAddr().String(), "max_connections", l.MaxConnections)
			_ = raw.Close()
			continue
		}
		if !l.track(conn) {
			_ = raw.Close()
			return
		}
		// mochi replaces this deadline with the keep-alive once CONNECT is read.
		_ = raw.SetDeadline(time.Now().Add(l.ConnectTimeout))
		go func() {
			defer l.establishing.Done()
			// Hooks log rejections with their ids; this is the
			// connection's end as mochi reports it.
			if err := establish(l.id, conn); err != nil {
				l.log.Debug("mqtt connection ended", "remote", raw.RemoteAddr().String(), "error", err)
			}
		}()
	}
}

// Close stops accepting, sends every client of this listener a
// DISCONNECT (MQTT 5 reason 0x8B, server shutting down), closes every
// accepted connection and waits until mochi's handler of each returned.
// It ignores mochi's CloseFn; see Listener.
func (l *Listener) Close(listeners.CloseFn) {
	l.mu.Lock()
	already := l.closed.Swap(true)
	l.mu.Unlock()
	if already {
		return
	}
	_ = l.ln.Close()

	l.mu.Lock()
	conns := make([]*trackedConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()

	// A client that reads nothing must not stall the DISCONNECT below.
	for _, c := range conns {
		_ = c.SetWriteDeadline(time.Now().Add(disconnectWriteTimeout))
	}
	for _, cl := range l.server.Clients.GetAll() {
		if cl.Net.Listener == l.id && !cl.Closed() {
			_ = l.server.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
	for _, c := range conns {
		_ = c.Close()
	}
	l.establishing.Wait()
}

// full reports whether MaxConnections connections are open.
func (l *Listener) full() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns) >= l.MaxConnections
}

// track records conn as open and counts its handler goroutine, under the
// same lock Close takes first, so Close never waits while a handler is
// being added. It reports false once Close has begun.
func (l *Listener) track(conn *trackedConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() {
		return false
	}
	l.conns[conn] = struct{}{}
	l.establishing.Add(1)
	return true
}

func (l *Listener) untrack(conn *trackedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, conn)
}

// trackedConn removes itself from its listener when closed.
type trackedConn struct {
	net.Conn
	owner *Listener
	once  sync.Once
}

// NetConn returns the connection c wraps, so tlsconfig.PeerNames can
// reach the TLS connection underneath.
func (c *trackedConn) NetConn() net.Conn { return c.Conn }

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.owner.untrack(c) })
	return err
}

// Addr returns the bound address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }
