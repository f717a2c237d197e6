package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/internal/pgtest"
)

// xpressBin is the xpress binary built once for the fanout scenario's hub subprocess.
var xpressBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "xpress-bench-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "create temp dir:", err)
		os.Exit(1)
	}
	xpressBin = filepath.Join(dir, "xpress")
	build := exec.Command("go", "build", "-race", "-o", xpressBin, "../cmd/xpress")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build xpress:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testOptions points the scenarios at the test PostgreSQL server and the
// built binary, logging to the test output with -v.
func testOptions(t *testing.T) Options {
	t.Helper()
	dbURL := os.Getenv(pgtest.EnvURL)
	if dbURL == "" {
		dbURL = DefaultDatabaseURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := execServer(ctx, dbURL, "SELECT 1"); err != nil {
		t.Fatalf("PostgreSQL at %s: %v\nStart PostgreSQL (pg_ctlcluster 15 main start) or set %s.", redactURL(dbURL), err, pgtest.EnvURL)
	}
	opts := Options{DatabaseURL: dbURL, Exe: xpressBin}
	if testing.Verbose() {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("test", t.Name())
		opts.ComponentLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("test", t.Name())
	}
	return opts
}

// startMosquitto runs a Mosquitto of its own on a free loopback port, so
// the edge scenario has its comparison broker without the system one.
func startMosquitto(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
			if _, serr := os.Stat(p); serr == nil {
				bin, err = p, nil
			}
		}
	}
	if err != nil {
		t.Fatalf("the edge scenario compares with Mosquitto, which is not installed: apt-get install mosquitto")
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	ln.Close()
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	text := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n", addr.Port)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(bin, "-c", conf)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start mosquitto: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})

	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr.String(), time.Second)
		if err == nil {
			c.Close()
			return "tcp://" + addr.String()
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto did not listen on %s within 10s: %v\n%s", addr, err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runScenario runs a scenario through its flags, as xpress bench does,
// and checks that the report prints and encodes as JSON.
func runScenario(t *testing.T, name string, opts Options, args ...string) *Report {
	t.Helper()
	s, ok := Lookup(name)
	if !ok {
		t.Fatalf("scenario %q not found", name)
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	run := s.Setup(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("flags %v: %v", args, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, s, run, opts, Profiles{}, args)
	if err != nil {
		t.Fatalf("run %s: %v", name, err)
	}
	if rep.Result == nil {
		t.Fatalf("run %s returned no result", name)
	}

	var text strings.Builder
	rep.Print(&text)
	t.Logf("%s report:\n%s", name, text.String())
	if !strings.Contains(text.String(), "scenario "+name) {
		t.Errorf("printed report lacks its scenario line:\n%s", text.String())
	}
	var buf bytes.Buffer
	if err := rep.WriteJSON(&buf); err != nil {
		t.Fatalf("write JSON: %v", err)
	}
	var decoded map[string]any
	if err := json.Unmarshal(buf.Bytes(), &decoded); err != nil {
		t.Fatalf("report JSON does not decode: %v", err)
	}
	if decoded["scenario"] != name || decoded["result"] == nil {
		t.Errorf("report JSON has scenario %v and result %v, want %q and a result", decoded["scenario"], decoded["result"] != nil, name)
	}
	if rep.Machine.CPUs < 1 {
		t.Errorf("machine CPUs = %d", rep.Machine.CPUs)
	}
	if !rep.Complete || rep.Interrupted || rep.Incomplete() != "" {
		t.Errorf("run %s: complete %v, interrupted %v, %q; want a complete run", name, rep.Complete, rep.Interrupted, rep.Incomplete())
	}
	for _, tg := range rep.Targets {
		if tg.Verdict == "" || (tg.NotAtSize && (tg.Met || tg.Verdict != VerdictNotAtSize)) {
			t.Errorf("target %s: verdict %q, met %v, not at size %v", tg.Name, tg.Verdict, tg.Met, tg.NotAtSize)
		}
	}
	return rep
}

// checkLoad checks that every scheduled message was sent and acknowledged.
func checkLoad(t *testing.T, what string, l LoadResult) {
	t.Helper()
	if l.Scheduled == 0 {
		t.Errorf("%s: nothing scheduled", what)
	}
	if l.Sent != l.Scheduled || l.Acked != l.Scheduled || l.Failed != 0 {
		t.Errorf("%s: %d scheduled, %d sent, %d acked, %d failed (%s); want all sent and acked",
			what, l.Scheduled, l.Sent, l.Acked, l.Failed, l.FirstError)
	}
	if l.FixesAcked != l.Acked*int64(l.FixesPerMessage) {
		t.Errorf("%s: %d fixes acked for %d messages of %d", what, l.FixesAcked, l.Acked, l.FixesPerMessage)
	}
	if l.Latency.Count != l.Acked {
		t.Errorf("%s: %d latency samples for %d acked messages", what, l.Latency.Count, l.Acked)
	}
	if l.ConnectionsLost != 0 {
		t.Errorf("%s: %d connections lost", what, l.ConnectionsLost)
	}
}

// checkSOS checks that every SOS sent was acknowledged and seen opening.
func checkSOS(t *testing.T, what string, f SOSFigures, incidents int64) {
	t.Helper()
	if f.Failed != 0 || f.Acked != f.Sent || f.Seen != f.Sent || f.Missing != 0 {
		t.Errorf("%s: %d sent, %d acked, %d failed, %d seen, %d missing (%s); want all acked and seen",
			what, f.Sent, f.Acked, f.Failed, f.Seen, f.Missing, f.FirstError)
	}
	if f.OpenedLatency.Count != int64(f.Seen) || f.PubackLatency.Count != int64(f.Acked) {
		t.Errorf("%s: %d opened and %d PUBACK samples for %d seen and %d acked",
			what, f.OpenedLatency.Count, f.PubackLatency.Count, f.Seen, f.Acked)
	}
	if incidents != int64(f.Sent) {
		t.Errorf("%s: %d incidents stored for %d SOS sent", what, incidents, f.Sent)
	}
}

// TestScenariosSmoke runs every scenario at a tiny size and checks that
// the counts in its report add up. It asserts no speed: that is what the
// scenarios measure at full size.
func TestScenariosSmoke(t *testing.T) {
	opts := testOptions(t)

	t.Run("edge", func(t *testing.T) {
		mosquitto := startMosquitto(t)
		rep := runScenario(t, "edge", opts, "--mosquitto", mosquitto, "--vehicles", "4",
			"--start-rate", "100", "--max-rate", "200", "--factor", "2", "--refine", "0",
			"--step-duration", "500ms", "--p99-bound", "1m")
		r := rep.Result.(*EdgeResult)
		for _, s := range []*EdgeSearch{r.Agent, r.Other} {
			if s == nil {
				t.Fatal("edge result lacks a broker's search")
			}
			if len(s.Steps) == 0 {
				t.Errorf("%s: no steps", s.Broker)
			}
			for _, st := range s.Steps {
				checkLoad(t, fmt.Sprintf("%s at %v msg/s", s.Broker, st.Load.OfferedMsgsPerSec), st.Load)
			}
		}
		if r.Other.MaxSustainedMsgsPerSec > 0 && r.Ratio != r.Agent.MaxSustainedMsgsPerSec/r.Other.MaxSustainedMsgsPerSec {
			t.Errorf("ratio %v does not match %v / %v", r.Ratio, r.Agent.MaxSustainedMsgsPerSec, r.Other.MaxSustainedMsgsPerSec)
		}
		if len(rep.Targets) != 1 {
			t.Errorf("%d targets, want the edge ratio", len(rep.Targets))
		}
	})

	// Two edge runs at once against one Mosquitto: with client ids shared
	// between runs, Mosquitto would hand each vehicle's session to the
	// newer run and drop the older run's connections.
	t.Run("edge twice at once", func(t *testing.T) {
		mosquitto := startMosquitto(t)
		args := []string{"--mosquitto", mosquitto, "--vehicles", "4", "--start-rate", "100", "--max-rate", "100",
			"--refine", "0", "--step-duration", "1s", "--p99-bound", "1m"}
		reps := make([]*Report, 2)
		var wg sync.WaitGroup
		for i := range reps {
			wg.Go(func() { reps[i] = runScenario(t, "edge", opts, args...) })
		}
		wg.Wait()
		for i, rep := range reps {
			if rep == nil {
				continue
			}
			for _, st := range rep.Result.(*EdgeResult).Other.Steps {
				checkLoad(t, fmt.Sprintf("run %d, mosquitto at %v msg/s", i, st.Load.OfferedMsgsPerSec), st.Load)
			}
		}
	})

	t.Run("edge agent subprocess", func(t *testing.T) {
		rep := runScenario(t, "edge", opts, "--mosquitto", "", "--agent-subprocess", "--vehicles", "4",
			"--start-rate", "100", "--max-rate", "100", "--step-duration", "500ms", "--p99-bound", "1m")
		r := rep.Result.(*EdgeResult)
		if r.Other != nil || len(rep.Targets) != 0 {
			t.Errorf("without --mosquitto the result has a comparison %+v and %d targets", r.Other, len(rep.Targets))
		}
		if len(r.Agent.Steps) == 0 {
			t.Fatal("agent: no steps")
		}
		for _, st := range r.Agent.Steps {
			checkLoad(t, fmt.Sprintf("agent subprocess at %v msg/s", st.Load.OfferedMsgsPerSec), st.Load)
			if st.Spool == nil || st.Spool.Commits == 0 {
				t.Errorf("step at %v msg/s has no spool commits from the agent's /metrics: %+v", st.Load.OfferedMsgsPerSec, st.Spool)
			}
		}
	})

	t.Run("e2e", func(t *testing.T) {
		rep := runScenario(t, "e2e", opts, "--vehicles", "10", "--rate", "200", "--duration", "2s",
			"--sample-interval", "200ms", "--baseline-duration", "1s")
		r := rep.Result.(*E2EResult)
		checkLoad(t, "e2e load", r.Load)
		if r.Load.FixesAcked != 400 {
			t.Errorf("%d fixes acked, want 400 (200/s for 2s)", r.Load.FixesAcked)
		}
		if r.RowsInTable != r.Load.FixesAcked {
			t.Errorf("%d rows in fixes for %d acked fixes", r.RowsInTable, r.Load.FixesAcked)
		}
		if len(r.Samples) < 2 {
			t.Errorf("%d backlog samples, want several", len(r.Samples))
		}
		if last := r.Samples[len(r.Samples)-1]; last.Backlog != 0 || last.Committed != r.Load.FixesAcked {
			t.Errorf("last sample %+v, want an empty backlog and %d committed", last, r.Load.FixesAcked)
		}
		if r.Baseline == nil || r.Baseline.Inserted == 0 || r.Baseline.Failed != 0 {
			t.Fatalf("baseline = %+v, want inserts without failures", r.Baseline)
		}
		if r.Ratio <= 0 {
			t.Errorf("ratio = %v, want the e2e rate over the baseline's", r.Ratio)
		}
		if len(rep.Targets) != 2 {
			t.Errorf("%d targets, want e2e and the baseline ratio", len(rep.Targets))
		}
	})

	t.Run("sos-latency", func(t *testing.T) {
		rep := runScenario(t, "sos-latency", opts, "--vehicles", "5", "--rate", "100", "--duration", "3s",
			"--sos", "20", "--warmup", "500ms")
		r := rep.Result.(*SOSLatencyResult)
		checkLoad(t, "fix load", r.Load)
		if r.SOS.Planned != 20 || r.SOS.Sent != 20 {
			t.Errorf("%d SOS planned, %d sent, want 20", r.SOS.Planned, r.SOS.Sent)
		}
		checkSOS(t, "sos", r.SOS, r.Incidents)
	})

	t.Run("sos-burst", func(t *testing.T) {
		rep := runScenario(t, "sos-burst", opts, "--vehicles", "100", "--window", "1s")
		r := rep.Result.(*SOSBurstResult)
		if r.SOS.Sent != 100 {
			t.Errorf("%d SOS sent, want 100", r.SOS.Sent)
		}
		checkSOS(t, "burst", r.SOS, r.Incidents)
		if r.FirstError != "" || r.StoredAfterLastPublishSeconds < 0 {
			t.Errorf("incidents table never held them all: %s", r.FirstError)
		}
	})

	t.Run("drain", func(t *testing.T) {
		rep := runScenario(t, "drain", opts, "--fixes", "2000", "--vehicles", "5", "--batch", "10",
			"--fill-rate", "4000", "--sos", "10", "--sos-rate", "20")
		r := rep.Result.(*DrainResult)
		checkLoad(t, "fill", r.Fill)
		if r.Backlog != 2000 || r.RowsInTable != 2000 {
			t.Errorf("backlog %d, rows %d; want 2000 of each", r.Backlog, r.RowsInTable)
		}
		if r.DrainSeconds <= 0 || r.DrainFixesPerSec <= 0 {
			t.Errorf("drain took %vs at %v fixes/s", r.DrainSeconds, r.DrainFixesPerSec)
		}
		// How many SOS go out depends on how long the drain takes.
		if r.SOS.Sent > 10 {
			t.Errorf("%d SOS sent, at most 10 planned", r.SOS.Sent)
		}
		checkSOS(t, "sos during drain", r.SOS, r.Incidents)
	})

	t.Run("fanout", func(t *testing.T) {
		rep := runScenario(t, "fanout", opts, "--clients", "50", "--source-addrs", "2", "--settle", "200ms")
		r := rep.Result.(*FanoutResult)
		if r.Connected != 50 || r.HubClients != 50 {
			t.Errorf("%d connected, the hub counts %v; want 50", r.Connected, r.HubClients)
		}
		if r.Received != 50 || r.Missing != 0 || r.Closed != 0 || r.Delivery.Count != 50 {
			t.Errorf("%d received, %d missing, %d closed, %d samples; want all 50 received (%s)",
				r.Received, r.Missing, r.Closed, r.Delivery.Count, r.FirstError)
		}
		if r.Before.RSSBytes <= 0 || r.After.RSSBytes <= 0 || r.After.Goroutines <= r.Before.Goroutines {
			t.Errorf("hub memory before %+v and after %+v, want readings with more goroutines after", r.Before, r.After)
		}
	})

	t.Run("baseline", func(t *testing.T) {
		rep := runScenario(t, "baseline", opts, "--duration", "1s", "--workers", "2")
		r := rep.Result.(*BaselineResult)
		if r.Inserted == 0 || r.Failed != 0 {
			t.Errorf("%d inserted, %d failed (%s); want inserts without failures", r.Inserted, r.Failed, r.FirstError)
		}
		// An insert cut off by the deadline may still have committed.
		if r.RowsInTable < r.Inserted || r.RowsInTable > r.Inserted+2 {
			t.Errorf("%d rows for %d inserts by 2 workers", r.RowsInTable, r.Inserted)
		}
	})
}

func TestScenarioFlagErrors(t *testing.T) {
	for _, c := range []struct {
		scenario string
		args     []string
		want     string
	}{
		{"edge", []string{"--factor", "1"}, "invalid --factor"},
		{"e2e", []string{"--rate", "0"}, "invalid --rate"},
		{"sos-latency", []string{"--warmup", "1m", "--duration", "10s"}, "invalid --warmup"},
		{"sos-burst", []string{"--vehicles", "0"}, "invalid --vehicles"},
		{"drain", []string{"--batch", "1001"}, "invalid --batch"},
		{"fanout", []string{"--source-addrs", "300"}, "invalid --source-addrs"},
		{"baseline", []string{"--workers", "0"}, "invalid --workers"},
	} {
		s, _ := Lookup(c.scenario)
		fs := flag.NewFlagSet(c.scenario, flag.ContinueOnError)
		run := s.Setup(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatalf("%s %v: %v", c.scenario, c.args, err)
		}
		_, err := run(context.Background(), Options{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %v: error %v, want one containing %q", c.scenario, c.args, err, c.want)
		}
	}
}
