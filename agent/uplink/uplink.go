package uplink

import (
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/internal/configcheck"
	"github.com/xpress-ops/tower/protocol"
)

// Defaults of Config.
const (
	DefaultHubURL             = "tcp://localhost:1884"
	DefaultMaxBatchRecords    = 1000
	DefaultMaxBatchBytes      = 1 << 20
	DefaultMaxInflightBatches = 4
	DefaultAckTimeout         = 10 * time.Second
	DefaultConnectTimeout     = 10 * time.Second
	DefaultKeepAlive          = 30 * time.Second
	DefaultPingTimeout        = 10 * time.Second
	DefaultMinBackoff         = 100 * time.Millisecond
	// DefaultMaxBackoff is short because the SOS promise counts from the
	// moment the hub is back: a reconnect attempt every few seconds costs
	// one TCP handshake, while a long ceiling delays every pending SOS.
	DefaultMaxBackoff = 5 * time.Second
)

// MaxInflightBatchesLimit is the largest accepted Config.MaxInflightBatches.
const MaxInflightBatchesLimit = 64

// Ranges of Config's tunables that Validate accepts besides zero, which
// selects the default. A value outside them is a mistake rather than a
// tuning choice: an Ack timeout of 1 ns would reconnect after every batch.
const (
	MinAckTimeout     = time.Second
	MaxAckTimeout     = 10 * time.Minute
	MinConnectTimeout = time.Second
	MaxConnectTimeout = 5 * time.Minute
	// MinKeepAlive is 2 s because the hub's broker drops a client silent
	// for 1.5 keep-alive intervals in whole seconds (see Config.KeepAlive).
	MinKeepAlive   = 2 * time.Second
	MaxKeepAlive   = 10 * time.Minute
	MinPingTimeout = time.Second
	MaxPingTimeout = 5 * time.Minute
	// MinBackoffBound and MaxBackoffBound bound both Config.MinBackoff and
	// Config.MaxBackoff.
	MinBackoffBound = 10 * time.Millisecond
	MaxBackoffBound = 10 * time.Minute
	// MinBatchBytes is the smallest accepted Config.MaxBatchBytes, about 65
	// GPS fixes.
	MinBatchBytes = 16 << 10
)

// Errors of the uplink.
var (
	// ErrAckTimeout means the hub sent no Ack for a batch within Config.AckTimeout.
	ErrAckTimeout = errors.New("no ack from the hub in time")
	// ErrConnectionLost means the MQTT connection to the hub dropped.
	ErrConnectionLost = errors.New("connection to the hub lost")
	// ErrCredentialsRefused means the hub refused the agent id or its
	// token at CONNECT.
	ErrCredentialsRefused = errors.New("hub refused the agent's credentials")
	// ErrSubscriptionRefused means the hub responded to a SUBSCRIBE with a
	// failure code for at least one filter.
	ErrSubscriptionRefused = errors.New("hub refused the subscription")
)

// Spool is the part of the agent's spool the uplink uses; *spool.Spool
// implements it.
type Spool interface {
	SpoolID() string
	Read(lane protocol.Lane, afterSeq uint64, max int, maxBytes int) ([]protocol.Record, error)
	DeleteThrough(lane protocol.Lane, seq uint64) error
	RejectThrough(lane protocol.Lane, seq uint64) (int, error)
	Notify() <-chan struct{}
}

