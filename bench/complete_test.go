package bench

import (
	"context"
	"strings"
	"testing"
	"time"
)

// burstResult is a sos-burst outcome at the target's size with the given
// counts and times after the last publish.
func burstResult(stored int64, seen int, storedAfter, seenAfter float64, firstErr string) *SOSBurstResult {
	return &SOSBurstResult{
		Config: SOSBurstConfig{Vehicles: 10_000, Window: time.Second, Timeout: time.Minute},
		SOS: SOSFigures{Planned: 10_000, Sent: 10_000, Acked: 10_000, Seen: seen, Missing: 10_000 - seen,
			PubackLatency: Latency{Count: 10_000}},
		StoredAfterLastPublishSeconds: storedAfter,
		SeenAfterLastPublishSeconds:   seenAfter,
		Incidents:                     stored,
		FirstError:                    firstErr,
	}
}

// TestSOSBurstPartialNeverMet covers a burst whose stored-count
// wait ran out: its -1 placeholder must not pass the target, and the run
// must not count as complete.
func TestSOSBurstPartialNeverMet(t *testing.T) {
	for name, r := range map[string]*SOSBurstResult{
		"not all stored": burstResult(9_950, 10_000, -1, 0.2, "9950 of 10000 incidents stored: context deadline exceeded"),
		"not all seen":   burstResult(10_000, 9_000, 0.2, -1, ""),
	} {
		tg := r.Targets()
		if len(tg) != 1 || tg[0].Met || tg[0].NotAtSize {
			t.Errorf("%s: targets %+v, want one missed target", name, tg)
		}
		if len(r.Problems()) == 0 {
			t.Errorf("%s: no problems reported", name)
		}
	}
	ok := burstResult(10_000, 10_000, 0.2, 0.3, "")
	if tg := ok.Targets(); !tg[0].Met || len(ok.Problems()) != 0 {
		t.Errorf("complete burst: targets %+v, problems %q; want met and none", tg, ok.Problems())
	}
	small := burstResult(10_000, 10_000, 0.2, 0.3, "")
	small.Config.Vehicles = 3000
	if tg := small.Targets(); tg[0].Met || !tg[0].NotAtSize {
		t.Errorf("burst of 3000: target %+v, want not measured at the target's size", tg[0])
	}
}

// TestRunIncompleteAndInterrupted checks the verdicts and the
// completeness that decide the bench command's exit code.
func TestRunIncompleteAndInterrupted(t *testing.T) {
	s := Scenario{Name: "sos-burst"}
	lost := func(context.Context, Options) (Result, error) {
		return burstResult(9_950, 10_000, -1, 0.2, "9950 of 10000 incidents stored"), nil
	}
	rep, err := Run(context.Background(), s, lost, Options{}, Profiles{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Complete || !strings.Contains(rep.Incomplete(), "9950 of 10000 incidents stored") {
		t.Errorf("complete %v, incomplete %q; want an incomplete run naming the incidents", rep.Complete, rep.Incomplete())
	}
	if rep.Targets[0].Verdict != VerdictMissed {
		t.Errorf("verdict %q, want %q", rep.Targets[0].Verdict, VerdictMissed)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	whole := func(context.Context, Options) (Result, error) { return burstResult(10_000, 10_000, 0.2, 0.3, ""), nil }
	rep, err = Run(ctx, s, whole, Options{}, Profiles{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	rep.Print(&out)
	if !rep.Interrupted || rep.Complete || rep.Targets[0].Met || rep.Targets[0].Verdict != VerdictInterrupted ||
		!strings.Contains(out.String(), "interrupted: the figures below cover only part of the run") ||
		!strings.Contains(out.String(), ": "+VerdictInterrupted) {
		t.Errorf("interrupted run: interrupted %v, complete %v, targets %+v, printed:\n%s", rep.Interrupted, rep.Complete, rep.Targets, out.String())
	}
}

func TestPluralInReports(t *testing.T) {
	var out strings.Builder
	LoadResult{FixesPerMessage: 1, Vehicles: 1}.Print(&out, "")
	(&BaselineResult{Config: BaselineConfig{Workers: 1}}).Print(&out)
	(&FanoutResult{SourceAddrs: 1}).Print(&out)
	for _, bad := range []string{"1 fixes", "1 vehicles", "1 workers", "1 source addresses"} {
		if strings.Contains(out.String(), bad) {
			t.Errorf("report says %q:\n%s", bad, out.String())
		}
	}
}
