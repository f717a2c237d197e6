// Package agent composes the edge agent of Xpress Ops Tower. Vehicles
// connect to its MQTT broker (package broker). The bbolt spool keeps every
// message until the hub has it (package spool), and the uplink forwards
// the spool to the hub (package uplink). An HTTP server serves /metrics,
// /healthz, /readyz and the regional page (package localpage), where
// staff see the office's open SOS alerts and acknowledge them while the
// hub is unreachable. During a long outage the agent can send the SOS
// alert SMS itself (package outage).
//
// Data flows vehicle → broker → spool → uplink → hub. The broker
// acknowledges a vehicle's message only after the spool fsynced it, and
// the uplink deletes a record only after the hub acknowledged it. A hub
// or WAN outage therefore neither blocks vehicles nor loses their data,
// as long as the spool has disk space.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/agent/broker"
	"github.com/xpress-ops/tower/agent/localauth"
	"github.com/xpress-ops/tower/agent/localsos"
	"github.com/xpress-ops/tower/agent/outage"
	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/agent/vehicleauth"
	"github.com/xpress-ops/tower/internal/configcheck"
	"github.com/xpress-ops/tower/internal/httpsec"
	"github.com/xpress-ops/tower/protocol"
)

// Defaults of Config.
const (
	DefaultMQTTAddr        = broker.DefaultAddr
	DefaultHubURL          = uplink.DefaultHubURL
	DefaultHTTPAddr        = ":9090"
	DefaultShutdownTimeout = 10 * time.Second
	// DefaultHTTPReadTimeout bounds reading one request to the page, body
	// included, so a client that sends its body slowly cannot hold a
	// connection; DefaultHTTPIdleTimeout closes idle keep-alive
	// connections; DefaultHTTPMaxConns caps the open connections.
	DefaultHTTPReadTimeout = 15 * time.Second
	DefaultHTTPIdleTimeout = time.Minute
	DefaultHTTPMaxConns    = 512
	// SpoolFile is the spool's file name inside Config.DataDir.
	SpoolFile = "spool.db"
)