// Config configures an Uplink.
type Config struct {
	// AgentID is the agent's id, used as MQTT client id and username and in
	// every batch. Required.
	AgentID string
	// Region is the agent's region, carried in every batch. Required.
	Region string
	// HubURL is the hub's MQTT address, e.g. "tcp://127.0.0.1:1884".
	// Empty means DefaultHubURL ("tcp://localhost:1884").
	HubURL string
	// TLS configures the connection when HubURL's scheme is tls or ssl,
	// for example to trust a private CA. Nil means the system roots.
	TLS *tls.Config
	// Password is the agent's hub token, sent with the agent id at
	// CONNECT. Empty sends none, which a hub with agent authentication
	// refuses.
	Password string
	// Spool is the queue to drain. Required.
	Spool Spool
	// Logger receives the uplink's logs. Nil means discard.
	Logger *slog.Logger
	// Registerer receives the uplink's metrics on Open. Nil means a private registry.
	Registerer prometheus.Registerer
	// Now is the agent clock: records received before the current
	// connection came up are sent with Historical set. Nil means time.Now.
	Now func() time.Time
	// MaxBatchRecords caps the records in one batch. GPS batches adapt
	// below it (see the package doc, Batch sizing). Zero means
	// DefaultMaxBatchRecords (1000); at most protocol.MaxBatchRecords.
	MaxBatchRecords int
	// MaxBatchBytes caps the spool-encoded size of one batch's records, in
	// bytes; a single larger record still goes alone. Zero means
	// DefaultMaxBatchBytes (1 MiB). The wire batch is slightly larger, so
	// keep this well under protocol.MaxBatchBytes.
	MaxBatchBytes int
	// MaxInflightBatches is how many GPS batches may wait for the hub's
	// Ack at once; 1 means stop-and-wait. The SOS and status lanes each
	// have one batch in flight besides these (see the package doc). The
	// GPS bytes in flight are bounded too (see the package doc, GPS bytes
	// in flight). Zero means DefaultMaxInflightBatches (4); at most
	// MaxInflightBatchesLimit.
	MaxInflightBatches int
	// AckTimeout is how long the oldest outstanding batch may wait for
	// the hub's Ack, counted from when it was sent or from the previous
	// Ack that settled a batch, whichever is later. On expiry the uplink
	// treats the link as dead, reconnects and resends. When even batches
	// that cannot shrink keep timing out, the uplink doubles the timeout
	// in force (see the package doc, Ack timeout on a slow link). Zero
	// means DefaultAckTimeout (10 s); otherwise it must be within
	// [MinAckTimeout, MaxAckTimeout].
	AckTimeout time.Duration
	// ConnectTimeout bounds one connection attempt, including the wait for
	// CONNACK and SUBACK, and is paho's write timeout: how long a publish
	// may wait to be written before the connection counts as dead. Close
	// may wait this long for an attempt or a write in progress. Zero means
	// DefaultConnectTimeout (10 s).
	ConnectTimeout time.Duration
	// KeepAlive is the MQTT keep-alive interval. MQTT counts it in whole
	// seconds, so New rounds a fraction of a second up. The hub's broker
	// (mochi-mqtt v2.7.9) drops a client silent for KeepAlive + KeepAlive/2
	// in whole seconds, which leaves paho no time to ping at 1 s: use 2 s
	// or more. Zero means DefaultKeepAlive (30 s).
	KeepAlive time.Duration
	// PingTimeout is how long paho waits for the hub's PINGRESP before it
	// drops the connection. Zero means DefaultPingTimeout (10 s).
	PingTimeout time.Duration
	// MinBackoff is the backoff ceiling of the first retry; each failed
	// attempt doubles it up to MaxBackoff. Zero means DefaultMinBackoff (100 ms).
	MinBackoff time.Duration
	// MaxBackoff caps the backoff ceiling. Zero means DefaultMaxBackoff (5 s).
	MaxBackoff time.Duration
	// Rand returns a uniform number in [0, 1) for the backoff jitter. Nil
	// means math/rand/v2's Float64.
	Rand func() float64
	// OnSOSState, if set, receives each message the hub publishes on the
	// agent's SOS state topics (protocol.SOSStateUpdateFilter): the topic
	// and the payload, which is empty when the hub clears a retained state.
	// The uplink subscribes with QoS 1 after each connect, so the hub's
	// retained states arrive again after every reconnect. It runs on
	// paho's goroutine of the main link, which also delivers the Acks of
	// the GPS and status lanes (not those of the SOS lane, which has its
	// own link), and paho acknowledges the message when it returns, so it
	// must return quickly.
	OnSOSState func(topic string, payload []byte)
	// OnVehicleCredential, if set, receives each vehicle credential the
	// hub publishes to every agent (protocol.VehicleCredentialFilter): the
	// topic and the payload. Like OnSOSState it runs on paho's goroutine
	// after each connect's subscribe, which brings every retained
	// credential again, and must return quickly.
	OnVehicleCredential func(topic string, payload []byte)
	// OnOperators, if set, receives the list of operators who may sign in
	// on the agent's page, which the hub keeps retained on the agent's
	// protocol.AgentOperatorsTopic: the topic and the payload. Like
	// OnSOSState it runs on paho's goroutine after each connect's
	// subscribe, which brings the list again, and must return quickly.
	OnOperators func(topic string, payload []byte)
}

