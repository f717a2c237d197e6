package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"path"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/xpress-ops/tower/hub"
	"github.com/xpress-ops/tower/protocol"
)

// hubFlags are the flags of xpress hub, also used by xpress dev.
type hubFlags struct {
	httpAddr       string
	agentMQTTAddr  string
	databaseURL    string
	dataDir        string
	redisURL       string
	allowedOrigins string
	allowedHosts   string
	agentAuth      bool
	allowRegions   string
	httpMaxConns   int
}

// maxHTTPConnsLimit is the highest --http-max-conns accepted, Linux's
// usual ceiling on open files per process (fs.nr_open).
const maxHTTPConnsLimit = 1 << 20

func (f *hubFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.httpAddr, "http-addr", ":8080", "address of the API, dashboard and /metrics")
	fs.StringVar(&f.agentMQTTAddr, "agent-mqtt-addr", ":1884", "address where agents connect over MQTT")
	fs.StringVar(&f.databaseURL, "database-url", "", "PostgreSQL URL, e.g. postgres://user@127.0.0.1:5432/xpress (prefer XPRESS_DATABASE_URL: a flag shows in ps)")
	fs.StringVar(&f.dataDir, "data-dir", "./xpress-data", "directory for the hub's local files")
	fs.StringVar(&f.redisURL, "redis-url", "", "Redis URL for fan-out between hub replicas; empty fans out in-process")
	fs.BoolVar(&f.agentAuth, "agent-auth", true, "require each agent's token (xpress admin agent add); false is allowed only with a loopback --agent-mqtt-addr, for local experiments")
	fs.StringVar(&f.allowedOrigins, "allowed-origins", "", "comma-separated extra Origin hosts allowed to open the operator WebSocket")
	fs.StringVar(&f.allowedHosts, "http-allowed-hosts", "", "comma-separated host names the HTTP server serves besides IP addresses, localhost and the host of --public-url, "+
		"e.g. ops.example.ph; requests naming another host get 421, which keeps DNS rebinding pages away from the API")
	fs.IntVar(&f.httpMaxConns, "http-max-conns", 0, fmt.Sprintf(
		"most open HTTP connections, operator WebSockets included, 1 to %d (0: %d); each needs a file descriptor, so keep it below the process's open-file limit (ulimit -n)",
		maxHTTPConnsLimit, hub.DefaultHTTPMaxConns))
	fs.StringVar(&f.allowRegions, "allow-region", "", "comma-separated region names contacts may serve besides "+strings.Join(protocol.KnownRegions, ", ")+
		"; give the agents of a new office the same --allow-region")
}

// checkLimits checks the range of --http-max-conns.
func (f *hubFlags) checkLimits() error {
	if f.httpMaxConns < 0 || f.httpMaxConns > maxHTTPConnsLimit {
		return fmt.Errorf("invalid %s: must be from 1 to %d, or 0 for %d; got %d",
			flagLabel("http-max-conns"), maxHTTPConnsLimit, hub.DefaultHTTPMaxConns, f.httpMaxConns)
	}
	return nil
}

// checkRegions checks the --allow-region names as the agents check theirs.
func (f *hubFlags) checkRegions() error {
	var errs []error
	for _, name := range splitList(f.allowRegions) {
		if err := protocol.ValidateRegionName(name); err != nil {
			errs = append(errs, fmt.Errorf("invalid %s: %w", flagLabel("allow-region"), err))
		}
	}
	return errors.Join(errs...)
}

// checkOrigins checks the --allowed-origins patterns and the
// --http-allowed-hosts names before the hub does,
// so the error names the flag. The hub matches them with path.Match.
func (f *hubFlags) checkOrigins() error {
	var errs []error
	for _, pattern := range splitList(f.allowedOrigins) {
		if _, err := path.Match(pattern, ""); err != nil {
			errs = append(errs, fmt.Errorf("%s contains the invalid pattern %q: %v; use host names with * and ? wildcards, e.g. *.example.com",
				flagLabel("allowed-origins"), pattern, err))
		}
	}
	for _, h := range splitList(f.allowedHosts) {
		if strings.ContainsAny(h, "/:@ ") {
			errs = append(errs, fmt.Errorf("%s contains %q: give host names without scheme or port, such as ops.example.ph",
				flagLabel("http-allowed-hosts"), h))
		}
	}
	return errors.Join(errs...)
}

func (f *hubFlags) config() hub.Config {
	origins := splitList(f.allowedOrigins)
	return hub.Config{
		HTTPAddr:         f.httpAddr,
		AgentMQTTAddr:    f.agentMQTTAddr,
		DatabaseURL:      f.databaseURL,
		DataDir:          f.dataDir,
		RedisURL:         f.redisURL,
		AllowedOrigins:   origins,
		HTTPAllowedHosts: splitList(f.allowedHosts),
		DisableAgentAuth: !f.agentAuth,
		ExtraRegions:     splitList(f.allowRegions),
		HTTPMaxConns:     f.httpMaxConns,
	}
}

// newRegistry returns a metrics registry with the Go and process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func runHub(ctx context.Context, args []string, e env) (err error) {
	fs := flag.NewFlagSet("hub", flag.ContinueOnError)
	var hf hubFlags
	var lf logFlags
	var df dispatchFlags
	var tf hubTLSFlags
	var pf profileFlags
	hf.register(fs)
	tf.register(fs)
	lf.register(fs)
	df.register(fs)
	pf.register(fs)
	if err := parseFlags(fs, args, e); err != nil {
		return err
	}
	stopProfile, err := pf.start()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, stopProfile()) }()
	log, err := lf.logger(e)
	if err != nil {
		return err
	}

	if err := hf.checkOrigins(); err != nil {
		return err
	}
	if err := hf.checkRegions(); err != nil {
		return err
	}
	if err := hf.checkLimits(); err != nil {
		return err
	}
	cfg := hf.config()
	if cfg.AdminToken, err = secretFromEnv(e, envAdminToken); err != nil {
		return err
	}
	if cfg.AdminToken == "" {
		log.Info("admin API disabled: set " + envAdminToken + " or " + envAdminToken + "_FILE to manage agent credentials")
	}
	if err := tf.apply(&cfg, log); err != nil {
		return err
	}
	if cfg.Dispatch, err = df.config(e, log); err != nil {
		return err
	}
	reg := newRegistry()
	cfg.Logger, cfg.Registerer, cfg.Gatherer = log, reg, reg
	h, err := hub.New(cfg)
	if err != nil {
		return err
	}
	if err := h.Open(ctx); err != nil {
		return err
	}
	stopRedirect, err := tf.http.startRedirect(h.HTTPAddr().String(), log)
	if err != nil {
		return errors.Join(err, h.Close())
	}
	<-ctx.Done()
	log.Info("shutting down", "reason", context.Cause(ctx))
	return errors.Join(stopRedirect(), h.Close())
}
