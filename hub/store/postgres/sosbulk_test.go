package postgres

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/protocol"
)

// TestStore_SOSBurstOpensOneIncidentEach commits a batch of SOS from many
// vehicles, which opens their incidents together, then a batch that mixes
// new SOS with a repeat press, a redelivery and a cancel, and checks every
// change against what the SOS rules give one record at a time.
func TestStore_SOSBurstOpensOneIncidentEach(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	ctx := testContext(t)
	at := storetest.Epoch.Add(-time.Minute)

	const n = 120
	recs := make([]protocol.Record, n)
	for i := range recs {
		recs[i] = storetest.SOSRecord(uint64(i+1), fmt.Sprintf("veh-%03d", i), fmt.Sprintf("sos-%03d", i), at)
	}
	recs[7].SOS.HasLocation, recs[7].SOS.Lat, recs[7].SOS.Lon, recs[7].SOS.LocationError = false, 0, 0, "no fix yet"
	recs[8].SOS.Kind = ""
	res := commit(t, s, storetest.NewBatch(recs...))
	if len(res.Incidents) != n {
		t.Fatalf("burst of %d SOS: %d incident changes, want %d", n, len(res.Incidents), n)
	}
	var lastID int64
	for i, c := range res.Incidents {
		want := fmt.Sprintf("veh-%03d", i)
		if !c.Opened || c.Incident.VehicleID != want || c.Incident.SOSID != fmt.Sprintf("sos-%03d", i) || c.Incident.Presses != 1 {
			t.Fatalf("change %d: opened=%v vehicle=%s sos=%s presses=%d, want a new incident of %s", i, c.Opened,
				c.Incident.VehicleID, c.Incident.SOSID, c.Incident.Presses, want)
		}
		if c.Incident.ID <= lastID {
			t.Errorf("change %d: incident id %d after %d, want ids in batch order", i, c.Incident.ID, lastID)
		}
		lastID = c.Incident.ID
		if c.Event.Type != store.EventOpened || c.Event.IncidentID != c.Incident.ID || c.Event.Actor != "vehicle:"+want || c.Event.ID == 0 {
			t.Errorf("change %d: event %+v, want the opened event of incident %d", i, c.Event, c.Incident.ID)
		}
	}
	if c := res.Incidents[7]; c.Incident.HasLocation || c.Event.Detail != "SOS sos-007 (panic); no location: no fix yet" {
		t.Errorf("SOS without location: has_location=%v detail %q", c.Incident.HasLocation, c.Event.Detail)
	}
	if c := res.Incidents[8]; c.Incident.Kind != protocol.SOSPanic {
		t.Errorf("SOS without kind: incident kind %q, want %q", c.Incident.Kind, protocol.SOSPanic)
	}
	inc, events, err := s.Incident(ctx, res.Incidents[3].Incident.ID)
	if err != nil {
		t.Fatalf("Incident: %v", err)
	}
	if inc.Region != storetest.Region || inc.AgentID != storetest.Agent || inc.State != store.StateOpen || !inc.HasLocation {
		t.Errorf("stored incident %+v, want an open incident of the suite's agent and region with a location", inc)
	}
	if len(events) != 1 || events[0] != res.Incidents[3].Event {
		t.Errorf("stored events %+v, want only %+v", events, res.Incidents[3].Event)
	}

	// veh-000 presses again with a new id within the repeat window;
	// veh-001's press arrives again; veh-500 presses and cancels; veh-501
	// is new.
	seq := uint64(n)
	next := func() uint64 { seq++; return seq }
	mixed := []protocol.Record{
		storetest.SOSRecord(next(), "veh-500", "sos-500", at.Add(time.Second)),
		storetest.SOSRecord(next(), "veh-000", "sos-000b", at.Add(10*time.Second)),
		storetest.SOSRecord(next(), "veh-001", "sos-001", at),
		storetest.CancelRecord(next(), "veh-500", "sos-500", "pressed by mistake", at.Add(2*time.Second)),
		storetest.SOSRecord(next(), "veh-501", "sos-501", at.Add(time.Second)),
	}
	res = commit(t, s, storetest.NewBatch(mixed...))
	type want struct {
		vehicle string
		opened  bool
		event   string
		presses int
	}
	wants := []want{
		{"veh-500", true, store.EventOpened, 1},
		{"veh-000", false, store.EventRepeatPress, 2},
		{"veh-001", false, store.EventRedelivered, 1},
		{"veh-500", false, store.EventCancelRequested, 1},
		{"veh-501", true, store.EventOpened, 1},
	}
	if len(res.Incidents) != len(wants) {
		t.Fatalf("mixed batch: %d changes, want %d: %+v", len(res.Incidents), len(wants), res.Incidents)
	}
	for i, w := range wants {
		c := res.Incidents[i]
		if c.Incident.VehicleID != w.vehicle || c.Opened != w.opened || c.Event.Type != w.event || c.Incident.Presses != w.presses {
			t.Errorf("mixed change %d: vehicle=%s opened=%v event=%s presses=%d, want %+v", i,
				c.Incident.VehicleID, c.Opened, c.Event.Type, c.Incident.Presses, w)
		}
	}
	if !res.Incidents[3].Incident.CancelRequested {
		t.Errorf("cancel of sos-500: cancel_requested not set")
	}
}