// Validate checks the required fields and, with ValidateLimits, the
// ranges of the tunables.
func (c *Config) Validate() error {
	var errs []error
	if err := protocol.ValidateAgentID(c.AgentID); err != nil {
		errs = append(errs, configcheck.Wrap("AgentID", err))
	}
	if c.Region == "" {
		errs = append(errs, configcheck.Newf("Region", "is empty"))
	}
	if c.Spool == nil {
		errs = append(errs, configcheck.Newf("Spool", "is nil"))
	}
	if c.HubURL != "" {
		if u, err := url.Parse(c.HubURL); err != nil || u.Host == "" {
			errs = append(errs, configcheck.Newf("HubURL", "%q is not a URL like tcp://host:port", c.HubURL))
		}
	}
	errs = append(errs, c.ValidateLimits())
	return errors.Join(errs...)
}

// ValidateLimits checks that each tunable is zero (its default) or within
// its range (see MinAckTimeout and the constants after it), and that
// MinBackoff does not exceed MaxBackoff. The errors are
// configcheck.FieldErrors named by the Config fields.
func (c *Config) ValidateLimits() error {
	var errs []error
	if c.MaxBatchRecords < 0 || c.MaxBatchRecords > protocol.MaxBatchRecords {
		errs = append(errs, configcheck.Newf("MaxBatchRecords", "must be from 1 to %d, got %d", protocol.MaxBatchRecords, c.MaxBatchRecords))
	}
	if c.MaxBatchBytes < 0 {
		errs = append(errs, configcheck.Newf("MaxBatchBytes", "must not be negative, got %d", c.MaxBatchBytes))
	} else {
		errs = append(errs, configcheck.Bytes("MaxBatchBytes", int64(c.MaxBatchBytes), MinBatchBytes, protocol.MaxBatchBytes/2))
	}
	if c.MaxInflightBatches < 0 || c.MaxInflightBatches > MaxInflightBatchesLimit {
		errs = append(errs, configcheck.Newf("MaxInflightBatches", "must be from 1 to %d, got %d", MaxInflightBatchesLimit, c.MaxInflightBatches))
	}
	errs = append(errs,
		configcheck.Duration("AckTimeout", c.AckTimeout, MinAckTimeout, MaxAckTimeout),
		configcheck.Duration("ConnectTimeout", c.ConnectTimeout, MinConnectTimeout, MaxConnectTimeout),
		configcheck.Duration("KeepAlive", c.KeepAlive, MinKeepAlive, MaxKeepAlive),
		configcheck.Duration("PingTimeout", c.PingTimeout, MinPingTimeout, MaxPingTimeout),
		configcheck.Duration("MinBackoff", c.MinBackoff, MinBackoffBound, MaxBackoffBound),
		configcheck.Duration("MaxBackoff", c.MaxBackoff, MinBackoffBound, MaxBackoffBound),
	)
	if minBackoff := cmp.Or(c.MinBackoff, DefaultMinBackoff); c.MaxBackoff > 0 && minBackoff > c.MaxBackoff {
		got := minBackoff.String()
		if c.MinBackoff == 0 {
			got = "the default " + got
		}
		errs = append(errs, configcheck.Compare("MinBackoff", "MaxBackoff", func(related string) string {
			return fmt.Sprintf("must not exceed %s (%s), got %s", related, c.MaxBackoff, got)
		}))
	}
	return errors.Join(errs...)
}

