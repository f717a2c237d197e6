// Package hub composes the central hub of Xpress Ops Tower: the MQTT
// ingest that agents connect to, the store, the event bus and the HTTP
// API with the operators' dashboard.
package hub

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/credsync"
	"github.com/xpress-ops/tower/hub/dispatch"
	"github.com/xpress-ops/tower/hub/downlink"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/ingest"
	"github.com/xpress-ops/tower/hub/opsync"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/hub/store/postgres"
	"github.com/xpress-ops/tower/internal/httpsec"
	"github.com/xpress-ops/tower/protocol"
)

// Config configures a Hub.
type Config struct {
	// HTTPAddr is the listen address of the API, the dashboard and /metrics. Default ":8080".
	HTTPAddr string
	// AgentMQTTAddr is the listen address for agents over MQTT. Default ":1884".
	AgentMQTTAddr string
	// HTTPTLS, when set, makes HTTPAddr serve HTTPS with this configuration.
	HTTPTLS *tls.Config
	// HTTPReadTimeout bounds the reading of one HTTP request, body
	// included, so a client that sends its body slowly cannot hold a
	// connection. A WebSocket stream is not bounded by it: net/http
	// clears the connection's deadline when the stream takes the
	// connection over. Zero means DefaultHTTPReadTimeout.
	HTTPReadTimeout time.Duration
	// HTTPIdleTimeout closes a keep-alive connection idle this long.
	// Zero means DefaultHTTPIdleTimeout.
	HTTPIdleTimeout time.Duration
	// HTTPMaxConns caps the open HTTP connections, WebSocket streams
	// included; past it new connections wait to be accepted. Zero means
	// DefaultHTTPMaxConns.
	HTTPMaxConns int
	// AgentMQTTTLSAddr, when set, is a second listener for agents, MQTT
	// over TLS with AgentMQTTTLS, next to the plain one on AgentMQTTAddr.
	AgentMQTTTLSAddr string
	AgentMQTTTLS     *tls.Config
	// AgentClientCAs, when set, requires mutual TLS of every agent: a
	// client certificate signed by one of these CAs that names the agent
	// id, on top of its token. Agents must then use AgentMQTTTLSAddr; the
	// plain listener refuses them.
	AgentClientCAs *x509.CertPool
	// DatabaseURL is the PostgreSQL URL of the store. Empty means the
	// embedded store in DataDir, for single-node installs.
	DatabaseURL string
	// DataDir is the directory of the hub's local files. Default "./xpress-data".
	DataDir string
	// RedisURL selects Redis fan-out between hub replicas; empty means in-process.
	RedisURL string
	// AllowedOrigins are extra Origin host patterns allowed to open the
	// operator WebSocket; the hub's own origin is always allowed.
	AllowedOrigins []string
	// HTTPAllowedHosts are the host names the HTTP server serves besides
	// IP addresses, localhost and the host of Dispatch.PublicURL. A
	// request naming another host gets 421 (see api.Config.AllowedHosts).
	HTTPAllowedHosts []string
	// ExtraRegions are the region names a contact may serve besides
	// protocol.KnownRegions, as the agents' --allow-region allows them.
	ExtraRegions []string
	// DisableAgentAuth turns off the agents' credentials check, so any
	// agent id connects with any password. It is for local experiments
	// only: Validate refuses it unless the agent listeners are on loopback
	// addresses, and Open logs a warning.
	DisableAgentAuth bool
	// AdminToken is the bearer token of the admin API, which manages the
	// agents' credentials. Empty disables the admin API.
	AdminToken string
	// Logger receives the hub's logs. Nil discards them.
	Logger *slog.Logger
	// Registerer and Gatherer hold the hub's metrics. Nil means a private registry.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// Dispatch configures the dispatcher that notifies contacts of
	// incidents and escalates the unacknowledged ones. The hub sets its
	// Store, Bus, Logger and Registerer. Without Senders every channel is
	// disabled, and the escalation levels are still recorded.
	Dispatch dispatch.Config
}

