package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/agent/broker"
	"github.com/xpress-ops/tower/hub"
	"github.com/xpress-ops/tower/sim"
)

// defaultDevTrace is replayed by xpress dev when it runs from a clone of
// the repository and no --trace is given.
const defaultDevTrace = "testdata/traces/porto_taxi_ecml2015_test_320trips.csv"

// devFlags are the flags of xpress dev.
type devFlags struct {
	dataDir      string
	httpAddr     string
	mqttAddr     string
	databaseURL  string
	regions      string
	allowRegions string
	sim          simFlags
}

// devAgentFlagNames maps the agent.Config fields that xpress dev's flags
// set to those flags, for error messages.
var devAgentFlagNames = map[string]string{
	"Region":       "regions",
	"ExtraRegions": "allow-region",
	"MQTTAddr":     "mqtt-addr",
	"DataDir":      "data-dir",
}

func (f *devFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.dataDir, "data-dir", "./xpress-data", "directory of the hub's and agents' files; a restart resumes from it")
	fs.StringVar(&f.httpAddr, "http-addr", ":8080", "address of the dashboard, API and /metrics")
	fs.StringVar(&f.mqttAddr, "mqtt-addr", ":1883", "address where vehicles connect to the first region's agent; further regions take the next ports")
	fs.StringVar(&f.databaseURL, "database-url", "", "PostgreSQL URL; empty keeps everything in the embedded store under --data-dir")
	fs.StringVar(&f.regions, "regions", "NCR-Manila", "comma-separated regions, one agent each: "+strings.Join(agent.KnownRegions, ",")+
		" in any case, or names given to --allow-region")
	fs.StringVar(&f.allowRegions, "allow-region", "", "comma-separated region names to accept besides the known regions, for a new office")
	f.sim.register(fs, false)
	// A demo needs an occasional SOS and a livelier replay than real time.
	setDefault(fs, "sos-every", "10m")
	setDefault(fs, "speedup", "5")
	setDefault(fs, "relocate", "region")
	fs.Lookup("relocate").Usage = "move replayed traces to a city, keeping their real movement: manila, cebu, davao, iloilo, region (each agent's own region's city) or empty (where they were recorded)"
}

// devAgent is one region's agent in xpress dev.
type devAgent struct {
	region string
	agent  *agent.Agent
}

