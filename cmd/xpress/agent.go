package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/agent/broker"
	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/internal/configcheck"
	"github.com/xpress-ops/tower/protocol"
)

// agentFlags are the flags of xpress agent.
type agentFlags struct {
	id           string
	region       string
	allowRegions string
	mqttAddr     string
	hubURL       string
	dataDir      string
	httpAddr     string

	spoolMaxBytes        int64
	spoolSOSReserveBytes int64

	ackTimeout      time.Duration
	keepAlive       time.Duration
	pingTimeout     time.Duration
	connectTimeout  time.Duration
	minBackoff      time.Duration
	maxBackoff      time.Duration
	maxInflight     int
	maxBatchRecords int
	maxBatchBytes   int

	vehicleAuth         string
	vehicleConnectRate  int
	vehicleConnectBurst int
	vehicleAuthFailures int
	vehicleAuthBlock    time.Duration
}

// agentFlagNames maps the agent.Config fields that flags set to those
// flags, for error messages.
var agentFlagNames = map[string]string{
	"ID":                       "id",
	"Region":                   "region",
	"ExtraRegions":             "allow-region",
	"MQTTAddr":                 "mqtt-addr",
	"HubURL":                   "hub-url",
	"DataDir":                  "data-dir",
	"HTTPAddr":                 "http-addr",
	"SpoolMaxBytes":            "spool-max-bytes",
	"SpoolSOSReserveBytes":     "spool-sos-reserve-bytes",
	"AckTimeout":               "uplink-ack-timeout",
	"KeepAlive":                "uplink-keepalive",
	"PingTimeout":              "uplink-ping-timeout",
	"ConnectTimeout":           "uplink-connect-timeout",
	"MinBackoff":               "uplink-min-backoff",
	"MaxBackoff":               "uplink-max-backoff",
	"UplinkMaxInflightBatches": "uplink-max-inflight",
	"UplinkMaxBatchRecords":    "uplink-max-batch-records",
	"UplinkMaxBatchBytes":      "uplink-max-batch-bytes",
	"OutageNotifyAfter":        "outage-notify-after",
	"OutageNotifyTo":           "outage-notify-to",
	"OutageNotifyLanguage":     "outage-notify-language",
	"OutageSMS":                "twilio-account-sid",
	"PublicURL":                "public-url",
	"HTTPAllowedHosts":         "http-allowed-hosts",
	"VehicleAuth":              "vehicle-auth",
	"VehicleConnectRate":       "vehicle-connect-rate",
	"VehicleConnectBurst":      "vehicle-connect-burst",
	"VehicleAuthFailures":      "vehicle-auth-failures",
	"VehicleAuthBlock":         "vehicle-auth-block",
}

