package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/xpress-ops/tower/internal/configcheck"
)

// secretFlags may also be read from a file named by XPRESS_<FLAG>_FILE,
// so a password never has to appear in a flag or in the environment.
var secretFlags = map[string]bool{"database-url": true, "redis-url": true}

// errUsage means the flags were wrong; the flag package already printed why.
var errUsage = errors.New("usage error")

// envName returns the environment twin of a flag: "database-url" becomes
// "XPRESS_DATABASE_URL".
func envName(flagName string) string {
	return "XPRESS_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// flagLabel names a flag and its environment twin for messages:
// "--uplink-ack-timeout (XPRESS_UPLINK_ACK_TIMEOUT)".
func flagLabel(name string) string {
	return "--" + name + " (" + envName(name) + ")"
}

// renameToFlags renames the configcheck.FieldErrors in err, named by Go
// config fields, to the flags that set those fields (flagOf maps a field
// to its flag), so a user reads the flag they typed or its XPRESS_* twin.
func renameToFlags(err error, flagOf map[string]string) error {
	return configcheck.Rename(err, func(field string) (string, bool) {
		name, ok := flagOf[field]
		if !ok {
			return "", false
		}
		return flagLabel(name), true
	})
}

// splitList splits a comma-separated flag value and drops empty items.
func splitList(list string) []string {
	var items []string
	for _, item := range strings.Split(list, ",") {
		if item = strings.TrimSpace(item); item != "" {
			items = append(items, item)
		}
	}
	return items
}

// parseFlags parses args, then fills every flag not given on the command
// line from its XPRESS_* environment twin. A flag beats the environment.
func parseFlags(fs *flag.FlagSet, args []string, e env) error {
	fs.SetOutput(e.stderr)
	defaultUsage := fs.Usage
	fs.Usage = func() {
		defaultUsage()
		fmt.Fprintln(e.stderr, "\nEach flag can also be set as XPRESS_<FLAG>, for example --http-addr as XPRESS_HTTP_ADDR.")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		if v := e.getenv(envName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				shown := fmt.Sprintf("%q", v)
				if secretFlags[f.Name] {
					shown = "(value hidden)"
				}
				errs = append(errs, fmt.Errorf("invalid %s=%s: %v; expected %s like the default %q",
					envName(f.Name), shown, err, flagKind(f), f.DefValue))
			}
			return
		}
		if path := e.getenv(envName(f.Name) + "_FILE"); path != "" && secretFlags[f.Name] {
			v, err := readSecretFile(path)
			if err == nil {
				err = fs.Set(f.Name, v)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s_FILE: %w", envName(f.Name), err))
			}
		}
	})
	return errors.Join(errs...)
}

// readSecretFile reads a secret from a file that only its owner may read.
func readSecretFile(path string) (string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("secret file %s has mode %04o, readable by group or others: run chmod 600 %s", path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

// logFlags are the logging flags every long-running command shares.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&l.format, "log-format", "text", "log format: text or json")
}

// logger builds the process logger from the flags.
func (l *logFlags) logger(e env) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q: use debug, info, warn or error", l.level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(e.stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(e.stderr, opts)), nil
	default:
		return nil, fmt.Errorf("invalid --log-format %q: use text or json", l.format)
	}
}

// setDefault changes a registered flag's default value. Unlike fs.Set it
// does not count as given, so the environment twin still applies.
func setDefault(fs *flag.FlagSet, name, value string) {
	f := fs.Lookup(name)
	if err := f.Value.Set(value); err != nil {
		panic(fmt.Sprintf("default %q of flag %s: %v", value, name, err))
	}
	f.DefValue = value
}

// flagKind names the type of value a flag takes, for error messages.
func flagKind(f *flag.Flag) string {
	switch f.Value.(flag.Getter).Get().(type) {
	case bool:
		return "true or false"
	case int, int64, uint, uint64:
		return "a whole number"
	case float64:
		return "a number"
	case time.Duration:
		return "a duration such as 30s or 10m"
	default:
		return "a value"
	}
}
