package embedded

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/protocol"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(crashChildEnv); path != "" {
		runCrashChild(path)
		return
	}
	goleak.VerifyTestMain(m)
}

// tempPath returns a store file path in a new temporary directory, and
// checks the file's consistency when the test ends, after every store
// opened on it is closed.
func tempPath(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hub.db")
	t.Cleanup(func() { checkConsistent(t, path) })
	return path
}

// openStore opens a store on cfg.Path, a new file unless set, and closes
// it when the test ends. The background retention run is off unless cfg
// sets RetentionInterval.
func openStore(t testing.TB, cfg Config) *Store {
	t.Helper()
	if cfg.Path == "" {
		cfg.Path = tempPath(t)
	}
	if cfg.Now == nil {
		cfg.Now = storetest.NewClock(storetest.Epoch).Now
	}
	if cfg.RetentionInterval == 0 {
		cfg.RetentionInterval = -1
	}
	s := New(cfg)
	if err := s.Open(testContext(t)); err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return s
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func commit(t testing.TB, s *Store, b *protocol.Batch) store.CommitResult {
	t.Helper()
	res, err := s.CommitBatch(testContext(t), b)
	if err != nil {
		t.Fatalf("CommitBatch: %v", err)
	}
	return res
}

func fixesOf(t testing.TB, s *Store, vehicle string) []store.StoredFix {
	t.Helper()
	fixes, err := s.Fixes(testContext(t), vehicle, storetest.Epoch.AddDate(-1, 0, 0), storetest.Epoch.AddDate(1, 0, 0), 0)
	if err != nil {
		t.Fatalf("Fixes(%s): %v", vehicle, err)
	}
	return fixes
}

// TestStore_Conformance runs the suite with each test on its own file.
// Reopening opens a new Store on the same file.
func TestStore_Conformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, now func() time.Time) func() store.Store {
		path := tempPath(t)
		return func() store.Store {
			return openStore(t, Config{Path: path, Now: now})
		}
	})
}

func TestStore_SecondOpenFailsFast(t *testing.T) {
	t.Parallel()
	first := openStore(t, Config{})

	second := New(Config{Path: first.Path(), Timeout: 50 * time.Millisecond})
	done := make(chan error, 1)
	go func() { done <- second.Open(context.Background()) }()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("second Open still waits for the file lock after 10s, want it to fail after its 50ms timeout")
	}
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: error %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), first.Path()) {
		t.Errorf("error %q does not name the file %s", err, first.Path())
	}
	if err := second.Close(); err != nil {
		t.Errorf("Close after a failed Open: %v", err)
	}
	if err := second.Ping(testContext(t)); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Ping after a failed Open: error %v, want store.ErrUnavailable", err)
	}

	// Once the first store is closed, the file opens again.
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	openStore(t, Config{Path: first.Path()})
}

func TestStore_OpenErrors(t *testing.T) {
	t.Parallel()
	if err := New(Config{}).Open(testContext(t)); err == nil {
		t.Error("Open without a path succeeded")
	}
	missingDir := filepath.Join(t.TempDir(), "missing", "hub.db")
	if err := New(Config{Path: missingDir}).Open(testContext(t)); err == nil {
		t.Errorf("Open in a missing directory %s succeeded", missingDir)
	}

	s := openStore(t, Config{})
	if err := s.Open(testContext(t)); err == nil {
		t.Error("second Open of the same Store succeeded")
	}
	closed := New(Config{Path: filepath.Join(t.TempDir(), "hub.db")})
	if err := closed.Close(); err != nil {
		t.Fatalf("Close before Open: %v", err)
	}
	if err := closed.Open(testContext(t)); err == nil {
		t.Error("Open after Close succeeded")
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := New(Config{Path: filepath.Join(t.TempDir(), "hub.db")}).Open(cancelled); !errors.Is(err, context.Canceled) {
		t.Errorf("Open with a cancelled context: error %v, want context.Canceled", err)
	}
}

func TestStore_OpenRejectsOtherFormat(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "hub.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		return meta.Put(keyVersion, u64(formatVersion+1))
	})
	if err := errors.Join(err, db.Close()); err != nil {
		t.Fatalf("write a future format version: %v", err)
	}

	s := New(Config{Path: path})
	if err := s.Open(testContext(t)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Open of a file of format version %d: error %v, want ErrCorrupt", formatVersion+1, err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	// The file lock was released.
	if _, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 100 * time.Millisecond, ReadOnly: true}); err != nil {
		t.Errorf("file still locked after the failed Open: %v", err)
	}
}

