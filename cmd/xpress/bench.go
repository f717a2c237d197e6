package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

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

	report, runErr := bench.Run(ctx, scenario, run, opts, prof, args[1:])
	if report != nil && report.Result != nil {
		if jsonPath != "-" {
			report.Print(e.stdout)
		}
		if jsonPath != "" {
			if err := report.WriteJSON(jsonPath, e.stdout); err != nil {
				return errors.Join(runErr, err)
			}
		}
	}
	return runErr
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
	fmt.Fprintln(w, "Run 'xpress bench <scenario> -h' for a scenario's flags. docs/benchmarks.md has the method and results.")
}