// Config configures an Agent. Zero tunables take the defaults of the
// package that owns them.
type Config struct {
	// ID is the agent's id, unique among agents: letters, digits, '-' and '_'. Required.
	ID string
	// Region is the region the agent serves: one of KnownRegions in any
	// case, or a name in ExtraRegions. New stores its canonical spelling
	// (see NormalizeRegion). Required.
	Region string
	// ExtraRegions are region names accepted besides KnownRegions, for an
	// office this build does not know yet. Each is 1 to 64 bytes of
	// letters, digits, spaces, '-', '_' and '.'.
	ExtraRegions []string
	// MQTTAddr is the TCP address vehicles connect to. Empty means DefaultMQTTAddr (":1883").
	MQTTAddr string
	// HubURL is the hub's MQTT URL for agents. Empty means DefaultHubURL
	// ("tcp://localhost:1884").
	HubURL string
	// HubPassword is sent to the hub with the agent id. Empty sends none.
	HubPassword string
	// DataDir holds the spool file (SpoolFile); it is created with mode
	// 0700 if missing. Required.
	DataDir string
	// HTTPAddr is the listen address of /metrics, /healthz, /readyz, the
	// regional page and its local API. Empty means DefaultHTTPAddr (":9090").
	HTTPAddr string
	// HTTPTLS, when set, makes HTTPAddr serve HTTPS with this configuration.
	HTTPTLS *tls.Config
	// MQTTTLSAddr, when set, is a second address where vehicles connect
	// over MQTT over TLS with MQTTTLS, next to the plain MQTTAddr.
	MQTTTLSAddr string
	MQTTTLS     *tls.Config
	// HubTLS configures the uplink's TLS when HubURL's scheme is tls or
	// ssl, for example to trust a private CA. Nil means the system roots.
	HubTLS *tls.Config
	// Logger receives every component's logs. Nil means discard.
	Logger *slog.Logger
	// Registerer receives every component's metrics. Nil means a private registry.
	Registerer prometheus.Registerer
	// Gatherer is the source of /metrics. Nil means Registerer when it is
	// also a Gatherer (as *prometheus.Registry is).
	Gatherer prometheus.Gatherer
	// Now is the agent clock stamped on received messages. Nil means time.Now.
	Now func() time.Time
	// VehicleAuth selects how vehicles' passwords are checked:
	// VehicleAuthHub against the credentials the hub sends, or
	// VehicleAuthOff (also when empty) not at all, which Validate allows
	// only when every vehicle listener is on a loopback address.
	VehicleAuth string
	// VehicleAuthenticator, when set, checks vehicles' passwords instead;
	// VehicleAuth must then be empty.
	VehicleAuthenticator broker.VehicleAuthenticator
	// VehicleConnectRate and VehicleConnectBurst bound the CONNECT
	// attempts per second of one remote address, and VehicleAuthFailures
	// the failed authentications per minute of one address before it is
	// rejected for VehicleAuthBlock (see broker.Config). Zero means the
	// broker's defaults.
	VehicleConnectRate, VehicleConnectBurst, VehicleAuthFailures int
	VehicleAuthBlock                                             time.Duration

	// SpoolMaxBytes caps the records waiting in the spool, in bytes of
	// encoded records; the oldest GPS fixes are evicted to stay under it.
	// See spool.Config.MaxBytes. Zero means spool.DefaultMaxBytes (2 GiB);
	// a negative value means no cap.
	SpoolMaxBytes int64
	// SpoolSOSReserveBytes is the part of SpoolMaxBytes only SOS records
	// may use; see spool.Config.SOSReserveBytes. Zero means
	// spool.DefaultSOSReserveBytes (8 MiB, or a quarter of SpoolMaxBytes
	// when that is smaller); a negative value means no reserve.
	SpoolSOSReserveBytes int64
	// SpoolMaxFileBytes is a hard limit on the spool file's size, handled
	// like a full disk; see spool.Config.MaxFileBytes. Zero means no limit.
	SpoolMaxFileBytes int
	// SpoolCommitInterval is the group-commit wait; see
	// spool.Config.CommitInterval. Zero means no fixed wait (a busy spool
	// still waits up to about 2 ms for more requests).
	SpoolCommitInterval time.Duration
	// SpoolMaxBatch caps records per group commit; see spool.Config.MaxBatch.
	SpoolMaxBatch int
	// AppendTimeout bounds a vehicle publish's wait for the spool; see broker.Config.AppendTimeout.
	AppendTimeout time.Duration
	// MaxFuture and Retention bound fix timestamps; see broker.Config.
	MaxFuture, Retention time.Duration
	// UplinkMaxBatchRecords and UplinkMaxBatchBytes cap one batch to the hub; see uplink.Config.
	UplinkMaxBatchRecords, UplinkMaxBatchBytes int
	// AckTimeout is how long the uplink waits for the hub's Ack; see uplink.Config.AckTimeout.
	AckTimeout time.Duration
	// MinBackoff and MaxBackoff bound the uplink's reconnect backoff; see uplink.Config.
	MinBackoff, MaxBackoff time.Duration
	// UplinkMaxInflightBatches is the GPS batches in flight at once; see uplink.Config.
	UplinkMaxInflightBatches int
	// KeepAlive, PingTimeout and ConnectTimeout bound how soon a dead or
	// unreachable hub link is noticed; see uplink.Config.
	KeepAlive, PingTimeout, ConnectTimeout time.Duration
	// ShutdownTimeout bounds the HTTP server's graceful shutdown in Close.
	// Zero means DefaultShutdownTimeout (10 s).
	ShutdownTimeout time.Duration
	// SOSLanguage is the language of the SOS state texts the agent writes
	// to drivers itself: received, and a local acknowledgement. States from
	// the hub carry the hub's text. Empty means English
	// (localsos.DefaultLanguage).
	SOSLanguage string

	// OutageNotifyAfter is how long the hub must have been unreachable
	// before the agent sends the SOS alert SMS itself, to OutageNotifyTo,
	// for every SOS nobody acknowledged (see package outage). Zero turns
	// the agent's own SMS off; otherwise it must be from
	// MinOutageNotifyAfter to MaxOutageNotifyAfter.
	OutageNotifyAfter time.Duration
	// OutageNotifyTo are the phone numbers of the agent's own SMS, in any
	// form notify.NormalizePhone accepts. New stores them in E.164.
	// Required with OutageNotifyAfter.
	OutageNotifyTo []string
	// OutageNotifyLanguage is the language of the agent's own SMS: "en"
	// or "fil" (also "tl"). Empty means English.
	OutageNotifyLanguage string
	// OutageSMS sends the agent's own SMS, usually a *notify.Twilio.
	// Required with OutageNotifyAfter.
	OutageSMS outage.SMSSender
	// PublicURL is the address where regional staff open the agent's
	// page, such as https://agent-ncr.example.ph:9090/, linked in the
	// agent's own SMS. Empty names the agent and region in the SMS instead.
	PublicURL string
	// HTTPAllowedHosts are the host names the HTTP server serves besides
	// IP addresses and localhost. A request with another Host header is
	// rejected, so a DNS rebinding page cannot reach the acknowledge
	// endpoint. Ports are ignored, and names match in any case.
	HTTPAllowedHosts []string
	// HTTPReadTimeout bounds the reading of one HTTP request, body
	// included. Zero means DefaultHTTPReadTimeout.
	HTTPReadTimeout time.Duration
}

