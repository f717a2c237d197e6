// Package broker is the agent's embedded MQTT broker for vehicles, built
// on mochi-mqtt v2. Its hook authenticates vehicles, confines each one to
// its own topic prefix, validates every publish and stores it in the
// spool before mochi sends the PUBACK.
//
// mochi runs OnPublish on the publishing client's goroutine, before it
// writes the PUBACK, so a PUBACK from this broker means the message is
// committed and fsynced in the spool ("durable before acknowledged").
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/internal/configcheck"
	"github.com/xpress-ops/tower/internal/mqttlistener"
	"github.com/xpress-ops/tower/internal/retainguard"
	"github.com/xpress-ops/tower/protocol"
)

// Defaults of Config.
const (
	// DefaultAddr is where vehicles connect.
	DefaultAddr = ":1883"
	// DefaultAppendTimeout bounds how long a publish waits for the spool.
	DefaultAppendTimeout = 10 * time.Second
	// MaxPacketBytes is the largest MQTT packet the broker reads: the
	// largest device payload plus room for the topic and properties. mochi
	// disconnects a client that sends a larger packet.
	MaxPacketBytes = protocol.MaxPayloadBytes + 4<<10
	// sessionExpirySeconds is how long mochi keeps the session of a
	// disconnected vehicle (subscriptions, in-flight messages): one day.
	sessionExpirySeconds = 24 * 60 * 60
	// maxMessageAgeSeconds is how long mochi keeps a retained message:
	// 30 days, longer than an SOS is expected to stay open.
	maxMessageAgeSeconds = 30 * 24 * 60 * 60
)

// Appender stores records durably; *spool.Spool implements it. Append
// must return only after the records are committed and fsynced.
type Appender interface {
	Append(ctx context.Context, recs []protocol.Record) error
}

// Config configures a Broker.
type Config struct {
	// Addr is the TCP address to listen on. Empty means DefaultAddr (":1883").
	Addr string
	// TLSAddr, when set, is a second address where vehicles connect over
	// MQTT over TLS with TLS. Both must be set or neither.
	TLSAddr string
	// TLS is the server configuration of the TLSAddr listener.
	TLS *tls.Config
	// Spool stores every accepted message before its PUBACK. Required.
	Spool Appender
	// Authenticator checks each vehicle's password at CONNECT. Nil means
	// AllowAllVehicles, which accepts any password. The username must be
	// a valid vehicle id either way.
	Authenticator VehicleAuthenticator
	// Logger receives the broker's logs, and mochi's own under component
	// "mqtt". Nil means discard.
	Logger *slog.Logger
	// Registerer receives the broker's metrics on Open. Nil means a private registry.
	Registerer prometheus.Registerer
	// Now is the agent clock, stamped on every record as ReceivedAt and
	// used to check timestamps. Nil means time.Now.
	Now func() time.Time
	// MaxFuture is how far ahead of Now a fix timestamp may be. Zero means
	// protocol.DefaultMaxFuture (5 min).
	MaxFuture time.Duration
	// Retention is the maximum age of a fix timestamp. Zero means protocol.DefaultRetention (30 days).
	Retention time.Duration
	// AppendTimeout bounds how long one publish waits for the spool before
	// the message is rejected without a PUBACK. Zero means DefaultAppendTimeout (10 s).
	AppendTimeout time.Duration
	// OnSOSStored, if set, is called with each SOS record once the spool
	// stored it, before the PUBACK, on the vehicle's connection goroutine.
	// It delays that PUBACK, so it must return quickly.
	OnSOSStored func(rec protocol.Record)

	// ConnectRate is the CONNECT attempts per second one remote address
	// may make. More are rejected with CONNACK 0x9F (MQTT 3.1.1: 0x03).
	// Zero means DefaultConnectRate (20).
	ConnectRate int
	// ConnectBurst is the CONNECT attempts one address may make at once
	// beyond ConnectRate. Zero means DefaultConnectBurst (100).
	ConnectBurst int
	// AuthFailures is the failed authentications per minute one address
	// may have. Past it the address is rejected for AuthBlock, except for
	// a vehicle and password the Authenticator remembers accepting (see
	// RememberingAuthenticator). Zero means DefaultAuthFailures (10).
	AuthFailures int
	// AuthBlock is how long an address over AuthFailures is refused.
	// Zero means DefaultAuthBlock (1 min).
	AuthBlock time.Duration
}

