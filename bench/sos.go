package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"
)

// SOSFigures measure a set of SOS alerts from their scheduled publish to
// the operator's WebSocket.
type SOSFigures struct {
	Planned int `json:"planned"`
	Sent    int `json:"sent"`
	Acked   int `json:"acked"`
	Failed  int `json:"failed"`
	// Seen counts incidents that arrived as incident.opened on the
	// operator's WebSocket; Missing those that did not in time.
	Seen    int `json:"seen"`
	Missing int `json:"missing"`
	// PubackLatency runs from the scheduled send time to the agent's PUBACK.
	PubackLatency Latency `json:"puback_latency"`
	// OpenedLatency runs from the scheduled send time to the incident.opened frame.
	OpenedLatency Latency `json:"opened_latency"`
	// StreamResets counts reset frames the operator received: incidents
	// opened while it was too far behind are not seen.
	StreamResets int64  `json:"stream_resets"`
	FirstError   string `json:"first_error,omitempty"`
}

// Print writes the figures.
func (f SOSFigures) Print(w io.Writer, indent string) {
	fmt.Fprintf(w, "%sSOS: %d planned, %d sent, %d acked, %d failed, %d seen on the operator stream, %d missing, %d stream resets\n",
		indent, f.Planned, f.Sent, f.Acked, f.Failed, f.Seen, f.Missing, f.StreamResets)
	fmt.Fprintf(w, "%sSOS scheduled send → PUBACK:          %s\n", indent, f.PubackLatency)
	fmt.Fprintf(w, "%sSOS scheduled send → incident.opened: %s\n", indent, f.OpenedLatency)
	if f.FirstError != "" {
		fmt.Fprintf(w, "%sfirst failure: %s\n", indent, f.FirstError)
	}
}

// sosTargets compares SOS latency with the targets for SOS under load.
func sosTargets(name string, f SOSFigures, note string) []Target {
	complete := f.Missing == 0 && f.Failed == 0 && f.Sent > 0
	measured := fmt.Sprintf("p50 %s, p99 %s, %d of %d seen", fmtMs(f.OpenedLatency.P50Ms), fmtMs(f.OpenedLatency.P99Ms), f.Seen, f.Sent)
	return []Target{
		{Name: name + " p50", Goal: "SOS publish → incident.opened p50 ≤ 5 ms", Measured: measured,
			Met: complete && f.OpenedLatency.P50Ms <= 5, Note: note},
		{Name: name + " p99", Goal: "SOS publish → incident.opened p99 ≤ 25 ms", Measured: measured,
			Met: complete && f.OpenedLatency.P99Ms <= 25, Note: note},
	}
}

// sosPlan schedules count SOS alerts, one per vehicle, evenly over window
// from start. SOS ids are unique per run.
func sosPlan(vehicles []*vehicle, count int, start time.Time, window time.Duration, run string) []sosSend {
	plan := make([]sosSend, count)
	for i := range plan {
		plan[i] = sosSend{
			vehicle:   vehicles[i],
			id:        fmt.Sprintf("%s-%s", run, vehicles[i].id),
			scheduled: start.Add(time.Duration(float64(window) * float64(i) / float64(count))),
		}
	}
	return plan
}

// runID returns a short id that makes a run's SOS ids and MQTT client
// ids unique: the time in milliseconds and a random part, so that two
// runs started in the same millisecond differ too.
func runID() string {
	return fmt.Sprintf("r%x%04x", time.Now().UnixMilli()%0xffffff, rand.IntN(0x10000))
}

// measureSOS sends the plan until it ends or sendCtx is done, waits up to
// seenTimeout after the last PUBACK for every incident on the operator's
// stream, and returns the figures with the outcomes.
func measureSOS(ctx, sendCtx context.Context, op *operator, plan []sosSend, publishTimeout, seenTimeout time.Duration) (SOSFigures, []sosOutcome) {
	outcomes := sendSOS(sendCtx, plan, publishTimeout)
	fig := SOSFigures{Planned: len(plan)}
	puback := NewRecorder()
	var ids []string
	for _, o := range outcomes {
		if o.published.IsZero() && errors.Is(o.err, context.Canceled) {
			// Not sent: the scenario ended the schedule early.
			continue
		}
		fig.Sent++
		if o.err != nil {
			fig.Failed++
			if fig.FirstError == "" {
				fig.FirstError = o.err.Error()
			}
			continue
		}
		fig.Acked++
		puback.Record(o.pubackAt.Sub(o.scheduled))
		ids = append(ids, o.id)
	}
	fig.PubackLatency = puback.Summary()

	waitCtx, cancel := context.WithTimeout(ctx, seenTimeout)
	defer cancel()
	op.waitOpened(waitCtx, ids)

	rec := NewRecorder()
	for _, o := range outcomes {
		if o.err != nil {
			continue
		}
		if at, ok := op.openedAt(o.id); ok {
			fig.Seen++
			rec.Record(at.Sub(o.scheduled))
		}
	}
	fig.Missing = fig.Acked - fig.Seen
	fig.OpenedLatency = rec.Summary()
	fig.StreamResets = op.resets.Load()
	if err := op.streamErr(); err != nil && fig.FirstError == "" {
		fig.FirstError = "operator stream: " + err.Error()
	}
	return fig, outcomes
}

