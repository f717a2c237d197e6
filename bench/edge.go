package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/agent/spool"
)

// EdgeConfig configures the edge scenario: the highest rate of QoS 1 fix
// messages one agent accepts durably, against Mosquitto with the same
// clients and load, stepping the offered rate in the same run.
type EdgeConfig struct {
	// Mosquitto is the MQTT URL of the comparison broker. Empty measures
	// the agent alone.
	Mosquitto string
	// Vehicles is the number of MQTT connections per broker.
	Vehicles int
	// StartRate is the first offered rate, in messages per second.
	StartRate float64
	// MaxRate ends the search upwards, in messages per second.
	MaxRate float64
	// Factor multiplies the offered rate after a sustained step, until a
	// step is not sustained.
	Factor float64
	// Refine is how many steps bisect between the best sustained rate and
	// the first rate that was not sustained.
	Refine int
	// Retries is how often a step that was not sustained is repeated at
	// the same rate before the search takes it as failed, so that one
	// stall of a busy machine does not end the search.
	Retries int
	// StepDuration is the length of each step's schedule.
	StepDuration time.Duration
	// P99Bound is the highest PUBACK p99 a sustained step may have.
	P99Bound time.Duration
	// Batch is fixes per message.
	Batch int
	// SpoolCommitInterval is the agent's group-commit wait
	// (agent.Config.SpoolCommitInterval), zero for its default.
	SpoolCommitInterval time.Duration
	// AgentSubprocess runs the agent as an `xpress agent` subprocess, like
	// Mosquitto in a process of its own, instead of in this process, where
	// it shares the garbage collector with the load generator.
	AgentSubprocess bool
}

// DefaultEdgeConfig returns the edge scenario's defaults.
func DefaultEdgeConfig() EdgeConfig {
	return EdgeConfig{
		Mosquitto:    "tcp://127.0.0.1:1883",
		Vehicles:     100,
		StartRate:    1000,
		MaxRate:      200_000,
		Factor:       1.5,
		Refine:       2,
		Retries:      1,
		StepDuration: 5 * time.Second,
		P99Bound:     50 * time.Millisecond,
		Batch:        1,
	}
}

// RegisterFlags registers the scenario's flags on fs.
func (c *EdgeConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Mosquitto, "mosquitto", c.Mosquitto, "MQTT URL of the Mosquitto to compare with; empty measures the agent alone")
	fs.IntVar(&c.Vehicles, "vehicles", c.Vehicles, "MQTT connections per broker")
	fs.Float64Var(&c.StartRate, "start-rate", c.StartRate, "first offered rate, in messages per second")
	fs.Float64Var(&c.MaxRate, "max-rate", c.MaxRate, "highest offered rate tried, in messages per second")
	fs.Float64Var(&c.Factor, "factor", c.Factor, "multiplier of the offered rate after each sustained step")
	fs.IntVar(&c.Refine, "refine", c.Refine, "bisection steps between the best sustained rate and the first unsustained one")
	fs.IntVar(&c.Retries, "retries", c.Retries, "repeats of an unsustained step at the same rate before it counts as failed")
	fs.DurationVar(&c.StepDuration, "step-duration", c.StepDuration, "length of each step")
	fs.DurationVar(&c.P99Bound, "p99-bound", c.P99Bound, "highest PUBACK p99 of a sustained step")
	fs.IntVar(&c.Batch, "batch", c.Batch, "fixes per message")
	fs.DurationVar(&c.SpoolCommitInterval, "spool-commit-interval", c.SpoolCommitInterval,
		"how long the agent's spool waits to gather appends into one group commit, at most 1s (0: the agent's default; negative: no wait at all)")
	fs.BoolVar(&c.AgentSubprocess, "agent-subprocess", c.AgentSubprocess,
		"run the agent as an xpress agent subprocess (see --exe) instead of in this process; with --cpuprofile it writes its own profile (the file name plus .agent)")
}

