// Package ingest is the hub's MQTT endpoint for agents. An embedded
// mochi-mqtt broker authenticates agents, commits each batch they publish
// to the store, and publishes an application-level Ack on the agent's ack
// topic. Batches are never forwarded to other subscribers.
//
// An agent's uplink has two connections. Its main link, whose client id
// is the agent id, carries the GPS and status lanes and receives the SOS
// states. Its SOS link (protocol.SOSLinkClientID) carries only the SOS
// lane. An agent counts as connected while either connection is up (see
// OnAgentStatus).
//
// # Flow of one batch
//
// The OnPublish hook runs on the publishing connection's goroutine.
// Before the PUBACK it rejects a retained publish (without an Ack), and a
// batch that does not decode or names another agent (with a permanent
// error Ack where the envelope is readable). Then:
//
// On the SOS link, the hook commits the batch itself, before the PUBACK:
//
//	PUBLISH ─▶ decode ─▶ store.CommitBatch ─▶ OnCommit ─▶ Ack on protocol.SOSAckTopic ─▶ PUBACK
//
// On the main link, the hook hands the decoded batch to the connection's
// committer and returns, so the PUBACK leaves at once. The committer is a
// goroutine that starts with the connection's first batch:
//
//	PUBLISH ─▶ decode ─▶ queue ─▶ PUBACK
//	committer: queue ─▶ merge ─▶ store.CommitBatch ─▶ OnCommit ─▶ Ack on protocol.AckTopic
//
// The queue holds commitQueueLength batches. When it is full the hook
// waits, so mochi stops reading the connection: the same back-pressure as
// a commit inside the hook. The committer takes the next batch and every
// batch queued right behind it that continues it in the GPS lane (see
// continues), up to protocol.MaxBatchRecords records and
// protocol.MaxBatchBytes. It commits them as one batch in one store
// transaction (group commit), because each transaction has a fixed cost
// and during an outage drain the agent keeps several GPS batches in
// flight. It calls OnCommit once with the merged batch and sends one Ack
// through the lane's new cursor, which settles every batch it covers at
// the agent. Status and SOS batches are always committed alone. The
// committer ends once the connection has closed and its queue is empty,
// and Close waits for it.
//
// A failed commit gets non-permanent error Acks (see commitFailed), one
// for each merged agent batch past the cursor, so the agent resends from
// its oldest unacknowledged record. A batch queued behind a failed one
// names it as Prev, and the store rejects it (store.ErrPrevMissing)
// rather than commit past the failed records.
//
// The SOS link keeps its commit in the hook, so an SOS never waits
// behind the GPS batches the main link has queued. It has its own Ack
// topic, so its Acks never wait behind the SOS states sent to the main
// link.
//
// # Commit order
//
// A lane's batches must reach the store in sequence order: the store
// skips records at or below its cursor, so a later batch committed first
// would drop the records of an earlier one. The hub keeps that order:
//
//   - A lane travels on one connection. mochi reads a connection's packets
//     one at a time and runs OnPublish for each before it reads the next,
//     so the hook queues a connection's batches in the order the agent
//     sent them.
//   - Each connection has one committer, which takes batches from its
//     queue in order and commits one group before it takes the next.
//     Merging only joins batches that follow each other in the queue.
//   - On a session takeover mochi stops reading the old connection, but
//     the old connection's committer still commits what it had queued,
//     several batches, while the new connection's committer starts on the
//     batches the agent resends from its oldest unacknowledged record.
//     The store serialises a lane's commits on its cursor row lock and
//     skips records at or below the cursor, so whichever commit of the
//     same records comes second writes nothing twice. A queued batch of
//     the old connection that would commit past records not yet stored
//     names an earlier batch as Prev beyond the cursor, and the store
//     rejects it. A batch without Prev starts right after what the agent
//     saw acknowledged, which the store has committed (or after records
//     the agent's spool evicted), so it cannot skip records either.
package ingest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/mqttlistener"
	"github.com/xpress-ops/tower/internal/retainguard"
	"github.com/xpress-ops/tower/internal/tlsconfig"
	"github.com/xpress-ops/tower/protocol"
)

// Defaults for Config fields left zero.
const (
	// DefaultMaxPacketBytes admits the largest batch plus room for the MQTT header and topic.
	DefaultMaxPacketBytes = protocol.MaxBatchBytes + 64<<10
	DefaultCommitTimeout  = 30 * time.Second
	DefaultCursorTimeout  = 2 * time.Second
)

