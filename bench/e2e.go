package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"
)

// E2EConfig configures the e2e scenario: fixes per second from vehicles
// through one agent and the hub into PostgreSQL, sustained for Duration.
type E2EConfig struct {
	// Vehicles is the number of MQTT connections to the agent.
	Vehicles int
	// Rate is the offered load in fixes per second.
	Rate float64
	// Batch is fixes per message.
	Batch int
	// Duration is how long the load runs.
	Duration time.Duration
	// SettleTimeout bounds the wait, after the load, until the hub has
	// stored every acknowledged fix.
	SettleTimeout time.Duration
	// SampleInterval is how often the backlog and the stored fixes are read.
	SampleInterval time.Duration
	// Baseline runs the baseline scenario afterwards for the ratio; a zero
	// Duration skips it.
	Baseline BaselineConfig
}

// DefaultE2EConfig returns the e2e scenario's defaults: the target rate.
func DefaultE2EConfig() E2EConfig {
	b := DefaultBaselineConfig()
	return E2EConfig{
		Vehicles:       1000,
		Rate:           50_000,
		Batch:          1,
		Duration:       60 * time.Second,
		SettleTimeout:  60 * time.Second,
		SampleInterval: time.Second,
		Baseline:       b,
	}
}

// RegisterFlags registers the scenario's flags on fs.
func (c *E2EConfig) RegisterFlags(fs *flag.FlagSet) {
	c.registerLoadFlags(fs)
	fs.DurationVar(&c.SettleTimeout, "settle-timeout", c.SettleTimeout, "how long to wait after the load until the hub has stored every acknowledged fix")
	fs.DurationVar(&c.SampleInterval, "sample-interval", c.SampleInterval, "how often to read the agent's backlog and the hub's stored fixes")
	fs.DurationVar(&c.Baseline.Duration, "baseline-duration", c.Baseline.Duration, "how long to run the one-INSERT-per-fix baseline afterwards for the ratio; 0 skips it")
	fs.IntVar(&c.Baseline.Workers, "baseline-workers", c.Baseline.Workers, "concurrent writers of the baseline")
}

// registerLoadFlags registers the flags of the fix load, shared with sos-latency.
func (c *E2EConfig) registerLoadFlags(fs *flag.FlagSet) {
	fs.IntVar(&c.Vehicles, "vehicles", c.Vehicles, "MQTT connections sending fixes")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "offered load in fixes per second over all vehicles")
	fs.IntVar(&c.Batch, "batch", c.Batch, "fixes per message")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "how long the load runs")
}

func (c E2EConfig) validate() error {
	var errs []error
	if c.Vehicles < 1 {
		errs = append(errs, fmt.Errorf("invalid --vehicles %d: use at least 1", c.Vehicles))
	}
	rateErr := checkRate("rate", c.Rate, "fixes")
	errs = append(errs, rateErr)
	if c.Duration <= 0 {
		errs = append(errs, fmt.Errorf("invalid --duration %s: use a positive duration", c.Duration))
	} else if rateErr == nil && c.Batch >= 1 && int64(c.Rate/float64(c.Batch)*c.Duration.Seconds()) < 1 {
		errs = append(errs, fmt.Errorf("invalid --rate %v with --duration %s and --batch %d: that schedules no message; raise the rate or the duration", c.Rate, c.Duration, c.Batch))
	}
	if c.SettleTimeout < 0 {
		errs = append(errs, fmt.Errorf("invalid --settle-timeout %s: use 0 or more", c.SettleTimeout))
	}
	if c.Baseline.Duration < 0 {
		errs = append(errs, fmt.Errorf("invalid --baseline-duration %s: use 0 (skip the baseline) or a positive duration", c.Baseline.Duration))
	}
	if c.SampleInterval <= 0 {
		errs = append(errs, fmt.Errorf("invalid --sample-interval %s: use a positive duration", c.SampleInterval))
	}
	errs = append(errs, checkBatch(c.Batch))
	if c.Baseline.Duration > 0 {
		if c.Baseline.Workers < 1 || c.Baseline.Workers > 1000 {
			errs = append(errs, fmt.Errorf("invalid --baseline-workers %d: use 1 to 1000", c.Baseline.Workers))
		} else {
			errs = append(errs, c.Baseline.validate())
		}
	}
	return errors.Join(errs...)
}