func (c EdgeConfig) validate() error {
	var errs []error
	if c.Vehicles < 1 {
		errs = append(errs, fmt.Errorf("invalid --vehicles %d: use at least 1", c.Vehicles))
	}
	startErr, maxErr := checkRate("start-rate", c.StartRate, "messages"), checkRate("max-rate", c.MaxRate, "messages")
	errs = append(errs, startErr, maxErr)
	if startErr == nil && maxErr == nil && c.MaxRate < c.StartRate {
		errs = append(errs, fmt.Errorf("invalid rates: --start-rate %v must be at most --max-rate %v", c.StartRate, c.MaxRate))
	}
	if c.Refine < 0 || c.Retries < 0 {
		errs = append(errs, fmt.Errorf("invalid --refine %d or --retries %d: use 0 or more", c.Refine, c.Retries))
	}
	if !(c.Factor > 1) {
		errs = append(errs, fmt.Errorf("invalid --factor %v: use a number above 1", c.Factor))
	}
	if c.StepDuration < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("invalid --step-duration %s: use at least 100ms", c.StepDuration))
	}
	if c.P99Bound <= 0 {
		errs = append(errs, fmt.Errorf("invalid --p99-bound %s: use a positive duration", c.P99Bound))
	}
	if c.SpoolCommitInterval > spool.MaxCommitInterval {
		errs = append(errs, fmt.Errorf("invalid --spool-commit-interval %s: use at most %s (negative: no wait at all)", c.SpoolCommitInterval, spool.MaxCommitInterval))
	}
	if c.AgentSubprocess && c.SpoolCommitInterval != 0 {
		errs = append(errs, errors.New("invalid --spool-commit-interval with --agent-subprocess: xpress agent has no flag for it"))
	}
	errs = append(errs, checkBatch(c.Batch))
	return errors.Join(errs...)
}

// EdgeStep is one offered rate tried against one broker.
type EdgeStep struct {
	Load      LoadResult `json:"load"`
	Sustained bool       `json:"sustained"`
	// Reason explains why a step was not sustained.
	Reason string `json:"reason,omitempty"`
	// Spool is the agent's group commits during the step, nil for Mosquitto.
	Spool *SpoolCommits `json:"spool,omitempty"`
	// Retried is true when the step was not sustained and was repeated at the same rate.
	Retried bool `json:"retried,omitempty"`
}

// SpoolCommits describes an agent spool's group commits over a period,
// from its /metrics.
type SpoolCommits struct {
	Commits          uint64  `json:"commits"`
	RecordsPerCommit float64 `json:"records_per_commit"`
	// MeanFsyncMs is the mean time bbolt's commit took to write and fsync.
	MeanFsyncMs float64 `json:"mean_fsync_ms"`
}

// spoolCounters is one reading of the histograms SpoolCommits is made of.
type spoolCounters struct {
	fsyncSum     float64
	fsyncCount   uint64
	recordsSum   float64
	recordsCount uint64
}

func readSpoolCounters(ctx context.Context, url string) (spoolCounters, error) {
	m, err := scrape(ctx, url)
	if err != nil {
		return spoolCounters{}, err
	}
	var c spoolCounters
	var ok1, ok2 bool
	c.fsyncSum, c.fsyncCount, ok1 = m.histogram("xpress_agent_spool_fsync_seconds")
	c.recordsSum, c.recordsCount, ok2 = m.histogram("xpress_agent_spool_group_commit_records")
	if !ok1 || !ok2 {
		return c, fmt.Errorf("agent /metrics at %s lacks the spool commit histograms", url)
	}
	return c, nil
}

