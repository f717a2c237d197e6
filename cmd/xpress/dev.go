package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/hub"
	"github.com/xpress-ops/tower/sim"
)

// defaultDevTrace is replayed by xpress dev when it runs from a clone of
// the repository and no --trace is given.
const defaultDevTrace = "testdata/traces/porto_taxi_ecml2015_test_320trips.csv"

func runDev(ctx context.Context, args []string, e env) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	var (
		dataDir     string
		httpAddr    string
		mqttAddr    string
		databaseURL string
		region      string
		sf          simFlags
		lf          logFlags
	)
	fs.StringVar(&dataDir, "data-dir", "./xpress-data", "directory for the hub's and agent's files")
	fs.StringVar(&httpAddr, "http-addr", ":8080", "address of the dashboard, API and /metrics")
	fs.StringVar(&mqttAddr, "mqtt-addr", ":1883", "address where vehicles connect to the agent over MQTT")
	fs.StringVar(&databaseURL, "database-url", "", "PostgreSQL URL (prefer XPRESS_DATABASE_URL: a flag shows in ps)")
	fs.StringVar(&region, "region", "NCR-Manila", "region of the agent")
	sf.register(fs, false)
	lf.register(fs)
	// A demo needs an occasional SOS and a livelier replay than real time.
	setDefault(fs, "sos-every", "10m")
	setDefault(fs, "speedup", "5")
	if err := parseFlags(fs, args, e); err != nil {
		return err
	}
	log, err := lf.logger(e)
	if err != nil {
		return err
	}
	if sf.trace == "" {
		if _, err := os.Stat(defaultDevTrace); err == nil {
			sf.trace = defaultDevTrace
		}
	}

	reg := newRegistry()
	h, err := hub.New(hub.Config{
		HTTPAddr:      httpAddr,
		AgentMQTTAddr: "127.0.0.1:0",
		DatabaseURL:   databaseURL,
		DataDir:       filepath.Join(dataDir, "hub"),
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

	a, err := agent.New(agent.Config{
		ID:       "dev-1",
		Region:   region,
		MQTTAddr: mqttAddr,
		HubURL:   "tcp://" + h.AgentMQTTAddr().String(),
		DataDir:  filepath.Join(dataDir, "agent"),
		HTTPAddr: "127.0.0.1:0",
		Logger:   log.With("process", "agent"),
	})
	if err != nil {
		return err
	}
	if err := a.Open(ctx); err != nil {
		return fmt.Errorf("%w (another MQTT broker may hold the port; choose one with --mqtt-addr)", err)
	}
	defer a.Close()

	fmt.Fprintf(e.stdout, "dashboard:    http://%s/\n", displayAddr(h.HTTPAddr().String()))
	fmt.Fprintf(e.stdout, "vehicle MQTT: tcp://%s (username = vehicle id)\n", displayAddr(a.MQTTAddr().String()))

	cfg := sf.config()
	cfg.Broker = "tcp://" + displayAddr(a.MQTTAddr().String())
	cfg.Logger = log.With("process", "sim")
	if err := cfg.Validate(); err != nil {
		return err
	}
	stats, err := sim.Run(ctx, cfg)
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("simulator: %w", err)
	}
	// The trace may end before the operator stops the tower: keep serving.
	<-ctx.Done()
	printStats(e.stdout, stats)
	log.Info("shutting down", "reason", context.Cause(ctx))
	return nil
}

// displayAddr turns a listener address such as "[::]:8080" into one a
// person can open.
func displayAddr(addr string) string {
	if len(addr) > 0 && addr[0] == ':' {
		return "127.0.0.1" + addr
	}
	for _, any := range []string{"[::]", "0.0.0.0"} {
		if len(addr) > len(any) && addr[:len(any)] == any {
			return "127.0.0.1" + addr[len(any):]
		}
	}
	return addr
}
