package embedded

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/protocol"
)

// bucketDump is the whole content of one bucket.
type bucketDump struct {
	Sequence uint64
	Items    map[string]string
}

// dump returns every bucket of the store's file with its sequence.
func dump(t *testing.T, s *Store) map[string]bucketDump {
	t.Helper()
	out := map[string]bucketDump{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			d := bucketDump{Sequence: b.Sequence(), Items: map[string]string{}}
			out[string(name)] = d
			return b.ForEach(func(k, v []byte) error {
				d.Items[string(k)] = string(v)
				return nil
			})
		})
	})
	if err != nil {
		t.Fatalf("dump store: %v", err)
	}
	return out
}

// diffDumps describes how two dumps differ, bucket by bucket.
func diffDumps(before, after map[string]bucketDump) string {
	var buf bytes.Buffer
	for name, b := range before {
		a := after[name]
		if a.Sequence != b.Sequence {
			fmt.Fprintf(&buf, "%s: sequence %d, was %d\n", name, a.Sequence, b.Sequence)
		}
		if !reflect.DeepEqual(a.Items, b.Items) {
			fmt.Fprintf(&buf, "%s: %d entries, were %d\n", name, len(a.Items), len(b.Items))
		}
	}
	return buf.String()
}

func TestStore_FailedCommitLeavesNoTrace(t *testing.T) {
	t.Parallel()
	s := openStore(t, Config{})
	epoch := storetest.Epoch
	commit(t, s, storetest.FixBatch(1, 3, "veh-1"))
	commit(t, s, storetest.NewBatch(storetest.SOSRecord(1, "veh-9", "sos-0", epoch.Add(-time.Hour))))
	commit(t, s, storetest.NewBatch(storetest.StatusRecord(1, "veh-1", true, epoch.Add(-time.Hour))))
	before := dump(t, s)

	// Each batch changes every kind of entry its lane can touch before
	// its last record fails.
	gps := storetest.NewBatch(
		storetest.FixRecord(4, "veh-1", epoch.Add(-time.Minute), 14.6, 121.0),
		storetest.FixRecord(5, "veh-2", epoch, 10.3, 123.9),
		storetest.FixRecord(6, "veh-2", epoch.Add(-time.Second), 10.3, 123.9),
	)
	sos := storetest.NewBatch(
		storetest.SOSRecord(2, "veh-1", "sos-1", epoch),
		storetest.SOSRecord(3, "veh-1", "sos-1", epoch.Add(time.Second)),
		storetest.SOSRecord(4, "veh-1", "sos-2", epoch),
		storetest.CancelRecord(5, "veh-9", "sos-0", "", epoch),
		storetest.CancelRecord(6, "veh-1", "sos-unknown", "", epoch),
		storetest.SOSRecord(7, "veh-1", "sos-1", epoch),
		storetest.AckRecord(8, "veh-9", "sos-0", "Maria", epoch),
		storetest.NotifiedRecord(9, "veh-9", "sos-0", store.ChannelSMS, "+639171234567", "SM-1", "", epoch),
		storetest.SOSRecord(10, "veh-2", "sos-3", epoch),
	)
	status := storetest.NewBatch(
		storetest.StatusRecord(2, "veh-1", false, epoch),
		storetest.StatusRecord(3, "veh-3", true, epoch),
	)
	errInjected := errors.New("injected failure")
	for _, b := range []*protocol.Batch{gps, sos, status} {
		failAt := b.Last()
		s.afterRecord = func(r *protocol.Record) error {
			if r.Seq == failAt {
				return errInjected
			}
			return nil
		}
		if _, err := s.CommitBatch(testContext(t), b); !errors.Is(err, errInjected) {
			t.Fatalf("%s batch failing at seq %d: error %v, want the injected failure", b.Lane, failAt, err)
		}
		if diff := diffDumps(before, dump(t, s)); diff != "" {
			t.Errorf("the failed %s batch left changes:\n%s", b.Lane, diff)
		}
	}
	if got := testutil.ToFloat64(s.metrics.incidentsOpened); got != 1 {
		t.Errorf("incidents opened metric = %v, want 1: failed commits open nothing", got)
	}
	if got := testutil.ToFloat64(s.metrics.cancelsUnmatched); got != 0 {
		t.Errorf("unmatched cancels metric = %v, want 0: the failed commit's cancel does not count", got)
	}
	if got := testutil.ToFloat64(s.metrics.commitErrors.WithLabelValues("other")); got != 3 {
		t.Errorf("commit errors (other) = %v, want 3", got)
	}

	// Resent without the failure, each batch is stored whole, once.
	s.afterRecord = nil
	if res := commit(t, s, gps); len(res.Fixes) != 3 || res.Through != 6 {
		t.Errorf("resent GPS batch: %d fixes, through %d, want 3 and 6", len(res.Fixes), res.Through)
	}
	res := commit(t, s, sos)
	if len(res.Incidents) != 8 {
		t.Fatalf("resent SOS batch: %d incident changes, want 8", len(res.Incidents))
	}
	if c := res.Incidents[0]; !c.Opened || c.Incident.ID != 2 || c.Event.ID != 2 {
		t.Errorf("first SOS after the failures: opened=%v incident=%d event=%d, want incident 2 and event 2: failed commits use up no ids",
			c.Opened, c.Incident.ID, c.Event.ID)
	}
	if c := res.Incidents[2]; c.Incident.ID != 2 || c.Incident.Presses != 3 {
		t.Errorf("sos-2 within the window: incident %d presses %d, want 2 and 3", c.Incident.ID, c.Incident.Presses)
	}
	if c := res.Incidents[4]; c.Event.Type != store.EventRedelivered || c.Incident.Presses != 3 {
		t.Errorf("redelivered sos-1: event %s presses %d, want %s and 3", c.Event.Type, c.Incident.Presses, store.EventRedelivered)
	}
	if c := res.Incidents[7]; !c.Opened || c.Incident.ID != 3 {
		t.Errorf("veh-2's SOS: opened=%v incident=%d, want incident 3", c.Opened, c.Incident.ID)
	}
	if res := commit(t, s, status); len(res.Statuses) != 2 {
		t.Errorf("resent status batch stored %d statuses, want 2", len(res.Statuses))
	}
	if got := testutil.ToFloat64(s.metrics.incidentsOpened); got != 3 {
		t.Errorf("incidents opened metric = %v, want 3", got)
	}
	if got := testutil.ToFloat64(s.metrics.cancelsUnmatched); got != 1 {
		t.Errorf("unmatched cancels metric = %v, want 1", got)
	}
}