// Validate fills defaults and checks the configuration.
func (c *Config) Validate() error {
	if c.HTTPAddr == "" {
		c.HTTPAddr = ":8080"
	}
	if c.AgentMQTTAddr == "" {
		c.AgentMQTTAddr = ":1884"
	}
	if c.DataDir == "" {
		c.DataDir = "./xpress-data"
	}
	if c.HTTPReadTimeout <= 0 {
		c.HTTPReadTimeout = DefaultHTTPReadTimeout
	}
	if c.HTTPIdleTimeout <= 0 {
		c.HTTPIdleTimeout = DefaultHTTPIdleTimeout
	}
	if c.HTTPMaxConns <= 0 {
		c.HTTPMaxConns = DefaultHTTPMaxConns
	}
	if c.DisableAgentAuth && (!loopbackAddr(c.AgentMQTTAddr) || c.AgentMQTTTLSAddr != "" && !loopbackAddr(c.AgentMQTTTLSAddr)) {
		return fmt.Errorf("agent authentication can only be turned off when the agent listeners are on loopback addresses, not %q: keep it on and give each agent a credential (xpress admin agent add)", c.AgentMQTTAddr)
	}
	if c.AgentClientCAs != nil && (c.AgentMQTTTLS == nil || c.AgentMQTTTLSAddr == "") {
		return errors.New("mutual TLS for agents needs the agent TLS listener: set --agent-mqtt-tls-addr and its certificate files")
	}
	if c.AgentClientCAs != nil && c.DisableAgentAuth {
		return errors.New("mutual TLS for agents adds to their tokens: it cannot be combined with turning agent authentication off")
	}
	if c.RedisURL != "" {
		// TODO: Redis fan-out between hub replicas; until then one hub fans out in-process.
		return errors.New("redis fan-out is not available yet: leave --redis-url empty to fan out in-process")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registerer == nil || c.Gatherer == nil {
		reg := prometheus.NewRegistry()
		c.Registerer, c.Gatherer = reg, reg
	}
	return nil
}

// allowedHosts returns the host names the HTTP server serves besides IP
// addresses and localhost: Config.HTTPAllowedHosts and the host of the
// public URL, which operators and Twilio's callbacks use.
func allowedHosts(cfg Config) []string {
	hosts := slices.Clone(cfg.HTTPAllowedHosts)
	if u, err := url.Parse(cfg.Dispatch.PublicURL); err == nil && u.Hostname() != "" {
		hosts = append(hosts, u.Hostname())
	}
	return hosts
}

// EmbeddedStoreFile is the embedded store's file name inside DataDir.
const EmbeddedStoreFile = "hub.db"

// Defaults of the HTTP server's limits, see Config.
const (
	// DefaultHTTPReadTimeout bounds reading one request; the largest
	// request body is 16 KiB.
	DefaultHTTPReadTimeout = 30 * time.Second
	// DefaultHTTPIdleTimeout closes idle keep-alive connections.
	DefaultHTTPIdleTimeout = 2 * time.Minute
	// DefaultHTTPMaxConns caps the open connections, WebSocket streams
	// included, below common file descriptor limits.
	DefaultHTTPMaxConns = 4096
)

// openStore is a store with the lifecycle the hub drives.
type openStore interface {
	store.Store
	Open(ctx context.Context) error
}

var (
	_ openStore = (*postgres.Store)(nil)
	_ openStore = (*embedded.Store)(nil)
)

// Hub is a running hub. Open starts it and Close stops it.
type Hub struct {
	cfg    Config
	log    *slog.Logger
	store  openStore
	bus    *events.Bus
	ingest *ingest.Server
	api    *api.Server
	http   *http.Server
	httpLn net.Listener
	done   chan error

	// downlink sends incident states to the agents for their vehicles.
	downlink *downlink.Downlink
	// credsync sends the vehicles' credentials to the agents.
	credsync *credsync.Syncer
	// opsync sends each agent the operator accounts of its region.
	opsync *opsync.Syncer
	// dispatcher notifies contacts and escalates incidents.
	dispatcher *dispatch.Dispatcher
	// auth checks agent credentials; nil when DisableAgentAuth is set.
	auth *ingest.StoreAuthenticator

	mu      sync.Mutex
	agents  map[string]*api.AgentState
	closed  bool
	closeMu sync.Mutex
}

// New returns a hub for cfg. It does no I/O.
func New(cfg Config) (*Hub, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Hub{cfg: cfg, log: cfg.Logger.With("component", "hub"), agents: map[string]*api.AgentState{}}, nil
}

// Open connects the store (applying migrations), then starts the agent
// listener and the HTTP server. On error everything already started is
// closed again.
func (h *Hub) Open(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			err = errors.Join(err, h.Close())
		}
	}()

	if h.cfg.DatabaseURL != "" {
		h.store = postgres.New(postgres.Config{
			URL:        h.cfg.DatabaseURL,
			Logger:     h.cfg.Logger,
			Registerer: h.cfg.Registerer,
		})
	} else {
		if err := os.MkdirAll(h.cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("create data directory: %w", err)
		}
		h.store = embedded.New(embedded.Config{
			Path:       filepath.Join(h.cfg.DataDir, EmbeddedStoreFile),
			Logger:     h.cfg.Logger,
			Registerer: h.cfg.Registerer,
		})
	}
	if err := h.store.Open(ctx); err != nil {
		return fmt.Errorf("open store: %w", err)
	}

	h.bus = events.NewBus(events.Config{
		Logger:     h.cfg.Logger,
		Registerer: h.cfg.Registerer,
		// Microseconds since 1970 stay below 2^53 until the year 2255, so
		// the dashboard's JavaScript numbers hold them exactly.
		FirstSeq: uint64(time.Now().UnixMicro()),
	})

	var auth ingest.AgentAuthenticator = ingest.AllowAll{}
	if h.cfg.DisableAgentAuth {
		h.log.Warn("agent authentication is OFF: any agent id connects with any password; use this for local experiments only",
			"agent_mqtt", h.cfg.AgentMQTTAddr)
	} else {
		h.auth = ingest.NewStoreAuthenticator(h.store, 0)
		auth = h.auth
	}
	h.ingest = ingest.New(ingest.Config{
		Authenticator: auth,
		Addr:          h.cfg.AgentMQTTAddr,
		TLSAddr:       h.cfg.AgentMQTTTLSAddr,
		TLS:           h.cfg.AgentMQTTTLS,
		ClientCAs:     h.cfg.AgentClientCAs,
		Store:         h.store,
		Logger:        h.cfg.Logger,
		Registerer:    h.cfg.Registerer,
		OnCommit:      h.publishCommit,
		OnAgentStatus: h.setAgentStatus,
	})
	if err := h.ingest.Open(); err != nil {
		return fmt.Errorf("open agent listener on %s: %w", h.cfg.AgentMQTTAddr, err)
	}

	h.downlink, err = downlink.New(downlink.Config{
		Bus:        h.bus,
		Store:      h.store,
		Publisher:  h.ingest,
		Language:   dispatch.DriverLanguage(h.store, h.cfg.Logger),
		Message:    dispatch.DriverMessage,
		Logger:     h.cfg.Logger,
		Registerer: h.cfg.Registerer,
	})
	if err != nil {
		return err
	}
	h.downlink.Start()

	h.credsync, err = credsync.New(credsync.Config{
		Store:      h.store,
		Publisher:  h.ingest,
		Logger:     h.cfg.Logger,
		Registerer: h.cfg.Registerer,
	})
	if err != nil {
		return err
	}
	h.credsync.Start()

	h.opsync, err = opsync.New(opsync.Config{
		Store:      h.store,
		Publisher:  h.ingest,
		Logger:     h.cfg.Logger,
		Registerer: h.cfg.Registerer,
	})
	if err != nil {
		return err
	}
	h.opsync.Start()

	dcfg := h.cfg.Dispatch
	dcfg.Store, dcfg.Bus, dcfg.Logger, dcfg.Registerer = h.store, h.bus, h.cfg.Logger, h.cfg.Registerer
	dcfg.CatchingUp = h.ingest.CatchingUp
	if h.dispatcher, err = dispatch.New(dcfg); err != nil {
		return err
	}
	// Incidents stored before a restart are escalated before the first
	// client connects; the loop retries a scan that fails here.
	if err := h.dispatcher.Scan(ctx); err != nil {
		h.log.Warn("first incident scan failed; the dispatcher retries it", "error", err)
	}
	h.dispatcher.Start()

	h.api = api.New(api.Config{
		Store:          h.store,
		Bus:            h.bus,
		Logger:         h.cfg.Logger,
		Registerer:     h.cfg.Registerer,
		Gatherer:       h.cfg.Gatherer,
		Agents:         h.agentStates,
		AllowedOrigins: h.cfg.AllowedOrigins,
		AllowedHosts:   allowedHosts(h.cfg),
		Dispatch:       h.dispatcher,
		ExtraRegions:   h.cfg.ExtraRegions,
		// An operator's action reaches the dashboards as the same event a
		// committed batch publishes for a changed incident.
		OnIncidentChange: func(c store.IncidentChange) { h.publish(c.Incident.Region, events.TypeIncidentUpdated, c) },
		Credentials:      h.store,
		// Operators sign in with the accounts of the hub's store.
		Accounts:   h.store,
		AdminToken: h.cfg.AdminToken,
		OnCredentialChange: func(agentID string) {
			if h.auth != nil {
				h.auth.Forget(agentID)
			}
			// A revoked agent's operator list is cleared.
			h.opsync.Notify()
		},
		VehicleCredentials:        h.store,
		OnVehicleCredentialChange: h.credsync.Notify,
		OnOperatorChange:          h.opsync.Notify,
	})
	ln, err := net.Listen("tcp", h.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen for HTTP on %s: %w", h.cfg.HTTPAddr, err)
	}
	ln = httpsec.LimitListener(ln, h.cfg.HTTPMaxConns, h.log, "--http-max-conns (XPRESS_HTTP_MAX_CONNS)")
	if h.cfg.HTTPTLS != nil {
		ln = tls.NewListener(ln, h.cfg.HTTPTLS)
	}
	h.httpLn = ln
	h.http = &http.Server{
		Handler:           h.api.Handler(),
		ReadHeaderTimeout: min(10*time.Second, h.cfg.HTTPReadTimeout),
		ReadTimeout:       h.cfg.HTTPReadTimeout,
		IdleTimeout:       h.cfg.HTTPIdleTimeout,
		ErrorLog:          slog.NewLogLogger(h.cfg.Logger.Handler(), slog.LevelWarn),
	}
	h.done = make(chan error, 1)
	go func() {
		err := h.http.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		h.done <- err
	}()
	h.log.Info("hub started", "http", ln.Addr().String(), "https", h.cfg.HTTPTLS != nil,
		"agent_mqtt", h.ingest.Addr().String(), "agent_mqtt_tls", h.cfg.AgentMQTTTLSAddr)
	return nil
}