// Validate checks the required fields, the region and the ranges of the
// spool and uplink settings (see MinSpoolMaxBytes and
// uplink.Config.ValidateLimits). It does not fill defaults. An error
// about one field is a configcheck.FieldError named by the Config field,
// so the command line can name its flag instead.
func (c *Config) Validate() error {
	var errs []error
	if err := protocol.ValidateAgentID(c.ID); err != nil {
		errs = append(errs, configcheck.Wrap("ID", err))
	}
	// The region is checked against valid extra names only, so a bad
	// extra name is reported once.
	if extraErrs := validateExtraRegions(c.ExtraRegions); len(extraErrs) > 0 {
		errs = append(errs, extraErrs...)
	} else if _, err := NormalizeRegion(c.Region, c.ExtraRegions); err != nil {
		errs = append(errs, err)
	}
	if c.DataDir == "" {
		errs = append(errs, configcheck.Newf("DataDir", "is empty"))
	}
	if c.HubURL != "" {
		if u, err := url.Parse(c.HubURL); err != nil || u.Host == "" || u.Port() == "" ||
			(u.Scheme != "tcp" && u.Scheme != "mqtt" && u.Scheme != "ssl" && u.Scheme != "tls") {
			errs = append(errs, configcheck.Newf("HubURL", "%q is invalid: use tcp://host:port (or ssl://host:port)", c.HubURL))
		}
	}
	errs = append(errs, c.validateTunables()...)
	errs = append(errs, c.validateOutage()...)
	errs = append(errs, c.validateVehicleAuth()...)
	if c.Registerer != nil && c.Gatherer == nil {
		if _, ok := c.Registerer.(prometheus.Gatherer); !ok {
			errs = append(errs, errors.New("registerer is not a gatherer: set Gatherer for /metrics"))
		}
	}
	return errors.Join(errs...)
}

// The spool is the broker's Appender and the uplink's source.
var (
	_ broker.Appender = (*spool.Spool)(nil)
	_ uplink.Spool    = (*spool.Spool)(nil)
)

// Agent is the edge agent.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	gatherer prometheus.Gatherer

	spool  *spool.Spool
	broker *broker.Broker
	uplink *uplink.Uplink
	// sos keeps the SOS alerts of this agent's vehicles, and relay
	// publishes their state to the vehicles.
	sos     *localsos.Store
	relay   *localsos.Relay
	sosOpen atomic.Bool
	// notifier sends the agent's own SMS during a hub outage; nil when
	// Config.OutageNotifyAfter is zero.
	notifier *outage.Notifier
	// contact tracks the last time the hub was reachable.
	contact *hubContact
	// vehicles holds the vehicle credentials the hub sends; nil unless
	// Config.VehicleAuth is VehicleAuthHub.
	vehicles     *vehicleauth.Store
	vehiclesOpen atomic.Bool
	// operators holds the hub's operator list for the page's sign-in,
	// and the sign-in sessions.
	operators     *localauth.Store
	operatorsOpen atomic.Bool

	httpServer   *http.Server
	httpListener net.Listener
	httpDone     chan struct{}
	// httpRequests counts HTTP requests; registered while the server runs.
	httpRequests *prometheus.CounterVec

	spoolOpen    atomic.Bool
	brokerListen atomic.Bool

	openOnce  sync.Once
	closeOnce sync.Once
	closeErr  error
}