// SOSLatencyConfig configures the sos-latency scenario: SOS alerts from
// their own vehicles while the e2e load runs.
type SOSLatencyConfig struct {
	// Load is the fix load that runs meanwhile; its baseline is not used.
	Load E2EConfig
	// SOS is the number of SOS alerts, each from its own vehicle, spread
	// evenly over the load after Warmup.
	SOS int
	// Warmup is how long the load runs before the first SOS.
	Warmup time.Duration
	// SeenTimeout bounds the wait for the incidents on the operator stream.
	SeenTimeout time.Duration
}

// DefaultSOSLatencyConfig returns the sos-latency scenario's defaults:
// 300 SOS during 30 s of load at the e2e target rate.
func DefaultSOSLatencyConfig() SOSLatencyConfig {
	load := DefaultE2EConfig()
	load.Duration = 30 * time.Second
	load.Baseline.Duration = 0
	return SOSLatencyConfig{Load: load, SOS: 300, Warmup: 2 * time.Second, SeenTimeout: 30 * time.Second}
}

// RegisterFlags registers the scenario's flags on fs.
func (c *SOSLatencyConfig) RegisterFlags(fs *flag.FlagSet) {
	c.Load.registerLoadFlags(fs)
	fs.IntVar(&c.SOS, "sos", c.SOS, "SOS alerts, each from its own vehicle, spread over the load")
	fs.DurationVar(&c.Warmup, "warmup", c.Warmup, "how long the load runs before the first SOS")
	fs.DurationVar(&c.SeenTimeout, "seen-timeout", c.SeenTimeout, "how long to wait for the incidents on the operator stream")
}

func (c SOSLatencyConfig) validate() error {
	load := c.Load
	load.Baseline.Duration = 0
	errs := []error{load.validate()}
	if c.SOS < 1 {
		errs = append(errs, fmt.Errorf("invalid --sos %d: use at least 1", c.SOS))
	}
	if c.Warmup < 0 || c.Warmup >= c.Load.Duration {
		errs = append(errs, fmt.Errorf("invalid --warmup %s: use 0 or more and less than --duration %s", c.Warmup, c.Load.Duration))
	}
	return errors.Join(errs...)
}

// SOSLatencyResult is the outcome of the sos-latency scenario.
type SOSLatencyResult struct {
	Config SOSLatencyConfig `json:"config"`
	Load   LoadResult       `json:"load"`
	SOS    SOSFigures       `json:"sos"`
	// Incidents counts the incidents table at the end; it equals SOS.Acked.
	Incidents int64 `json:"incidents"`
}

// Print writes the figures.
func (r *SOSLatencyResult) Print(w io.Writer) {
	fmt.Fprintln(w, "fix load meanwhile:")
	r.Load.Print(w, "  ")
	r.SOS.Print(w, "")
	fmt.Fprintf(w, "incidents stored: %d\n", r.Incidents)
}

// Targets compares SOS latency with the targets.
func (r *SOSLatencyResult) Targets() []Target {
	note := ""
	if r.Load.OfferedFixesPerSec < 50_000 {
		note = fmt.Sprintf("under %s fixes/s, below the e2e target load", fmtRate(r.Load.OfferedFixesPerSec))
	}
	return sosTargets("sos-latency", r.SOS, note)
}