// since returns the commits between an earlier reading and this one.
func (c spoolCounters) since(before spoolCounters) *SpoolCommits {
	sc := &SpoolCommits{Commits: c.fsyncCount - before.fsyncCount}
	if sc.Commits > 0 {
		sc.MeanFsyncMs = (c.fsyncSum - before.fsyncSum) / float64(sc.Commits) * 1000
	}
	if n := c.recordsCount - before.recordsCount; n > 0 {
		sc.RecordsPerCommit = (c.recordsSum - before.recordsSum) / float64(n)
	}
	return sc
}

// EdgeSearch is the rate search against one broker.
type EdgeSearch struct {
	Broker string `json:"broker"`
	URL    string `json:"url"`
	// MaxSustainedMsgsPerSec is the highest offered rate that was
	// sustained, 0 when none was.
	MaxSustainedMsgsPerSec  float64    `json:"max_sustained_msgs_per_s"`
	MaxSustainedFixesPerSec float64    `json:"max_sustained_fixes_per_s"`
	Steps                   []EdgeStep `json:"steps"`

	lo, hi  float64
	next    float64
	refines int
	retried int // repeats of the current rate so far
	done    bool
	fleet   *fleet
	// metricsURL is the agent's /metrics, empty for Mosquitto.
	metricsURL string
}

// EdgeResult is the outcome of the edge scenario.
type EdgeResult struct {
	Config EdgeConfig  `json:"config"`
	Agent  *EdgeSearch `json:"agent"`
	Other  *EdgeSearch `json:"mosquitto,omitempty"`
	// Ratio is the agent's max sustained rate over Mosquitto's, 0 without Mosquitto.
	Ratio float64 `json:"ratio,omitempty"`
}

// Print writes the steps and the ratio.
func (r *EdgeResult) Print(w io.Writer) {
	for _, s := range []*EdgeSearch{r.Agent, r.Other} {
		if s == nil {
			continue
		}
		fmt.Fprintf(w, "%s (%s): max sustained %s msg/s (%s fixes/s)\n", s.Broker, s.URL,
			fmtRate(s.MaxSustainedMsgsPerSec), fmtRate(s.MaxSustainedFixesPerSec))
		for _, st := range s.Steps {
			verdict := "sustained"
			if !st.Sustained {
				verdict = "not sustained: " + st.Reason
			}
			if st.Retried {
				verdict += "; repeating"
			}
			fmt.Fprintf(w, "  offered %8s msg/s  achieved %8s  failed %d  PUBACK %s  %s\n",
				fmtRate(st.Load.OfferedMsgsPerSec), fmtRate(st.Load.AchievedMsgsPerSec), st.Load.Failed, st.Load.Latency, verdict)
			if sc := st.Spool; sc != nil {
				fmt.Fprintf(w, "    spool: %d group commits, %.1f records each, mean fsync %s\n", sc.Commits, sc.RecordsPerCommit, fmtMs(sc.MeanFsyncMs))
			}
		}
	}
	if r.Other != nil {
		fmt.Fprintf(w, "agent / mosquitto max sustained rate: %.2f\n", r.Ratio)
	}
}

// Targets compares the agent with Mosquitto.
func (r *EdgeResult) Targets() []Target {
	if r.Other == nil {
		return nil
	}
	t := Target{
		Name:     "edge",
		Goal:     "agent accepts ≥ 0.9× the QoS 1 rate of Mosquitto",
		Measured: fmt.Sprintf("%.2f× (%s vs %s msg/s)", r.Ratio, fmtRate(r.Agent.MaxSustainedMsgsPerSec), fmtRate(r.Other.MaxSustainedMsgsPerSec)),
		Met:      r.Ratio >= 0.9,
	}
	atMax := 0
	for _, s := range []*EdgeSearch{r.Agent, r.Other} {
		if s.hi == 0 {
			atMax++
			t.Note = joinNonEmpty("; ", t.Note, s.Broker+" sustained every rate up to --max-rate, so its true maximum is higher")
		}
	}
	// With both at --max-rate the ratio only compares the flag with itself.
	t.NotAtSize = atMax == 2
	t.Met = t.Met && !t.NotAtSize
	return []Target{t}
}