// State is the uplink's connection state.
type State int32

// Connection states.
const (
	StateDisconnected State = iota
	StateConnected
)

// String returns "connected" or "disconnected".
func (s State) String() string {
	if s == StateConnected {
		return "connected"
	}
	return "disconnected"
}

// Uplink drains a spool to the hub. Its methods are safe for concurrent use.
type Uplink struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	state atomic.Int32
	// stateSince is when the uplink entered its state, in Unix
	// nanoseconds by the agent clock: at Open, or the last change.
	stateSince atomic.Int64
	// refusals counts the CONNACKs in a row that refused the agent's
	// credentials; 0 once the hub accepts them.
	refusals atomic.Int64

	ackedMu sync.Mutex
	// acked is the highest sequence number per lane the hub acknowledged
	// (or that was moved to rejected) since Open.
	acked map[protocol.Lane]uint64
	// sent is the highest sequence number per lane sent since Open; an
	// Ack never deletes past it.
	sent map[protocol.Lane]uint64

	// links are the main link and the SOS link (see hubLink). stateMu
	// orders their updates of the state and of the gauges they share.
	links   []*hubLink
	stateMu sync.Mutex

	// sizer sets the record count of GPS batches; it outlives sessions.
	// Only the goroutine of the link that carries the GPS lane uses it.
	sizer batchSizer

	// releaser deletes acknowledged records from the spool.
	releaser *releaser

	stop      chan struct{}
	done      chan struct{}
	opened    atomic.Bool
	closeOnce sync.Once
}

