package storetest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// commitCases cover CommitBatch and Cursor.
var commitCases = []testCase{
	{"CommitAndReadBack", testCommitAndReadBack},
	{"ResentBatchStoresNothingTwice", testResentBatch},
	{"BatchAfterFailedBatchRefused", testPrevMissing},
	{"OverlappingBatchStoresOnlyNewRecords", testOverlappingBatch},
	{"ConcurrentCommitStoresOnce", testConcurrentCommit},
	{"ConcurrentAgentsAllStored", testConcurrentAgents},
	{"OlderFixKeepsLatestPosition", testOlderFixKeepsLatest},
	{"OutOfOrderFixesReadInTimeOrder", testOutOfOrderFixes},
	{"SameTimeFixesBothStored", testSameTimeFixes},
	{"FutureFixStoredButNotLatest", testFutureFix},
	{"StatusNewestReceiveTimeWins", testStatusNewestWins},
	{"NewSpoolStartsFreshCursor", testNewSpool},
	{"LanesHaveSeparateCursors", testLaneCursors},
	{"InvalidBatchRejected", testInvalidBatch},
	{"TextIsCleaned", testTextCleaned},
	{"NonFiniteNumbersStored", testNonFinite},
}

func testCommitAndReadBack(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)

	ts := Epoch.Add(-10 * time.Minute).Add(123456789 * time.Nanosecond)
	full := FixRecord(1, "veh-1", ts, 14.5995, 120.9842)
	full.Fix.SpeedKmh, full.Fix.HeadingDeg, full.Fix.AccuracyM = float(32.5), float(181), float(5)
	full.Fix.AltM, full.Fix.BatteryPct = float(12), float(80)
	full.Historical = true
	bare := FixRecord(2, "veh-2", ts.Add(time.Second), 10.3157, 123.8854)

	res := mustCommit(t, s, NewBatch(full, bare))
	if res.Through != 2 {
		t.Errorf("Through = %d, want 2", res.Through)
	}
	if res.Duplicates != 0 {
		t.Errorf("Duplicates = %d, want 0", res.Duplicates)
	}
	if len(res.Fixes) != 2 {
		t.Fatalf("result has %d fixes, want 2", len(res.Fixes))
	}

	fixes := mustFixes(t, s, "veh-1")
	if len(fixes) != 1 {
		t.Fatalf("veh-1 has %d stored fixes, want 1", len(fixes))
	}
	got := fixes[0]
	if !sameFix(got, res.Fixes[0]) {
		t.Errorf("stored fix %+v differs from the commit result %+v", got, res.Fixes[0])
	}
	if !got.Fix.Time.Equal(ts.Truncate(time.Microsecond)) {
		t.Errorf("fix time = %s, want %s", got.Fix.Time, ts.Truncate(time.Microsecond))
	}
	if got.Fix.Time.Location() != time.UTC || got.ReceivedAt.Location() != time.UTC {
		t.Errorf("fix and receive time locations = %s, %s, want UTC", got.Fix.Time.Location(), got.ReceivedAt.Location())
	}
	if !got.ReceivedAt.Equal(full.ReceivedAt.Truncate(time.Microsecond)) {
		t.Errorf("received at %s, want %s", got.ReceivedAt, full.ReceivedAt.Truncate(time.Microsecond))
	}
	if got.AgentID != Agent || got.Region != Region {
		t.Errorf("agent, region = %q, %q, want %q, %q", got.AgentID, got.Region, Agent, Region)
	}
	if !got.Historical {
		t.Error("historical flag was lost")
	}
	if !equalFloatPtr(got.Fix.SpeedKmh, float(32.5)) || !equalFloatPtr(got.Fix.BatteryPct, float(80)) ||
		!equalFloatPtr(got.Fix.HeadingDeg, float(181)) || !equalFloatPtr(got.Fix.AccuracyM, float(5)) ||
		!equalFloatPtr(got.Fix.AltM, float(12)) {
		t.Errorf("optional fields = %v %v %v %v %v, want 32.5 181 5 12 80", deref(got.Fix.SpeedKmh),
			deref(got.Fix.HeadingDeg), deref(got.Fix.AccuracyM), deref(got.Fix.AltM), deref(got.Fix.BatteryPct))
	}
	if bareFixes := mustFixes(t, s, "veh-2"); len(bareFixes) != 1 || bareFixes[0].Fix.SpeedKmh != nil || bareFixes[0].Fix.BatteryPct != nil || bareFixes[0].Historical {
		t.Errorf("veh-2 fixes = %+v, want one live fix without optional fields", bareFixes)
	}

	p, ok := mustLatest(t, s, "veh-1")
	if !ok {
		t.Fatal("veh-1 has no latest position")
	}
	if p.Fix.Lat != 14.5995 || p.Fix.Lon != 120.9842 {
		t.Errorf("latest position = %v, %v, want 14.5995, 120.9842", p.Fix.Lat, p.Fix.Lon)
	}
	if !equalFloatPtr(p.Fix.SpeedKmh, float(32.5)) || !equalFloatPtr(p.Fix.AltM, float(12)) {
		t.Errorf("latest optional fields = %v %v, want 32.5 12", deref(p.Fix.SpeedKmh), deref(p.Fix.AltM))
	}
	if p.AgentID != Agent || p.Region != Region || !p.ReceivedAt.Equal(got.ReceivedAt) || !p.Fix.Time.Equal(got.Fix.Time) {
		t.Errorf("latest = %+v, want agent %s, region %s and the times of the stored fix", p, Agent, Region)
	}
	if p.Online != nil {
		t.Errorf("Online = %v, want nil before any status", *p.Online)
	}
	if got := mustCursor(t, s, Spool, protocol.LaneGPS); got != 2 {
		t.Errorf("cursor = %d, want 2", got)
	}

	status := mustCommit(t, s, NewBatch(StatusRecord(1, "veh-1", true, Epoch.Add(-time.Minute))))
	if len(status.Statuses) != 1 || !status.Statuses[0].Online || status.Statuses[0].AgentID != Agent {
		t.Errorf("status result = %+v, want one online status from %s", status.Statuses, Agent)
	}
	p, _ = mustLatest(t, s, "veh-1")
	if p.Online == nil || !*p.Online {
		t.Errorf("Online = %v, want true", p.Online)
	}

	sos := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-30*time.Second))))
	if len(sos.Incidents) != 1 {
		t.Fatalf("SOS result has %d incident changes, want 1", len(sos.Incidents))
	}
	change := sos.Incidents[0]
	inc, events := mustIncident(t, s, change.Incident.ID)
	if inc != change.Incident {
		t.Errorf("stored incident %+v differs from the commit result %+v", inc, change.Incident)
	}
	if len(events) != 1 || events[0] != change.Event {
		t.Errorf("events = %+v, want only %+v", events, change.Event)
	}
}