// New checks cfg, fills defaults and builds the components. It does no I/O.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid agent config: %w", err)
	}
	// Validate accepted the region, so it has a canonical spelling.
	cfg.Region, _ = NormalizeRegion(cfg.Region, cfg.ExtraRegions)
	if cfg.MQTTAddr == "" {
		cfg.MQTTAddr = DefaultMQTTAddr
	}
	if cfg.HubURL == "" {
		cfg.HubURL = DefaultHubURL
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = DefaultHTTPAddr
	}
	if cfg.HTTPReadTimeout <= 0 {
		cfg.HTTPReadTimeout = DefaultHTTPReadTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		reg := prometheus.NewRegistry()
		cfg.Registerer, cfg.Gatherer = reg, reg
	}
	if cfg.Gatherer == nil {
		cfg.Gatherer = cfg.Registerer.(prometheus.Gatherer)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	// Validate accepted every number, so each has an E.164 form.
	cfg.OutageNotifyTo = normalizePhones(cfg.OutageNotifyTo)
	logger := cfg.Logger.With("agent", cfg.ID)

	a := &Agent{cfg: cfg, log: logger.With("component", "agent"), gatherer: cfg.Gatherer, httpRequests: newHTTPRequests()}
	a.contact = newHubContact(a)
	authenticator := cfg.VehicleAuthenticator
	if cfg.VehicleAuth == VehicleAuthHub {
		a.vehicles = vehicleauth.New(vehicleauth.Config{
			Path:       filepath.Join(cfg.DataDir, vehicleauth.File),
			Logger:     logger,
			Registerer: cfg.Registerer,
			Now:        cfg.Now,
			// A revoked vehicle loses its open connections too.
			OnRevoke: func(vehicleID string) { a.broker.DisconnectVehicle(vehicleID) },
		})
		authenticator = a.vehicles
	}
	a.operators = localauth.New(localauth.Config{
		Path:       filepath.Join(cfg.DataDir, localauth.File),
		AgentID:    cfg.ID,
		Logger:     logger,
		Registerer: cfg.Registerer,
		Now:        cfg.Now,
	})
	a.spool = spool.New(spool.Config{
		Path:            filepath.Join(cfg.DataDir, SpoolFile),
		Logger:          logger,
		Registerer:      cfg.Registerer,
		CommitInterval:  cfg.SpoolCommitInterval,
		MaxBatch:        cfg.SpoolMaxBatch,
		MaxBytes:        cfg.SpoolMaxBytes,
		SOSReserveBytes: cfg.SpoolSOSReserveBytes,
		MaxFileBytes:    cfg.SpoolMaxFileBytes,
		Now:             cfg.Now,
		AgentID:         cfg.ID,
	})
	a.broker = broker.New(broker.Config{
		Addr:          cfg.MQTTAddr,
		TLSAddr:       cfg.MQTTTLSAddr,
		TLS:           cfg.MQTTTLS,
		Spool:         a.spool,
		Authenticator: authenticator,
		Logger:        logger,
		Registerer:    cfg.Registerer,
		Now:           cfg.Now,
		MaxFuture:     cfg.MaxFuture,
		Retention:     cfg.Retention,
		AppendTimeout: cfg.AppendTimeout,
		OnSOSStored:   func(rec protocol.Record) { a.relay.SOSStored(rec) },
		ConnectRate:   cfg.VehicleConnectRate,
		ConnectBurst:  cfg.VehicleConnectBurst,
		AuthFailures:  cfg.VehicleAuthFailures,
		AuthBlock:     cfg.VehicleAuthBlock,
	})
	a.sos = localsos.New(localsos.Config{
		Path:     filepath.Join(cfg.DataDir, localsos.File),
		Language: cfg.SOSLanguage,
		Now:      cfg.Now,
	})
	a.relay = localsos.NewRelay(localsos.RelayConfig{
		AgentID:    cfg.ID,
		Store:      a.sos,
		Publisher:  a.broker,
		Spool:      a.spool,
		Logger:     logger,
		Registerer: cfg.Registerer,
		Now:        cfg.Now,
	})
	// The uplink adds the agent id to its log lines itself, so it gets
	// the logger without it.
	a.uplink = uplink.New(uplink.Config{
		AgentID:         cfg.ID,
		Region:          cfg.Region,
		HubURL:          cfg.HubURL,
		TLS:             cfg.HubTLS,
		Password:        cfg.HubPassword,
		Spool:           a.spool,
		Logger:          cfg.Logger,
		Registerer:      cfg.Registerer,
		Now:             cfg.Now,
		MaxBatchRecords: cfg.UplinkMaxBatchRecords,
		MaxBatchBytes:   cfg.UplinkMaxBatchBytes,
		AckTimeout:      cfg.AckTimeout,
		MinBackoff:      cfg.MinBackoff,

		MaxInflightBatches: cfg.UplinkMaxInflightBatches,
		KeepAlive:          cfg.KeepAlive,
		PingTimeout:        cfg.PingTimeout,
		ConnectTimeout:     cfg.ConnectTimeout,
		MaxBackoff:         cfg.MaxBackoff,
		OnSOSState: func(topic string, payload []byte) {
			a.contact.noteHubMessage()
			// Queued: the relay stores the states of a burst together, and
			// a full queue holds back paho's acknowledgement, which paces the hub.
			a.relay.QueueHubState(topic, payload)
		},
		OnVehicleCredential: a.vehicleCredentialHandler(),
		OnOperators: func(topic string, payload []byte) {
			a.contact.noteHubMessage()
			if a.operatorsOpen.Load() {
				a.operators.HubMessage(topic, payload)
			}
		},
	})
	if cfg.OutageNotifyAfter > 0 {
		n, err := a.newNotifier(logger)
		if err != nil {
			return nil, err
		}
		a.notifier = n
	}
	return a, nil
}

