package localsos

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/internal/testlog"
	"github.com/xpress-ops/tower/protocol"
)

// trackedKeys returns the keys of the index of tracked entries in the
// closed store file at path.
func trackedKeys(t *testing.T, path string) []string {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var keys []string
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(trackedBucket)
		if b == nil {
			return fmt.Errorf("no %s bucket", trackedBucket)
		}
		return b.ForEach(func(k, _ []byte) error {
			keys = append(keys, string(k))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// The store indexes the entries that still need work, so the readers
// that run every second skip the closed entries kept for days.
func TestStore_TracksOnlyEntriesNeedingWork(t *testing.T) {
	path := filepath.Join(t.TempDir(), File)
	clock := newClock(epoch)
	s := New(Config{Path: path, Now: clock.Now})
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"sos-open", "sos-closed", "sos-closed-notified"} {
		if _, _, err := s.Record("taxi-1", testSOS(id), epoch); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.UpdateNotification("taxi-1", "sos-closed-notified", "sms", "+639171234567", func(n *Notification, _ bool) (bool, error) {
		n.State = NotificationSent
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{"sos-closed", "sos-closed-notified"} {
		if _, _, err := s.Apply(protocol.SOSStateUpdate{VehicleID: "taxi-1", SOSID: id, IncidentID: int64(i + 1),
			State: protocol.SOSState{State: protocol.SOSStateResolved, TS: epoch.Add(time.Minute), Message: "resolved"}}); err != nil {
			t.Fatal(err)
		}
	}
	tracked, err := s.ListTracked()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range tracked {
		ids = append(ids, e.SOSID)
	}
	// The closed SOS with a notification not yet reported stays tracked.
	if got, want := strings.Join(ids, ","), "sos-closed-notified,sos-open"; got != want {
		t.Errorf("tracked = %s, want %s", got, want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := trackedKeys(t, path); strings.Join(got, ",") != "taxi-1/sos-closed-notified,taxi-1/sos-open" {
		t.Errorf("index in the file = %v, want the two tracked entries only", got)
	}

	// A file written without the index gets it rebuilt at Open.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(trackedBucket) }); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	reopened := openStore(t, path, clock, nil)
	active, err := reopened.ListActive()
	if err != nil || len(active) != 1 || active[0].SOSID != "sos-open" {
		t.Errorf("active after rebuilding the index = %+v, %v; want sos-open", active, err)
	}
}

// The last hub contact survives a restart and never moves back.
func TestStore_HubContactSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), File)
	clock := newClock(epoch)
	s := New(Config{Path: path, Now: clock.Now})
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	if got, err := s.HubContact(); err != nil || !got.IsZero() {
		t.Fatalf("contact of a new store = %v, %v; want zero", got, err)
	}
	first, err := s.MarkFirstStart(epoch)
	if err != nil || !first.Equal(epoch) {
		t.Fatalf("first start = %v, %v; want %v", first, err, epoch)
	}
	if err := s.SetHubContact(epoch.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetHubContact(epoch); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	reopened := openStore(t, path, clock, nil)
	if got, err := reopened.HubContact(); err != nil || !got.Equal(epoch.Add(time.Minute)) {
		t.Errorf("contact after restart = %v, %v; want %v", got, err, epoch.Add(time.Minute))
	}
	if got, err := reopened.MarkFirstStart(epoch.Add(time.Hour)); err != nil || !got.Equal(epoch) {
		t.Errorf("first start after restart = %v, %v; want the first one, %v", got, err, epoch)
	}
}

// A driver's cancel reaches the store from the spool's SOS lane; the SOS
// stays open.
func TestRelay_RecordsDriverCancel(t *testing.T) {
	a := startAgentSideWith(t, t.TempDir(), func(c *RelayConfig) { c.ScanInterval = 20 * time.Millisecond }, nil)
	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")
	pressSOS(v, "sos-1")
	v.nextState("sos-1")
	v.publish(protocol.VehicleTopicFor(testVehicle, protocol.TopicSOSCancel), false, `{"id":"sos-1","reason":"pressed by mistake"}`)

	deadline := time.Now().Add(waitTimeout)
	var e Entry
	for {
		var err error
		if e, err = a.store.Get(testVehicle, "sos-1"); err != nil {
			t.Fatal(err)
		}
		if e.CancelRequested() || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !e.CancelRequested() || e.CancelReason != "pressed by mistake" {
		t.Fatalf("entry = %+v, want the driver's cancel with its reason", e)
	}
	if !e.Active() || e.State != protocol.SOSStateReceived {
		t.Errorf("state after the cancel = %s, want still received: only the hub closes an SOS", e.State)
	}
}

// Of acknowledgements at the same time, exactly one is recorded; the
// others learn who came first. The log names the record's spool seq.
func TestRelay_ConcurrentLocalAcks(t *testing.T) {
	logs := &lockedBuffer{}
	a := startAgentSideWith(t, t.TempDir(), func(c *RelayConfig) {
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	}, nil)
	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")
	pressSOS(v, "sos-1")
	v.nextState("sos-1")

	const n = 8
	var wg sync.WaitGroup
	recorded := make([]bool, n)
	entries := make([]Entry, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, ok, err := a.relay.AcknowledgeLocal(testVehicle, "sos-1", fmt.Sprintf("Staff %d", i))
			if err != nil {
				t.Error(err)
			}
			recorded[i], entries[i] = ok, e
		}()
	}
	wg.Wait()
	winners := 0
	for i := range n {
		if recorded[i] {
			winners++
		}
		if entries[i].LocalAckBy != entries[0].LocalAckBy {
			t.Errorf("request %d sees the acknowledgement of %q, request 0 of %q", i, entries[i].LocalAckBy, entries[0].LocalAckBy)
		}
	}
	if winners != 1 {
		t.Errorf("%d requests recorded the acknowledgement, want exactly 1", winners)
	}

	recs, err := a.spool.Read(protocol.LaneSOS, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ackSeq uint64
	for _, rec := range recs {
		if rec.Kind == protocol.KindSOSAck {
			ackSeq = rec.Seq
		}
	}
	line := regexp.MustCompile(`msg="local acknowledgement queued for the hub".*`).FindString(logs.String())
	if want := "seq=" + strconv.FormatUint(ackSeq, 10) + " "; ackSeq == 0 || !strings.Contains(line+" ", want) {
		t.Errorf("log line %q, want %s", line, want)
	}
}

// Repeat presses within protocol.SOSRepeatWindow of a vehicle's first
// press group together, as at the hub; other vehicles do not join.
func TestGroupRepeats(t *testing.T) {
	at := func(d time.Duration) time.Time { return epoch.Add(d) }
	entries := []Entry{
		{VehicleID: "taxi-1", SOSID: "a", ReceivedAt: at(0)},
		{VehicleID: "taxi-2", SOSID: "b", ReceivedAt: at(time.Second)},
		{VehicleID: "taxi-1", SOSID: "c", ReceivedAt: at(protocol.SOSRepeatWindow)},
		{VehicleID: "taxi-1", SOSID: "d", ReceivedAt: at(protocol.SOSRepeatWindow + time.Second)},
		{VehicleID: "taxi-1", SOSID: "hub-only"},
	}
	var got []string
	for _, g := range GroupRepeats(entries) {
		var ids []string
		for _, e := range g {
			ids = append(ids, e.SOSID)
		}
		got = append(got, strings.Join(ids, "+"))
	}
	if want := "hub-only|a+c|b|d"; strings.Join(got, "|") != want {
		t.Errorf("groups = %s, want %s", strings.Join(got, "|"), want)
	}
}

// lockedBuffer is a log sink safe for concurrent writes and reads.
type lockedBuffer = testlog.Buffer