// E2EResult is the outcome of the e2e scenario.
type E2EResult struct {
	Config E2EConfig  `json:"config"`
	Load   LoadResult `json:"load"`
	// CommittedDuringLoad is the fixes stored while the load ran, and
	// CommittedFixesPerSec their rate over the load's schedule.
	CommittedDuringLoad  int64   `json:"committed_during_load"`
	CommittedFixesPerSec float64 `json:"committed_fixes_per_s"`
	// SettleSeconds is the time from the load's end until every
	// acknowledged fix was stored.
	SettleSeconds float64 `json:"settle_seconds"`
	// RowsInTable counts the fixes table at the end; it equals Load.FixesAcked.
	RowsInTable int64 `json:"rows_in_table"`
	// BacklogSlope is the growth of the agent's backlog over the second
	// half of the load, in fixes per second; MaxBacklog its highest reading.
	BacklogSlope   float64         `json:"backlog_slope_fixes_per_s"`
	MaxBacklog     int64           `json:"max_backlog"`
	BacklogGrowing bool            `json:"backlog_growing"`
	Sustained      bool            `json:"sustained"`
	Reason         string          `json:"reason,omitempty"`
	Samples        []BacklogSample `json:"samples"`
	Baseline       *BaselineResult `json:"baseline,omitempty"`
	// Ratio is CommittedFixesPerSec over the baseline's fixes per second.
	Ratio float64 `json:"ratio,omitempty"`
}

// Print writes the figures.
func (r *E2EResult) Print(w io.Writer) {
	fmt.Fprintln(w, "vehicles → agent (PUBACK after fsync):")
	r.Load.Print(w, "  ")
	fmt.Fprintf(w, "hub stored %s fixes/s while the load ran (%d fixes); the rest within %.2fs after it; %d rows in fixes\n",
		fmtRate(r.CommittedFixesPerSec), r.CommittedDuringLoad, r.SettleSeconds, r.RowsInTable)
	fmt.Fprintf(w, "agent backlog: max %d fixes, slope %.1f fixes/s over the second half", r.MaxBacklog, r.BacklogSlope)
	if r.BacklogGrowing {
		fmt.Fprint(w, " (growing)")
	}
	fmt.Fprintln(w)
	if r.Sustained {
		fmt.Fprintln(w, "sustained: yes")
	} else {
		fmt.Fprintf(w, "sustained: no, %s\n", r.Reason)
	}
	if r.Baseline != nil {
		fmt.Fprint(w, "baseline: ")
		r.Baseline.Print(w)
		fmt.Fprintf(w, "e2e / baseline: %.1f×\n", r.Ratio)
	}
}

// Targets compares the stored rate with the targets.
func (r *E2EResult) Targets() []Target {
	t := []Target{{
		Name:     "e2e",
		Goal:     "≥ 50,000 fixes/s stored, sustained",
		Measured: fmt.Sprintf("%s fixes/s offered %s, sustained: %v", fmtRate(r.CommittedFixesPerSec), fmtRate(r.Load.OfferedFixesPerSec), r.Sustained),
		Met:      r.Sustained && r.CommittedFixesPerSec >= 50_000,
	}}
	if r.Load.OfferedFixesPerSec < 50_000 {
		t[0].NotAtSize, t[0].Met = true, false
		t[0].Note = "the offered rate was below the target's 50,000 fixes/s"
	}
	if r.Baseline != nil {
		t = append(t, Target{
			Name:     "e2e vs baseline",
			Goal:     "≥ 15× the one-INSERT-per-fix baseline",
			Measured: fmt.Sprintf("%.1f× (%s vs %s fixes/s)", r.Ratio, fmtRate(r.CommittedFixesPerSec), fmtRate(r.Baseline.FixesPerSec)),
			Met:      r.Sustained && r.Ratio >= 15,
		})
	}
	return t
}