// maxEdgeSteps bounds the steps of one search.
const maxEdgeSteps = 30

// RunEdge runs the edge scenario: one agent without a hub, so its spool
// only grows, and Mosquitto at cfg.Mosquitto. The two
// searches alternate step by step, so both see the same machine load.
func RunEdge(ctx context.Context, cfg EdgeConfig, opts Options) (*EdgeResult, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	env, err := newRunEnv(opts)
	if err != nil {
		return nil, err
	}
	defer env.close()

	// Nothing listens at the hub address, so the agent keeps its records
	// and its uplink only retries now and then.
	noHub, err := reserveAddr()
	if err != nil {
		return nil, err
	}
	res := &EdgeResult{Config: cfg}
	res.Agent = &EdgeSearch{Broker: "agent", next: cfg.StartRate, refines: cfg.Refine}
	if cfg.AgentSubprocess {
		ap, err := env.startAgentProcess(ctx, opts.Exe, "bench-edge", noHub)
		if err != nil {
			return nil, err
		}
		res.Agent.URL, res.Agent.metricsURL = "tcp://"+ap.mqttAddr, "http://"+ap.httpAddr+"/metrics"
	} else {
		a, err := env.startAgent(ctx, "bench-edge", noHub, func(c *agent.Config) {
			c.SpoolCommitInterval = cfg.SpoolCommitInterval
		})
		if err != nil {
			return nil, err
		}
		res.Agent.URL, res.Agent.metricsURL = "tcp://"+a.MQTTAddr().String(), metricsURL(a.HTTPAddr())
	}
	searches := []*EdgeSearch{res.Agent}
	if cfg.Mosquitto != "" {
		res.Other = &EdgeSearch{Broker: "mosquitto", URL: cfg.Mosquitto, next: cfg.StartRate, refines: cfg.Refine}
		searches = append(searches, res.Other)
	}
	for _, s := range searches {
		f, err := connectFleet(ctx, s.URL, "bench-"+s.Broker+"-", cfg.Vehicles, env.log)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Broker, err)
		}
		defer f.close()
		s.fleet = f
	}

	for steps := 0; steps < maxEdgeSteps; steps++ {
		active := false
		for _, s := range searches {
			if s.done {
				continue
			}
			active = true
			st, err := s.step(ctx, cfg)
			if err != nil {
				return res, err
			}
			env.log.Info("edge step", "broker", s.Broker, "offered_msgs_per_s", st.Load.OfferedMsgsPerSec,
				"achieved_msgs_per_s", math.Round(st.Load.AchievedMsgsPerSec), "p99_ms", st.Load.Latency.P99Ms,
				"failed", st.Load.Failed, "sustained", st.Sustained, "reason", st.Reason)
			if err := ctx.Err(); err != nil {
				return res, err
			}
			// Let the broker settle so that one step's tail does not
			// load the next.
			if err := sleepCtx(ctx, time.Second); err != nil {
				return res, err
			}
		}
		if !active {
			break
		}
	}
	if res.Other != nil && res.Other.MaxSustainedMsgsPerSec > 0 {
		res.Ratio = res.Agent.MaxSustainedMsgsPerSec / res.Other.MaxSustainedMsgsPerSec
	}
	return res, nil
}