// HTTPAddr returns the bound address of the HTTP server.
func (h *Hub) HTTPAddr() net.Addr { return h.httpLn.Addr() }

// AgentMQTTAddr returns the bound address of the agent listener.
func (h *Hub) AgentMQTTAddr() net.Addr { return h.ingest.Addr() }

// Credentials returns the store of the agents' credentials, for
// provisioning agents in-process (xpress dev, tests). Valid after Open.
func (h *Hub) Credentials() store.AgentCredentialStore { return h.store }

// Accounts returns the store of operator accounts, sessions and API
// tokens, for creating the first operator in-process (xpress dev, tests).
// Valid after Open.
func (h *Hub) Accounts() store.OperatorStore { return h.store }

// ProvisionAgent creates the credential of agent agentID in region and
// returns its token. When the agent already has a credential it is
// rotated without grace, so only the returned token works afterwards.
// xpress dev and tests use it to give in-process agents their tokens.
func (h *Hub) ProvisionAgent(ctx context.Context, agentID, region string) (string, error) {
	token, _, err := h.store.CreateAgentCredential(ctx, agentID, region)
	if errors.Is(err, store.ErrConflict) {
		token, _, err = h.store.RotateAgentCredential(ctx, agentID, 0)
		if h.auth != nil {
			h.auth.Forget(agentID)
		}
	}
	if err != nil {
		return "", fmt.Errorf("provision agent %s: %w", agentID, err)
	}
	return token, nil
}