func TestStore_TimeOutsideStorableRangeRejected(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	far := time.Date(300000, 1, 1, 0, 0, 0, 0, time.UTC)
	fix := storetest.FixRecord(1, "veh-1", storetest.Epoch, 14.6, 121.0)
	fix.Fix.Time = far
	sos := storetest.SOSRecord(1, "veh-1", "sos-1", storetest.Epoch)
	sos.SOS.Time = far
	received := storetest.FixRecord(1, "veh-1", storetest.Epoch, 14.6, 121.0)
	received.ReceivedAt = far.AddDate(-600000, 0, 0)

	for name, rec := range map[string]protocol.Record{"fix time": fix, "SOS time": sos, "receive time": received} {
		if _, err := s.CommitBatch(testContext(t), storetest.NewBatch(rec)); !errors.Is(err, protocol.ErrInvalidBatch) {
			t.Errorf("%s outside the storable range: error %v, want protocol.ErrInvalidBatch", name, err)
		}
	}
	if n := len(fixesOf(t, s, "veh-1")); n != 0 {
		t.Errorf("%d fixes stored from rejected batches", n)
	}
	// A time near the ends of the range is kept exactly.
	edge := storetest.FixRecord(1, "veh-1", time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC), 14.6, 121.0)
	commit(t, s, storetest.NewBatch(edge))
	got, err := s.Fixes(testContext(t), "veh-1", time.Date(9000, 1, 1, 0, 0, 0, 0, time.UTC), maxStorableTime, 0)
	if err != nil || len(got) != 1 || !got[0].Fix.Time.Equal(edge.Fix.Time) {
		t.Errorf("fix in the year 9999 read back as %+v, %v", got, err)
	}
}

func TestStore_FixesInvalidVehicleReadsNothing(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	commit(t, s, storetest.FixBatch(1, 3, "veh-1"))
	// "veh-1" + 0x00 + … would otherwise match veh-1's key prefix.
	for _, id := range []string{"veh-1\x00", "veh-1\x00\x80", "", "veh 1"} {
		fixes, err := s.Fixes(testContext(t), id, time.Time{}, maxStorableTime, 0)
		if err != nil || len(fixes) != 0 {
			t.Errorf("Fixes(%q) = %d fixes, %v, want none", id, len(fixes), err)
		}
	}
}