// RunSOSLatency runs the sos-latency scenario.
func RunSOSLatency(ctx context.Context, cfg SOSLatencyConfig, opts Options) (*SOSLatencyResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	env, err := newRunEnv(opts)
	if err != nil {
		return nil, err
	}
	defer env.close()
	if err := raiseFileLimit(uint64(2*(cfg.Load.Vehicles+cfg.SOS) + 1024)); err != nil {
		return nil, err
	}

	p, err := startPipeline(ctx, env, "bench-sos")
	if err != nil {
		return nil, err
	}
	op, err := dialOperator(ctx, p.hub.HTTPAddr().String(), env.adminToken, nil)
	if err != nil {
		return nil, err
	}
	defer op.close()
	load, err := connectFleet(ctx, p.agentURL(), "bench-load-", cfg.Load.Vehicles, env.log)
	if err != nil {
		return nil, err
	}
	defer load.close()
	sosFleet, err := connectFleet(ctx, p.agentURL(), "bench-sos-", cfg.SOS, env.log)
	if err != nil {
		return nil, err
	}
	defer sosFleet.close()

	res := &SOSLatencyResult{Config: cfg}
	var wg sync.WaitGroup
	wg.Go(func() {
		res.Load = load.runFixes(ctx, fixLoad{Rate: cfg.Load.Rate / float64(cfg.Load.Batch), Duration: cfg.Load.Duration, Batch: cfg.Load.Batch})
	})
	// Spread the SOS over the load after the warmup, ending a tenth of the
	// load early so that the last ones still run under load.
	start := time.Now().Add(startDelay + cfg.Warmup)
	window := (cfg.Load.Duration - cfg.Warmup) * 9 / 10
	env.log.Info("sos-latency running", "fixes_per_s", cfg.Load.Rate, "sos", cfg.SOS, "duration", cfg.Load.Duration)
	res.SOS, _ = measureSOS(ctx, ctx, op, sosPlan(sosFleet.vehicles, cfg.SOS, start, window, runID()), DefaultPublishTimeout, cfg.SeenTimeout)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if res.Incidents, err = countRows(ctx, p.pool, "incidents"); err != nil {
		return res, err
	}
	return res, nil
}

// SOSBurstConfig configures the sos-burst scenario: one SOS from each of
// Vehicles vehicles within Window.
type SOSBurstConfig struct {
	Vehicles int
	Window   time.Duration
	// Timeout bounds the wait for every incident to be stored and seen.
	Timeout time.Duration
}

// DefaultSOSBurstConfig returns the sos-burst scenario's defaults.
func DefaultSOSBurstConfig() SOSBurstConfig {
	return SOSBurstConfig{Vehicles: 10_000, Window: time.Second, Timeout: 60 * time.Second}
}

// RegisterFlags registers the scenario's flags on fs.
func (c *SOSBurstConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.IntVar(&c.Vehicles, "vehicles", c.Vehicles, "vehicles that each send one SOS")
	fs.DurationVar(&c.Window, "window", c.Window, "time over which the SOS are spread evenly")
	fs.DurationVar(&c.Timeout, "timeout", c.Timeout, "how long to wait for every incident to be stored and seen")
}

func (c SOSBurstConfig) validate() error {
	var errs []error
	if c.Vehicles < 1 {
		errs = append(errs, fmt.Errorf("invalid --vehicles %d: use at least 1", c.Vehicles))
	}
	if c.Window <= 0 {
		errs = append(errs, fmt.Errorf("invalid --window %s: use a positive duration", c.Window))
	}
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("invalid --timeout %s: use a positive duration", c.Timeout))
	}
	return errors.Join(errs...)
}

// SOSBurstResult is the outcome of the sos-burst scenario.
type SOSBurstResult struct {
	Config SOSBurstConfig `json:"config"`
	SOS    SOSFigures     `json:"sos"`
	// PublishSeconds is the time from the first scheduled SOS to the last
	// actual publish.
	PublishSeconds float64 `json:"publish_seconds"`
	// SeenAfterLastPublishSeconds is the time from the last publish until
	// the last incident arrived on the operator stream, negative when
	// not all arrived; StoredAfterLastPublishSeconds the same until the
	// incidents table held them all.
	SeenAfterLastPublishSeconds   float64 `json:"seen_after_last_publish_seconds"`
	StoredAfterLastPublishSeconds float64 `json:"stored_after_last_publish_seconds"`
	Incidents                     int64   `json:"incidents"`
	FirstError                    string  `json:"first_error,omitempty"`
}

// Print writes the figures.
func (r *SOSBurstResult) Print(w io.Writer) {
	fmt.Fprintf(w, "%d SOS from %d vehicles scheduled over %s, published within %.3fs\n",
		r.SOS.Planned, r.Config.Vehicles, r.Config.Window, r.PublishSeconds)
	r.SOS.Print(w, "")
	fmt.Fprintf(w, "all stored: %s, all seen: %s after the last publish; %d incidents stored\n",
		afterLast(r.StoredAfterLastPublishSeconds), afterLast(r.SeenAfterLastPublishSeconds), r.Incidents)
	if r.FirstError != "" {
		fmt.Fprintf(w, "failure: %s\n", r.FirstError)
	}
}