func (f *agentFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.id, "id", "", "agent id, unique per office, e.g. ncr-1 (required)")
	fs.StringVar(&f.region, "region", "", "region this agent serves: "+strings.Join(agent.KnownRegions, ", ")+
		" in any case, or a name given to --allow-region (required)")
	fs.StringVar(&f.allowRegions, "allow-region", "", "comma-separated region names to accept besides the known regions, for a new office")
	fs.StringVar(&f.mqttAddr, "mqtt-addr", ":1883", "address where vehicles connect over MQTT")
	fs.StringVar(&f.hubURL, "hub-url", "tcp://localhost:1884", "MQTT URL of the hub's agent listener")
	fs.StringVar(&f.dataDir, "data-dir", "./xpress-agent-data", "directory of the agent's spool")
	fs.StringVar(&f.httpAddr, "http-addr", ":9090", "address of /metrics, /healthz, /readyz, the regional outage page (/) "+
		"and its local API, including the SOS acknowledge endpoint POST /api/v1/local/sos/{vehicle}/{sos_id}/acknowledge; operators sign in with their hub accounts, which the hub sends to the agent")
	fs.Int64Var(&f.spoolMaxBytes, "spool-max-bytes", 0, fmt.Sprintf(
		"cap on records waiting in the spool, from %s to %s; past it the oldest GPS fixes are evicted, then status records, never SOS (0: 2 GiB, negative: no cap)",
		configcheck.FormatBytes(agent.MinSpoolMaxBytes), configcheck.FormatBytes(agent.MaxSpoolMaxBytes)))
	fs.Int64Var(&f.spoolSOSReserveBytes, "spool-sos-reserve-bytes", 0, fmt.Sprintf(
		"part of the spool cap that only SOS may use, from %s to half the cap (0: 8 MiB or a quarter of the cap)",
		configcheck.FormatBytes(agent.MinSpoolSOSReserveBytes)))
	fs.DurationVar(&f.ackTimeout, "uplink-ack-timeout", 0, fmt.Sprintf(
		"how long to wait for the hub's acknowledgement of a batch before reconnecting, %s to %s; the agent doubles it while even its smallest batches take longer (0: %s)",
		uplink.MinAckTimeout, uplink.MaxAckTimeout, uplink.DefaultAckTimeout))
	fs.DurationVar(&f.keepAlive, "uplink-keepalive", 0, fmt.Sprintf(
		"MQTT keep-alive towards the hub, %s to %s; with --uplink-ping-timeout it bounds how soon a silent link is noticed (0: %s)",
		uplink.MinKeepAlive, uplink.MaxKeepAlive, uplink.DefaultKeepAlive))
	fs.DurationVar(&f.pingTimeout, "uplink-ping-timeout", 0, fmt.Sprintf(
		"how long to wait for the hub's answer to a keep-alive ping, %s to %s (0: %s)",
		uplink.MinPingTimeout, uplink.MaxPingTimeout, uplink.DefaultPingTimeout))
	fs.DurationVar(&f.connectTimeout, "uplink-connect-timeout", 0, fmt.Sprintf(
		"how long one connection attempt to the hub may take, %s to %s (0: %s)",
		uplink.MinConnectTimeout, uplink.MaxConnectTimeout, uplink.DefaultConnectTimeout))
	fs.DurationVar(&f.minBackoff, "uplink-min-backoff", 0, fmt.Sprintf(
		"longest wait before the first reconnect to the hub, %s to %s; it doubles per failed attempt (0: %s)",
		uplink.MinBackoffBound, uplink.MaxBackoffBound, uplink.DefaultMinBackoff))
	fs.DurationVar(&f.maxBackoff, "uplink-max-backoff", 0, fmt.Sprintf(
		"cap on the wait between reconnects to the hub, %s to %s and at least --uplink-min-backoff (0: %s)",
		uplink.MinBackoffBound, uplink.MaxBackoffBound, uplink.DefaultMaxBackoff))
	fs.IntVar(&f.maxInflight, "uplink-max-inflight", 0, fmt.Sprintf(
		"GPS batches sent before the first is acknowledged, to keep a slow WAN busy, 1 to %d (0: %d)",
		uplink.MaxInflightBatchesLimit, uplink.DefaultMaxInflightBatches))
	fs.IntVar(&f.maxBatchRecords, "uplink-max-batch-records", 0, fmt.Sprintf(
		"most records in one batch to the hub, 1 to %d (0: %d)", protocol.MaxBatchRecords, uplink.DefaultMaxBatchRecords))
	fs.IntVar(&f.maxBatchBytes, "uplink-max-batch-bytes", 0, fmt.Sprintf(
		"most bytes of records in one batch to the hub, from %s to %s (0: 1 MiB)",
		configcheck.FormatBytes(uplink.MinBatchBytes), configcheck.FormatBytes(protocol.MaxBatchBytes/2)))
	fs.StringVar(&f.vehicleAuth, "vehicle-auth", agent.VehicleAuthHub, "how vehicles' MQTT passwords are checked: "+
		"hub (against the credentials issued with 'xpress admin vehicle add', synced from the hub and kept in the data directory) "+
		"or off (any password; only when the vehicle listeners are on loopback addresses)")
	fs.IntVar(&f.vehicleConnectRate, "vehicle-connect-rate", 0, fmt.Sprintf(
		"CONNECT attempts per second one vehicle address may make, %d to %d; vehicles behind carrier NAT share addresses (0: %d)",
		broker.MinConnectRate, broker.MaxConnectRate, broker.DefaultConnectRate))
	fs.IntVar(&f.vehicleConnectBurst, "vehicle-connect-burst", 0, fmt.Sprintf(
		"CONNECT attempts one vehicle address may make at once, %d to %d (0: %d)",
		broker.MinConnectBurst, broker.MaxConnectBurst, broker.DefaultConnectBurst))
	fs.IntVar(&f.vehicleAuthFailures, "vehicle-auth-failures", 0, fmt.Sprintf(
		"failed vehicle authentications per minute one address may have before it is refused for --vehicle-auth-block, %d to %d (0: %d)",
		broker.MinAuthFailures, broker.MaxAuthFailures, broker.DefaultAuthFailures))
	fs.DurationVar(&f.vehicleAuthBlock, "vehicle-auth-block", 0, fmt.Sprintf(
		"how long an address over --vehicle-auth-failures is refused, %s to %s; vehicles it connected before still get in (0: %s)",
		broker.MinAuthBlock, broker.MaxAuthBlock, broker.DefaultAuthBlock))
}