func TestStore_ReadsAcrossPages(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	// More entries than one read transaction visits, for every paged read.
	n := readPageSize*2 + 17
	gps := storetest.BenchBatch(0, n, n)
	commit(t, s, gps)
	var sos []protocol.Record
	for i := range readPageSize + 5 {
		sos = append(sos, storetest.SOSRecord(uint64(i+1), gps.Records[i].VehicleID, "sos-1", storetest.Epoch))
	}
	commit(t, s, storetest.NewBatch(sos...))

	positions, err := s.LatestPositions(testContext(t))
	if err != nil || len(positions) != n {
		t.Fatalf("LatestPositions = %d positions, %v, want %d", len(positions), err, n)
	}
	for i := 1; i < len(positions); i++ {
		if positions[i-1].VehicleID >= positions[i].VehicleID {
			t.Fatalf("positions %d and %d out of order: %s, %s", i-1, i, positions[i-1].VehicleID, positions[i].VehicleID)
		}
	}

	firstVehicle := gps.Records[0].VehicleID
	commit(t, s, storetest.BenchBatch(1, n, 1))
	fixes, err := s.Fixes(testContext(t), firstVehicle, storetest.Epoch.AddDate(-1, 0, 0), storetest.Epoch, n+10)
	if err != nil || len(fixes) != n+1 {
		t.Fatalf("Fixes = %d fixes, %v, want %d", len(fixes), err, n+1)
	}
	for i := 1; i < len(fixes); i++ {
		if fixes[i].Fix.Time.Before(fixes[i-1].Fix.Time) {
			t.Fatalf("fixes %d and %d out of order", i-1, i)
		}
	}

	incidents, err := s.Incidents(testContext(t), store.IncidentFilter{Limit: 5000})
	if err != nil || len(incidents) != len(sos) {
		t.Fatalf("Incidents = %d, %v, want %d", len(incidents), err, len(sos))
	}
	for i := 1; i < len(incidents); i++ {
		if incidents[i-1].ID <= incidents[i].ID {
			t.Fatalf("incidents %d and %d not newest first: ids %d, %d", i-1, i, incidents[i-1].ID, incidents[i].ID)
		}
	}
	filtered, err := s.Incidents(testContext(t), store.IncidentFilter{VehicleID: sos[0].VehicleID})
	if err != nil || len(filtered) != 1 {
		t.Errorf("Incidents of %s, the oldest, behind %d others = %d, %v, want 1", sos[0].VehicleID, len(sos)-1, len(filtered), err)
	}
}