func testResentBatch(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	b := FixBatch(1, 5, "veh-1")
	mustCommit(t, s, b)

	res := mustCommit(t, s, b)
	if res.Duplicates != 5 {
		t.Errorf("Duplicates = %d, want 5", res.Duplicates)
	}
	if len(res.Fixes) != 0 {
		t.Errorf("resent batch stored %d fixes, want 0", len(res.Fixes))
	}
	if res.Through != 5 {
		t.Errorf("Through = %d, want 5", res.Through)
	}
	if n := len(mustFixes(t, s, "veh-1")); n != 5 {
		t.Errorf("%d fixes stored, want 5", n)
	}

	// A batch entirely below the cursor reports the cursor, not its own last seq.
	res = mustCommit(t, s, FixBatch(2, 2, "veh-1"))
	if res.Through != 5 {
		t.Errorf("Through for an old batch = %d, want 5", res.Through)
	}

	// A resent SOS batch opens nothing and presses nothing.
	sos := NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch), CancelRecord(2, "veh-1", "sos-1", "", Epoch))
	mustCommit(t, s, sos)
	again := mustCommit(t, s, sos)
	if again.Duplicates != 2 || len(again.Incidents) != 0 {
		t.Errorf("resent SOS batch: duplicates %d, incident changes %d, want 2 and 0", again.Duplicates, len(again.Incidents))
	}
	incidents := mustIncidents(t, s, store.IncidentFilter{})
	if len(incidents) != 1 || incidents[0].Presses != 1 {
		t.Fatalf("incidents = %+v, want one with one press", incidents)
	}
	if _, events := mustIncident(t, s, incidents[0].ID); len(events) != 2 {
		t.Errorf("events = %v, want [opened cancel_requested]", eventTypes(events))
	}
}

