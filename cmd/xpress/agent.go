package main

import (
	"context"
	"flag"

	"github.com/xpress-ops/tower/agent"
)

// agentFlags are the flags of xpress agent.
type agentFlags struct {
	id       string
	region   string
	mqttAddr string
	hubURL   string
	dataDir  string
	httpAddr string
}

func (f *agentFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.id, "id", "", "agent id, unique per office, e.g. ncr-1 (required)")
	fs.StringVar(&f.region, "region", "", "region this agent serves, e.g. NCR-Manila, Cebu, Davao, Iloilo (required)")
	fs.StringVar(&f.mqttAddr, "mqtt-addr", ":1883", "address where vehicles connect over MQTT")
	fs.StringVar(&f.hubURL, "hub-url", "tcp://localhost:1884", "MQTT URL of the hub's agent listener")
	fs.StringVar(&f.dataDir, "data-dir", "./xpress-agent-data", "directory of the agent's spool")
	fs.StringVar(&f.httpAddr, "http-addr", ":9090", "address of /metrics, /healthz and /readyz")
}

func (f *agentFlags) config() agent.Config {
	return agent.Config{
		ID:       f.id,
		Region:   f.region,
		MQTTAddr: f.mqttAddr,
		HubURL:   f.hubURL,
		DataDir:  f.dataDir,
		HTTPAddr: f.httpAddr,
	}
}

func runAgent(ctx context.Context, args []string, e env) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	var af agentFlags
	var lf logFlags
	af.register(fs)
	lf.register(fs)
	if err := parseFlags(fs, args, e); err != nil {
		return err
	}
	log, err := lf.logger(e)
	if err != nil {
		return err
	}

	cfg := af.config()
	cfg.Logger, cfg.Registerer = log, newRegistry()
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	if err := a.Open(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("shutting down", "reason", context.Cause(ctx))
	return a.Close()
}