// RunE2E runs the e2e scenario.
func RunE2E(ctx context.Context, cfg E2EConfig, opts Options) (*E2EResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	env, err := newRunEnv(opts)
	if err != nil {
		return nil, err
	}
	defer env.close()

	p, err := startPipeline(ctx, env, "bench-e2e")
	if err != nil {
		return nil, err
	}
	f, err := connectFleet(ctx, p.agentURL(), "bench-e2e-", cfg.Vehicles, env.log)
	if err != nil {
		return nil, err
	}
	defer f.close()

	res := &E2EResult{Config: cfg}
	s := p.startSampler(ctx, cfg.SampleInterval)
	before, err := p.sample(ctx, s)
	if err != nil {
		s.stop()
		return nil, err
	}
	env.log.Info("e2e load starting", "fixes_per_s", cfg.Rate, "vehicles", cfg.Vehicles, "batch", cfg.Batch, "duration", cfg.Duration)
	// runFixes schedules its first message startDelay from now.
	loadStart := time.Now().Add(startDelay)
	res.Load = f.runFixes(ctx, fixLoad{Rate: cfg.Rate / float64(cfg.Batch), Duration: cfg.Duration, Batch: cfg.Batch})
	loadEnd := time.Now()
	after, err := p.sample(ctx, s)
	if err != nil {
		s.stop()
		return res, err
	}
	res.CommittedDuringLoad = after.Committed - before.Committed
	res.CommittedFixesPerSec = float64(res.CommittedDuringLoad) / loadEnd.Sub(loadStart).Seconds()

	drained, drainErr := p.waitDrained(ctx, s, res.Load.FixesAcked, cfg.SettleTimeout, 100*time.Millisecond)
	samples, sampleErr := s.stop()
	res.Samples = samples
	if drainErr == nil {
		res.SettleSeconds = drained.Sub(loadEnd).Seconds()
	}
	if sampleErr != nil {
		return res, fmt.Errorf("read backlog: %w", sampleErr)
	}
	if res.RowsInTable, err = countRows(ctx, p.pool, "fixes"); err != nil {
		return res, err
	}
	res.judge(samples, before.AtSeconds, after.AtSeconds, drainErr)
	env.log.Info("e2e load done", "committed_fixes_per_s", res.CommittedFixesPerSec, "sustained", res.Sustained, "reason", res.Reason)

	if cfg.Baseline.Duration > 0 {
		if res.Baseline, err = runBaseline(ctx, env, cfg.Baseline); err != nil {
			return res, fmt.Errorf("baseline: %w", err)
		}
		if res.Baseline.FixesPerSec > 0 {
			res.Ratio = res.CommittedFixesPerSec / res.Baseline.FixesPerSec
		}
	}
	return res, nil
}

// judge decides whether the load was sustained: every message acked at
// the offered rate, the backlog not growing over the second half of the
// load, and everything stored in the end.
func (r *E2EResult) judge(samples []BacklogSample, loadFrom, loadTo float64, drainErr error) {
	for _, s := range samples {
		r.MaxBacklog = max(r.MaxBacklog, s.Backlog)
	}
	var n int
	r.BacklogSlope, n = backlogSlope(samples, loadFrom+(loadTo-loadFrom)/2, loadTo)
	// The backlog may wobble by a few batches; growth of 2 % of the
	// offered rate would fill any spool in time.
	r.BacklogGrowing = n >= 3 && r.BacklogSlope > 0.02*r.Load.OfferedFixesPerSec

	var reasons []string
	if r.Load.Failed > 0 || r.Load.Acked < r.Load.Scheduled {
		reasons = append(reasons, fmt.Sprintf("%d of %d messages acked, %d failed", r.Load.Acked, r.Load.Scheduled, r.Load.Failed))
	}
	if r.Load.AchievedFixesPerSec < 0.97*r.Load.OfferedFixesPerSec {
		reasons = append(reasons, fmt.Sprintf("agent accepted %s of %s fixes/s", fmtRate(r.Load.AchievedFixesPerSec), fmtRate(r.Load.OfferedFixesPerSec)))
	}
	if r.BacklogGrowing {
		reasons = append(reasons, fmt.Sprintf("backlog grew by %.0f fixes/s", r.BacklogSlope))
	}
	if drainErr != nil {
		reasons = append(reasons, drainErr.Error())
	}
	if r.RowsInTable != r.Load.FixesAcked {
		reasons = append(reasons, fmt.Sprintf("%d rows in fixes for %d acknowledged fixes", r.RowsInTable, r.Load.FixesAcked))
	}
	r.Sustained = len(reasons) == 0
	r.Reason = joinNonEmpty("; ", reasons...)
}