// New returns an uplink for cfg with defaults filled in. It does no I/O.
func New(cfg Config) *Uplink {
	if cfg.HubURL == "" {
		cfg.HubURL = DefaultHubURL
	}

	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}

	if cfg.MaxBatchRecords == 0 {
		cfg.MaxBatchRecords = DefaultMaxBatchRecords
	}
	if cfg.MaxBatchBytes == 0 {
		cfg.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if cfg.AckTimeout == 0 {
		cfg.AckTimeout = DefaultAckTimeout
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.MaxInflightBatches == 0 {
		cfg.MaxInflightBatches = DefaultMaxInflightBatches
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if r := cfg.KeepAlive % time.Second; cfg.KeepAlive > 0 && r != 0 {
		cfg.KeepAlive += time.Second - r
	}
	if cfg.PingTimeout == 0 {
		cfg.PingTimeout = DefaultPingTimeout
	}

	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}

	u := &Uplink{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "uplink", "agent", cfg.AgentID),
		metrics: newMetrics(),
		sizer:   newBatchSizer(cfg.MaxBatchRecords),
		links:   newLinks(cfg),
		acked:   make(map[protocol.Lane]uint64, len(protocol.Lanes)),
		sent:    make(map[protocol.Lane]uint64, len(protocol.Lanes)),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	u.releaser = newReleaser(cfg.Spool, u.log)
	u.metrics.batchTarget.Set(float64(u.sizer.target))
	u.metrics.ackTimeout.Set(cfg.AckTimeout.Seconds())
	return u
}

// Open validates the config and starts the goroutine that connects to the
// hub and drains the spool. It does not wait for the hub: a hub outage is
// normal, and the uplink keeps retrying until Close.
func (u *Uplink) Open() error {
	if err := u.cfg.Validate(); err != nil {
		return fmt.Errorf("invalid uplink config: %w", err)
	}
	select {
	case <-u.stop:
		return errors.New("open uplink: already closed")
	default:
	}
	if err := u.metrics.register(u.cfg.Registerer); err != nil {
		return fmt.Errorf("register uplink metrics: %w", err)
	}
	u.opened.Store(true)
	u.stateSince.Store(u.cfg.Now().UnixNano())
	u.releaser.start()
	var wg sync.WaitGroup
	wg.Go(u.fanOutNotify)
	for _, l := range u.links {
		wg.Go(func() { u.run(l) })
	}
	go func() {
		wg.Wait()
		close(u.done)
	}()
	u.log.Info("uplink started", "hub", u.cfg.HubURL, "spool", u.cfg.Spool.SpoolID())
	return nil
}

// Close stops the uplink: it ends the connection and waits for its
// goroutine. Records not yet acknowledged stay in the spool. Close is
// safe to call more than once.
func (u *Uplink) Close() error {
	u.closeOnce.Do(func() {
		close(u.stop)
		if !u.opened.Load() {
			return
		}
		<-u.done
		u.releaser.close()
		u.metrics.unregister(u.cfg.Registerer)
		u.log.Info("uplink stopped")
	})
	return nil
}

// CredentialsRefused reports whether the hub refused the agent's
// credentials at the last connection attempt that got a CONNACK.
func (u *Uplink) CredentialsRefused() bool { return u.refusals.Load() > 0 }

// SubscriptionsRefused reports whether the hub refused one of a link's
// subscriptions (Acks, SOS states, vehicle credentials, operator list) at
// that link's last attempt. The link stays down and retries with backoff
// meanwhile, so the agent does not run without the hub's updates.
func (u *Uplink) SubscriptionsRefused() bool {
	for _, l := range u.links {
		if l.subsRefused.Load() {
			return true
		}
	}
	return false
}

// State returns whether the uplink is connected to the hub: connected
// while both its links are up (see the package doc, SOS link).
func (u *Uplink) State() State { return State(u.state.Load()) }

// Acked returns, per lane, the highest sequence number the hub
// acknowledged since Open (records moved to rejected count too).
func (u *Uplink) Acked() map[protocol.Lane]uint64 {
	u.ackedMu.Lock()
	defer u.ackedMu.Unlock()
	out := make(map[protocol.Lane]uint64, len(protocol.Lanes))
	for _, lane := range protocol.Lanes {
		out[lane] = u.acked[lane]
	}
	return out
}

// StateSince returns when the uplink entered its current state, by the
// agent clock: when its last link came up or its first link went down, or Open when it has not
// connected yet. It is zero before Open.
func (u *Uplink) StateSince() time.Time {
	ns := u.stateSince.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

func (u *Uplink) setState(s State) {
	if State(u.state.Swap(int32(s))) != s {
		u.stateSince.Store(u.cfg.Now().UnixNano())
	}
}

func (u *Uplink) ackedThrough(lane protocol.Lane) uint64 {
	u.ackedMu.Lock()
	defer u.ackedMu.Unlock()
	return u.acked[lane]
}

func (u *Uplink) setAcked(lane protocol.Lane, seq uint64) {
	u.ackedMu.Lock()
	defer u.ackedMu.Unlock()
	u.acked[lane] = seq
	u.metrics.ackedSeq.WithLabelValues(string(lane)).Set(float64(seq))
}

// backoff returns the wait before retry number attempt (0 for the first
// retry): uniform in [0, ceiling) with ceiling = MinBackoff·2^attempt,
// capped at MaxBackoff ("full jitter"), so agents that lost the hub at
// the same moment do not reconnect in step.
func (u *Uplink) backoff(attempt int) time.Duration {
	ceiling := u.cfg.MaxBackoff
	if attempt < 32 {
		if c := u.cfg.MinBackoff << attempt; c > 0 && c < ceiling {
			ceiling = c
		}
	}
	return time.Duration(u.cfg.Rand() * float64(ceiling))
}
