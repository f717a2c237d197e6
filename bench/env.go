package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/agent/broker"
	"github.com/xpress-ops/tower/hub"
)

// DefaultDatabaseURL is the PostgreSQL server a scenario creates its fresh
// database on when Options.DatabaseURL is empty: the local server with
// trust authentication.
const DefaultDatabaseURL = "postgres://root@127.0.0.1:5432/postgres?sslmode=disable"

// Options are the settings every scenario shares.
type Options struct {
	// DatabaseURL names the PostgreSQL server on which a scenario creates a
	// fresh database (xpress_bench_<random hex>) and drops it afterwards.
	// Its own database is used only to run CREATE and DROP DATABASE, so
	// its user needs the CREATEDB privilege. Empty means DefaultDatabaseURL.
	DatabaseURL string
	// Exe is the xpress binary run as a subprocess: fanout's hub, and the
	// agent of sos-burst and of edge with AgentSubprocess.
	// Empty means this process's own executable.
	Exe string
	// Logger receives the benchmark's progress. Nil discards it.
	Logger *slog.Logger
	// ComponentLogger receives the logs of the hub and agents the scenario
	// starts. Nil discards them.
	ComponentLogger *slog.Logger

	// cpuProfile is the CPU profile file of the run (Profiles.CPU). Each
	// subprocess writes its own profile to this name with ".<subprocess>"
	// appended, such as ".agent".
	cpuProfile string
}

// RegisterFlags registers the options shared by every scenario.
func (o *Options) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.DatabaseURL, "database-url", DefaultDatabaseURL,
		"PostgreSQL server where each run creates a fresh database and drops it afterwards; the URL's own database is only used to create and drop it")
	fs.StringVar(&o.Exe, "exe", "", "xpress binary run as a subprocess: the hub of fanout, the agent of sos-burst and of edge --agent-subprocess (default: this executable)")
}

// runEnv is the temporary world of one scenario run: a directory, the
// components started in it, and the cleanups that undo them.
type runEnv struct {
	opts     Options
	log      *slog.Logger
	compLog  *slog.Logger
	dir      string
	cleanups []func() error
	// hubs maps hub agent listener addresses to their credential
	// stores (see noteHub).
	hubs sync.Map
	// adminToken is the admin token of the run's hubs, made at random for
	// each run. The operator streams authenticate with it.
	adminToken string
}

func newRunEnv(opts Options) (*runEnv, error) {
	if opts.DatabaseURL == "" {
		opts.DatabaseURL = DefaultDatabaseURL
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	compLog := opts.ComponentLogger
	if compLog == nil {
		compLog = slog.New(slog.DiscardHandler)
	}
	dir, err := os.MkdirTemp("", "xpress-bench-")
	if err != nil {
		return nil, fmt.Errorf("create temporary directory: %w", err)
	}
	token, err := newAdminToken()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	e := &runEnv{opts: opts, log: log, compLog: compLog, dir: dir, adminToken: token}
	e.onClose(func() error { return os.RemoveAll(dir) })
	return e, nil
}

// onClose registers fn to run in close, after the functions registered later.
func (e *runEnv) onClose(fn func() error) { e.cleanups = append(e.cleanups, fn) }

// close runs the cleanups in reverse order and returns their errors joined.
func (e *runEnv) close() error {
	var errs []error
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		if err := e.cleanups[i](); err != nil {
			errs = append(errs, err)
		}
	}
	e.cleanups = nil
	return errors.Join(errs...)
}

// newDatabase creates an empty database on the configured server, drops
// it on close, and returns its URL.
func (e *runEnv) newDatabase(ctx context.Context) (string, error) {
	server := e.opts.DatabaseURL
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("invalid database URL %q: use postgres://user@host:port/database", redactURL(server))
	}
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random database name: %w", err)
	}
	name := "xpress_bench_" + hex.EncodeToString(b)
	ident := pgx.Identifier{name}.Sanitize()
	if err := execServer(ctx, server, "CREATE DATABASE "+ident+" TEMPLATE template0"); err != nil {
		return "", fmt.Errorf("create database %s on %s: %w (start PostgreSQL or pass --database-url of a server where this user may create databases)",
			name, redactURL(server), err)
	}
	e.log.Info("created database", "database", name, "server", redactURL(server))
	e.onClose(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := execServer(ctx, server, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop database %s: %w", name, err)
		}
		return nil
	})
	u.Path = "/" + name
	return u.String(), nil
}

