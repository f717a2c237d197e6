package localsos

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/xpress-ops/tower/protocol"
)

func TestStore_BackfillRecordsOnlyMissing(t *testing.T) {
	clock := newClock(epoch)
	s := openStore(t, "", clock, nil)
	mustRecord(t, s, "sos-known", epoch)
	recs := []protocol.Record{
		{Seq: 4, Kind: protocol.KindSOS, VehicleID: "taxi-1", ReceivedAt: epoch, SOS: testSOS("sos-known")},
		{Seq: 5, Kind: protocol.KindSOSAck, VehicleID: "taxi-1", ReceivedAt: epoch, Ack: &protocol.LocalAck{SOSID: "sos-known", Actor: "Jo", At: epoch}},
		{Seq: 6, Kind: protocol.KindSOS, VehicleID: "taxi-1", ReceivedAt: epoch.Add(time.Second), SOS: testSOS("sos-new")},
		// A copy of the new SOS keeps the first copy's place.
		{Seq: 7, Kind: protocol.KindSOS, VehicleID: "taxi-1", ReceivedAt: epoch.Add(2 * time.Second), SOS: testSOS("sos-new")},
		{Seq: 8, Kind: protocol.KindSOS, VehicleID: "bad/vehicle", ReceivedAt: epoch, SOS: testSOS("sos-x")},
	}
	changed, err := s.Backfill(recs, "spool-a")
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) != 1 || changed[0].SOSID != "sos-new" || changed[0].State != protocol.SOSStateReceived {
		t.Fatalf("changed = %+v, want only sos-new as received", changed)
	}
	got, err := s.Get("taxi-1", "sos-new")
	if err != nil || got.SpoolID != "spool-a" || got.SpoolSeq != 6 || !got.ReceivedAt.Equal(epoch.Add(time.Second)) {
		t.Errorf("sos-new = %+v, %v; want spool-a seq 6 received at the first copy", got, err)
	}
	known, err := s.Get("taxi-1", "sos-known")
	if err != nil || known.SpoolSeq != 4 || known.SpoolID != "spool-a" || known.State != protocol.SOSStateReceived {
		t.Errorf("sos-known = %+v, %v; want its spool place filled in and nothing else changed", known, err)
	}
	if again, err := s.Backfill(recs, "spool-a"); err != nil || len(again) != 0 {
		t.Errorf("second backfill changed %+v, %v; want nothing", again, err)
	}
	all, err := s.List()
	if err != nil || len(all) != 2 {
		t.Errorf("List = %+v, %v; want the two SOS", all, err)
	}
}

func TestStore_MarkLocalAckReported(t *testing.T) {
	clock := newClock(epoch)
	s := openStore(t, "", clock, nil)
	mustRecord(t, s, "sos-1", epoch)
	if _, err := s.MarkLocalAckReported("taxi-1", "sos-1"); !errors.Is(err, ErrInvalid) {
		t.Errorf("report without an acknowledgement: error %v, want ErrInvalid", err)
	}
	if _, err := s.MarkLocalAckReported("taxi-1", "sos-404"); !errors.Is(err, ErrNotFound) {
		t.Errorf("report of an unknown SOS: error %v, want ErrNotFound", err)
	}
	if _, _, err := s.MarkLocalAck("taxi-1", "sos-1", "Ana Reyes", epoch); err != nil {
		t.Fatal(err)
	}
	e, err := s.MarkLocalAckReported("taxi-1", "sos-1")
	if err != nil || !e.LocalAckReported {
		t.Errorf("MarkLocalAckReported = %+v, %v; want reported", e, err)
	}
}

func TestStore_NotificationsSurviveRestart(t *testing.T) {
	clock := newClock(epoch)
	path := filepath.Join(t.TempDir(), File)
	s := openStore(t, path, clock, nil)
	mustRecord(t, s, "sos-1", epoch)

	begin := func(n *Notification, found bool) (bool, error) {
		if n.Done() {
			return false, nil
		}
		n.State, n.Attempts, n.LastAttemptAt = NotificationSending, n.Attempts+1, clock.Now()
		if !found {
			n.FirstAttemptAt = clock.Now()
		}
		return true, nil
	}
	n, err := s.UpdateNotification("taxi-1", "sos-1", "sms", "+639171234567", begin)
	if err != nil || n.State != NotificationSending || n.Attempts != 1 || !n.FirstAttemptAt.Equal(epoch) {
		t.Fatalf("first attempt = %+v, %v", n, err)
	}
	clock.Set(epoch.Add(time.Minute))
	if n, err = s.UpdateNotification("taxi-1", "sos-1", "sms", "+639171234567", begin); err != nil || n.Attempts != 2 || !n.FirstAttemptAt.Equal(epoch) {
		t.Fatalf("second attempt = %+v, %v; want 2 attempts, the first one's time kept", n, err)
	}
	if _, err := s.UpdateNotification("taxi-1", "sos-1", "sms", "+639170000002", begin); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateNotification("taxi-1", "sos-404", "sms", "+639171234567", begin); !errors.Is(err, ErrNotFound) {
		t.Errorf("notification of an unknown SOS: error %v, want ErrNotFound", err)
	}
	if _, err := s.UpdateNotification("taxi-1", "sos-1", "sms", "", begin); !errors.Is(err, ErrInvalid) {
		t.Errorf("notification without address: error %v, want ErrInvalid", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, path, clock, nil)
	e, err := s.Get("taxi-1", "sos-1")
	if err != nil {
		t.Fatal(err)
	}
	got, ok := e.Notification("sms", "+639171234567")
	if !ok || got.State != NotificationSending || got.Attempts != 2 {
		t.Errorf("notification after reopen = %+v (found %v), want sending after 2 attempts", got, ok)
	}
	if len(e.Notifications) != 2 {
		t.Errorf("%d notifications, want 2", len(e.Notifications))
	}
}