// TestStore_SOSBurstsOfTwoAgentsShareIncidents commits, at the same time,
// SOS bursts from two agents that hear the same vehicles, in opposite
// orders and with different SOS ids. Each vehicle must end with one
// incident of two presses, whichever batch locks it first.
func TestStore_SOSBurstsOfTwoAgentsShareIncidents(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	at := storetest.Epoch.Add(-time.Minute)
	const n = 200
	batches := make([]*protocol.Batch, 2)
	for a := range batches {
		recs := make([]protocol.Record, n)
		for i := range recs {
			v := i
			if a == 1 {
				v = n - 1 - i
			}
			recs[i] = storetest.SOSRecord(uint64(i+1), fmt.Sprintf("veh-%03d", v), fmt.Sprintf("sos-%d-%03d", a, v), at.Add(time.Duration(a)*time.Second))
		}
		b := storetest.NewBatch(recs...)
		b.AgentID = fmt.Sprintf("agent-%d", a)
		batches[a] = b
	}
	var wg sync.WaitGroup
	results := make([]store.CommitResult, 2)
	errs := make([]error, 2)
	for a := range batches {
		wg.Go(func() { results[a], errs[a] = s.CommitBatch(testContext(t), batches[a]) })
	}
	wg.Wait()
	for a, err := range errs {
		if err != nil {
			t.Fatalf("agent-%d: CommitBatch: %v", a, err)
		}
	}

	incidents := map[string]int64{}
	opened := 0
	for _, res := range results {
		if len(res.Incidents) != n {
			t.Fatalf("%d changes, want %d", len(res.Incidents), n)
		}
		for _, c := range res.Incidents {
			if c.Opened {
				opened++
			}
			if id, ok := incidents[c.Incident.VehicleID]; ok && id != c.Incident.ID {
				t.Errorf("vehicle %s has incidents %d and %d, want one", c.Incident.VehicleID, id, c.Incident.ID)
			}
			incidents[c.Incident.VehicleID] = c.Incident.ID
		}
	}
	if opened != n || len(incidents) != n {
		t.Errorf("%d incidents opened for %d vehicles, want %d for %d", opened, len(incidents), n, n)
	}
	for v, id := range incidents {
		inc, _, err := s.Incident(testContext(t), id)
		if err != nil {
			t.Fatalf("Incident %d: %v", id, err)
		}
		if inc.Presses != 2 {
			t.Errorf("vehicle %s: incident %d has %d presses, want 2", v, id, inc.Presses)
		}
	}
}

// TestStore_SOSBatchDoesNotWaitForAgentRow commits an SOS batch while
// another transaction holds the agent's row locked, as the transaction of
// a GPS batch of the same agent did while it committed. The SOS batch
// must not wait for it: the agent's SOS link and main link commit at the
// same time.
func TestStore_SOSBatchDoesNotWaitForAgentRow(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	ctx := testContext(t)
	at := storetest.Epoch.Add(-time.Minute)
	commit(t, s, storetest.FixBatch(1, 3, "veh-gps"))

	pool, err := s.getPool()
	if err != nil {
		t.Fatal(err)
	}
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	defer holder.Rollback(ctx) //nolint:errcheck // the test ends with it
	if _, err := holder.Exec(ctx, `SELECT 1 FROM agents WHERE id = $1 FOR UPDATE`, storetest.Agent); err != nil {
		t.Fatalf("lock the agent row: %v", err)
	}

	done := make(chan error, 1)
	go func() {
		_, err := s.CommitBatch(ctx, storetest.NewBatch(storetest.SOSRecord(1, "veh-sos", "sos-1", at)))
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("CommitBatch: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the SOS batch still waits for the transaction holding the agent's row")
	}
}