// Open creates DataDir, opens the spool and the local SOS store, starts
// the vehicle broker, the SOS state relay, the uplink and the HTTP
// server, in that order. It does not wait for the hub. On failure it
// closes what it started. ctx is checked before the first step; each step
// is local and short (the spool waits at most its lock timeout). An agent
// opens once.
func (a *Agent) Open(ctx context.Context) error {
	err := errors.New("agent already opened")
	a.openOnce.Do(func() { err = a.open(ctx) })
	return err
}

func (a *Agent) open(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.MkdirAll(a.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	if err := checkSpoolPresent(a.cfg.DataDir); err != nil {
		return err
	}
	// The spool adopts a file that records no owner, so the data dir's
	// owner is checked first: the spool must never record the wrong agent.
	if err := checkDataDirOwner(a.cfg.DataDir, a.cfg.ID); err != nil {
		return err
	}
	if err := a.spool.Open(); err != nil {
		var owner *spool.OwnerError
		if errors.As(err, &owner) {
			return fmt.Errorf("%w: start with --id %s, or use another --data-dir", err, owner.Owner)
		}
		return err
	}
	a.spoolOpen.Store(true)
	// The spool's lock is held, so no other agent races this check.
	if err := claimDataDir(a.cfg.DataDir, a.cfg.ID); err != nil {
		return errors.Join(err, a.Close())
	}
	// Forwarding SOS alerts matters more than the local SOS store, so an
	// agent whose store cannot be opened still starts.
	if err := a.sos.Open(); err != nil {
		a.log.Error("local SOS store unavailable: vehicles still get SOS states, but the agent keeps none across restarts; "+
			"move the file away to start a new one", "path", filepath.Join(a.cfg.DataDir, localsos.File), "error", err)
	} else {
		a.sosOpen.Store(true)
	}
	a.contact.load()
	// Vehicles are checked against the credentials on disk from the
	// first CONNECT, before the hub is reached.
	if a.vehicles != nil {
		if err := a.vehicles.Open(); err != nil {
			return errors.Join(err, a.Close())
		}
		a.vehiclesOpen.Store(true)
	}

	// Staff sign in on the page with the list on disk, before the hub is
	// reached. Without it the page refuses sign-ins, and SOS alerts still
	// flow.
	if err := a.operators.Open(); err != nil {
		a.log.Error("failed to open the operator list: sign-in on the agent's page fails; move the file away to start a new one",
			"path", filepath.Join(a.cfg.DataDir, localauth.File), "error", err)
	} else {
		a.operatorsOpen.Store(true)
	}

	if err := a.broker.Open(); err != nil {
		return errors.Join(err, a.Close())
	}
	a.brokerListen.Store(true)
	// The broker keeps retained messages in memory only, so the relay
	// publishes the state of every active SOS again.
	if err := a.relay.Start(); err != nil {
		return errors.Join(err, a.Close())
	}

	if err := a.uplink.Open(); err != nil {
		return errors.Join(err, a.Close())
	}
	if err := a.contact.start(); err != nil {
		return errors.Join(fmt.Errorf("register hub contact metrics: %w", err), a.Close())
	}
	if a.notifier != nil {
		if err := a.notifier.Start(); err != nil {
			return errors.Join(err, a.Close())
		}
	}

	if err := a.cfg.Registerer.Register(a.httpRequests); err != nil {
		return errors.Join(fmt.Errorf("register HTTP metrics: %w", err), a.Close())
	}
	ln, err := net.Listen("tcp", a.cfg.HTTPAddr)
	if err != nil {
		a.cfg.Registerer.Unregister(a.httpRequests)
		return errors.Join(fmt.Errorf("listen for HTTP on %s: %w", a.cfg.HTTPAddr, err), a.Close())
	}
	ln = httpsec.LimitListener(ln, DefaultHTTPMaxConns, a.log, "")
	if a.cfg.HTTPTLS != nil {
		ln = tls.NewListener(ln, a.cfg.HTTPTLS)
	}
	a.httpListener = ln
	a.httpServer = &http.Server{
		Handler:           a.routes(),
		ReadHeaderTimeout: min(5*time.Second, a.cfg.HTTPReadTimeout),
		ReadTimeout:       a.cfg.HTTPReadTimeout,
		IdleTimeout:       DefaultHTTPIdleTimeout,
	}
	a.httpDone = make(chan struct{})
	go func() {
		defer close(a.httpDone)
		if err := a.httpServer.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("HTTP server stopped", "error", err)
		}
	}()

	if a.vehicles == nil && a.cfg.VehicleAuthenticator == nil {
		a.log.Warn("vehicle authentication is OFF: any vehicle id connects with any password; use this for local experiments and benchmarks only")
	}
	a.log.Info("agent started", "region", a.cfg.Region, "vehicle_auth", a.cfg.vehicleAuthDescription(), "mqtt_addr", a.broker.Addr().String(),
		"http_addr", ln.Addr().String(), "hub", a.cfg.HubURL, "spool", a.spool.SpoolID())
	return nil
}