// crashChildEnv names the variable that makes the test binary run
// runCrashChild on the given file instead of the tests.
const crashChildEnv = "XPRESS_EMBEDDED_CRASH_CHILD"

// crashBatchSize is the number of fixes per batch the crash child commits.
const crashBatchSize = 100

// runCrashChild commits batches to the store file at path until the
// process is killed. From the stored cursors on, it commits a GPS batch
// of crashBatchSize fixes, then an SOS batch that opens one incident, and
// prints both cursors after each pair.
func runCrashChild(path string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(2)
	}
	s := New(Config{Path: path, RetentionInterval: -1, Now: storetest.NewClock(storetest.Epoch).Now})
	ctx := context.Background()
	if err := s.Open(ctx); err != nil {
		fail(err)
	}
	gps, err := s.Cursor(ctx, storetest.Agent, storetest.Spool, protocol.LaneGPS)
	if err != nil {
		fail(err)
	}
	sos, err := s.Cursor(ctx, storetest.Agent, storetest.Spool, protocol.LaneSOS)
	if err != nil {
		fail(err)
	}
	for {
		if gps == sos*crashBatchSize {
			if _, err := s.CommitBatch(ctx, storetest.FixBatch(gps+1, crashBatchSize, "veh-1")); err != nil {
				fail(err)
			}
			gps += crashBatchSize
		}
		rec := storetest.SOSRecord(sos+1, fmt.Sprintf("veh-%d", sos+1), "sos-1", storetest.Epoch)
		if _, err := s.CommitBatch(ctx, storetest.NewBatch(rec)); err != nil {
			fail(err)
		}
		sos++
		fmt.Printf("%d %d\n", gps, sos)
	}
}

// runAndKill starts the crash child on path, reads the cursors it reports
// until it reported commits pairs, kills it with SIGKILL and returns the
// last cursors it reported.
func runAndKill(t *testing.T, path string, commits int) (gps, sos uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("stdout pipe: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start crash child: %v", err)
	}

	lines := bufio.NewScanner(stdout)
	n := 0
	for n < commits && lines.Scan() {
		if _, err := fmt.Sscanf(lines.Text(), "%d %d", &gps, &sos); err != nil {
			t.Errorf("crash child printed %q: %v", lines.Text(), err)
		}
		n++
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Errorf("kill crash child: %v", err)
	}
	waitErr := cmd.Wait()
	if n < commits {
		t.Fatalf("crash child stopped after %d of %d commits (%v): %s", n, commits, waitErr, stderr.String())
	}
	return gps, sos
}

// TestStore_KilledProcessKeepsWholeBatches kills a process that commits
// batches without pause, three times, and checks after each kill that
// every batch is in the file whole or not at all.
func TestStore_KilledProcessKeepsWholeBatches(t *testing.T) {
	t.Parallel()
	path := tempPath(t)
	for round := range 3 {
		reportedGPS, reportedSOS := runAndKill(t, path, 15)

		s := New(Config{Path: path, RetentionInterval: -1, Now: storetest.NewClock(storetest.Epoch).Now})
		if err := s.Open(testContext(t)); err != nil {
			t.Fatalf("round %d: open after the kill: %v", round, err)
		}
		gps, err := s.Cursor(testContext(t), storetest.Agent, storetest.Spool, protocol.LaneGPS)
		if err != nil {
			t.Fatalf("round %d: GPS cursor: %v", round, err)
		}
		sos, err := s.Cursor(testContext(t), storetest.Agent, storetest.Spool, protocol.LaneSOS)
		if err != nil {
			t.Fatalf("round %d: SOS cursor: %v", round, err)
		}
		if gps < reportedGPS || sos < reportedSOS {
			t.Errorf("round %d: cursors gps %d, sos %d are behind the reported commits %d, %d", round, gps, sos, reportedGPS, reportedSOS)
		}
		if gps != sos*crashBatchSize && gps != (sos+1)*crashBatchSize {
			t.Errorf("round %d: GPS cursor %d with SOS cursor %d: a batch was committed in part", round, gps, sos)
		}
		fixes, err := s.Fixes(testContext(t), "veh-1", storetest.Epoch.AddDate(-1, 0, 0), storetest.Epoch.AddDate(1, 0, 0), 1<<20)
		if err != nil || uint64(len(fixes)) != gps {
			t.Errorf("round %d: %d fixes (%v), want %d, the GPS cursor", round, len(fixes), err, gps)
		}
		incidents, err := s.Incidents(testContext(t), store.IncidentFilter{Limit: 1 << 20})
		if err != nil || uint64(len(incidents)) != sos {
			t.Errorf("round %d: %d incidents (%v), want %d, the SOS cursor", round, len(incidents), err, sos)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("round %d: close: %v", round, err)
		}
		checkConsistent(t, path)
	}
}