func testOverlappingBatch(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	mustCommit(t, s, FixBatch(1, 5, "veh-1"))

	res := mustCommit(t, s, FixBatch(3, 6, "veh-1"))
	if res.Duplicates != 3 {
		t.Errorf("Duplicates = %d, want 3", res.Duplicates)
	}
	if len(res.Fixes) != 3 {
		t.Errorf("stored %d fixes, want 3 (seq 6 to 8)", len(res.Fixes))
	}
	if res.Through != 8 {
		t.Errorf("Through = %d, want 8", res.Through)
	}
	fixes := mustFixes(t, s, "veh-1")
	if len(fixes) != 8 {
		t.Fatalf("%d fixes stored, want 8", len(fixes))
	}
	for i := 1; i < len(fixes); i++ {
		if !fixes[i].Fix.Time.After(fixes[i-1].Fix.Time) {
			t.Errorf("fix %d at %s is not after fix %d at %s: a fix is stored twice or out of order",
				i, fixes[i].Fix.Time, i-1, fixes[i-1].Fix.Time)
		}
	}
}

func testConcurrentCommit(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	for round := range 5 {
		b := FixBatch(uint64(round*50+1), 50, "veh-1")
		results := make([]store.CommitResult, 2)
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i := range results {
			wg.Go(func() {
				results[i], errs[i] = s.CommitBatch(context.Background(), b)
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: commit %d: %v", round, i, err)
			}
		}
		stored := len(results[0].Fixes) + len(results[1].Fixes)
		if stored != 50 {
			t.Errorf("round %d: the two commits stored %d fixes in all, want 50", round, stored)
		}
		if dups := results[0].Duplicates + results[1].Duplicates; dups != 50 {
			t.Errorf("round %d: the two commits skipped %d records in all, want 50", round, dups)
		}
		if results[0].Through != b.Last() || results[1].Through != b.Last() {
			t.Errorf("round %d: Through = %d and %d, want %d", round, results[0].Through, results[1].Through, b.Last())
		}
	}
	if n := len(mustFixes(t, s, "veh-1")); n != 250 {
		t.Errorf("%d fixes stored, want 250", n)
	}

	// The same SOS committed from two goroutines opens one incident with one press.
	b := NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch))
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = s.CommitBatch(context.Background(), b)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent SOS commit: %v", err)
	}
	incidents := mustIncidents(t, s, store.IncidentFilter{})
	if len(incidents) != 1 || incidents[0].Presses != 1 {
		t.Errorf("incidents = %+v, want one with one press", incidents)
	}
}