// execServer runs one statement on a short-lived connection.
func execServer(ctx context.Context, dsn, sql string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// countRows returns the number of rows of a table.
func countRows(ctx context.Context, pool *pgxpool.Pool, table string) (int64, error) {
	var n int64
	err := pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{table}.Sanitize()).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count rows of %s: %w", table, err)
	}
	return n, nil
}

// openPool connects to a database, closing the pool on close.
func (e *runEnv) openPool(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", redactURL(dsn), err)
	}
	e.onClose(func() error { pool.Close(); return nil })
	return pool, nil
}

// redactURL hides a password in a URL before it reaches a log or an error.
func redactURL(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// startHub starts a hub in this process on loopback with the PostgreSQL
// database at databaseURL. agentAddr is where agents connect;
// "127.0.0.1:0" lets the kernel choose the port.
func (e *runEnv) startHub(ctx context.Context, databaseURL, agentAddr string) (*hub.Hub, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	h, err := hub.New(hub.Config{
		HTTPAddr:      "127.0.0.1:0",
		AgentMQTTAddr: agentAddr,
		DatabaseURL:   databaseURL,
		DataDir:       filepath.Join(e.dir, "hub"),
		AdminToken:    e.adminToken,
		Logger:        e.compLog.With("process", "hub"),
		Registerer:    reg,
		Gatherer:      reg,
	})
	if err != nil {
		return nil, fmt.Errorf("configure hub: %w", err)
	}
	if err := h.Open(ctx); err != nil {
		return nil, fmt.Errorf("start hub: %w", err)
	}
	e.onClose(func() error {
		if err := h.Close(); err != nil {
			return fmt.Errorf("close hub: %w", err)
		}
		return nil
	})
	e.noteHub(h.AgentMQTTAddr().String(), h)
	e.log.Info("hub started", "http", h.HTTPAddr().String(), "agent_mqtt", h.AgentMQTTAddr().String())
	return h, nil
}

// startAgent starts an agent in this process on loopback that forwards
// to the hub at hubAddr (host:port), with its spool in the run's
// directory. tune, when not nil, adjusts the configuration first.
func (e *runEnv) startAgent(ctx context.Context, id, hubAddr string, tune func(*agent.Config)) (*agent.Agent, error) {
	cfg := agent.Config{
		ID:       id,
		Region:   "NCR-Manila",
		MQTTAddr: "127.0.0.1:0",
		HubURL:   "tcp://" + hubAddr,
		DataDir:  filepath.Join(e.dir, "agent-"+id),
		HTTPAddr: "127.0.0.1:0",
		Logger:   e.compLog.With("process", "agent"),
		// Throughput scenarios measure the pipeline, not vehicle
		// credentials, and every simulated vehicle connects from one
		// address (see docs/benchmarks.md).
		VehicleAuth:         agent.VehicleAuthOff,
		VehicleConnectRate:  broker.MaxConnectRate,
		VehicleConnectBurst: broker.MaxConnectBurst,
	}
	if tune != nil {
		tune(&cfg)
	}
	if cfg.HubPassword == "" {
		token, err := e.agentToken(ctx, hubAddr, id)
		if err != nil {
			return nil, err
		}
		cfg.HubPassword = token
	}
	a, err := agent.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("configure agent %s: %w", id, err)
	}
	if err := a.Open(ctx); err != nil {
		return nil, fmt.Errorf("start agent %s: %w", id, err)
	}
	e.onClose(func() error {
		if err := a.Close(); err != nil {
			return fmt.Errorf("close agent %s: %w", id, err)
		}
		return nil
	})
	e.log.Info("agent started", "agent", id, "mqtt", a.MQTTAddr().String(), "http", a.HTTPAddr().String(), "hub", hubAddr)
	return a, nil
}