// loopbackAddr reports whether the host of the listen address addr is a
// loopback address or "localhost". An empty host listens everywhere.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// AgentMQTTTLSAddr returns the bound address of the agent TLS listener,
// or nil when there is none.
func (h *Hub) AgentMQTTTLSAddr() net.Addr { return h.ingest.TLSAddr() }

// Close stops the hub in order: HTTP and WebSockets, then the dispatcher
// (waiting for sends in progress), then the downlink, then the agent
// listener (no new batches), then the bus, then the store. It is safe to
// call more than once.
func (h *Hub) Close() error {
	h.closeMu.Lock()
	defer h.closeMu.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true

	var errs []error
	if h.api != nil {
		h.api.Close()
	}
	if h.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := h.http.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shut down HTTP: %w", err))
		}
		cancel()
		if err := <-h.done; err != nil {
			errs = append(errs, fmt.Errorf("serve HTTP: %w", err))
		}
	}
	if h.dispatcher != nil {
		if err := h.dispatcher.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close dispatcher: %w", err))
		}
	}
	if h.credsync != nil {
		if err := h.credsync.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close credential sync: %w", err))
		}
	}
	if h.opsync != nil {
		if err := h.opsync.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close operator sync: %w", err))
		}
	}
	if h.downlink != nil {
		if err := h.downlink.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close downlink: %w", err))
		}
	}
	if h.ingest != nil {
		if err := h.ingest.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close agent listener: %w", err))
		}
	}
	if h.bus != nil {
		h.bus.Close()
	}
	if h.store != nil {
		if err := h.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
	}
	h.log.Info("hub stopped")
	return errors.Join(errs...)
}

