// Package storetest is the conformance suite every store.Store
// implementation passes. A store's own tests call Run with a Factory that
// prepares empty storage and opens stores on it.
//
// The suite covers every method of store.Store:
//
//   - CommitBatch: read-back of every field, resent, overlapping and
//     concurrent batches, out-of-order and future fixes, statuses, the
//     SOS attach and cancel rules, spools and lanes, invalid batches;
//   - Cursor: per agent, spool and lane, 0 for an unknown spool;
//   - LatestPositions: newest fix time wins, order, online state;
//   - Fixes: range, order, limit;
//   - Incidents and Incident: filters (state, region, vehicle, assignee,
//     opening time, offset), order, limit, events, not found;
//   - the lifecycle methods (AcknowledgeIncident to CancelIncident): every
//     action allowed or refused with store.ErrConflict in every state,
//     their events and timestamps, input rules, concurrent actions, and
//     how closing an incident ends the repeat-window attach;
//   - the contact methods: validation, insert, replace, delete, filters;
//   - the dispatch methods (EscalateIncident to Notifications): idempotent
//     and concurrent escalation, at most one notification per incident,
//     channel and address, due order, claim conflicts and lease expiry,
//     attempt outcomes, provider status callbacks that never move a
//     delivered or failed notification;
//   - agent records in CommitBatch: local acknowledgements, notifications
//     the agent sent, unmatched and invalid ones, and their resend;
//   - a redelivered SOS press, which is not counted twice;
//   - the agent credential methods: create, verify (unknown agent, wrong
//     token), rotation with and without grace by the hub clock, revoke,
//     list, and credentials read back after a restart;
//   - the operator account methods: operators (validation, update in
//     one transaction, delete with their sessions and tokens), sessions,
//     API tokens (verify, last use, revoke), the audit log's filters and
//     order, and all of them read back after a restart;
//   - DeleteFixesBefore: retention of fixes only;
//   - Ping and Close: a closed store is unavailable, Close twice;
//   - restart: a store reopened on the same data reads everything back,
//     notifications and escalation levels included, and still skips
//     resent batches.
package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// Factory prepares empty storage for one test and returns a function that
// opens a store on it, with now as the hub clock. Each call of open
// returns a new, open store on the same data, as a restarted hub would
// see it. The suite closes one store before it opens the next. The
// factory registers with t.Cleanup the Close of every store it opens and
// the removal of the storage. It fails the test when the storage cannot
// be prepared or a store cannot be opened.
//
// Stores opened for the suite must not delete fixes on their own: turn
// off any background retention run.
type Factory func(t *testing.T, now func() time.Time) (open func() store.Store)

// Epoch is the hub clock the suite runs at. Fix and receive times in the
// suite are offsets from it.
var Epoch = time.Date(2026, 3, 10, 2, 0, 0, 0, time.UTC)

// Names of the agent, spool and region the suite's batches come from.
const (
	Agent  = "agent-ncr-1"
	Spool  = "spool-a"
	Region = "NCR"
)

// testCase is one conformance test.
type testCase struct {
	name string
	fn   func(t *testing.T, f Factory)
}

// Run runs the conformance suite as parallel subtests of t, each on its
// own storage.
func Run(t *testing.T, f Factory) {
	var cases []testCase
	cases = append(cases, commitCases...)
	cases = append(cases, sosCases...)
	cases = append(cases, readCases...)
	cases = append(cases, lifecycleCases...)
	cases = append(cases, operatorCases...)
	cases = append(cases, dispatchCases...)
	cases = append(cases, agentCases...)
	cases = append(cases, credentialCases...)
	cases = append(cases, accountCases...)
	cases = append(cases, vehicleCredentialCases...)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, f)
		})
	}
}

// Clock is a settable hub clock, safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock set to t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// FixRecord returns a fix record of vehicle taken at ts and received by the
// agent one second later.
func FixRecord(seq uint64, vehicle string, ts time.Time, lat, lon float64) protocol.Record {
	return protocol.Record{
		Seq:        seq,
		Kind:       protocol.KindFix,
		VehicleID:  vehicle,
		ReceivedAt: ts.Add(time.Second),
		Fix:        &protocol.Fix{Time: ts, Lat: lat, Lon: lon},
	}
}

// SOSRecord returns an SOS record with a location, pressed and received at at.
func SOSRecord(seq uint64, vehicle, sosID string, at time.Time) protocol.Record {
	return protocol.Record{
		Seq:        seq,
		Kind:       protocol.KindSOS,
		VehicleID:  vehicle,
		ReceivedAt: at,
		SOS: &protocol.SOS{
			ID: sosID, Time: at, HasLocation: true, Lat: 14.5995, Lon: 120.9842,
			Kind: protocol.SOSPanic, Note: "driver pressed the button",
		},
	}
}

// CancelRecord returns an SOS cancel record received at at.
func CancelRecord(seq uint64, vehicle, sosID, reason string, at time.Time) protocol.Record {
	return protocol.Record{
		Seq:        seq,
		Kind:       protocol.KindSOSCancel,
		VehicleID:  vehicle,
		ReceivedAt: at,
		Cancel:     &protocol.SOSCancel{ID: sosID, Reason: reason},
	}
}

// StatusRecord returns a status record received at at.
func StatusRecord(seq uint64, vehicle string, online bool, at time.Time) protocol.Record {
	return protocol.Record{
		Seq:        seq,
		Kind:       protocol.KindStatus,
		VehicleID:  vehicle,
		ReceivedAt: at,
		Status:     &protocol.Status{Online: online},
	}
}