// AgentAuthenticator checks an agent's credentials when it connects.
// Implementations must be safe for concurrent use.
type AgentAuthenticator interface {
	// Authenticate returns nil when password is valid for agentID. The
	// agent id is already checked with protocol.ValidateAgentID.
	Authenticate(agentID string, password []byte) error
}

// AllowAll accepts every agent whose id is valid, whatever its password.
// It is only for local experiments and tests of this package: the hub
// uses a StoreAuthenticator unless agent authentication is turned off on a
// loopback listener.
type AllowAll struct{}

// Authenticate accepts any password.
func (AllowAll) Authenticate(string, []byte) error { return nil }

// Config configures a Server.
type Config struct {
	// Addr is the TCP address agents connect to, for example ":1884" or
	// "127.0.0.1:0" for a free port. Required.
	Addr string
	// TLS, when set, serves MQTT over TLS with this configuration: on
	// TLSAddr when that is set, else on Addr. Nil means plain TCP only.
	TLS *tls.Config
	// TLSAddr, when set with TLS, is a second listener that serves MQTT
	// over TLS next to the plain one on Addr.
	TLSAddr string
	// ClientCAs, when set with TLS, turns on mutual TLS: an agent must
	// connect over TLS with a client certificate signed by one of these
	// CAs whose common name or one of whose DNS names is its agent id, on
	// top of its token. Connections without one, including every
	// connection to a plain listener, are refused at CONNECT.
	ClientCAs *x509.CertPool
	// Store commits batches. Required.
	Store store.Store
	// Logger receives the server's log; nil discards it.
	Logger *slog.Logger
	// Registerer receives the server's metrics; nil means a private registry.
	Registerer prometheus.Registerer
	// OnCommit, if set, is called after a batch commits and before its Ack
	// is sent, on the goroutine that commits the connection's batches (see
	// the package doc): it delays the connection's next commit, so it must
	// return quickly. b may be several consecutive GPS batches of the
	// connection merged into one.
	OnCommit func(b *protocol.Batch, res store.CommitResult)
	// OnAgentStatus, if set, is called when an agent's first connection is
	// established (true) and two seconds after its last connection ended
	// when no new one came in that time (false); Close reports the
	// pending ones at once. Calls
	// are made in order under an internal lock: it must return quickly and
	// must not call the Server.
	OnAgentStatus func(agentID string, connected bool)
	// MaxPacketBytes is the largest MQTT packet accepted; a client sending
	// a larger one is disconnected. Zero means DefaultMaxPacketBytes.
	MaxPacketBytes uint32
	// Authenticator checks agent passwords, for example a
	// StoreAuthenticator. Nil means AllowAll.
	Authenticator AgentAuthenticator
	// CommitTimeout bounds one batch commit; on expiry the agent gets an
	// error Ack and resends. Zero means DefaultCommitTimeout.
	CommitTimeout time.Duration
	// CursorTimeout bounds the cursor read that fills Through in an error
	// Ack. Zero means DefaultCursorTimeout.
	CursorTimeout time.Duration
}

// Server is the agents' MQTT endpoint. Create it with New, then Open.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu     sync.Mutex
	broker *mqtt.Server
	// guard orders Publish's retained messages with agents' subscribes.
	guard  *retainguard.Guard
	ln     net.Listener
	tlsLn  net.Listener
	ctx    context.Context
	cancel context.CancelFunc
	opened bool
	closed bool

	agentsMu sync.Mutex
	agents   map[string]int // live connections per agent id
	// offline holds the pending offline report of each agent whose last
	// connection ended less than offlineGrace ago.
	offline map[string]*time.Timer

	// catchUp records which agents are still sending an SOS backlog.
	catchUp catchUp

	committersMu sync.Mutex
	// committers holds the committer of each connection that sent a
	// batch on an agent's main link, until the connection ends.
	committers map[*mqtt.Client]*committer
	// committerWG counts the running committers, for Close.
	committerWG sync.WaitGroup
}

// New returns a Server with the defaults of cfg filled in. It does no I/O.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxPacketBytes == 0 {
		cfg.MaxPacketBytes = DefaultMaxPacketBytes
	}
	if cfg.Authenticator == nil {
		cfg.Authenticator = AllowAll{}
	}
	if cfg.CommitTimeout <= 0 {
		cfg.CommitTimeout = DefaultCommitTimeout
	}
	if cfg.CursorTimeout <= 0 {
		cfg.CursorTimeout = DefaultCursorTimeout
	}
	return &Server{
		cfg:        cfg,
		log:        cfg.Logger.With("component", "ingest"),
		metrics:    newMetrics(cfg.Registerer),
		agents:     make(map[string]int),
		offline:    make(map[string]*time.Timer),
		committers: make(map[*mqtt.Client]*committer),
	}
}