// MQTTAddr returns the address vehicles connect to, or nil before Open.
func (a *Agent) MQTTAddr() net.Addr { return a.broker.Addr() }

// MQTTTLSAddr returns the address vehicles connect to over TLS, or nil
// when there is none or before Open.
func (a *Agent) MQTTTLSAddr() net.Addr { return a.broker.TLSAddr() }

// HTTPAddr returns the address of the HTTP server, or nil before Open.
func (a *Agent) HTTPAddr() net.Addr {
	if a.httpListener == nil {
		return nil
	}
	return a.httpListener.Addr()
}

// LocalSOS returns the relay that records this agent's SOS alerts and
// publishes their state to the vehicles. Its Store lists them.
func (a *Agent) LocalSOS() *localsos.Relay { return a.relay }

// SpoolID returns the id of the agent's spool file, empty before Open.
func (a *Agent) SpoolID() string { return a.spool.SpoolID() }

// UplinkState returns whether the uplink is connected to the hub.
func (a *Agent) UplinkState() uplink.State { return a.uplink.State() }

// Close shuts the agent down in this order:
//
//  1. stop the listeners: the vehicle broker (it waits until no publish
//     is being stored) and the HTTP server;
//  2. flush the spool: wait for the group commit in progress;
//  3. stop the uplink: records the hub has not acknowledged stay in the
//     spool for the next start;
//  4. close the vehicle credential store and the operator list (every
//     page session ends), stop the outage notifier (an SMS
//     being sent stays "sending" for the next start), the SOS state relay,
//     and close the local SOS store;
//  5. close the spool's bbolt file.
//
// It returns every failure joined and is safe to call more than once.
func (a *Agent) Close() error {
	a.closeOnce.Do(func() {
		var errs []error
		a.brokerListen.Store(false)
		errs = append(errs, a.broker.Close())
		if a.httpServer != nil {
			ctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
			if err := a.httpServer.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("shut down HTTP server: %w", err))
			}
			cancel()
			<-a.httpDone
			a.cfg.Registerer.Unregister(a.httpRequests)
		}

		if a.spoolOpen.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
			if err := a.spool.Flush(ctx); err != nil {
				errs = append(errs, err)
			}
			cancel()
		}
		errs = append(errs, a.uplink.Close())
		// After the uplink: it hands the vehicle store the hub's messages.
		if a.vehiclesOpen.Load() {
			a.vehiclesOpen.Store(false)
			errs = append(errs, a.vehicles.Close())
		}
		if a.operatorsOpen.Load() {
			a.operatorsOpen.Store(false)
			errs = append(errs, a.operators.Close())
		}
		if a.notifier != nil {
			errs = append(errs, a.notifier.Close())
		}
		a.contact.close()
		errs = append(errs, a.relay.Close())
		if a.sosOpen.Load() {
			a.sosOpen.Store(false)
			errs = append(errs, a.sos.Close())
		}
		a.spoolOpen.Store(false)
		errs = append(errs, a.spool.Close())

		a.closeErr = errors.Join(errs...)
		a.log.Info("agent stopped", "error", a.closeErr)
	})
	return a.closeErr
}