func runDev(ctx context.Context, args []string, e env) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	var df devFlags
	var lf logFlags
	df.register(fs)
	lf.register(fs)
	if err := parseFlags(fs, args, e); err != nil {
		return err
	}
	log, err := lf.logger(e)
	if err != nil {
		return err
	}
	regions, err := parseRegions(df.regions, splitList(df.allowRegions))
	if err != nil {
		return err
	}
	mqttAddrs, err := consecutiveAddrs(df.mqttAddr, len(regions))
	if err != nil {
		return err
	}
	if df.sim.trace == "" {
		if _, err := os.Stat(defaultDevTrace); err == nil {
			df.sim.trace = defaultDevTrace
		}
	}

	reg := newRegistry()
	h, err := hub.New(hub.Config{
		HTTPAddr:      df.httpAddr,
		AgentMQTTAddr: "127.0.0.1:0",
		DatabaseURL:   df.databaseURL,
		DataDir:       filepath.Join(df.dataDir, "hub"),
		ExtraRegions:  splitList(df.allowRegions),
		Logger:        log.With("process", "hub"),
		Registerer:    reg,
		Gatherer:      reg,
	})
	if err != nil {
		return err
	}
	if err := h.Open(ctx); err != nil {
		return err
	}
	defer h.Close()
	adminFile, _, err := ensureDevAdmin(ctx, h.Accounts(), df.dataDir)
	if err != nil {
		return err
	}

	var agents []devAgent
	defer func() {
		for _, a := range agents {
			a.agent.Close()
		}
	}()
	for i, region := range regions {
		id := agentID(region)
		cfg := agent.Config{
			ID:           id,
			Region:       region,
			ExtraRegions: splitList(df.allowRegions),
			MQTTAddr:     mqttAddrs[i],
			HubURL:       "tcp://" + h.AgentMQTTAddr().String(),
			DataDir:      filepath.Join(df.dataDir, "agent-"+id),
			HTTPAddr:     "127.0.0.1:0",
			Logger:       log.With("process", "agent", "agent", id),
			VehicleAuth:  agent.VehicleAuthHub,
			// Every simulated vehicle connects from the loopback address.
			VehicleConnectRate:  broker.MaxConnectRate,
			VehicleConnectBurst: broker.MaxConnectBurst,
		}
		if err := cfg.Validate(); err != nil {
			return renameToFlags(err, devAgentFlagNames)
		}
		if cfg.HubPassword, err = h.ProvisionAgent(ctx, id, region); err != nil {
			return err
		}
		a, err := agent.New(cfg)
		if err != nil {
			return err
		}
		if err := a.Open(ctx); err != nil {
			return fmt.Errorf("start agent %s: %w (another MQTT broker may hold the port: choose one with --mqtt-addr)", id, err)
		}
		agents = append(agents, devAgent{region: region, agent: a})
	}

	store := "embedded store in " + filepath.Join(df.dataDir, "hub")
	if df.databaseURL != "" {
		store = "PostgreSQL"
	}
	fmt.Fprintf(e.stdout, "dashboard:    http://%s/\n", displayAddr(h.HTTPAddr().String()))
	fmt.Fprintf(e.stdout, "sign in as %s with the password in %s\n", devAdminUser, adminFile)
	fmt.Fprintf(e.stdout, "store:        %s\n", store)
	for _, a := range agents {
		fmt.Fprintf(e.stdout, "vehicle MQTT: tcp://%s for %s (username = vehicle id, password = its token from 'xpress admin vehicle add')\n", displayAddr(a.agent.MQTTAddr().String()), a.region)
	}

	// Each run gives the simulated vehicles new tokens.
	tokensFile := filepath.Join(df.dataDir, devVehicleTokensFile)
	if err := os.Remove(tokensFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove old vehicle tokens: %w", err)
	}
	fmt.Fprintf(e.stdout, "vehicle tokens of the simulated vehicles: %s (vehicle_id,token)\n", tokensFile)
	stats, err := runDevSims(ctx, df.sim, agents, log, func(ctx context.Context, a devAgent, ids []string) (map[string]string, error) {
		return provisionDevVehicles(ctx, h, a.agent, ids, tokensFile)
	})
	if err != nil {
		return err
	}
	// The trace may end before the operator stops the tower: keep serving.
	<-ctx.Done()
	printStats(e.stdout, stats)
	log.Info("shutting down", "reason", context.Cause(ctx))
	return nil
}

// runDevSims spreads the simulated vehicles over the agents, one
// simulator per agent, and returns their summed totals when all end.
//
// provision gives the vehicles of one agent's simulator their tokens.
func runDevSims(ctx context.Context, sf simFlags, agents []devAgent, log *slog.Logger,
	provision func(ctx context.Context, a devAgent, ids []string) (map[string]string, error)) (sim.Stats, error) {
	type result struct {
		stats sim.Stats
		err   error
	}
	// Build and check every configuration before starting any simulator.
	var cfgs []sim.Config
	for i, a := range agents {
		cfg := sf.config()
		cfg.Broker = "tcp://" + displayAddr(a.agent.MQTTAddr().String())
		cfg.Vehicles = sf.vehicles / len(agents)
		if i < sf.vehicles%len(agents) {
			cfg.Vehicles++
		}
		if cfg.Vehicles == 0 {
			continue
		}
		cfg.VehiclePrefix = sf.prefix + agentID(a.region) + "-"
		cfg.Logger = log.With("process", "sim", "region", a.region)
		if sf.relocate == "region" {
			cfg.RelocateTo = regionCity(a.region)
		} else {
			city, err := sf.relocateCity()
			if err != nil {
				return sim.Stats{}, err
			}
			cfg.RelocateTo = city
		}
		var err error
		if cfg.Passwords, err = provision(ctx, a, sim.VehicleIDs(cfg)); err != nil {
			if ctx.Err() != nil {
				return sim.Stats{}, nil // stopped while provisioning: no simulator ran
			}
			return sim.Stats{}, err
		}
		if err := cfg.Validate(); err != nil {
			return sim.Stats{}, err
		}
		cfgs = append(cfgs, cfg)
	}

	results := make(chan result, len(cfgs))
	for _, cfg := range cfgs {
		go func() {
			stats, err := sim.Run(ctx, cfg)
			results <- result{stats, err}
		}()
	}
	var total sim.Stats
	var errs []error
	for range cfgs {
		r := <-results
		if r.err != nil && !errors.Is(r.err, context.Canceled) {
			errs = append(errs, fmt.Errorf("simulator: %w", r.err))
		}
		total = addStats(total, r.stats)
	}
	return total, errors.Join(errs...)
}

