package main

import (
	"context"
	"flag"
	"time"

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

	spoolMaxBytes        int64
	spoolSOSReserveBytes int64

	ackTimeout     time.Duration
	keepAlive      time.Duration
	pingTimeout    time.Duration
	connectTimeout time.Duration
	maxInflight    int
}

func (f *agentFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.id, "id", "", "agent id, unique per office, e.g. ncr-1 (required)")
	fs.StringVar(&f.region, "region", "", "region this agent serves, e.g. NCR-Manila, Cebu, Davao, Iloilo (required)")
	fs.StringVar(&f.mqttAddr, "mqtt-addr", ":1883", "address where vehicles connect over MQTT")
	fs.StringVar(&f.hubURL, "hub-url", "tcp://localhost:1884", "MQTT URL of the hub's agent listener")
	fs.StringVar(&f.dataDir, "data-dir", "./xpress-agent-data", "directory of the agent's spool")
	fs.StringVar(&f.httpAddr, "http-addr", ":9090", "address of /metrics, /healthz and /readyz")
	fs.Int64Var(&f.spoolMaxBytes, "spool-max-bytes", 0, "cap on records waiting in the spool, in bytes; past it the oldest GPS fixes are evicted, then status records, never SOS (0: 2 GiB, negative: no cap)")
	fs.DurationVar(&f.ackTimeout, "uplink-ack-timeout", 0, "how long to wait for the hub's acknowledgement of a batch before reconnecting (0: 10s)")
	fs.DurationVar(&f.keepAlive, "uplink-keepalive", 0, "MQTT keep-alive towards the hub; with --uplink-ping-timeout it bounds how soon a silent link is noticed (0: 30s)")
	fs.DurationVar(&f.pingTimeout, "uplink-ping-timeout", 0, "how long to wait for the hub's answer to a keep-alive ping (0: 10s)")
	fs.DurationVar(&f.connectTimeout, "uplink-connect-timeout", 0, "how long one connection attempt to the hub may take (0: 10s)")
	fs.IntVar(&f.maxInflight, "uplink-max-inflight", 0, "GPS batches sent before the first is acknowledged, to keep a slow WAN busy (0: 4)")
	fs.Int64Var(&f.spoolSOSReserveBytes, "spool-sos-reserve-bytes", 0, "part of the spool cap that only SOS may use, in bytes (0: 8 MiB or a quarter of the cap)")
}

func (f *agentFlags) config() agent.Config {
	return agent.Config{
		ID:       f.id,
		Region:   f.region,
		MQTTAddr: f.mqttAddr,
		HubURL:   f.hubURL,
		DataDir:  f.dataDir,
		HTTPAddr: f.httpAddr,

		SpoolMaxBytes:        f.spoolMaxBytes,
		SpoolSOSReserveBytes: f.spoolSOSReserveBytes,

		AckTimeout:               f.ackTimeout,
		KeepAlive:                f.keepAlive,
		PingTimeout:              f.pingTimeout,
		ConnectTimeout:           f.connectTimeout,
		UplinkMaxInflightBatches: f.maxInflight,
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