// Open validates the configuration, listens on Addr and starts the broker.
// It returns once agents can connect.
func (s *Server) Open() error {
	if s.cfg.Addr == "" {
		return errors.New("open ingest: Addr is empty")
	}
	if s.cfg.Store == nil {
		return errors.New("open ingest: Store is nil")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opened || s.closed {
		return errors.New("open ingest: already opened or closed")
	}
	s.opened = true
	if s.cfg.ClientCAs != nil {
		if s.cfg.TLS == nil {
			return errors.New("open ingest: ClientCAs needs TLS: mutual TLS is only possible over TLS")
		}
		s.cfg.TLS = tlsconfig.RequireClientCertificates(s.cfg.TLS, s.cfg.ClientCAs)
	}

	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("open ingest: listen on %s: %w", s.cfg.Addr, err)
	}
	if s.cfg.TLS != nil && s.cfg.TLSAddr == "" {
		ln = tls.NewListener(ln, s.cfg.TLS)
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = s.cfg.MaxPacketBytes
	// mochi v2.7.9 deletes retained messages older than this, one day by
	// default, but the SOS state of an active incident must stay retained
	// until the incident closes: allow 30 days, longer than an incident is
	// expected to stay open. (Zero would disable the limit but make the
	// PUBREC mochi keeps for a QoS 2 publish expire within a second.)
	caps.MaximumMessageExpiryInterval = 30 * 24 * 60 * 60
	// An agent that reconnects after an outage gets every retained SOS
	// state of its region at once, and mochi drops messages to a client
	// past these limits (8,192 each by default), Acks included. Agents
	// are few, so give each the protocol's maximum; the downlink also
	// paces its publishes by Inflight.
	caps.MaximumInflight = 65535
	caps.MaximumClientWritesPending = 65536
	broker := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		InlineClient: true, // the Ack is published through mochi's inline client
		Logger:       slog.New(packetSummaryHandler{s.cfg.Logger.Handler()}).With("component", "ingest.broker"),
	})
	if err := broker.AddHook(&hook{server: s}, nil); err != nil {
		ln.Close()
		return fmt.Errorf("open ingest: add hook: %w", err)
	}
	guard := retainguard.New()
	if err := broker.AddHook(guard, nil); err != nil {
		ln.Close()
		return fmt.Errorf("open ingest: add retained-message guard hook: %w", err)
	}
	// mochi's own listeners can deadlock on Close; see mqttlistener.
	if err := broker.AddListener(mqttlistener.New("agents", ln, broker, s.cfg.Logger.With("component", "ingest.listener"))); err != nil {
		ln.Close()
		return fmt.Errorf("open ingest: add listener: %w", err)
	}
	var tlsLn net.Listener
	if s.cfg.TLS != nil && s.cfg.TLSAddr != "" {
		if tlsLn, err = net.Listen("tcp", s.cfg.TLSAddr); err != nil {
			ln.Close()
			return fmt.Errorf("open ingest: listen for TLS on %s: %w", s.cfg.TLSAddr, err)
		}
		tl := mqttlistener.NewTLS("agents-tls", tlsLn, s.cfg.TLS, broker, s.cfg.Logger.With("component", "ingest.listener"))
		if err := broker.AddListener(tl); err != nil {
			ln.Close()
			tlsLn.Close()
			return fmt.Errorf("open ingest: add TLS listener: %w", err)
		}
	}

	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.broker, s.guard, s.ln, s.tlsLn = broker, guard, ln, tlsLn
	if err := broker.Serve(); err != nil {
		s.cancel()
		ln.Close()
		if tlsLn != nil {
			tlsLn.Close()
		}
		return fmt.Errorf("open ingest: serve: %w", err)
	}
	s.log.Info("ingest listening", "addr", ln.Addr().String(), "tls", s.cfg.TLS != nil, "tls_addr", s.cfg.TLSAddr, "max_packet_bytes", s.cfg.MaxPacketBytes)
	return nil
}

// Addr returns the address the server listens on, or nil before Open.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// TLSAddr returns the bound address of the TLS listener on
// Config.TLSAddr, or nil when there is none.
func (s *Server) TLSAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tlsLn == nil {
		return nil
	}
	return s.tlsLn.Addr()
}

// ErrNotOpen is returned by Publish before Open and after Close.
var ErrNotOpen = errors.New("ingest server is not open")