// Targets compares the burst with its target.
func (r *SOSBurstResult) Targets() []Target {
	note := ""
	small := r.Config.Vehicles < 10_000 || r.Config.Window > time.Second
	if small {
		note = fmt.Sprintf("a burst of %d SOS over %s, smaller than the target's 10,000 in 1s", r.Config.Vehicles, r.Config.Window)
	}
	// A run that did not store or see every SOS never meets the target, so
	// the negative placeholder of a wait that ran out must not pass it.
	all := len(r.Problems()) == 0 && r.SOS.Sent == r.SOS.Planned && r.SOS.Seen == r.SOS.Planned &&
		r.SeenAfterLastPublishSeconds >= 0 && r.StoredAfterLastPublishSeconds >= 0
	return []Target{{
		Name:      "sos-burst",
		Goal:      "10,000 SOS in 1 s all stored and seen within 1 s of the last publish",
		Measured:  fmt.Sprintf("stored %s, seen %s, %d of %d seen, %d of %d stored", afterLast(r.StoredAfterLastPublishSeconds), afterLast(r.SeenAfterLastPublishSeconds), r.SOS.Seen, r.SOS.Planned, r.Incidents, r.SOS.Planned),
		Met:       !small && all && r.SeenAfterLastPublishSeconds <= 1 && r.StoredAfterLastPublishSeconds <= 1,
		NotAtSize: small,
		Note:      note,
	}}
}

// afterLast formats a time after the last publish, "never" for the
// negative placeholder of a wait that ran out.
func afterLast(seconds float64) string {
	if seconds < 0 {
		return "never (not all)"
	}
	return fmt.Sprintf("+%.3fs", seconds)
}

// RunSOSBurst runs the sos-burst scenario. The hub runs in this process
// and the agent as an `xpress agent` subprocess, so that each process
// holds one end of the vehicles' connections. With both ends in one
// process, 10,000 vehicles would pass a common limit of 20,000 open files.
func RunSOSBurst(ctx context.Context, cfg SOSBurstConfig, opts Options) (*SOSBurstResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	env, err := newRunEnv(opts)
	if err != nil {
		return nil, err
	}
	defer env.close()
	if err := raiseFileLimit(uint64(cfg.Vehicles + 1024)); err != nil {
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
	h, err := env.startHub(ctx, dbURL, "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ap, err := env.startAgentProcess(ctx, opts.Exe, "bench-burst", h.AgentMQTTAddr().String())
	if err != nil {
		return nil, err
	}
	if err := ap.waitUplinkConnected(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	op, err := dialOperator(ctx, h.HTTPAddr().String(), env.adminToken, nil)
	if err != nil {
		return nil, err
	}
	defer op.close()
	f, err := connectFleet(ctx, "tcp://"+ap.mqttAddr, "bench-burst-", cfg.Vehicles, env.log)
	if err != nil {
		return nil, err
	}
	defer f.close()

	// Watch the incidents table from the start of the burst.
	start := time.Now().Add(startDelay)
	// The deadline counts from the burst's start, after the start delay.
	watchCtx, stopWatch := context.WithDeadline(ctx, start.Add(cfg.Window+cfg.Timeout))
	defer stopWatch()
	type stored struct {
		at    time.Time
		count int64
		err   error
	}
	storedCh := make(chan stored, 1)
	go func() {
		for {
			n, err := countRows(watchCtx, pool, "incidents")
			if err != nil || n >= int64(cfg.Vehicles) {
				storedCh <- stored{time.Now(), n, err}
				return
			}
			if err := sleepCtx(watchCtx, 10*time.Millisecond); err != nil {
				storedCh <- stored{count: n, err: fmt.Errorf("%d of %d incidents stored: %w", n, cfg.Vehicles, err)}
				return
			}
		}
	}()

	env.log.Info("sos-burst sending", "sos", cfg.Vehicles, "window", cfg.Window)
	res := &SOSBurstResult{Config: cfg}
	var outcomes []sosOutcome
	res.SOS, outcomes = measureSOS(ctx, ctx, op, sosPlan(f.vehicles, cfg.Vehicles, start, cfg.Window, runID()), DefaultPublishTimeout, cfg.Timeout)
	st := <-storedCh

	var lastPublish, lastSeen time.Time
	for _, o := range outcomes {
		if o.published.After(lastPublish) {
			lastPublish = o.published
		}
		if at, ok := op.openedAt(o.id); ok && at.After(lastSeen) {
			lastSeen = at
		}
	}
	res.PublishSeconds = lastPublish.Sub(start).Seconds()
	res.SeenAfterLastPublishSeconds = -1
	if !lastSeen.IsZero() && res.SOS.Seen == res.SOS.Planned {
		res.SeenAfterLastPublishSeconds = lastSeen.Sub(lastPublish).Seconds()
	}
	res.StoredAfterLastPublishSeconds = st.at.Sub(lastPublish).Seconds()
	if st.err != nil {
		res.FirstError = st.err.Error()
		res.StoredAfterLastPublishSeconds = -1
	}
	if res.Incidents, err = countRows(ctx, pool, "incidents"); err != nil {
		return res, err
	}
	return res, nil
}
