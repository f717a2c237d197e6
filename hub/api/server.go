// Package api is the hub's HTTP interface for operators: the JSON API
// under /api/v1/, the WebSocket event stream, health and readiness
// checks, Prometheus metrics and the embedded dashboard.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/xpress-ops/tower/dashboard"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/httpsec"
)

// Defaults of Config.
const (
	// DefaultPingInterval is how often the stream pings each WebSocket
	// client, well inside the 60 s after which proxies such as nginx close
	// an idle connection.
	DefaultPingInterval = 20 * time.Second
	// DefaultWriteTimeout bounds each WebSocket frame write and each ping's
	// wait for its pong.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultQueryTimeout bounds each store call made for one request.
	DefaultQueryTimeout = 10 * time.Second
)

// Store is the part of store.Store the API reads and the incident
// lifecycle methods it calls for operators.
type Store interface {
	LatestPositions(ctx context.Context) ([]store.Position, error)
	Fixes(ctx context.Context, vehicleID string, from, to time.Time, limit int) ([]store.StoredFix, error)
	Incidents(ctx context.Context, f store.IncidentFilter) ([]store.Incident, error)
	Incident(ctx context.Context, id int64) (store.Incident, []store.IncidentEvent, error)
	Ping(ctx context.Context) error

	AcknowledgeIncident(ctx context.Context, id int64, actor string) (store.IncidentChange, error)
	AssignIncident(ctx context.Context, id int64, actor, assignee string) (store.IncidentChange, error)
	DispatchIncident(ctx context.Context, id int64, actor, detail string) (store.IncidentChange, error)
	AddIncidentNote(ctx context.Context, id int64, actor, text string) (store.IncidentChange, error)
	ResolveIncident(ctx context.Context, id int64, actor, resolution string) (store.IncidentChange, error)
	CancelIncident(ctx context.Context, id int64, actor, reason string) (store.IncidentChange, error)
}

var _ Store = (store.Store)(nil)

// Bus is the event source the stream serves.
type Bus interface {
	// Latest returns the sequence number of the newest event.
	Latest() uint64
	// Subscribe returns the events after seq `after`, then live ones, or an
	// error wrapping events.ErrGap (as *events.GapError) or events.ErrClosed.
	Subscribe(after uint64) (*events.Subscription, error)
}

var _ Bus = (*events.Bus)(nil)

// AgentState is one regional agent's connection to the hub. It is also the
// payload of agent.status events.
type AgentState struct {
	ID        string `json:"agent_id"`
	Region    string `json:"region"`
	Connected bool   `json:"connected"`
	// Since is when the agent last connected or disconnected.
	Since time.Time `json:"since"`
}