func (f *agentFlags) config() agent.Config {
	return agent.Config{
		ID:           f.id,
		Region:       f.region,
		ExtraRegions: splitList(f.allowRegions),
		MQTTAddr:     f.mqttAddr,
		HubURL:       f.hubURL,
		DataDir:      f.dataDir,
		HTTPAddr:     f.httpAddr,

		SpoolMaxBytes:        f.spoolMaxBytes,
		SpoolSOSReserveBytes: f.spoolSOSReserveBytes,

		AckTimeout:               f.ackTimeout,
		KeepAlive:                f.keepAlive,
		PingTimeout:              f.pingTimeout,
		ConnectTimeout:           f.connectTimeout,
		MinBackoff:               f.minBackoff,
		MaxBackoff:               f.maxBackoff,
		UplinkMaxInflightBatches: f.maxInflight,
		UplinkMaxBatchRecords:    f.maxBatchRecords,
		UplinkMaxBatchBytes:      f.maxBatchBytes,

		VehicleAuth:         f.vehicleAuth,
		VehicleConnectRate:  f.vehicleConnectRate,
		VehicleConnectBurst: f.vehicleConnectBurst,
		VehicleAuthFailures: f.vehicleAuthFailures,
		VehicleAuthBlock:    f.vehicleAuthBlock,
	}
}

func runAgent(ctx context.Context, args []string, e env) (err error) {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	var af agentFlags
	var lf logFlags
	var of outageFlags
	var tf agentTLSFlags
	var pf profileFlags
	af.register(fs)
	tf.register(fs)
	lf.register(fs)
	of.register(fs)
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

	cfg := af.config()
	if cfg.HubPassword, err = agentToken(e, log); err != nil {
		return err
	}
	if err := of.apply(e, log, &cfg); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return renameToFlags(err, agentFlagNames)
	}
	if err := tf.apply(&cfg, log); err != nil {
		return err
	}
	cfg.Logger, cfg.Registerer = log, newRegistry()
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	if err := a.Open(ctx); err != nil {
		return err
	}
	stopRedirect, err := tf.http.startRedirect(a.HTTPAddr().String(), log)
	if err != nil {
		return errors.Join(err, a.Close())
	}
	<-ctx.Done()
	log.Info("shutting down", "reason", context.Cause(ctx))
	return errors.Join(stopRedirect(), a.Close())
}