func TestStore_RetentionDeletesThroughIndexInChunks(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	s.chunkSize = 7
	cutoff := storetest.Epoch.AddDate(0, 0, -30)
	var records []protocol.Record
	for i := range 100 {
		vehicle := []string{"veh-a", "veh-b", "veh-c"}[i%3]
		records = append(records, storetest.FixRecord(uint64(i+1), vehicle, cutoff.Add(-time.Duration(100-i)*time.Minute), 14.6, 121.0))
	}
	for i := range 5 {
		records = append(records, storetest.FixRecord(uint64(101+i), "veh-b", cutoff.Add(time.Duration(i)*time.Minute), 14.7, 121.0))
	}
	commit(t, s, storetest.NewBatch(records...))

	n, err := s.DeleteFixesBefore(testContext(t), cutoff)
	if err != nil || n != 100 {
		t.Fatalf("DeleteFixesBefore = %d, %v, want exactly 100", n, err)
	}
	if got := len(fixesOf(t, s, "veh-a")) + len(fixesOf(t, s, "veh-c")); got != 0 {
		t.Errorf("%d old fixes of veh-a and veh-c left", got)
	}
	if got := fixesOf(t, s, "veh-b"); len(got) != 5 || !got[0].Fix.Time.Equal(cutoff) {
		t.Errorf("veh-b keeps %d fixes from %v, want 5 from %s", len(got), got, cutoff)
	}
	if got := testutil.ToFloat64(s.metrics.retentionDeleted); got != 100 {
		t.Errorf("fixes deleted metric = %v, want 100", got)
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		if fixes, index := tx.Bucket(bucketFixes).Stats().KeyN, tx.Bucket(bucketFixesByTime).Stats().KeyN; fixes != 5 || index != 5 {
			t.Errorf("%d fixes and %d index entries left, want 5 and 5", fixes, index)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("View: %v", err)
	}

	// A cancelled context stops the run before it deletes anything.
	commit(t, s, storetest.NewBatch(storetest.FixRecord(106, "veh-a", cutoff.Add(-time.Hour), 14.6, 121.0)))
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if n, err := s.DeleteFixesBefore(cancelled, cutoff); !errors.Is(err, context.Canceled) || n != 0 {
		t.Errorf("DeleteFixesBefore with a cancelled context = %d, %v, want 0, context.Canceled", n, err)
	}
	if got := len(fixesOf(t, s, "veh-a")); got != 1 {
		t.Errorf("veh-a has %d fixes after a cancelled run, want 1", got)
	}
}

func TestStore_BackgroundRetentionRun(t *testing.T) {
	t.Parallel()
	clock := storetest.NewClock(storetest.Epoch)
	s := openStore(t, Config{Now: clock.Now, RetentionInterval: 10 * time.Millisecond})
	recent := storetest.Epoch.Add(-time.Hour)
	commit(t, s, storetest.NewBatch(
		storetest.FixRecord(1, "veh-1", storetest.Epoch.AddDate(0, 0, -31), 14.0, 121.0),
		storetest.FixRecord(2, "veh-1", recent, 14.1, 121.0),
	))

	waitFor(t, "the fix older than 30 days to be removed", func() bool {
		fixes := fixesOf(t, s, "veh-1")
		return len(fixes) == 1 && fixes[0].Fix.Time.Equal(recent)
	})
	clock.Set(storetest.Epoch.AddDate(0, 0, 31))
	waitFor(t, "the second fix to be removed 31 days later", func() bool {
		return len(fixesOf(t, s, "veh-1")) == 0
	})
	positions, err := s.LatestPositions(testContext(t))
	if err != nil || len(positions) != 1 || !positions[0].Fix.Time.Equal(recent) {
		t.Errorf("latest positions = %+v, %v, want veh-1 at %s", positions, err, recent)
	}
}

func TestStore_CustomRetention(t *testing.T) {
	t.Parallel()
	clock := storetest.NewClock(storetest.Epoch)
	s := openStore(t, Config{Now: clock.Now, Retention: 2 * time.Hour, RetentionInterval: 10 * time.Millisecond})
	commit(t, s, storetest.NewBatch(
		storetest.FixRecord(1, "veh-1", storetest.Epoch.Add(-3*time.Hour), 14.0, 121.0),
		storetest.FixRecord(2, "veh-1", storetest.Epoch.Add(-time.Hour), 14.1, 121.0),
	))
	waitFor(t, "the fix older than 2 hours to be removed", func() bool {
		return len(fixesOf(t, s, "veh-1")) == 1
	})
}

func TestStore_ContextEndedCommitsNothing(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.CommitBatch(cancelled, storetest.FixBatch(1, 3, "veh-1")); !errors.Is(err, context.Canceled) {
		t.Errorf("CommitBatch with a cancelled context: error %v, want context.Canceled", err)
	}
	if n := len(fixesOf(t, s, "veh-1")); n != 0 {
		t.Errorf("%d fixes stored by a cancelled commit", n)
	}
	if _, err := s.LatestPositions(cancelled); !errors.Is(err, context.Canceled) {
		t.Errorf("LatestPositions with a cancelled context: error %v, want context.Canceled", err)
	}
}

func TestStore_VehiclesAndAgentsRecorded(t *testing.T) {
	t.Parallel()
	clock := storetest.NewClock(storetest.Epoch)
	s := openStore(t, Config{Now: clock.Now})
	commit(t, s, storetest.FixBatch(1, 3, "veh-1"))
	other := storetest.NewBatch(storetest.FixRecord(1, "veh-1", storetest.Epoch, 14.6, 121.0))
	other.AgentID, other.Region, other.SpoolID = "agent-cebu-1", "Cebu", "spool-b"
	clock.Set(storetest.Epoch.Add(time.Minute))
	commit(t, s, other)

	err := s.db.View(func(tx *bolt.Tx) error {
		var v vehicleValue
		if err := json.Unmarshal(tx.Bucket(bucketVehicles).Get([]byte("veh-1")), &v); err != nil {
			return err
		}
		first := storetest.FixBatch(1, 3, "veh-1").Records[0].ReceivedAt
		if v.AgentID != "agent-cebu-1" || v.Region != "Cebu" || !fromMicros(v.FirstSeen).Equal(first) || !fromMicros(v.LastSeen).Equal(storetest.Epoch.Add(time.Second)) {
			t.Errorf("vehicle veh-1 = %+v, want last seen through agent-cebu-1 in Cebu at %s, first seen %s", v, storetest.Epoch.Add(time.Second), first)
		}
		var a agentValue
		if err := json.Unmarshal(tx.Bucket(bucketAgents).Get([]byte(storetest.Agent)), &a); err != nil {
			return err
		}
		if a.Region != storetest.Region || !fromMicros(a.FirstSeen).Equal(storetest.Epoch) || !fromMicros(a.LastSeen).Equal(storetest.Epoch) {
			t.Errorf("agent %s = %+v, want region %s, seen at %s", storetest.Agent, a, storetest.Region, storetest.Epoch)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("View: %v", err)
	}
}

func TestStore_Metrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	s := openStore(t, Config{Registerer: reg})
	b := storetest.FixBatch(1, 4, "veh-1")
	commit(t, s, b)
	commit(t, s, b)
	commit(t, s, storetest.NewBatch(storetest.SOSRecord(1, "veh-1", "sos-1", storetest.Epoch), storetest.CancelRecord(2, "veh-1", "sos-9", "", storetest.Epoch)))
	if _, err := s.CommitBatch(testContext(t), nil); err == nil {
		t.Error("CommitBatch(nil) succeeded")
	}
	bad := storetest.FixBatch(1, 2, "veh-1")
	bad.Records[1].Seq = 1
	if _, err := s.CommitBatch(testContext(t), bad); err == nil {
		t.Error("CommitBatch of a batch with repeated seq succeeded")
	}

	if got := testutil.ToFloat64(s.metrics.recordsCommitted.WithLabelValues("fix")); got != 4 {
		t.Errorf("records committed (fix) = %v, want 4", got)
	}
	if got := testutil.ToFloat64(s.metrics.recordsCommitted.WithLabelValues("sos")); got != 1 {
		t.Errorf("records committed (sos) = %v, want 1", got)
	}
	if got := testutil.ToFloat64(s.metrics.duplicates); got != 4 {
		t.Errorf("duplicates skipped = %v, want 4", got)
	}
	if got := testutil.ToFloat64(s.metrics.incidentsOpened); got != 1 {
		t.Errorf("incidents opened = %v, want 1", got)
	}
	if got := testutil.ToFloat64(s.metrics.cancelsUnmatched); got != 1 {
		t.Errorf("unmatched cancels = %v, want 1", got)
	}
	if got := testutil.ToFloat64(s.metrics.commitErrors.WithLabelValues("invalid")); got != 1 {
		t.Errorf("commit errors (invalid) = %v, want 1", got)
	}
	if n := testutil.CollectAndCount(s.metrics.commitSeconds); n != 1 {
		t.Errorf("commit histogram series = %d, want 1", n)
	}

	// Operator actions are counted by action and result.
	incidents, err := s.Incidents(testContext(t), store.IncidentFilter{})
	if err != nil || len(incidents) != 1 {
		t.Fatalf("Incidents = %d, %v, want 1", len(incidents), err)
	}
	id := incidents[0].ID
	if _, err := s.AcknowledgeIncident(testContext(t), id, storetest.Operator); err != nil {
		t.Fatalf("acknowledge: %v", err)
	}
	s.AcknowledgeIncident(testContext(t), id, storetest.Operator)    //nolint:errcheck // counted as a conflict
	s.AddIncidentNote(testContext(t), id, storetest.Operator, " ")   //nolint:errcheck // counted as invalid
	s.ResolveIncident(testContext(t), id+1, storetest.Operator, "x") //nolint:errcheck // counted as not found
	for _, c := range []struct{ action, result string }{
		{"acknowledge", "ok"}, {"acknowledge", "conflict"}, {"note", "invalid"}, {"resolve", "not_found"},
	} {
		if got := testutil.ToFloat64(s.metrics.incidentActions.WithLabelValues(c.action, c.result)); got != 1 {
			t.Errorf("incident actions (%s, %s) = %v, want 1", c.action, c.result, got)
		}
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var size float64
	for _, mf := range families {
		if mf.GetName() == "xpress_store_file_size_bytes" {
			size = mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	if info, err := os.Stat(s.Path()); err != nil || size != float64(info.Size()) || size == 0 {
		t.Errorf("file size gauge = %v, want the file's size (%v)", size, err)
	}
	problems, err := promlint.NewWithMetricFamilies(families).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	// A second store may share the registry.
	New(Config{Path: filepath.Join(t.TempDir(), "other.db"), Registerer: reg})
}

func TestCodec_FixRoundTrip(t *testing.T) {
	speed, nan := 12.5, math.NaN()
	for _, f := range []store.StoredFix{
		{VehicleID: "veh-1", AgentID: "agent-1", Region: "NCR", Fix: protocol.Fix{Time: storetest.Epoch, Lat: 14.6, Lon: 121}, ReceivedAt: storetest.Epoch},
		{VehicleID: "v", Fix: protocol.Fix{Time: minStorableTime, Lat: -90, Lon: -180, SpeedKmh: &speed, BatteryPct: &nan}, ReceivedAt: maxStorableTime, Historical: true},
	} {
		got, err := decodeFix(encodeFix(&f))
		if err != nil {
			t.Fatalf("decodeFix: %v", err)
		}
		if got.VehicleID != f.VehicleID || got.AgentID != f.AgentID || got.Region != f.Region || got.Historical != f.Historical ||
			!got.Fix.Time.Equal(f.Fix.Time) || !got.ReceivedAt.Equal(f.ReceivedAt) || got.Fix.Lat != f.Fix.Lat || got.Fix.Lon != f.Fix.Lon ||
			(f.Fix.SpeedKmh != nil) != (got.Fix.SpeedKmh != nil) || got.Fix.HeadingDeg != nil || got.Fix.AccuracyM != nil || got.Fix.AltM != nil ||
			(f.Fix.BatteryPct != nil) != (got.Fix.BatteryPct != nil) {
			t.Errorf("round trip of %+v gave %+v", f, got)
		}
	}
	valid := encodeFix(&store.StoredFix{VehicleID: "veh-1", Fix: protocol.Fix{SpeedKmh: &speed}})
	for _, v := range [][]byte{nil, {2}, valid[:20], valid[:len(valid)-1], valid[:35]} {
		if _, err := decodeFix(v); !errors.Is(err, ErrCorrupt) {
			t.Errorf("decodeFix(%x): error %v, want ErrCorrupt", v, err)
		}
	}
}

func TestCodec_TimeKeyOrder(t *testing.T) {
	times := []time.Time{minStorableTime, time.Date(-5000, 1, 1, 0, 0, 0, 0, time.UTC), time.Unix(-1, 999999000),
		time.Unix(0, 0), time.Unix(0, 1000), storetest.Epoch, maxStorableTime}
	for i := 1; i < len(times); i++ {
		a, b := timeKey(times[i-1]), timeKey(times[i])
		if a >= b {
			t.Errorf("timeKey(%s) = %d is not below timeKey(%s) = %d", times[i-1], a, times[i], b)
		}
		if got := keyTime(b); !got.Equal(times[i]) {
			t.Errorf("keyTime(timeKey(%s)) = %s", times[i], got)
		}
	}
}

// waitFor polls cond until it holds, failing the test after 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ticker := time.NewTicker(5 * time.Millisecond)
	defer ticker.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after 10s waiting for %s", what)
		case <-ticker.C:
		}
	}
}
