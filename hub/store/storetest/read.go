package storetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// readCases cover LatestPositions, Fixes, Incidents and Incident.
var readCases = []testCase{
	{"LatestPositionsOrderedByVehicle", testLatestOrdered},
	{"FixesRangeAndLimit", testFixesRange},
	{"FixesAcrossBatchesAndVehicles", testFixesAcrossBatches},
	{"IncidentsFilter", testIncidentsFilter},
	{"IncidentsDefaultLimit", testIncidentsDefaultLimit},
	{"IncidentNotFound", testIncidentNotFound},
}

func testLatestOrdered(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	if positions := mustPositions(t, s); len(positions) != 0 {
		t.Errorf("empty store has positions %+v", positions)
	}

	mustCommit(t, s, NewBatch(
		FixRecord(1, "veh-3", Epoch.Add(-3*time.Minute), 14.3, 121.0),
		FixRecord(2, "veh-1", Epoch.Add(-time.Minute), 14.1, 121.0),
		FixRecord(3, "veh-2", Epoch.Add(-2*time.Minute), 14.2, 121.0),
	))
	mustCommit(t, s, NewBatch(
		StatusRecord(1, "veh-2", false, Epoch),
		StatusRecord(2, "veh-4", true, Epoch),
	))

	positions := mustPositions(t, s)
	var ids []string
	for _, p := range positions {
		ids = append(ids, p.VehicleID)
	}
	if fmt.Sprint(ids) != "[veh-1 veh-2 veh-3]" {
		t.Fatalf("positions of %v, want [veh-1 veh-2 veh-3]: ordered by vehicle id, and none for veh-4 that sent only a status", ids)
	}
	for i, p := range positions {
		wantLat := []float64{14.1, 14.2, 14.3}[i]
		if p.Fix.Lat != wantLat || !p.Fix.Time.Equal(Epoch.Add(-time.Duration(i+1)*time.Minute)) {
			t.Errorf("%s at %v (%s), want %v (%s)", p.VehicleID, p.Fix.Lat, p.Fix.Time, wantLat, Epoch.Add(-time.Duration(i+1)*time.Minute))
		}
		if p.AgentID != Agent || p.Region != Region {
			t.Errorf("%s agent, region = %q, %q", p.VehicleID, p.AgentID, p.Region)
		}
	}
	if positions[0].Online != nil || positions[2].Online != nil {
		t.Errorf("Online of veh-1, veh-3 = %v, %v, want nil", positions[0].Online, positions[2].Online)
	}
	if positions[1].Online == nil || *positions[1].Online {
		t.Errorf("Online of veh-2 = %v, want false", positions[1].Online)
	}
}

func testFixesRange(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	b := FixBatch(1, 10, "veh-1")
	mustCommit(t, s, b)
	from, to := b.Records[2].Fix.Time, b.Records[6].Fix.Time

	fixes, err := s.Fixes(ctx(t), "veh-1", from, to, 0)
	if err != nil {
		t.Fatalf("Fixes: %v", err)
	}
	if len(fixes) != 4 {
		t.Fatalf("[from, to) holds %d fixes, want 4 (seq 3 to 6)", len(fixes))
	}
	if !fixes[0].Fix.Time.Equal(from) {
		t.Errorf("first fix at %s, want %s: from is inclusive", fixes[0].Fix.Time, from)
	}
	if last := fixes[len(fixes)-1].Fix.Time; !last.Before(to) {
		t.Errorf("last fix at %s, want before %s: to is exclusive", last, to)
	}
	limited, err := s.Fixes(ctx(t), "veh-1", from, to, 3)
	if err != nil {
		t.Fatalf("Fixes with limit: %v", err)
	}
	if len(limited) != 3 || !limited[0].Fix.Time.Equal(from) || !limited[2].Fix.Time.Equal(b.Records[4].Fix.Time) {
		t.Errorf("limit 3 returned %v, want the oldest 3 from %s", fixTimes(limited), from)
	}
	if negative, err := s.Fixes(ctx(t), "veh-1", from, to, -1); err != nil || len(negative) != 4 {
		t.Errorf("limit -1 returned %d fixes, %v, want all 4", len(negative), err)
	}
	if other := mustFixes(t, s, "veh-2"); len(other) != 0 {
		t.Errorf("veh-2 has %d fixes, want 0", len(other))
	}
	if empty, err := s.Fixes(ctx(t), "veh-1", from, from, 0); err != nil || len(empty) != 0 {
		t.Errorf("empty range returned %d fixes, %v, want none", len(empty), err)
	}
	if reversed, err := s.Fixes(ctx(t), "veh-1", to, from, 0); err != nil || len(reversed) != 0 {
		t.Errorf("range with to before from returned %d fixes, %v, want none", len(reversed), err)
	}
	if prefix, err := s.Fixes(ctx(t), "veh", Epoch.AddDate(-1, 0, 0), Epoch.AddDate(1, 0, 0), 0); err != nil || len(prefix) != 0 {
		t.Errorf("Fixes of veh, a prefix of veh-1, returned %d fixes, %v, want none", len(prefix), err)
	}
}