// Config configures a Server. Store and Bus are required.
type Config struct {
	// Store serves the REST reads and the readiness check.
	Store Store
	// Bus is the event source of the WebSocket stream.
	Bus Bus
	// Logger receives request errors and stream connects and disconnects.
	// Nil discards them.
	Logger *slog.Logger
	// Registerer registers the API metrics. Nil means a private registry.
	Registerer prometheus.Registerer
	// Gatherer is the source of the metrics /metrics serves. Nil means Registerer when it is
	// also a Gatherer (a *prometheus.Registry is both), else the private
	// registry.
	Gatherer prometheus.Gatherer
	// Ready is an extra readiness check for /readyz, run after Store.Ping.
	// Its error message is shown to callers, so it must not contain secrets.
	// Nil means no extra check.
	Ready func(ctx context.Context) error
	// Agents returns the agents' connection states. Nil means none.
	Agents func() []AgentState
	// PingInterval is how often each WebSocket client is pinged. Zero means
	// DefaultPingInterval.
	PingInterval time.Duration
	// WriteTimeout bounds each WebSocket frame write and each ping's wait
	// for its pong; a client that misses it is disconnected. Zero means
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// QueryTimeout bounds each store call. Zero means DefaultQueryTimeout.
	QueryTimeout time.Duration
	// AllowedOrigins lists the browser origins, besides the hub's own host,
	// that may open the WebSocket stream. Each is a host pattern such as
	// "ops.example.com" or "*.example.com", matched with path.Match, or a
	// "scheme://host" pattern. Empty means same origin only. Requests
	// without an Origin header (non-browser clients) are always accepted.
	AllowedOrigins []string
	// AllowedHosts are the host names, besides IP addresses and
	// localhost, the hub serves in the Host header. A request naming
	// another host gets 421, so a page that rebinds its DNS name to the
	// hub's address cannot reach the API. Names are given without scheme
	// or port.
	AllowedHosts []string
	// Dashboard serves "/" and the page's assets. Nil means dashboard.Handler().
	Dashboard http.Handler
	// Now is the clock for default query times. Nil means time.Now.
	Now func() time.Time
	// OnIncidentChange is called with the result of each successful
	// operator action on an incident, after the store committed it and
	// before the response is written, on the request's goroutine, so it
	// must not block. The hub publishes it as an incident.updated event.
	// Nil means no call.
	OnIncidentChange func(store.IncidentChange)
	// Contacts serves the contact routes and an incident's notifications.
	// Nil means Store when it implements ContactStore; otherwise the
	// contact routes return 404 and incidents list no notifications.
	Contacts ContactStore
	// Dispatch serves Twilio's status callbacks and the dispatcher's part
	// of /api/emergency/health. Nil returns 404 to callbacks and reports
	// the dispatcher as missing.
	Dispatch Dispatch
	// ExtraRegions are the region names a contact may serve besides
	// protocol.KnownRegions, as the agents' --allow-region allows them.
	ExtraRegions []string
	// Credentials serves the admin API's agent credential routes (see
	// adminRoutes). Nil, or an empty AdminToken, makes them respond 503.
	Credentials store.AgentCredentialStore
	// AdminToken is the bearer token the admin API requires. It is a
	// secret: it comes from the environment or a file, never a flag.
	AdminToken string
	// OnCredentialChange is called with an agent id after the admin API
	// created, rotated or revoked its credential, so the agent listener
	// can drop what it remembers of the old token and the agent gets its
	// operator list at once. Nil means no call.
	OnCredentialChange func(agentID string)
	// VehicleCredentials serves the admin API's vehicle credential routes
	// (see vehicleAdminRoutes). Nil, or an empty AdminToken, makes them
	// respond 503.
	VehicleCredentials store.VehicleCredentialStore
	// OnVehicleCredentialChange is called after the admin API created,
	// rotated or revoked vehicle credentials, so the hub sends the change
	// to the agents. It must not block. Nil means no call.
	OnVehicleCredentialChange func()
	// OnOperatorChange is called after the admin API created, changed or
	// deleted an operator account, so the hub sends the agents their new
	// operator lists. It must not block. Nil means no call.
	OnOperatorChange func()
	// Accounts keeps operator accounts, sign-in sessions, API tokens and
	// the audit log (see auth.go). Nil means nobody can sign in and only
	// the admin token is accepted.
	Accounts store.OperatorStore
	// LoginBurst and LoginInterval limit the sign-in attempts of one
	// remote address: a burst of LoginBurst, then one per LoginInterval.
	// Zero means DefaultLoginBurst and DefaultLoginInterval.
	LoginBurst    int
	LoginInterval time.Duration
}

// Validate checks the fields New cannot repair: Store and Bus must be set
// and every origin pattern must be a valid path.Match pattern.
func (c Config) Validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("api: Store is required"))
	}
	if c.Bus == nil {
		errs = append(errs, errors.New("api: Bus is required"))
	}
	for _, p := range c.AllowedOrigins {
		if _, err := path.Match(p, ""); err != nil {
			errs = append(errs, fmt.Errorf("api: invalid origin pattern %q: %w", p, err))
		}
	}
	for _, h := range c.AllowedHosts {
		if h == "" || strings.ContainsAny(h, "/:@ ") {
			errs = append(errs, fmt.Errorf("api: allowed host %q: give host names without scheme or port, such as ops.example.ph", h))
		}
	}
	return errors.Join(errs...)
}

