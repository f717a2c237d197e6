package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/xpress-ops/tower/bench"
)

// runBench runs one scenario of the load tool: xpress bench <scenario> [flags].
func runBench(ctx context.Context, args []string, e env) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		benchUsage(e.stderr)
		if len(args) == 0 {
			return errUsage
		}
		return flag.ErrHelp
	}
	scenario, ok := bench.Lookup(args[0])
	if !ok {
		fmt.Fprintf(e.stderr, "xpress bench: unknown scenario %q\n\n", args[0])
		benchUsage(e.stderr)
		return errUsage
	}

	fs := flag.NewFlagSet("bench "+scenario.Name, flag.ContinueOnError)
	var opts bench.Options
	var prof bench.Profiles
	var lf logFlags
	var componentLevel, jsonPath string
	opts.RegisterFlags(fs)
	prof.RegisterFlags(fs)
	lf.register(fs)
	fs.StringVar(&componentLevel, "component-log-level", "warn", "log level of the hub and agents the scenario starts: debug, info, warn or error")
	fs.StringVar(&jsonPath, "json", "", "also write the report as JSON to this file; - writes only JSON, to stdout")
	run := scenario.Setup(fs)
	if err := parseFlags(fs, args[1:], e); err != nil {
		return err
	}
	log, err := lf.logger(e)
	if err != nil {
		return err
	}
	componentFlags := lf
	componentFlags.level = componentLevel
	componentLog, err := componentFlags.logger(e)
	if err != nil {
		return fmt.Errorf("invalid --component-log-level %q: use debug, info, warn or error", componentLevel)
	}
	opts.Logger, opts.ComponentLogger = log, componentLog

	// With SIGPIPE caught, a write to a closed pipe (xpress bench ... | head)
	// returns EPIPE instead of killing the process, so the run still drops
	// its database and removes its directory.
	pipe := make(chan os.Signal, 1)
	signal.Notify(pipe, syscall.SIGPIPE)
	defer signal.Stop(pipe)

	// Create the JSON file now, so that a bad path fails before the run.
	var jsonOut io.Writer
	switch jsonPath {
	case "":
	case "-":
		jsonOut = e.stdout
	default:
		f, err := os.Create(jsonPath)
		if err != nil {
			return fmt.Errorf("create --json file: %w", err)
		}
		defer f.Close()
		jsonOut = f
	}

	report, runErr := bench.Run(ctx, scenario, run, opts, prof, args[1:])
	if report != nil && report.Result != nil {
		if jsonPath != "-" {
			report.Print(e.stdout)
		}
		if jsonOut != nil {
			if err := report.WriteJSON(jsonOut); err != nil {
				return errors.Join(runErr, err)
			}
		}
	}
	if runErr != nil {
		return runErr
	}
	// Exit 1 when the counts do not add up or the run was interrupted;
	// a missed speed target alone still exits 0.
	if report != nil {
		if reason := report.Incomplete(); reason != "" {
			return fmt.Errorf("incomplete run: %s", reason)
		}
	}
	return nil
}

func benchUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: xpress bench <scenario> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Each scenario starts what it needs on loopback and reports latency percentiles,")
	fmt.Fprintln(w, "rates, failures and the speed targets met. Scenarios:")
	for _, s := range bench.Scenarios() {
		fmt.Fprintf(w, "  %-12s %s\n", s.Name, s.Summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Exit status: 0 when the run completed and every count adds up (a missed speed")
	fmt.Fprintln(w, "target is reported, not a failure); 1 when it failed, was interrupted, or lost")
	fmt.Fprintln(w, "messages, SOS, incidents or deliveries.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'xpress bench <scenario> -h' for a scenario's flags. docs/benchmarks.md has the method and results.")
}