// ValidateLimits checks the per-address connection limits: each is zero
// (the default) or within its Min and Max constants.
func (c *Config) ValidateLimits() error {
	return errors.Join(
		configcheck.Int("ConnectRate", int64(c.ConnectRate), MinConnectRate, MaxConnectRate),
		configcheck.Int("ConnectBurst", int64(c.ConnectBurst), MinConnectBurst, MaxConnectBurst),
		configcheck.Int("AuthFailures", int64(c.AuthFailures), MinAuthFailures, MaxAuthFailures),
		configcheck.Duration("AuthBlock", c.AuthBlock, MinAuthBlock, MaxAuthBlock),
	)
}

// Broker is the vehicles' MQTT broker.
type Broker struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	hook    *hook

	server      *mqtt.Server
	listener    *mqttlistener.Listener
	tlsListener *mqttlistener.Listener
	// guard orders Publish's retained messages with vehicles' subscribes.
	guard *retainguard.Guard

	closeOnce sync.Once
	closeErr  error
}

// New returns a broker for cfg with defaults filled in. It does no I/O.
func New(cfg Config) *Broker {
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.Authenticator == nil {
		cfg.Authenticator = AllowAllVehicles{}
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
	if cfg.AppendTimeout <= 0 {
		cfg.AppendTimeout = DefaultAppendTimeout
	}
	if cfg.ConnectRate <= 0 {
		cfg.ConnectRate = DefaultConnectRate
	}
	if cfg.ConnectBurst <= 0 {
		cfg.ConnectBurst = DefaultConnectBurst
	}
	if cfg.AuthFailures <= 0 {
		cfg.AuthFailures = DefaultAuthFailures
	}
	if cfg.AuthBlock <= 0 {
		cfg.AuthBlock = DefaultAuthBlock
	}
	b := &Broker{cfg: cfg, log: cfg.Logger.With("component", "broker")}
	b.metrics = newMetrics()
	b.hook = &hook{
		cfg:     &b.cfg,
		log:     b.log,
		metrics: b.metrics,
		limits:  protocol.Limits{Now: cfg.Now, MaxFuture: cfg.MaxFuture, Retention: cfg.Retention},
		addrs:   newAddrLimits(&cfg),
		sosLog:  newOffPathLog(b.log.Handler()),
	}
	return b
}

// Open starts listening on Config.Addr and serving vehicles.
func (b *Broker) Open() error {
	if b.cfg.Spool == nil {
		return errors.New("open broker: Config.Spool is nil")
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = MaxPacketBytes
	caps.MaximumSessionExpiryInterval = sessionExpirySeconds
	// mochi v2.7.9 deletes retained and queued messages older than this,
	// one day by default, but a retained SOS state must last until the
	// SOS closes. Zero would disable the limit, but mochi also stamps it
	// on the PUBREC it keeps for a QoS 2 publish, which would then expire
	// within a second.
	caps.MaximumMessageExpiryInterval = maxMessageAgeSeconds
	// Vehicles have no use for shared subscriptions, and a "$share/..."
	// filter would need its own ACL rule.
	caps.SharedSubAvailable = 0
	// mochi checks the ACL before it resolves a topic alias, so an aliased
	// publish would fail the ACL; vehicles must send full topic names.
	caps.TopicAliasMaximum = 0

	b.hook.sosLog.start()
	server := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       slog.New(quietHandler{b.cfg.Logger.Handler()}).With("component", "mqtt"),
		// Publish sends the agent's own messages through the inline client.
		InlineClient: true,
	})
	b.hook.server = server
	if err := server.AddHook(b.hook, nil); err != nil {
		return fmt.Errorf("add broker hook: %w", err)
	}
	guard := retainguard.New()
	if err := server.AddHook(guard, nil); err != nil {
		return fmt.Errorf("add retained-message guard hook: %w", err)
	}

	ln, err := net.Listen("tcp", b.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen for vehicles on %s: %w", b.cfg.Addr, err)
	}
	// mochi's own TCP listener can deadlock on Close; see mqttlistener.
	vl := mqttlistener.New("vehicles", ln, server, b.log)
	if err := server.AddListener(vl); err != nil {
		return errors.Join(fmt.Errorf("add vehicle listener: %w", err), ln.Close())
	}
	var tl *mqttlistener.Listener
	if b.cfg.TLSAddr != "" {
		if b.cfg.TLS == nil {
			return errors.Join(errors.New("open broker: Config.TLSAddr is set but Config.TLS is nil"), ln.Close())
		}
		tlsLn, err := net.Listen("tcp", b.cfg.TLSAddr)
		if err != nil {
			return errors.Join(fmt.Errorf("listen for vehicles over TLS on %s: %w", b.cfg.TLSAddr, err), ln.Close())
		}
		tl = mqttlistener.NewTLS("vehicles-tls", tlsLn, b.cfg.TLS, server, b.log)
		if err := server.AddListener(tl); err != nil {
			return errors.Join(fmt.Errorf("add vehicle TLS listener: %w", err), ln.Close(), tlsLn.Close())
		}
		defer func() {
			if b.server == nil {
				_ = tlsLn.Close()
			}
		}()
	}
	if err := b.metrics.register(b.cfg.Registerer, server); err != nil {
		return errors.Join(fmt.Errorf("register broker metrics: %w", err), ln.Close())
	}
	if err := server.Serve(); err != nil {
		b.metrics.unregister(b.cfg.Registerer)
		return errors.Join(fmt.Errorf("serve mqtt: %w", err), server.Close())
	}
	b.server, b.listener, b.tlsListener, b.guard = server, vl, tl, guard
	b.log.Info("broker listening", "addr", ln.Addr().String(), "tls_addr", b.cfg.TLSAddr)
	return nil
}