// AgentIDFile names the file in the data directory that records which
// agent the spool belongs to.
const AgentIDFile = "agent-id"

// claimDataDir records id as the owner of dataDir, or fails when another
// agent owns it: the spool holds that agent's records, and sending them
// under another id would relabel them at the hub.
func claimDataDir(dataDir, id string) error {
	path := filepath.Join(dataDir, AgentIDFile)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		return checkOwnerID(dataDir, strings.TrimSpace(string(data)), id)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("read %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("record agent id: %w", err)
	}
	_, err = f.WriteString(id + "\n")
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// checkDataDirOwner fails when dataDir's AgentIDFile names an agent other
// than id. A data dir without the file passes.
func checkDataDirOwner(dataDir, id string) error {
	path := filepath.Join(dataDir, AgentIDFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return checkOwnerID(dataDir, strings.TrimSpace(string(data)), id)
}

// checkOwnerID fails when owner, the agent id recorded in dataDir, is not id.
func checkOwnerID(dataDir, owner, id string) error {
	if owner != id {
		return fmt.Errorf("data dir %s belongs to agent %q, not %q, and its spool contains that agent's records: start with --id %s or use another --data-dir",
			dataDir, owner, id, owner)
	}
	return nil
}

// checkSpoolPresent fails when the data directory was used by an agent
// (it has an AgentIDFile) but its spool file is missing or empty: opening
// would silently start an empty spool and lose every record the old one held.
func checkSpoolPresent(dataDir string) error {
	owner, err := os.ReadFile(filepath.Join(dataDir, AgentIDFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", AgentIDFile, err)
	}
	path := filepath.Join(dataDir, SpoolFile)
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist), err == nil && info.Size() == 0:
		return fmt.Errorf("spool %s is missing or empty, but agent %s used this data dir: its unsent records are lost. "+
			"Restore the spool from a backup, or delete %s to start with an empty spool",
			path, strings.TrimSpace(string(owner)), filepath.Join(dataDir, AgentIDFile))
	case err != nil:
		return fmt.Errorf("check spool: %w", err)
	}
	return nil
}
