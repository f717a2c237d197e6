package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync"
	"time"
)

// DrainConfig configures the drain scenario: a backlog of Fixes fixes in
// an agent's spool while the hub is down, then the hub starts.
type DrainConfig struct {
	// Fixes is the backlog size. It is rounded up to whole messages of Batch fixes.
	Fixes int64
	// Vehicles is the number of MQTT connections that fill the spool.
	Vehicles int
	// Batch is fixes per message while filling.
	Batch int
	// FillRate is the offered fill rate in fixes per second.
	FillRate float64
	// SOS is the most SOS alerts sent during the drain, each from its own
	// vehicle, at SOSRate per second from the moment the agent reconnects
	// until the backlog is gone.
	SOS     int
	SOSRate float64
	// Timeout bounds the drain.
	Timeout time.Duration
}

// DefaultDrainConfig returns the drain scenario's defaults.
func DefaultDrainConfig() DrainConfig {
	return DrainConfig{
		Fixes:    1_000_000,
		Vehicles: 100,
		Batch:    100,
		FillRate: 100_000,
		SOS:      500,
		SOSRate:  20,
		Timeout:  10 * time.Minute,
	}
}

// RegisterFlags registers the scenario's flags on fs.
func (c *DrainConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.Int64Var(&c.Fixes, "fixes", c.Fixes, "fixes in the backlog")
	fs.IntVar(&c.Vehicles, "vehicles", c.Vehicles, "MQTT connections that fill the spool")
	fs.IntVar(&c.Batch, "batch", c.Batch, "fixes per message while filling")
	fs.Float64Var(&c.FillRate, "fill-rate", c.FillRate, "offered fill rate in fixes per second")
	fs.IntVar(&c.SOS, "sos", c.SOS, "most SOS alerts sent during the drain, each from its own vehicle")
	fs.Float64Var(&c.SOSRate, "sos-rate", c.SOSRate, "SOS alerts per second during the drain")
	fs.DurationVar(&c.Timeout, "timeout", c.Timeout, "how long the drain may take")
}

func (c DrainConfig) validate() error {
	var errs []error
	if c.Fixes < 1 {
		errs = append(errs, fmt.Errorf("invalid --fixes %d: use at least 1", c.Fixes))
	}
	if c.Vehicles < 1 {
		errs = append(errs, fmt.Errorf("invalid --vehicles %d: use at least 1", c.Vehicles))
	}
	errs = append(errs, checkRate("fill-rate", c.FillRate, "fixes"))
	if c.SOS < 0 {
		errs = append(errs, fmt.Errorf("invalid --sos %d: use 0 or more", c.SOS))
	}
	if c.SOS > 0 {
		errs = append(errs, checkRate("sos-rate", c.SOSRate, "SOS"))
	}
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("invalid --timeout %s: use a positive duration", c.Timeout))
	}
	errs = append(errs, checkBatch(c.Batch))
	return errors.Join(errs...)
}

// DrainResult is the outcome of the drain scenario.
type DrainResult struct {
	Config DrainConfig `json:"config"`
	// Fill is the load that filled the spool while the hub was down.
	Fill LoadResult `json:"fill"`
	// Backlog is the fixes in the spool before the hub started.
	Backlog int64 `json:"backlog"`
	// ReconnectSeconds is the time from the hub's start until the
	// agent's uplink connected; DrainSeconds from then until the backlog
	// was empty and the hub had stored it all.
	ReconnectSeconds float64 `json:"reconnect_seconds"`
	DrainSeconds     float64 `json:"drain_seconds"`
	DrainFixesPerSec float64 `json:"drain_fixes_per_s"`
	RowsInTable      int64   `json:"rows_in_table"`
	// SOS are the alerts sent while the backlog drained.
	SOS       SOSFigures      `json:"sos"`
	Incidents int64           `json:"incidents"`
	Samples   []BacklogSample `json:"samples"`
}

// Print writes the figures.
func (r *DrainResult) Print(w io.Writer) {
	fmt.Fprintln(w, "fill, hub down:")
	r.Fill.Print(w, "  ")
	fmt.Fprintf(w, "backlog %d fixes; agent reconnected %.2fs after the hub started\n", r.Backlog, r.ReconnectSeconds)
	fmt.Fprintf(w, "drained in %.2fs: %s fixes/s; %d rows in fixes\n", r.DrainSeconds, fmtRate(r.DrainFixesPerSec), r.RowsInTable)
	fmt.Fprintln(w, "during the drain:")
	r.SOS.Print(w, "  ")
	fmt.Fprintf(w, "incidents stored: %d\n", r.Incidents)
}

