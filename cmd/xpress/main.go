// Command xpress runs the parts of Xpress Ops Tower: the hub, a regional
// agent, the vehicle simulator, and helpers. Every flag has an XPRESS_*
// environment twin: --database-url is also XPRESS_DATABASE_URL.
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
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// command is one subcommand of xpress.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, env env) error
}

// env is the process environment a command runs in.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

func commands() []command {
	return []command{
		{"hub", "run the central hub: agent ingest, storage, API and dashboard", runHub},
		{"agent", "run a regional agent: vehicle MQTT broker, spool and uplink to the hub", runAgent},
		{"sim", "simulate vehicles publishing fixes and SOS alerts over MQTT", runSim},
		{"dev", "run hub, one agent and the simulator in one process", runDev},
		{"bench", "run a load scenario against a tower it starts on loopback", runBench},
		{"migrate", "apply the PostgreSQL schema migrations and exit", runMigrate},
		{"admin", "manage agent and vehicle credentials, operators and API tokens through the hub's admin API", runAdmin},
		{"version", "print the version and exit", runVersion},
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	e := env{stdout: stdout, stderr: stderr, getenv: getenv}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], e)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			return 2
		default:
			fmt.Fprintf(stderr, "xpress %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "xpress: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: xpress <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every flag can also be set in the environment: --http-addr is XPRESS_HTTP_ADDR.")
	fmt.Fprintln(w, "Run 'xpress <command> -h' for a command's flags.")
}