// reserveAddr returns a loopback address whose port was free a moment
// ago, for a server that must start later at a known address.
func reserveAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// httpClient scrapes /metrics of loopback servers.
var httpClient = &http.Client{Timeout: 10 * time.Second}

// metrics is one scrape of a /metrics endpoint.
type metrics map[string]*dto.MetricFamily

// scrape fetches and parses the Prometheus text exposition at url.
func scrape(ctx context.Context, url string) (metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	// Ask for the text format, which the parser below reads, without
	// gzip: compressing every scrape would load the server being measured.
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse metrics of %s: %w", url, err)
	}
	return metrics(fams), nil
}

// value returns the sum of a counter's, gauge's or untyped metric's
// samples whose labels include every given name/value pair, and whether
// the metric was present at all.
func (m metrics) value(name string, labels ...string) (float64, bool) {
	fam, ok := m[name]
	if !ok {
		return 0, false
	}
	var sum float64
	for _, s := range fam.GetMetric() {
		if !hasLabels(s, labels) {
			continue
		}
		switch {
		case s.Counter != nil:
			sum += s.Counter.GetValue()
		case s.Gauge != nil:
			sum += s.Gauge.GetValue()
		case s.Untyped != nil:
			sum += s.Untyped.GetValue()
		}
	}
	return sum, true
}

// histogram returns the sum and count of a histogram's samples, summed
// over its label sets, and whether the metric was present.
func (m metrics) histogram(name string) (sum float64, count uint64, ok bool) {
	fam, ok := m[name]
	if !ok {
		return 0, 0, false
	}
	for _, s := range fam.GetMetric() {
		if h := s.GetHistogram(); h != nil {
			sum += h.GetSampleSum()
			count += h.GetSampleCount()
		}
	}
	return sum, count, true
}

func hasLabels(s *dto.Metric, pairs []string) bool {
	for i := 0; i+1 < len(pairs); i += 2 {
		found := false
		for _, l := range s.GetLabel() {
			if l.GetName() == pairs[i] && l.GetValue() == pairs[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// metricsURL returns the /metrics URL of a server listening at addr.
func metricsURL(addr net.Addr) string {
	return "http://" + loopbackHostPort(addr.String()) + "/metrics"
}

// loopbackHostPort turns a listener address such as "[::]:8080" into one a
// client on this machine can dial.
func loopbackHostPort(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if host == "" || host == "::" || host == "0.0.0.0" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// gpsBacklog reads the fixes waiting in an agent's spool from its /metrics.
func gpsBacklog(ctx context.Context, a *agent.Agent) (int64, error) {
	m, err := scrape(ctx, metricsURL(a.HTTPAddr()))
	if err != nil {
		return 0, err
	}
	v, ok := m.value("xpress_agent_spool_records", "lane", "gps")
	if !ok {
		return 0, errors.New("agent /metrics has no xpress_agent_spool_records")
	}
	return int64(v), nil
}

// hubCommittedFixes reads the fixes a hub has stored from its /metrics.
func hubCommittedFixes(ctx context.Context, h *hub.Hub) (int64, error) {
	m, err := scrape(ctx, metricsURL(h.HTTPAddr()))
	if err != nil {
		return 0, err
	}
	v, ok := m.value("xpress_ingest_records_committed_total", "lane", "gps")
	if !ok {
		// No batch committed yet: the counter has no lane sample.
		return 0, nil
	}
	return int64(v), nil
}

// sleepCtx waits d or until ctx is done, and returns ctx's error in that case.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// joinNonEmpty joins the non-empty strings with sep.
func joinNonEmpty(sep string, parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, sep)
}

// newAdminToken returns a random admin token for the run's hubs.
func newAdminToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("make the admin token: %w", err)
	}
	return hex.EncodeToString(b), nil
}