// Targets compares the drain rate, and the SOS latency during it, with the targets.
func (r *DrainResult) Targets() []Target {
	drained := r.RowsInTable == r.Backlog && r.DrainSeconds > 0
	t := []Target{{
		Name:     "drain",
		Goal:     "≥ 100,000 fixes/s drained",
		Measured: fmt.Sprintf("%s fixes/s (%d fixes in %.2fs)", fmtRate(r.DrainFixesPerSec), r.Backlog, r.DrainSeconds),
		Met:      drained && r.DrainFixesPerSec >= 100_000,
	}}
	if r.SOS.Sent > 0 {
		t = append(t, sosTargets("sos during drain", r.SOS, "the sos-latency goal, applied during the drain")...)
	}
	return t
}

// RunDrain runs the drain scenario.
func RunDrain(ctx context.Context, cfg DrainConfig, opts Options) (*DrainResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	env, err := newRunEnv(opts)
	if err != nil {
		return nil, err
	}
	defer env.close()
	if err := raiseFileLimit(uint64(2*(cfg.Vehicles+cfg.SOS) + 1024)); err != nil {
		return nil, err
	}

	dbURL, err := env.newDatabase(ctx)
	if err != nil {
		return nil, err
	}
	pool, err := env.openPool(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	hubAddr, err := reserveAddr()
	if err != nil {
		return nil, err
	}
	env.noteHub(hubAddr, dbURL) // the hub starts later on this address
	a, err := env.startAgent(ctx, "bench-drain", hubAddr, nil)
	if err != nil {
		return nil, err
	}
	f, err := connectFleet(ctx, "tcp://"+a.MQTTAddr().String(), "bench-fill-", cfg.Vehicles, env.log)
	if err != nil {
		return nil, err
	}
	defer f.close()
	var sosFleet *fleet
	if cfg.SOS > 0 {
		if sosFleet, err = connectFleet(ctx, "tcp://"+a.MQTTAddr().String(), "bench-dsos-", cfg.SOS, env.log); err != nil {
			return nil, err
		}
		defer sosFleet.close()
	}

	res := &DrainResult{Config: cfg}
	messages := (cfg.Fixes + int64(cfg.Batch) - 1) / int64(cfg.Batch)
	env.log.Info("filling the spool, hub down", "fixes", messages*int64(cfg.Batch), "fixes_per_s", cfg.FillRate)
	res.Fill = f.runFixes(ctx, fixLoad{Rate: cfg.FillRate / float64(cfg.Batch), Messages: messages, Batch: cfg.Batch})
	if res.Fill.Acked != messages {
		return res, fmt.Errorf("fill: %d of %d messages acked, %d failed: %s", res.Fill.Acked, messages, res.Fill.Failed, res.Fill.FirstError)
	}
	if res.Backlog, err = gpsBacklog(ctx, a); err != nil {
		return res, err
	}
	if res.Backlog != res.Fill.FixesAcked {
		return res, fmt.Errorf("invalid backlog: the agent's spool contains %d fixes after %d were acknowledged", res.Backlog, res.Fill.FixesAcked)
	}

	env.log.Info("starting the hub", "backlog", res.Backlog)
	hubStart := time.Now()
	h, err := env.startHub(ctx, dbURL, hubAddr)
	if err != nil {
		return res, err
	}
	p := &pipeline{env: env, dbURL: dbURL, pool: pool, hub: h, agent: a}
	op, err := dialOperator(ctx, h.HTTPAddr().String(), env.adminToken, nil)
	if err != nil {
		return res, err
	}
	defer op.close()
	s := p.startSampler(ctx, 500*time.Millisecond)
	if err := waitUplink(ctx, a, 30*time.Second); err != nil {
		s.stop()
		return res, err
	}
	connected := time.Now()
	res.ReconnectSeconds = connected.Sub(hubStart).Seconds()

	// SOS run from the reconnection until the backlog is gone.
	sosCtx, stopSOS := context.WithCancel(ctx)
	defer stopSOS()
	var wg sync.WaitGroup
	if sosFleet != nil {
		plan := sosPlan(sosFleet.vehicles, cfg.SOS, connected, time.Duration(float64(cfg.SOS)/cfg.SOSRate*float64(time.Second)), runID())
		wg.Go(func() {
			res.SOS, _ = measureSOS(ctx, sosCtx, op, plan, DefaultPublishTimeout, 30*time.Second)
		})
	}
	drained, drainErr := p.waitDrained(ctx, s, res.Backlog, cfg.Timeout, 100*time.Millisecond)
	stopSOS()
	wg.Wait()
	res.Samples, err = s.stop()
	if drainErr != nil {
		return res, fmt.Errorf("drain: %w", drainErr)
	}
	if err != nil {
		return res, fmt.Errorf("read backlog: %w", err)
	}
	res.DrainSeconds = drained.Sub(connected).Seconds()
	res.DrainFixesPerSec = float64(res.Backlog) / res.DrainSeconds
	env.log.Info("drained", "seconds", res.DrainSeconds, "fixes_per_s", res.DrainFixesPerSec)

	if res.RowsInTable, err = countRows(ctx, pool, "fixes"); err != nil {
		return res, err
	}
	if res.Incidents, err = countRows(ctx, pool, "incidents"); err != nil {
		return res, err
	}
	return res, nil
}