// publishCommit turns what a committed batch changed into operator events.
func (h *Hub) publishCommit(b *protocol.Batch, res store.CommitResult) {
	h.noteAgentRegion(b.AgentID, b.Region)
	for _, c := range res.Incidents {
		typ := events.TypeIncidentUpdated
		if c.Opened {
			typ = events.TypeIncidentOpened
		}
		h.publish(c.Incident.Region, typ, c)
	}
	// A status carries no region of its own: it is the region of the
	// agent that reported it.
	for _, s := range res.Statuses {
		h.publish(b.Region, events.TypeVehicleStatus, s)
	}
	// A pointer spares boxing each fix; the bus encodes it and keeps only
	// the bytes.
	for i := range res.Fixes {
		h.publish(res.Fixes[i].Region, events.TypeFix, &res.Fixes[i])
	}
}

// publish publishes an event of region, which decides which operators'
// streams receive it.
func (h *Hub) publish(region, typ string, data any) {
	if _, err := h.bus.PublishIn(region, typ, data); err != nil {
		h.log.Error("publish event failed", "type", typ, "region", region, "error", err)
	}
}

func (h *Hub) setAgentStatus(agentID string, connected bool) {
	h.mu.Lock()
	a := h.agents[agentID]
	if a == nil {
		a = &api.AgentState{ID: agentID}
		h.agents[agentID] = a
	}
	a.Connected = connected
	a.Since = time.Now().UTC()
	state := *a
	h.mu.Unlock()
	h.publish(state.Region, events.TypeAgentStatus, state)
}

// noteAgentRegion records the region of an agent's first batch. An
// agent.status event before it had no region, which only operators who see
// every region receive, so the agent's state is published again in its region.
func (h *Hub) noteAgentRegion(agentID, region string) {
	h.mu.Lock()
	a := h.agents[agentID]
	if a == nil || a.Region != "" || region == "" {
		h.mu.Unlock()
		return
	}
	a.Region = region
	state := *a
	h.mu.Unlock()
	h.publish(state.Region, events.TypeAgentStatus, state)
}

func (h *Hub) agentStates() []api.AgentState {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]api.AgentState, 0, len(h.agents))
	for _, a := range h.agents {
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