// NewBatch returns a batch of the suite's agent and spool in the lane of
// the first record.
func NewBatch(records ...protocol.Record) *protocol.Batch {
	return &protocol.Batch{
		AgentID: Agent,
		Region:  Region,
		SpoolID: Spool,
		Lane:    records[0].Kind.Lane(),
		Records: records,
		SentAt:  Epoch,
	}
}

// FixBatch returns a GPS batch of n fixes of vehicle, seq first to
// first+n-1, one fix time per second counting back from Epoch.
func FixBatch(first uint64, n int, vehicle string) *protocol.Batch {
	records := make([]protocol.Record, n)
	for i := range records {
		seq := first + uint64(i)
		ts := Epoch.Add(-time.Hour + time.Duration(seq)*time.Second)
		records[i] = FixRecord(seq, vehicle, ts, 14.5+float64(seq)/1e4, 121.0)
	}
	return NewBatch(records...)
}

// BenchBatch returns the n-th GPS batch of a benchmark: size fixes from
// vehicles vehicles, with sequence numbers following those of batch n-1
// and one fix time per millisecond from an hour before Epoch.
func BenchBatch(n, size, vehicles int) *protocol.Batch {
	records := make([]protocol.Record, size)
	base := Epoch.Add(-time.Hour)
	for i := range records {
		seq := uint64(n*size + i + 1)
		ts := base.Add(time.Duration(seq) * time.Millisecond)
		speed := 30.0
		records[i] = FixRecord(seq, fmt.Sprintf("veh-%03d", i%vehicles), ts, 14.5+float64(i%90)/1000, 121.0)
		records[i].Fix.SpeedKmh = &speed
	}
	return NewBatch(records...)
}

// newStore prepares storage and opens one store on it.
func newStore(t *testing.T, f Factory, now func() time.Time) store.Store {
	t.Helper()
	return f(t, now)()
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func mustCommit(t *testing.T, s store.Store, b *protocol.Batch) store.CommitResult {
	t.Helper()
	res, err := s.CommitBatch(ctx(t), b)
	if err != nil {
		t.Fatalf("CommitBatch(seq %d-%d): %v", b.First(), b.Last(), err)
	}
	return res
}

func mustFixes(t *testing.T, s store.Store, vehicle string) []store.StoredFix {
	t.Helper()
	fixes, err := s.Fixes(ctx(t), vehicle, Epoch.AddDate(-2, 0, 0), Epoch.AddDate(2, 0, 0), 0)
	if err != nil {
		t.Fatalf("Fixes(%s): %v", vehicle, err)
	}
	return fixes
}

func mustPositions(t *testing.T, s store.Store) []store.Position {
	t.Helper()
	positions, err := s.LatestPositions(ctx(t))
	if err != nil {
		t.Fatalf("LatestPositions: %v", err)
	}
	return positions
}

func mustLatest(t *testing.T, s store.Store, vehicle string) (store.Position, bool) {
	t.Helper()
	for _, p := range mustPositions(t, s) {
		if p.VehicleID == vehicle {
			return p, true
		}
	}
	return store.Position{}, false
}

func mustIncident(t *testing.T, s store.Store, id int64) (store.Incident, []store.IncidentEvent) {
	t.Helper()
	inc, events, err := s.Incident(ctx(t), id)
	if err != nil {
		t.Fatalf("Incident(%d): %v", id, err)
	}
	return inc, events
}

func mustIncidents(t *testing.T, s store.Store, f store.IncidentFilter) []store.Incident {
	t.Helper()
	incidents, err := s.Incidents(ctx(t), f)
	if err != nil {
		t.Fatalf("Incidents(%+v): %v", f, err)
	}
	return incidents
}

func mustCursor(t *testing.T, s store.Store, spool string, lane protocol.Lane) uint64 {
	t.Helper()
	seq, err := s.Cursor(ctx(t), Agent, spool, lane)
	if err != nil {
		t.Fatalf("Cursor(%s, %s, %s): %v", Agent, spool, lane, err)
	}
	return seq
}

func mustClose(t *testing.T, s store.Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func eventTypes(events []store.IncidentEvent) []string {
	types := make([]string, len(events))
	for i, ev := range events {
		types[i] = ev.Type
	}
	return types
}

func fixTimes(fixes []store.StoredFix) []time.Time {
	times := make([]time.Time, len(fixes))
	for i, f := range fixes {
		times[i] = f.Fix.Time
	}
	return times
}

func float(v float64) *float64 { return &v }

func equalFloatPtr(a, b *float64) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func sameFix(a, b store.StoredFix) bool {
	return a.VehicleID == b.VehicleID && a.AgentID == b.AgentID && a.Region == b.Region &&
		a.Fix.Time.Equal(b.Fix.Time) && a.Fix.Lat == b.Fix.Lat && a.Fix.Lon == b.Fix.Lon &&
		equalFloatPtr(a.Fix.SpeedKmh, b.Fix.SpeedKmh) && equalFloatPtr(a.Fix.HeadingDeg, b.Fix.HeadingDeg) &&
		equalFloatPtr(a.Fix.AccuracyM, b.Fix.AccuracyM) && equalFloatPtr(a.Fix.AltM, b.Fix.AltM) &&
		equalFloatPtr(a.Fix.BatteryPct, b.Fix.BatteryPct) && a.ReceivedAt.Equal(b.ReceivedAt) &&
		a.Historical == b.Historical
}

func deref(p *float64) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprint(*p)
}