// Publish sends payload on topic to the subscribed agents with QoS 1,
// through mochi's inline client, and keeps it as the topic's retained
// message when retain is set. An empty retained payload deletes the
// retained message, as MQTT specifies. Agents receive only topics the
// ACL gives them (see the hook's OnACLCheck). A retained publish waits
// for the retained-message scans of agents' subscribes in progress (see
// retainguard.Guard).
func (s *Server) Publish(topic string, payload []byte, retain bool) error {
	s.mu.Lock()
	broker, guard := s.broker, s.guard
	usable := s.opened && !s.closed && broker != nil
	s.mu.Unlock()
	if !usable {
		return fmt.Errorf("publish to %s: %w", topic, ErrNotOpen)
	}
	return guard.Publish(broker, topic, payload, retain, 1)
}

// Close stops accepting connections, disconnects every agent and stops
// the broker. It then waits until the committers have committed every
// queued batch, each commit bounded by CommitTimeout. It is safe to call
// more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	broker, cancel := s.broker, s.cancel
	s.mu.Unlock()

	if broker == nil {
		return nil
	}
	// broker.Close returns once every connection's handler has returned,
	// so OnDisconnect has closed the queue of every committer, and no
	// new committer can start.
	err := broker.Close()
	s.waitCommitters(cancel)
	cancel()
	s.flushOffline()
	s.log.Info("ingest stopped")
	if err != nil {
		return fmt.Errorf("close ingest: %w", err)
	}
	return nil
}

// waitCommitters waits for the committers to commit what they have
// queued. With a store that hangs, each queued batch would take a whole
// CommitTimeout, one after the other. So after one CommitTimeout it
// cancels the commits in progress with cancel. Their batches get no Ack,
// and the agents resend them to the next hub.
func (s *Server) waitCommitters(cancel context.CancelFunc) {
	done := make(chan struct{})
	go func() {
		s.committerWG.Wait()
		close(done)
	}()
	timer := time.NewTimer(s.cfg.CommitTimeout)
	defer timer.Stop()
	select {
	case <-done:
		return
	case <-timer.C:
	}
	s.log.Warn("committers still busy one commit timeout after close; cancelling their commits, which the agents resend",
		"commit_timeout", s.cfg.CommitTimeout)
	cancel()
	<-done
}

// offlineGrace is how long an agent without connections still counts as
// online. mochi v2.7.9 may end the old connection of a session takeover
// (or a reconnect after a network blip) before the new one is
// established, and the grace keeps that from showing the agent offline
// and online again.
const offlineGrace = 2 * time.Second

// agentConnected counts a new connection of an agent and reports the
// agent online when it is its first and the agent was reported offline.
func (s *Server) agentConnected(agentID string) {
	s.agentsMu.Lock()
	defer s.agentsMu.Unlock()
	s.agents[agentID]++
	if s.agents[agentID] > 1 {
		return
	}
	if t, pending := s.offline[agentID]; pending {
		// The last connection ended within the grace: still online.
		t.Stop()
		delete(s.offline, agentID)
		return
	}
	s.metrics.agentsConnected.Inc()
	if s.cfg.OnAgentStatus != nil {
		s.cfg.OnAgentStatus(agentID, true)
	}
}

// agentDisconnected counts an ended connection. When it was the agent's
// last, the agent is reported offline after offlineGrace unless a new
// connection comes first.
func (s *Server) agentDisconnected(agentID string) {
	s.agentsMu.Lock()
	defer s.agentsMu.Unlock()
	n, ok := s.agents[agentID]
	if !ok {
		return
	}
	if n > 1 {
		s.agents[agentID] = n - 1
		return
	}
	delete(s.agents, agentID)
	var t *time.Timer
	t = time.AfterFunc(offlineGrace, func() {
		s.agentsMu.Lock()
		defer s.agentsMu.Unlock()
		if s.offline[agentID] == t {
			s.reportOffline(agentID)
		}
	})
	s.offline[agentID] = t
}

// reportOffline reports an agent offline whose offline report was
// pending. The caller holds agentsMu.
func (s *Server) reportOffline(agentID string) {
	delete(s.offline, agentID)
	s.metrics.agentsConnected.Dec()
	if s.cfg.OnAgentStatus != nil {
		s.cfg.OnAgentStatus(agentID, false)
	}
}

// flushOffline reports every pending offline report at once, for Close.
func (s *Server) flushOffline() {
	s.agentsMu.Lock()
	defer s.agentsMu.Unlock()
	for agentID, t := range s.offline {
		t.Stop()
		s.reportOffline(agentID)
	}
}