func testFixesAcrossBatches(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	// Three vehicles whose ids share prefixes, in interleaved batches.
	vehicles := []string{"veh-1", "veh-10", "veh-1-b"}
	var seq uint64
	for round := range 3 {
		var records []protocol.Record
		for v, vehicle := range vehicles {
			for i := range 4 {
				seq++
				ts := Epoch.Add(-time.Hour + time.Duration(round*4+i)*time.Minute + time.Duration(v)*time.Second)
				records = append(records, FixRecord(seq, vehicle, ts, 14.0+float64(v), 121.0))
			}
		}
		mustCommit(t, s, NewBatch(records...))
	}

	for v, vehicle := range vehicles {
		fixes := mustFixes(t, s, vehicle)
		if len(fixes) != 12 {
			t.Errorf("%s has %d fixes, want 12", vehicle, len(fixes))
			continue
		}
		for i, fix := range fixes {
			want := Epoch.Add(-time.Hour + time.Duration(i)*time.Minute + time.Duration(v)*time.Second)
			if fix.VehicleID != vehicle || fix.Fix.Lat != 14.0+float64(v) || !fix.Fix.Time.Equal(want) {
				t.Errorf("%s fix %d = %s at %s (lat %v), want at %s (lat %v)", vehicle, i, fix.VehicleID, fix.Fix.Time, fix.Fix.Lat, want, 14.0+float64(v))
				break
			}
		}
	}
}

