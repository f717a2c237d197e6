package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"
)

// RunFunc runs a scenario with the flag values parsed into its configuration.
type RunFunc func(ctx context.Context, opts Options) (Result, error)

// Scenario is one scenario of xpress bench.
type Scenario struct {
	Name    string
	Summary string
	// Setup registers the scenario's flags with their defaults on fs and
	// returns the function that runs it with the values parsed later.
	Setup func(fs *flag.FlagSet) RunFunc
}

// Scenarios returns every scenario in the order the documentation lists them.
func Scenarios() []Scenario {
	return []Scenario{
		{"edge", "fixes/s one agent accepts durably (QoS 1, PUBACK after fsync), against Mosquitto", func(fs *flag.FlagSet) RunFunc {
			cfg := DefaultEdgeConfig()
			cfg.RegisterFlags(fs)
			return func(ctx context.Context, opts Options) (Result, error) { return asResult(RunEdge(ctx, cfg, opts)) }
		}},
		{"e2e", "fixes/s from vehicles through agent and hub into PostgreSQL, sustained", func(fs *flag.FlagSet) RunFunc {
			cfg := DefaultE2EConfig()
			cfg.RegisterFlags(fs)
			return func(ctx context.Context, opts Options) (Result, error) { return asResult(RunE2E(ctx, cfg, opts)) }
		}},
		{"sos-latency", "SOS publish → incident.opened on an operator WebSocket, under e2e load", func(fs *flag.FlagSet) RunFunc {
			cfg := DefaultSOSLatencyConfig()
			cfg.RegisterFlags(fs)
			return func(ctx context.Context, opts Options) (Result, error) {
				return asResult(RunSOSLatency(ctx, cfg, opts))
			}
		}},
		{"sos-burst", "N SOS from N vehicles within one second: time until all are stored and seen", func(fs *flag.FlagSet) RunFunc {
			cfg := DefaultSOSBurstConfig()
			cfg.RegisterFlags(fs)
			return func(ctx context.Context, opts Options) (Result, error) { return asResult(RunSOSBurst(ctx, cfg, opts)) }
		}},
		{"drain", "a backlog of N fixes drained into a hub that was down, with SOS latency meanwhile", func(fs *flag.FlagSet) RunFunc {
			cfg := DefaultDrainConfig()
			cfg.RegisterFlags(fs)
			return func(ctx context.Context, opts Options) (Result, error) { return asResult(RunDrain(ctx, cfg, opts)) }
		}},
		{"fanout", "N operator WebSockets and one incident: delivery time and hub memory per connection", func(fs *flag.FlagSet) RunFunc {
			cfg := DefaultFanoutConfig()
			cfg.RegisterFlags(fs)
			return func(ctx context.Context, opts Options) (Result, error) { return asResult(RunFanout(ctx, cfg, opts)) }
		}},
		{"baseline", "one INSERT per fix into PostgreSQL, the naive writer e2e is compared with", func(fs *flag.FlagSet) RunFunc {
			cfg := DefaultBaselineConfig()
			cfg.RegisterFlags(fs)
			return func(ctx context.Context, opts Options) (Result, error) { return asResult(RunBaseline(ctx, cfg, opts)) }
		}},
	}
}

// Lookup returns the scenario with the given name.
func Lookup(name string) (Scenario, bool) {
	for _, s := range Scenarios() {
		if s.Name == name {
			return s, true
		}
	}
	return Scenario{}, false
}

// asResult turns a scenario's typed result into a Result, keeping a nil
// pointer nil.
func asResult[R interface {
	Result
	comparable
}](r R, err error) (Result, error) {
	var zero R
	if r == zero {
		return nil, err
	}
	return r, err
}

// Profiles names the files of the profiles Run writes; empty writes none.
type Profiles struct {
	// CPU covers the whole run, setup included.
	CPU string
	// Heap is written when the scenario ends.
	Heap string
}

// RegisterFlags registers the profile flags on fs.
func (p *Profiles) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&p.CPU, "cpuprofile", "", "write a CPU profile of this process, with the in-process hub and agents, to this file; a hub or agent subprocess writes its own to this file name plus .hub or .agent")
	fs.StringVar(&p.Heap, "memprofile", "", "write a heap profile of this process to this file when the scenario ends")
}

// Run runs a scenario and returns its report. The report is returned
// with whatever was measured also when the scenario fails.
func Run(ctx context.Context, s Scenario, run RunFunc, opts Options, prof Profiles, args []string) (*Report, error) {
	rep := &Report{Scenario: s.Name, Started: time.Now().UTC(), Machine: readMachine(), Args: args}
	if prof.CPU != "" {
		f, err := os.Create(prof.CPU)
		if err != nil {
			return nil, fmt.Errorf("create CPU profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, fmt.Errorf("start CPU profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	// Create the heap profile's file now, so that a bad path fails before
	// the run rather than after it.
	var heap *os.File
	if prof.Heap != "" {
		var err error
		if heap, err = os.Create(prof.Heap); err != nil {
			return nil, fmt.Errorf("create heap profile: %w", err)
		}
		defer heap.Close()
	}

	opts.cpuProfile = prof.CPU
	res, err := run(ctx, opts)
	rep.ElapsedSeconds = time.Since(rep.Started).Seconds()
	rep.Interrupted = ctx.Err() != nil
	if res != nil {
		rep.Result = res
		rep.Targets = res.Targets()
		if !rep.Interrupted {
			// The counts of an interrupted run do not add up by design.
			rep.Problems = res.Problems()
		}
	}
	rep.setVerdicts()
	rep.Complete = err == nil && !rep.Interrupted && res != nil && len(rep.Problems) == 0

	if heap != nil {
		if herr := writeHeapProfile(heap); herr != nil && err == nil {
			err = herr
		}
	}
	return rep, err
}

// Incomplete reports why a run that returned no error still does not
// count as complete, or "" when it does. The bench command exits 1 when
// it is not empty.
func (r *Report) Incomplete() string {
	switch {
	case r.Interrupted:
		return "the run was interrupted"
	case r.Result == nil:
		return "the run produced no result"
	case len(r.Problems) > 0:
		return "the counts do not add up: " + strings.Join(r.Problems, "; ")
	}
	return ""
}

func writeHeapProfile(f *os.File) error {
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		return fmt.Errorf("write heap profile: %w", err)
	}
	return nil
}