// addStats sums the counters of two runs. Latencies are those of the run
// with more samples, since quantiles do not add.
func addStats(a, b sim.Stats) sim.Stats {
	out := a
	out.Vehicles += b.Vehicles
	out.VehiclesConnected += b.VehiclesConnected
	out.FixesSent += b.FixesSent
	out.FixMessages += b.FixMessages
	out.FixesAcked += b.FixesAcked
	out.FixesFailed += b.FixesFailed
	out.SOSSent += b.SOSSent
	out.SOSAcked += b.SOSAcked
	out.SOSFailed += b.SOSFailed
	out.ConnectFailures += b.ConnectFailures
	out.ConnectionsLost += b.ConnectionsLost
	if b.FixLatency.Count > a.FixLatency.Count {
		out.FixLatency = b.FixLatency
	}
	if b.SOSLatency.Count > a.SOSLatency.Count {
		out.SOSLatency = b.SOSLatency
	}
	out.Elapsed = max(a.Elapsed, b.Elapsed)
	return out
}

// regionCity returns the city of a region such as "NCR-Manila", or nil
// when the region names none of sim.Cities.
func regionCity(region string) *sim.City {
	for _, c := range sim.Cities {
		if strings.Contains(strings.ToLower(region), c.Name) {
			return &c
		}
	}
	return nil
}

// parseRegions splits the --regions list into canonical region names
// (see agent.NormalizeRegion), as the agents will use them, and rejects
// unknown names and duplicates. extra is the --allow-region list.
func parseRegions(list string, extra []string) ([]string, error) {
	var regions []string
	seen := map[string]bool{}
	for _, r := range splitList(list) {
		region, err := agent.NormalizeRegion(r, extra)
		if err != nil {
			return nil, renameToFlags(err, devAgentFlagNames)
		}
		if seen[region] {
			return nil, fmt.Errorf("invalid --regions: %q appears twice", region)
		}
		seen[region] = true
		regions = append(regions, region)
	}
	if len(regions) == 0 {
		return nil, errors.New("invalid --regions: name at least one region, e.g. NCR-Manila")
	}
	return regions, nil
}

// agentID derives an agent id from a region name: "NCR-Manila" becomes "ncr-manila".
func agentID(region string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(region) {
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
			b.WriteRune(c)
		default:
			b.WriteByte('-')
		}
	}
	return b.String()
}

// consecutiveAddrs returns n listen addresses starting at addr, with
// consecutive ports. Port 0 gives every agent a port of its own choosing.
func consecutiveAddrs(addr string, n int) ([]string, error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("invalid --mqtt-addr %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 0 || port+n-1 > 65535 {
		return nil, fmt.Errorf("invalid --mqtt-addr %q: the port must be a number from 0 to %d", addr, 65536-n)
	}
	addrs := make([]string, n)
	for i := range addrs {
		p := port + i
		if port == 0 {
			p = 0
		}
		addrs[i] = net.JoinHostPort(host, strconv.Itoa(p))
	}
	return addrs, nil
}

// displayAddr turns a listener address such as "[::]:8080" into one a
// person can open.
func displayAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if host == "" || host == "::" || host == "0.0.0.0" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