func testIncidentsFilter(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	mustCommit(t, s, NewBatch(
		SOSRecord(1, "veh-1", "sos-1", Epoch.Add(-10*time.Minute)),
		SOSRecord(2, "veh-2", "sos-2", Epoch.Add(-5*time.Minute)),
		SOSRecord(3, "veh-3", "sos-3", Epoch),
	))
	other := NewBatch(SOSRecord(1, "veh-4", "sos-4", Epoch))
	other.AgentID, other.Region = "agent-cebu-1", "Cebu"
	mustCommit(t, s, other)

	if got := mustIncidents(t, s, store.IncidentFilter{}); len(got) != 4 {
		t.Errorf("no filter: %d incidents, want 4", len(got))
	}
	if got := mustIncidents(t, s, store.IncidentFilter{Region: "Cebu"}); len(got) != 1 || got[0].VehicleID != "veh-4" {
		t.Errorf("region Cebu: %+v, want veh-4's incident", got)
	}
	if got := mustIncidents(t, s, store.IncidentFilter{VehicleID: "veh-2"}); len(got) != 1 || got[0].SOSID != "sos-2" {
		t.Errorf("vehicle veh-2: %+v, want sos-2's incident", got)
	}
	if got := mustIncidents(t, s, store.IncidentFilter{VehicleID: "veh"}); len(got) != 0 {
		t.Errorf("vehicle veh, a prefix of others: %d incidents, want 0", len(got))
	}
	if got := mustIncidents(t, s, store.IncidentFilter{States: []store.IncidentState{store.StateResolved}}); len(got) != 0 {
		t.Errorf("state resolved: %d incidents, want 0", len(got))
	}
	active := []store.IncidentState{store.StateAcknowledged, store.StateOpen}
	if got := mustIncidents(t, s, store.IncidentFilter{States: active}); len(got) != 4 {
		t.Errorf("states acknowledged or open: %d incidents, want 4", len(got))
	}
	if got := mustIncidents(t, s, store.IncidentFilter{States: active, Region: Region, VehicleID: "veh-3"}); len(got) != 1 || got[0].VehicleID != "veh-3" {
		t.Errorf("open in %s of veh-3: %+v, want veh-3's incident", Region, got)
	}
	if got := mustIncidents(t, s, store.IncidentFilter{Region: "Cebu", VehicleID: "veh-1"}); len(got) != 0 {
		t.Errorf("region Cebu and vehicle veh-1: %d incidents, want 0", len(got))
	}

	got := mustIncidents(t, s, store.IncidentFilter{Limit: 2})
	if len(got) != 2 {
		t.Fatalf("limit 2: %d incidents", len(got))
	}
	if got[0].OpenedAt.Before(got[1].OpenedAt) || (got[0].OpenedAt.Equal(got[1].OpenedAt) && got[0].ID < got[1].ID) {
		t.Errorf("incidents not newest first: %d then %d", got[0].ID, got[1].ID)
	}
}

func testIncidentsDefaultLimit(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	// 60 incidents opened at Epoch and 50 a minute later, so the order
	// depends on both the opening time and the id.
	var records []protocol.Record
	for i := range 60 {
		records = append(records, SOSRecord(uint64(i+1), fmt.Sprintf("veh-%03d", i), "sos-1", Epoch))
	}
	first := mustCommit(t, s, NewBatch(records...))
	clock.Set(Epoch.Add(time.Minute))
	records = records[:0]
	for i := range 50 {
		records = append(records, SOSRecord(uint64(61+i), fmt.Sprintf("veh-%03d", 60+i), "sos-1", Epoch))
	}
	second := mustCommit(t, s, NewBatch(records...))

	got := mustIncidents(t, s, store.IncidentFilter{})
	if len(got) != 100 {
		t.Fatalf("no limit: %d incidents, want the default 100", len(got))
	}
	// Newest first: the second batch by id descending, then the first.
	var want []int64
	for i := len(second.Incidents) - 1; i >= 0; i-- {
		want = append(want, second.Incidents[i].Incident.ID)
	}
	for i := len(first.Incidents) - 1; len(want) < 100; i-- {
		want = append(want, first.Incidents[i].Incident.ID)
	}
	for i := range got {
		if got[i].ID != want[i] {
			t.Fatalf("incident %d of the list is %d, want %d: not ordered by opening time, then id, newest first", i, got[i].ID, want[i])
		}
	}
	if all := mustIncidents(t, s, store.IncidentFilter{Limit: 1000}); len(all) != 110 {
		t.Errorf("limit 1000: %d incidents, want 110", len(all))
	}
}

func testIncidentNotFound(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	if _, _, err := s.Incident(ctx(t), 424242); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Incident of a missing id: error %v, want store.ErrNotFound", err)
	}
	res := mustCommit(t, s, NewBatch(SOSRecord(1, "veh-1", "sos-1", Epoch)))
	if _, _, err := s.Incident(ctx(t), res.Incidents[0].Incident.ID+1); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Incident of the id after the only one: error %v, want store.ErrNotFound", err)
	}
	for _, id := range []int64{0, -1} {
		if _, _, err := s.Incident(ctx(t), id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Incident(%d): error %v, want store.ErrNotFound", id, err)
		}
	}
}
