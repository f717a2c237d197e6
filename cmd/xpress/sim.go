package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/xpress-ops/tower/sim"
)

// simFlags are the flags of xpress sim, also used by xpress dev.
type simFlags struct {
	broker   string
	vehicles int
	rate     float64
	speedup  float64
	trace    string
	sosEvery time.Duration
	duration time.Duration
	batch    int
	prefix   string
	loop     bool
	relocate string
}

func (f *simFlags) register(fs *flag.FlagSet, withBroker bool) {
	if withBroker {
		fs.StringVar(&f.broker, "broker", "tcp://127.0.0.1:1883", "MQTT URL of the agent the vehicles connect to")
	}
	fs.IntVar(&f.vehicles, "vehicles", 20, "number of simulated vehicles")
	fs.Float64Var(&f.rate, "rate", 0, "fixes per second per vehicle; 0 follows the trace's own timing divided by --speedup")
	fs.Float64Var(&f.speedup, "speedup", 1, "replay speed of the trace's timing when --rate is 0")
	fs.StringVar(&f.trace, "trace", "", "trace file to replay (testdata/traces/*); empty drives synthetic routes around Philippine cities")
	fs.DurationVar(&f.sosEvery, "sos-every", 0, "mean time between SOS alerts of one vehicle, e.g. 10m; 0 sends none")
	fs.DurationVar(&f.duration, "duration", 0, "stop after this long; 0 runs until interrupted or the trace ends")
	fs.IntVar(&f.batch, "batch", 1, "fixes per message; above 1 sends JSON arrays like a device that buffered")
	fs.StringVar(&f.prefix, "vehicle-prefix", "sim-", "prefix of the simulated vehicle ids")
	fs.BoolVar(&f.loop, "loop", true, "replay each track again from its start when it ends")
	fs.StringVar(&f.relocate, "relocate", "", "move a replayed trace to a city, keeping its real movement: manila, cebu, davao or iloilo; empty replays it where it was recorded")
}

// relocateCity returns the city named by --relocate, or nil for none.
func (f *simFlags) relocateCity() (*sim.City, error) {
	if f.relocate == "" {
		return nil, nil
	}
	city, ok := sim.CityByName(f.relocate)
	if !ok {
		return nil, fmt.Errorf("invalid --relocate %q: use manila, cebu, davao or iloilo", f.relocate)
	}
	return &city, nil
}

func (f *simFlags) config() sim.Config {
	return sim.Config{
		Broker:        f.broker,
		Vehicles:      f.vehicles,
		Rate:          f.rate,
		Speedup:       f.speedup,
		Trace:         f.trace,
		SOSEvery:      f.sosEvery,
		Duration:      f.duration,
		Batch:         f.batch,
		VehiclePrefix: f.prefix,
		Loop:          f.loop,
	}
}

func runSim(ctx context.Context, args []string, e env) error {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	var sf simFlags
	var lf logFlags
	var password string
	sf.register(fs, true)
	lf.register(fs)
	fs.StringVar(&password, "password", "", "password every vehicle sends (prefer XPRESS_PASSWORD: a flag shows in ps)")
	var credentialsFile string
	fs.StringVar(&credentialsFile, "credentials-file", "", `file of "vehicle_id,token" lines from 'xpress admin vehicle add --out', one per simulated vehicle (mode 0600); replaces --password`)
	if err := parseFlags(fs, args, e); err != nil {
		return err
	}
	log, err := lf.logger(e)
	if err != nil {
		return err
	}

	if sf.vehicles < 1 {
		return fmt.Errorf("invalid --vehicles %d: simulate at least one vehicle", sf.vehicles)
	}
	cfg := sf.config()
	if cfg.RelocateTo, err = sf.relocateCity(); err != nil {
		return err
	}
	cfg.Password = password
	if credentialsFile != "" {
		if cfg.Passwords, err = readCredentialsFile(credentialsFile); err != nil {
			return err
		}
	}
	cfg.Logger, cfg.Registerer = log, newRegistry()
	if err := cfg.Validate(); err != nil {
		return err
	}
	stats, err := sim.Run(ctx, cfg)
	if stats.VehiclesConnected > 0 {
		printStats(e.stdout, stats)
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// printStats writes a run's totals and latencies for a person to read.
func printStats(w io.Writer, s sim.Stats) {
	fmt.Fprintf(w, "vehicles: %d connected of %d, %d connection failures, %d connections lost\n",
		s.VehiclesConnected, s.Vehicles, s.ConnectFailures, s.ConnectionsLost)
	fmt.Fprintf(w, "fixes:    %d sent in %d messages, %d acknowledged, %d failed\n",
		s.FixesSent, s.FixMessages, s.FixesAcked, s.FixesFailed)
	fmt.Fprintf(w, "sos:      %d sent, %d acknowledged, %d failed\n", s.SOSSent, s.SOSAcked, s.SOSFailed)
	fmt.Fprintf(w, "fix latency from scheduled send to PUBACK: p50 %s, p90 %s, p99 %s, max %s (%d samples)\n",
		s.FixLatency.P50, s.FixLatency.P90, s.FixLatency.P99, s.FixLatency.Max, s.FixLatency.Count)
	fmt.Fprintf(w, "elapsed:  %s\n", s.Elapsed.Round(time.Millisecond))
}

// readCredentialsFile reads the per-vehicle tokens of xpress sim
// --credentials-file from a file only its owner may read.
func readCredentialsFile(path string) (map[string]string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("--credentials-file: %w", err)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("--credentials-file %s has mode %04o, readable by group or others: run chmod 600 %s", path, perm, path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--credentials-file: %w", err)
	}
	defer f.Close()
	creds, err := sim.ReadCredentials(f)
	if err != nil {
		return nil, fmt.Errorf("--credentials-file %s: %w", path, err)
	}
	return creds, nil
}