// Addr returns the address the broker listens on, or nil before Open.
func (b *Broker) Addr() net.Addr {
	if b.listener == nil {
		return nil
	}
	return b.listener.Addr()
}

// TLSAddr returns the address of the TLS listener, or nil when there is
// none or before Open.
func (b *Broker) TLSAddr() net.Addr {
	if b.tlsListener == nil {
		return nil
	}
	return b.tlsListener.Addr()
}

// Publish sends payload on topic to the subscribed vehicles with QoS 1,
// through mochi's inline client. With retain set the broker keeps it as
// the topic's retained message, and an empty retained payload deletes
// that. mochi also queues the message for a disconnected vehicle that
// keeps a session. Vehicles receive only topics under their own prefix
// (see OnACLCheck). A retained publish waits for the retained-message
// scans of vehicles' subscribes in progress (see retainguard.Guard).
// Publish fails before Open.
func (b *Broker) Publish(topic string, payload []byte, retain bool) error {
	if b.server == nil {
		return fmt.Errorf("publish to %s: broker is not open", topic)
	}
	return b.guard.Publish(b.server, topic, payload, retain, 1)
}

// Close stops accepting vehicles, disconnects every client and waits
// until no publish is being processed. It is safe to call more than once.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		if b.server == nil {
			b.hook.sosLog.close()
			return
		}
		if err := b.server.Close(); err != nil {
			b.closeErr = fmt.Errorf("close mqtt server: %w", err)
		}
		b.hook.sosLog.close()
		b.metrics.unregister(b.cfg.Registerer)
		b.log.Info("broker stopped")
	})
	return b.closeErr
}

// quietHandler lowers to Debug mochi's own log lines about publishes the
// hook rejected. The hook logs each of them with the vehicle id and
// reason, and mochi's line repeats it at Error level with the whole packet.
type quietHandler struct{ slog.Handler }

func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "publish packet error" || r.Message == "publish packet rejected" {
		r.Level = slog.LevelDebug
		if !h.Handler.Enabled(ctx, r.Level) {
			return nil
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h quietHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return quietHandler{h.Handler.WithAttrs(attrs)}
}

func (h quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{h.Handler.WithGroup(name)}
}