func testConcurrentAgents(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	const agents, batches, size = 4, 5, 20
	errs := make([]error, agents)
	var wg sync.WaitGroup
	for a := range agents {
		wg.Go(func() {
			vehicle := fmt.Sprintf("veh-%d", a)
			for n := range batches {
				b := FixBatch(uint64(n*size+1), size, vehicle)
				b.AgentID = fmt.Sprintf("agent-%d", a)
				if _, err := s.CommitBatch(context.Background(), b); err != nil {
					errs[a] = fmt.Errorf("agent %d batch %d: %w", a, n, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent commits: %v", err)
	}

	for a := range agents {
		vehicle, agent := fmt.Sprintf("veh-%d", a), fmt.Sprintf("agent-%d", a)
		fixes := mustFixes(t, s, vehicle)
		if len(fixes) != batches*size {
			t.Errorf("%s has %d fixes, want %d", vehicle, len(fixes), batches*size)
		}
		if len(fixes) > 0 && fixes[0].AgentID != agent {
			t.Errorf("%s fixes came from %s, want %s", vehicle, fixes[0].AgentID, agent)
		}
		seq, err := s.Cursor(ctx(t), agent, Spool, protocol.LaneGPS)
		if err != nil || seq != batches*size {
			t.Errorf("cursor of %s = %d, %v, want %d", agent, seq, err, batches*size)
		}
	}
	if n := len(mustPositions(t, s)); n != agents {
		t.Errorf("%d latest positions, want %d", n, agents)
	}
}

func testOlderFixKeepsLatest(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	newer := FixRecord(1, "veh-1", Epoch.Add(-time.Minute), 14.6, 121.0)
	older := FixRecord(2, "veh-1", Epoch.Add(-time.Hour), 14.1, 121.1)
	older.Historical = true

	mustCommit(t, s, NewBatch(newer))
	mustCommit(t, s, NewBatch(older))

	p, ok := mustLatest(t, s, "veh-1")
	if !ok {
		t.Fatal("no latest position")
	}
	if !p.Fix.Time.Equal(newer.Fix.Time) || p.Fix.Lat != 14.6 {
		t.Errorf("latest = %s (%v), want the newer fix %s (14.6)", p.Fix.Time, p.Fix.Lat, newer.Fix.Time)
	}
	if n := len(mustFixes(t, s, "veh-1")); n != 2 {
		t.Errorf("%d fixes stored, want 2: the older fix must still be kept", n)
	}

	// Within one batch too, the newest fix time wins regardless of order.
	mustCommit(t, s, NewBatch(
		FixRecord(3, "veh-1", Epoch.Add(-10*time.Second), 14.7, 121.0),
		FixRecord(4, "veh-1", Epoch.Add(-30*time.Second), 14.8, 121.0),
	))
	p, _ = mustLatest(t, s, "veh-1")
	if p.Fix.Lat != 14.7 {
		t.Errorf("latest lat = %v, want 14.7 from the newest fix of the batch", p.Fix.Lat)
	}

	// A fix with the same time as the latest one does not replace it.
	mustCommit(t, s, NewBatch(FixRecord(5, "veh-1", Epoch.Add(-10*time.Second), 14.9, 121.0)))
	p, _ = mustLatest(t, s, "veh-1")
	if p.Fix.Lat != 14.7 {
		t.Errorf("latest lat = %v, want 14.7: a fix of the same time must not replace the latest", p.Fix.Lat)
	}
}

func testOutOfOrderFixes(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	offsets := []time.Duration{-5 * time.Minute, -50 * time.Minute, -time.Minute, -30 * time.Minute, -20 * time.Minute, -2 * time.Hour}
	for i, off := range offsets {
		rec := FixRecord(uint64(i+1), "veh-1", Epoch.Add(off), 14.5+float64(i)/100, 121.0)
		rec.Historical = off < -10*time.Minute
		mustCommit(t, s, NewBatch(rec))
	}

	fixes := mustFixes(t, s, "veh-1")
	if len(fixes) != len(offsets) {
		t.Fatalf("%d fixes stored, want %d", len(fixes), len(offsets))
	}
	times := fixTimes(fixes)
	if !slices.IsSortedFunc(times, func(a, b time.Time) int { return a.Compare(b) }) {
		t.Errorf("fixes read in order %v, want oldest first", times)
	}
	if !times[0].Equal(Epoch.Add(-2*time.Hour)) || !times[len(times)-1].Equal(Epoch.Add(-time.Minute)) {
		t.Errorf("fixes span %s to %s, want %s to %s", times[0], times[len(times)-1], Epoch.Add(-2*time.Hour), Epoch.Add(-time.Minute))
	}
	p, _ := mustLatest(t, s, "veh-1")
	if !p.Fix.Time.Equal(Epoch.Add(-time.Minute)) {
		t.Errorf("latest fix time = %s, want the newest %s", p.Fix.Time, Epoch.Add(-time.Minute))
	}
}

func testSameTimeFixes(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	ts := Epoch.Add(-time.Minute)
	mustCommit(t, s, NewBatch(FixRecord(1, "veh-1", ts, 14.6, 121.0), FixRecord(2, "veh-1", ts, 14.7, 121.0)))
	mustCommit(t, s, NewBatch(FixRecord(3, "veh-1", ts, 14.8, 121.0)))

	fixes := mustFixes(t, s, "veh-1")
	if len(fixes) != 3 {
		t.Fatalf("%d fixes stored, want 3: fixes with the same time are all kept", len(fixes))
	}
	lats := []float64{fixes[0].Fix.Lat, fixes[1].Fix.Lat, fixes[2].Fix.Lat}
	slices.Sort(lats)
	if !slices.Equal(lats, []float64{14.6, 14.7, 14.8}) {
		t.Errorf("stored latitudes = %v, want 14.6 14.7 14.8", lats)
	}
}

func testFutureFix(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	current := FixRecord(1, "veh-1", Epoch.Add(-time.Minute), 14.6, 121.0)
	future := FixRecord(2, "veh-1", Epoch.AddDate(1, 0, 0), 14.9, 121.0)
	farFuture := FixRecord(3, "veh-1", Epoch.AddDate(30, 0, 0), 15.0, 121.0)
	mustCommit(t, s, NewBatch(current, future, farFuture))

	fixes, err := s.Fixes(ctx(t), "veh-1", Epoch.AddDate(0, 11, 0), Epoch.AddDate(1, 1, 0), 0)
	if err != nil {
		t.Fatalf("Fixes: %v", err)
	}
	if len(fixes) != 1 {
		t.Errorf("future fix stored %d times, want 1", len(fixes))
	}
	far, err := s.Fixes(ctx(t), "veh-1", Epoch.AddDate(29, 0, 0), Epoch.AddDate(31, 0, 0), 0)
	if err != nil {
		t.Fatalf("Fixes: %v", err)
	}
	if len(far) != 1 {
		t.Errorf("fix 30 years ahead stored %d times, want 1", len(far))
	}
	p, _ := mustLatest(t, s, "veh-1")
	if p.Fix.Lat != 14.6 {
		t.Errorf("latest lat = %v, want 14.6: a fix a year ahead must not become latest", p.Fix.Lat)
	}

	// Later fixes keep moving the latest position.
	clock.Set(Epoch.Add(time.Hour))
	mustCommit(t, s, NewBatch(FixRecord(4, "veh-1", Epoch.Add(59*time.Minute), 14.65, 121.0)))
	p, _ = mustLatest(t, s, "veh-1")
	if p.Fix.Lat != 14.65 {
		t.Errorf("latest lat = %v, want 14.65 after a newer real fix", p.Fix.Lat)
	}

	// A fix slightly ahead, within the allowed clock skew, becomes latest.
	mustCommit(t, s, NewBatch(FixRecord(5, "veh-1", Epoch.Add(time.Hour+2*time.Minute), 14.66, 121.0)))
	p, _ = mustLatest(t, s, "veh-1")
	if p.Fix.Lat != 14.66 {
		t.Errorf("latest lat = %v, want 14.66 from a fix 2 minutes ahead", p.Fix.Lat)
	}

	// A vehicle whose only fix is far ahead has no latest position.
	mustCommit(t, s, NewBatch(FixRecord(6, "veh-2", Epoch.AddDate(1, 0, 0), 14.9, 121.0)))
	if p, ok := mustLatest(t, s, "veh-2"); ok {
		t.Errorf("veh-2 latest = %+v, want none: its only fix is a year ahead", p)
	}
}

func testStatusNewestWins(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	mustCommit(t, s, NewBatch(FixRecord(1, "veh-1", Epoch.Add(-time.Minute), 14.6, 121.0)))

	res := mustCommit(t, s, NewBatch(
		StatusRecord(1, "veh-1", true, Epoch.Add(-50*time.Second)),
		StatusRecord(2, "veh-1", false, Epoch.Add(-40*time.Second)),
	))
	if len(res.Statuses) != 2 {
		t.Errorf("stored %d statuses, want 2", len(res.Statuses))
	}
	p, _ := mustLatest(t, s, "veh-1")
	if p.Online == nil || *p.Online {
		t.Errorf("Online = %v, want false from the last status", p.Online)
	}

	// A status received before the stored one is superseded.
	res = mustCommit(t, s, NewBatch(StatusRecord(3, "veh-1", true, Epoch.Add(-45*time.Second))))
	if len(res.Statuses) != 0 {
		t.Errorf("stale status reported as stored: %+v", res.Statuses)
	}
	p, _ = mustLatest(t, s, "veh-1")
	if p.Online == nil || *p.Online {
		t.Errorf("Online = %v, want false: an older status must not win", p.Online)
	}

	// A status received at the same time as the stored one replaces it.
	res = mustCommit(t, s, NewBatch(StatusRecord(4, "veh-1", true, Epoch.Add(-40*time.Second))))
	if len(res.Statuses) != 1 || !res.Statuses[0].Online || !res.Statuses[0].ReceivedAt.Equal(Epoch.Add(-40*time.Second)) {
		t.Errorf("status of the same receive time: result %+v, want it stored", res.Statuses)
	}
	p, _ = mustLatest(t, s, "veh-1")
	if p.Online == nil || !*p.Online {
		t.Errorf("Online = %v, want true from the status of the same receive time", p.Online)
	}
}

func testNewSpool(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	mustCommit(t, s, FixBatch(1, 5, "veh-1"))

	b := FixBatch(1, 2, "veh-1")
	b.SpoolID = "spool-b"
	for i := range b.Records {
		b.Records[i].Fix.Time = b.Records[i].Fix.Time.Add(time.Minute)
	}
	res := mustCommit(t, s, b)
	if res.Duplicates != 0 || len(res.Fixes) != 2 || res.Through != 2 {
		t.Errorf("new spool: duplicates %d, fixes %d, through %d, want 0, 2, 2", res.Duplicates, len(res.Fixes), res.Through)
	}
	if got := mustCursor(t, s, Spool, protocol.LaneGPS); got != 5 {
		t.Errorf("old spool cursor = %d, want 5", got)
	}
	if got := mustCursor(t, s, "spool-b", protocol.LaneGPS); got != 2 {
		t.Errorf("new spool cursor = %d, want 2", got)
	}
	if got := mustCursor(t, s, "spool-never-seen", protocol.LaneGPS); got != 0 {
		t.Errorf("unknown spool cursor = %d, want 0", got)
	}
	if seq, err := s.Cursor(ctx(t), "agent-never-seen", Spool, protocol.LaneGPS); err != nil || seq != 0 {
		t.Errorf("unknown agent cursor = %d, %v, want 0", seq, err)
	}
	if n := len(mustFixes(t, s, "veh-1")); n != 7 {
		t.Errorf("%d fixes stored, want 7", n)
	}
}

func testLaneCursors(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	mustCommit(t, s, FixBatch(1, 7, "veh-1"))
	res := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch)))
	if res.Duplicates != 0 || len(res.Incidents) != 1 {
		t.Errorf("SOS seq 1 after GPS seq 7: duplicates %d, incidents %d, want 0 and 1", res.Duplicates, len(res.Incidents))
	}
	status := mustCommit(t, s, NewBatch(StatusRecord(1, "veh-1", true, Epoch), StatusRecord(2, "veh-1", false, Epoch.Add(time.Second))))
	if status.Duplicates != 0 || status.Through != 2 {
		t.Errorf("status seq 1-2: duplicates %d, through %d, want 0 and 2", status.Duplicates, status.Through)
	}
	gps, sos, st := mustCursor(t, s, Spool, protocol.LaneGPS), mustCursor(t, s, Spool, protocol.LaneSOS), mustCursor(t, s, Spool, protocol.LaneStatus)
	if gps != 7 || sos != 1 || st != 2 {
		t.Errorf("cursors gps, sos, status = %d, %d, %d, want 7, 1, 2", gps, sos, st)
	}
}

func testInvalidBatch(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)

	decreasing := FixBatch(1, 3, "veh-1")
	decreasing.Records[2].Seq = 1
	wrongLane := FixBatch(1, 2, "veh-1")
	wrongLane.Lane = protocol.LaneSOS
	hugeSeq := NewBatch(
		FixRecord(math.MaxInt64, "veh-1", Epoch.Add(-time.Minute), 14.6, 121.0),
		FixRecord(math.MaxInt64+1, "veh-1", Epoch, 14.6, 121.0),
	)
	badVehicle := FixBatch(1, 1, "veh 1")

	for name, b := range map[string]*protocol.Batch{
		"decreasing seq":                  decreasing,
		"fix in the SOS lane":             wrongLane,
		"seq past the largest int64":      hugeSeq,
		"vehicle id with a space":         badVehicle,
		"nil batch":                       nil,
		"no records":                      {AgentID: Agent, SpoolID: Spool, Lane: protocol.LaneGPS},
		"agent id with a slash":           {AgentID: "agent/1", SpoolID: Spool, Lane: protocol.LaneGPS, Records: FixBatch(1, 1, "veh-1").Records},
		"spool id longer than 64 letters": {AgentID: Agent, SpoolID: string(make([]byte, 65)), Lane: protocol.LaneGPS, Records: FixBatch(1, 1, "veh-1").Records},
	} {
		if _, err := s.CommitBatch(ctx(t), b); !errors.Is(err, protocol.ErrInvalidBatch) && !errors.Is(err, protocol.ErrInvalidID) {
			t.Errorf("commit of a batch with %s: error %v, want protocol.ErrInvalidBatch or ErrInvalidID", name, err)
		}
	}
	if n := len(mustFixes(t, s, "veh-1")); n != 0 {
		t.Errorf("invalid batches stored %d fixes", n)
	}
	if got := mustCursor(t, s, Spool, protocol.LaneGPS); got != 0 {
		t.Errorf("cursor = %d after invalid batches, want 0", got)
	}
	if positions := mustPositions(t, s); len(positions) != 0 {
		t.Errorf("invalid batches left latest positions %+v", positions)
	}
}

func testTextCleaned(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	rec := SOSRecord(1, "veh-1", "sos-1", Epoch)
	rec.SOS.Note = "help\x00me caf\xffe"
	b := NewBatch(rec)
	b.Region = "NCR\x00"
	res := mustCommit(t, s, b)
	if got := res.Incidents[0].Incident.Note; got != "helpme cafe" {
		t.Errorf("note = %q, want %q: NUL and invalid UTF-8 are dropped", got, "helpme cafe")
	}
	if got := res.Incidents[0].Incident.Region; got != "NCR" {
		t.Errorf("region = %q, want %q", got, "NCR")
	}
	inc, _ := mustIncident(t, s, res.Incidents[0].Incident.ID)
	if inc.Note != "helpme cafe" || inc.Region != "NCR" {
		t.Errorf("stored note, region = %q, %q, want %q, %q", inc.Note, inc.Region, "helpme cafe", "NCR")
	}

	// The spool id is cleaned the same way for the cursor.
	fixes := FixBatch(1, 2, "veh-1")
	fixes.SpoolID = "spool\x00-c"
	mustCommit(t, s, fixes)
	if got := mustCursor(t, s, "spool-c", protocol.LaneGPS); got != 2 {
		t.Errorf("cursor of the cleaned spool id = %d, want 2", got)
	}
	if got := mustCursor(t, s, "spool\x00-c", protocol.LaneGPS); got != 2 {
		t.Errorf("cursor of the spool id with NUL = %d, want 2", got)
	}
}

func testNonFinite(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	// Batch validation checks fix and SOS positions, not the optional
	// fields of a fix: a store keeps what it is given there.
	fix := FixRecord(1, "veh-1", Epoch.Add(-time.Minute), 14.6, 121.0)
	fix.Fix.SpeedKmh, fix.Fix.AltM = float(math.NaN()), float(math.Inf(-1))
	mustCommit(t, s, NewBatch(fix))
	fixes := mustFixes(t, s, "veh-1")
	if len(fixes) != 1 || fixes[0].Fix.SpeedKmh == nil || !math.IsNaN(*fixes[0].Fix.SpeedKmh) ||
		fixes[0].Fix.AltM == nil || !math.IsInf(*fixes[0].Fix.AltM, -1) {
		t.Errorf("stored fixes = %+v, want one with speed NaN and altitude -Inf", fixes)
	}

	// An SOS with a non-finite position fails the batch, and nothing of it is stored.
	sos := SOSRecord(1, "veh-1", "sos-1", Epoch)
	sos.SOS.Lat, sos.SOS.Lon = math.NaN(), math.Inf(1)
	if _, err := s.CommitBatch(ctx(t), NewBatch(sos)); !errors.Is(err, protocol.ErrOutOfRange) {
		t.Errorf("SOS at NaN, +Inf: error %v, want protocol.ErrOutOfRange", err)
	}
	if got := mustIncidents(t, s, store.IncidentFilter{}); len(got) != 0 {
		t.Errorf("%d incidents after the rejected SOS, want 0", len(got))
	}
	if got := mustCursor(t, s, Spool, protocol.LaneSOS); got != 0 {
		t.Errorf("SOS cursor = %d after the rejected batch, want 0", got)
	}
}

// A batch that names an uncommitted batch as its Prev is refused, so a
// failed batch's records are never skipped by the one sent after it.
func testPrevMissing(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	second := FixBatch(3, 2, "veh-1")
	second.Prev = 2
	_, err := s.CommitBatch(ctx(t), second)
	if !errors.Is(err, store.ErrPrevMissing) {
		t.Fatalf("batch 3-4 with prev 2 on an empty cursor: error = %v, want ErrPrevMissing", err)
	}
	if cursor, err := s.Cursor(ctx(t), Agent, Spool, protocol.LaneGPS); err != nil || cursor != 0 {
		t.Errorf("cursor after the refused batch = %d, %v; want 0", cursor, err)
	}

	mustCommit(t, s, FixBatch(1, 2, "veh-1"))
	res := mustCommit(t, s, second)
	if res.Through != 4 || len(res.Fixes) != 2 {
		t.Errorf("resent batch 3-4: through %d with %d fixes, want 4 and 2", res.Through, len(res.Fixes))
	}
	fixes, err := s.Fixes(ctx(t), "veh-1", Epoch.Add(-time.Hour), Epoch.Add(time.Hour), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(fixes) != 4 {
		t.Errorf("stored fixes = %d, want 4", len(fixes))
	}
}