// step runs the search's next offered rate and chooses the one after it.
func (s *EdgeSearch) step(ctx context.Context, cfg EdgeConfig) (EdgeStep, error) {
	rate := s.next
	var before spoolCounters
	if s.metricsURL != "" {
		var err error
		if before, err = readSpoolCounters(ctx, s.metricsURL); err != nil {
			return EdgeStep{}, err
		}
	}

	load := s.fleet.runFixes(ctx, fixLoad{Rate: rate, Duration: cfg.StepDuration, Batch: cfg.Batch})
	st := EdgeStep{Load: load, Sustained: true}
	if s.metricsURL != "" {
		after, err := readSpoolCounters(ctx, s.metricsURL)
		if err != nil {
			return st, err
		}
		st.Spool = after.since(before)
	}

	switch {
	case load.Vehicles > 0 && load.ConnectionsLost >= int64(load.Vehicles):
		st.Sustained, st.Reason = false, fmt.Sprintf("all %d connections lost, first failure: %s", load.Vehicles, orNone(load.FirstError))
	case load.Sent > 0 && load.Failed >= load.Sent:
		st.Sustained, st.Reason = false, fmt.Sprintf("every message failed (%d), first failure: %s", load.Failed, orNone(load.FirstError))
	case load.Failed > 0:
		st.Sustained, st.Reason = false, fmt.Sprintf("%d messages failed", load.Failed)
	case load.Acked < load.Scheduled:
		st.Sustained, st.Reason = false, fmt.Sprintf("%d of %d messages acked", load.Acked, load.Scheduled)
	case load.AchievedMsgsPerSec < 0.97*rate:
		st.Sustained, st.Reason = false, fmt.Sprintf("achieved %s of %s msg/s", fmtRate(load.AchievedMsgsPerSec), fmtRate(rate))
	case load.Latency.P99Ms > float64(cfg.P99Bound)/float64(time.Millisecond):
		st.Sustained, st.Reason = false, fmt.Sprintf("p99 %s above %s", fmtMs(load.Latency.P99Ms), cfg.P99Bound)
	}

	if !st.Sustained && s.retried < cfg.Retries {
		s.retried++
		st.Retried = true
		s.Steps = append(s.Steps, st)
		return st, nil
	}

	s.retried = 0
	s.Steps = append(s.Steps, st)
	if s.fleet.lost.Load() >= int64(len(s.fleet.vehicles)) {
		// Every vehicle lost its connection: a lower rate would fail the same way.
		s.done = true
		return st, nil
	}
	if st.Sustained {
		s.lo = max(s.lo, rate)
		s.MaxSustainedMsgsPerSec = s.lo
		s.MaxSustainedFixesPerSec = s.lo * float64(cfg.Batch)
	} else if s.hi == 0 || rate < s.hi {
		s.hi = rate
	}
	s.chooseNext(cfg)
	return st, nil
}

// chooseNext ramps up by Factor until a step fails, down by Factor while
// none succeeded, then bisects geometrically Refine times.
func (s *EdgeSearch) chooseNext(cfg EdgeConfig) {
	const minRate = 10
	switch {
	case s.hi == 0:
		next := s.lo * cfg.Factor
		if s.lo >= cfg.MaxRate {
			s.done = true
		}
		s.next = min(next, cfg.MaxRate)
	case s.lo == 0:
		s.next = s.hi / cfg.Factor
		if s.next < minRate {
			s.done = true
		}
	case s.refines > 0 && s.hi/s.lo > 1.05:
		s.next = math.Round(math.Sqrt(s.lo * s.hi))
		s.refines--
	default:
		s.done = true
	}
}

// orNone returns s, or "none recorded" when it is empty.
func orNone(s string) string {
	if s == "" {
		return "none recorded"
	}
	return s
}

// MaxRate is the highest rate any rate flag accepts, per second. It is far
// above what one machine can offer and keeps a schedule's message count
// far within int64.
const MaxRate = 10_000_000

// checkRate validates a rate flag: a finite number above 0 and at most MaxRate.
func checkRate(flagName string, v float64, unit string) error {
	if math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 || v > MaxRate {
		return fmt.Errorf("invalid --%s %v: use a positive number of %s per second, at most %s", flagName, v, unit, fmtRate(MaxRate))
	}
	return nil
}

// checkBatch validates a fixes-per-message flag.
func checkBatch(batch int) error {
	if batch < 1 || batch > 1000 {
		return fmt.Errorf("invalid --batch %d: use 1 to 1000 fixes per message", batch)
	}
	return nil
}
