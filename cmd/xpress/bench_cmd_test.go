package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runXpress runs the command line with an empty environment and returns
// its exit code, stdout and stderr.
func runXpress(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr, func(string) string { return "" })
	return code, stdout.String(), stderr.String()
}

func TestBenchListsScenarios(t *testing.T) {
	code, _, stderr := runXpress(t, "bench")
	if code != 2 {
		t.Errorf("exit code %d, want 2 for a missing scenario", code)
	}
	for _, name := range []string{"edge", "e2e", "sos-latency", "sos-burst", "drain", "fanout", "baseline"} {
		if !strings.Contains(stderr, "  "+name+" ") {
			t.Errorf("usage lacks scenario %s:\n%s", name, stderr)
		}
	}
}

func TestBenchUnknownScenario(t *testing.T) {
	code, _, stderr := runXpress(t, "bench", "nosuch")
	if code != 2 || !strings.Contains(stderr, `unknown scenario "nosuch"`) {
		t.Errorf("exit code %d, stderr %q; want 2 and the unknown scenario named", code, stderr)
	}
}

func TestBenchScenarioHelp(t *testing.T) {
	code, _, stderr := runXpress(t, "bench", "drain", "-h")
	if code != 0 {
		t.Errorf("exit code %d, want 0 for -h", code)
	}
	for _, f := range []string{"-fixes", "-sos-rate", "-database-url", "-json", "-cpuprofile"} {
		if !strings.Contains(stderr, f) {
			t.Errorf("drain -h lacks %s:\n%s", f, stderr)
		}
	}
}

func TestBenchInvalidFlagValue(t *testing.T) {
	code, _, stderr := runXpress(t, "bench", "e2e", "--rate", "-5")
	if code != 1 || !strings.Contains(stderr, "invalid --rate") {
		t.Errorf("exit code %d, stderr %q; want 1 and the invalid rate named", code, stderr)
	}
}

// TestBenchBaselineJSON runs the smallest scenario end to end through the
// command line and checks the JSON report it writes.
func TestBenchBaselineJSON(t *testing.T) {
	jsonPath := filepath.Join(t.TempDir(), "report.json")
	args := []string{"bench", "baseline", "--duration", "300ms", "--json", jsonPath}
	if url := os.Getenv("XPRESS_TEST_DATABASE_URL"); url != "" {
		args = append(args, "--database-url", url)
	}
	code, stdout, stderr := runXpress(t, args...)
	if code != 0 {
		t.Fatalf("exit code %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "one INSERT per fix") {
		t.Errorf("stdout lacks the baseline's figures:\n%s", stdout)
	}
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var report struct {
		Scenario string `json:"scenario"`
		Result   struct {
			Inserted int64 `json:"inserted"`
			Failed   int64 `json:"failed"`
		} `json:"result"`
		Complete    bool     `json:"complete"`
		Interrupted bool     `json:"interrupted"`
		Problems    []string `json:"problems"`
	}
	if err := json.Unmarshal(data, &report); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, data)
	}
	if report.Scenario != "baseline" || report.Result.Inserted == 0 || report.Result.Failed != 0 {
		t.Errorf("report has scenario %q, %d inserted, %d failed; want baseline with inserts and no failures",
			report.Scenario, report.Result.Inserted, report.Result.Failed)
	}
	if !report.Complete || report.Interrupted || len(report.Problems) != 0 {
		t.Errorf("report has complete %v, interrupted %v, problems %q; want a complete run", report.Complete, report.Interrupted, report.Problems)
	}
}

// TestBenchRejectsBadRates checks that non-finite, absurd and otherwise
// invalid values fail before anything starts, naming their flag.
func TestBenchRejectsBadRates(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"e2e", "--rate", "Inf"}, "invalid --rate"},
		{[]string{"e2e", "--rate", "1e12"}, "invalid --rate"},
		{[]string{"e2e", "--rate", "NaN"}, "invalid --rate"},
		{[]string{"e2e", "--rate", "1", "--duration", "10ms"}, "schedules no message"},
		{[]string{"e2e", "--settle-timeout", "-1s"}, "invalid --settle-timeout"},
		{[]string{"e2e", "--baseline-duration", "-1s"}, "invalid --baseline-duration"},
		{[]string{"e2e", "--baseline-workers", "0"}, "invalid --baseline-workers"},
		{[]string{"edge", "--max-rate", "Inf"}, "invalid --max-rate"},
		{[]string{"edge", "--start-rate", "-Inf"}, "invalid --start-rate"},
		{[]string{"edge", "--spool-commit-interval", "2s"}, "invalid --spool-commit-interval"},
		{[]string{"drain", "--fill-rate", "Inf"}, "invalid --fill-rate"},
		{[]string{"drain", "--sos-rate", "Inf"}, "invalid --sos-rate"},
	} {
		code, _, stderr := runXpress(t, append([]string{"bench"}, tc.args...)...)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("bench %v: exit code %d, stderr %q; want 1 and %q", tc.args, code, stderr, tc.want)
		}
	}
}

// TestBenchBadOutputPathsFailAtOnce checks that --json and --memprofile
// files are created before the run, so a bad path fails before it starts
// (the run here would otherwise need PostgreSQL and take its duration).
func TestBenchBadOutputPathsFailAtOnce(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "no-such-dir", "out")
	for _, f := range []string{"--json", "--memprofile"} {
		code, stdout, stderr := runXpress(t, "bench", "baseline", "--duration", "1h", "--database-url", "postgres://nobody@127.0.0.1:1/none", f, bad)
		if code != 1 || !strings.Contains(stderr, "no-such-dir") || stdout != "" {
			t.Errorf("%s %s: exit code %d, stdout %q, stderr %q; want 1 and the path named before any run", f, bad, code, stdout, stderr)
		}
	}
}