// Server serves the operators' HTTP interface. Create it with New, mount
// Handler on an http.Server, and call Close before shutting that server
// down, because http.Server.Shutdown does not wait for WebSockets.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	handler http.Handler

	mu     sync.Mutex
	closed bool
	// done is closed by Close; streams watch it and disconnect.
	done chan struct{}
	// streams counts running stream handlers, so Close can wait for them.
	streams sync.WaitGroup
	// live holds the running streams, so sign-out can end them.
	live streamRegistry
	// auth holds the sign-in rate limiters and the dummy password hash.
	auth *authState
	// hosts decides which Host headers the hub serves.
	hosts *httpsec.HostCheck
}

// New returns a server configured by cfg, with defaults filled in. It
// registers the API metrics, does no I/O and starts no goroutines. It
// panics if cfg.Store or cfg.Bus is nil, because no request could be served.
func New(cfg Config) *Server {
	if cfg.Store == nil || cfg.Bus == nil {
		panic("api.New: Config.Store and Config.Bus are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		reg := prometheus.NewRegistry()
		cfg.Registerer = reg
		if cfg.Gatherer == nil {
			cfg.Gatherer = reg
		}
	}
	if cfg.Gatherer == nil {
		if g, ok := cfg.Registerer.(prometheus.Gatherer); ok {
			cfg.Gatherer = g
		} else {
			cfg.Gatherer = prometheus.NewRegistry()
		}
	}
	if cfg.Agents == nil {
		cfg.Agents = func() []AgentState { return nil }
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = DefaultPingInterval
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.QueryTimeout <= 0 {
		cfg.QueryTimeout = DefaultQueryTimeout
	}
	if cfg.Dashboard == nil {
		cfg.Dashboard = dashboard.Handler()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Contacts == nil {
		cfg.Contacts, _ = cfg.Store.(ContactStore)
	}
	if cfg.LoginBurst <= 0 {
		cfg.LoginBurst = DefaultLoginBurst
	}
	if cfg.LoginInterval <= 0 {
		cfg.LoginInterval = DefaultLoginInterval
	}

	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "api"),
		metrics: newMetrics(cfg.Registerer),
		auth:    newAuthState(cfg.AdminToken),
		hosts:   httpsec.NewHostCheck(cfg.AllowedHosts),
		done:    make(chan struct{}),
	}
	s.handler = s.routes()
	return s
}

// Handler returns the HTTP handler of every route.
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.handleHealth)
	mux.HandleFunc("GET /readyz", s.handleReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{}))

	mux.HandleFunc("GET /api/v1/vehicles", s.handleVehicles)
	mux.HandleFunc("GET /api/v1/vehicles/{id}/track", s.handleTrack)
	mux.HandleFunc("GET /api/v1/incidents", s.handleIncidents)
	mux.HandleFunc("GET /api/v1/incidents/{id}", s.handleIncident)
	for _, route := range actionRoutes {
		mux.HandleFunc("POST /api/v1/incidents/{id}/"+route.path, s.handleAction(route))
	}
	mux.HandleFunc("GET /api/v1/agents", s.handleAgents)
	s.contactRoutes(mux)
	s.dispatchRoutes(mux)
	s.adminRoutes(mux)
	s.operatorAdminRoutes(mux)
	s.sessionRoutes(mux)
	mux.HandleFunc("GET /api/v1/stream", s.handleStream)
	mux.HandleFunc("GET /api/", s.handleUnknownAPI)

	mux.Handle("GET /", s.cfg.Dashboard)
	return s.instrument(httpsec.Headers(s.checkHost(s.authenticate(mux))))
}

// Close disconnects every WebSocket client with status 1001 (going away),
// waits for their handlers to return (up to about 10 s for a client that
// does not complete the close handshake), and makes /readyz report not ready
// so a load balancer stops sending requests. REST requests are still
// served. It is safe to call more than once and always returns nil.
func (s *Server) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	s.mu.Unlock()
	s.streams.Wait()
	return nil
}

// startStream registers a stream handler with the server, or returns false
// once Close has begun.
func (s *Server) startStream() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.streams.Add(1)
	return true
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}
