package spool_test

import (
	"context"
	"testing"
	"time"

	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

// hangGuard bounds the waits below, so a delete that is never committed
// fails the test instead of hanging it. It is no statement about speed.
const hangGuard = 30 * time.Second

// openHoldingSpool opens a spool whose writer holds deletes for an hour
// after a commit of deletes alone, so a held delete stays held until a
// group takes it along.
func openHoldingSpool(t *testing.T) (*spool.Spool, string) {
	t.Helper()
	path := tempPath(t)
	s := spool.New(spool.Config{Path: path, CommitInterval: -1})
	spool.SetMinDeleteSpacing(s, time.Hour)
	if err := s.Open(); err != nil {
		t.Fatalf("open spool: %v", err)
	}
	t.Cleanup(func() {
		stats := s.Stats()
		if err := s.Close(); err != nil {
			t.Errorf("close spool: %v", err)
		}
		checkConsistent(t, path)
		checkStatsMatchFile(t, path, stats)
	})
	return s, path
}

// appendFixes appends n GPS fixes in one call.
func appendFixes(t *testing.T, s *spool.Spool, n int) {
	t.Helper()
	recs := make([]protocol.Record, n)
	for i := range recs {
		recs[i] = gpsFix(i)
	}
	mustAppend(t, s, recs...)
}

// holdDelete starts DeleteThrough(lane, through) and returns once the
// writer holds it; the channel receives its error when it is committed.
// The spool must hold deletes already (a delete-only commit happened).
func holdDelete(t *testing.T, s *spool.Spool, lane protocol.Lane, through uint64) <-chan error {
	t.Helper()
	held := spool.HeldDeletes(s)
	done := make(chan error, 1)
	go func() { done <- s.DeleteThrough(lane, through) }()
	deadline := time.Now().Add(hangGuard)
	for spool.HeldDeletes(s) == held {
		select {
		case err := <-done:
			t.Fatalf("delete of %s through %d was committed at once (error %v), want it held", lane, through, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("delete of %s through %d did not reach the writer within %s", lane, through, hangGuard)
		}
		time.Sleep(time.Millisecond)
	}
	return done
}

// waitDeleted waits for a held delete's result.
func waitDeleted(t *testing.T, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(hangGuard):
		t.Fatalf("%s: the held delete was not committed within %s", what, hangGuard)
	}
}

func TestSpool_SOSAppendCommitsWhileGPSDeleteIsHeld(t *testing.T) {
	s, _ := openHoldingSpool(t)
	appendFixes(t, s, 100)
	// The first delete commits at once; from then on deletes alone wait.
	if err := s.DeleteThrough(protocol.LaneGPS, 10); err != nil {
		t.Fatalf("first delete: %v", err)
	}
	deleted := holdDelete(t, s, protocol.LaneGPS, 50)

	sos := mustAppend(t, s, sosAlert(1))
	if sos[0].Seq != 1 {
		t.Errorf("SOS got seq %d, want 1", sos[0].Seq)
	}
	select {
	case err := <-deleted:
		t.Fatalf("the held GPS delete was committed with the SOS append (error %v), want it left out", err)
	default:
	}
	if got := s.Stats()[protocol.LaneGPS].Records; got != 90 {
		t.Errorf("gps lane holds %d records after the SOS append, want 90 (the held delete not applied)", got)
	}
	if got := mustRead(t, s, protocol.LaneSOS, 0); len(got) != 1 || got[0].SOS.ID != sos[0].SOS.ID {
		t.Fatalf("sos lane = %s, want the one SOS", jsonOf(t, got))
	}

	// A GPS append takes the held delete along.
	fix := gpsFix(500)
	mustAppend(t, s, fix)
	waitDeleted(t, deleted, "held delete after a GPS append")
	recs := mustRead(t, s, protocol.LaneGPS, 0)
	if len(recs) != 51 || recs[0].Seq != 51 || recs[50].Seq != 101 {
		t.Fatalf("gps lane holds %d records from seq %d, want 51 from seq 51 to 101", len(recs), recs[0].Seq)
	}
	if spool.HeldDeletes(s) != 0 {
		t.Errorf("writer still holds %d deletes, want none", spool.HeldDeletes(s))
	}
}

func TestSpool_HeldSOSDeleteJoinsSOSAppend(t *testing.T) {
	s, _ := openHoldingSpool(t)
	for i := range 5 {
		mustAppend(t, s, sosAlert(i))
	}
	if err := s.DeleteThrough(protocol.LaneSOS, 1); err != nil {
		t.Fatalf("first delete: %v", err)
	}
	deleted := holdDelete(t, s, protocol.LaneSOS, 3)

	// SOS-lane deletes may free the space an SOS append needs, so they
	// are committed with it.
	mustAppend(t, s, sosAlert(9))
	waitDeleted(t, deleted, "held SOS delete after an SOS append")
	recs := mustRead(t, s, protocol.LaneSOS, 0)
	if got := seqsOf(recs); !equalSeqs(got, []uint64{4, 5, 6}) {
		t.Fatalf("sos lane seqs = %v, want [4 5 6]", got)
	}
}

func TestSpool_FlushCommitsHeldDeletes(t *testing.T) {
	s, _ := openHoldingSpool(t)
	appendFixes(t, s, 20)
	if err := s.DeleteThrough(protocol.LaneGPS, 2); err != nil {
		t.Fatalf("first delete: %v", err)
	}
	deleted := holdDelete(t, s, protocol.LaneGPS, 12)
	if err := s.Flush(context.Background()); err != nil {
		t.Fatalf("flush: %v", err)
	}
	waitDeleted(t, deleted, "held delete after Flush")
	if got := s.Stats()[protocol.LaneGPS].Records; got != 8 {
		t.Errorf("gps lane holds %d records after the flush, want 8", got)
	}
}

func TestSpool_RejectFollowsHeldDelete(t *testing.T) {
	s, _ := openHoldingSpool(t)
	appendFixes(t, s, 30)
	if err := s.DeleteThrough(protocol.LaneGPS, 5); err != nil {
		t.Fatalf("first delete: %v", err)
	}
	deleted := holdDelete(t, s, protocol.LaneGPS, 10)

	// The held delete came first: the reject must find records 1 to 10 gone.
	moved, err := s.RejectThrough(protocol.LaneGPS, 20)
	if err != nil {
		t.Fatalf("reject: %v", err)
	}
	waitDeleted(t, deleted, "held delete before a reject")
	if moved != 10 {
		t.Errorf("reject moved %d records, want 10 (11 to 20; 1 to 10 were acknowledged and deleted)", moved)
	}
	rejected, err := s.ReadRejected(protocol.LaneGPS, 0, 0, 0)
	if err != nil {
		t.Fatalf("read rejected: %v", err)
	}
	if len(rejected) != 10 || rejected[0].Seq != 11 {
		t.Errorf("rejected bucket holds %d records from seq %d, want 10 from seq 11", len(rejected), rejected[0].Seq)
	}
}

func TestSpool_CloseCommitsHeldDeletes(t *testing.T) {
	path := tempPath(t)
	s := spool.New(spool.Config{Path: path})
	spool.SetMinDeleteSpacing(s, time.Hour)
	if err := s.Open(); err != nil {
		t.Fatalf("open spool: %v", err)
	}
	appendFixes(t, s, 10)
	if err := s.DeleteThrough(protocol.LaneGPS, 1); err != nil {
		t.Fatalf("first delete: %v", err)
	}
	deleted := holdDelete(t, s, protocol.LaneGPS, 7)
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	waitDeleted(t, deleted, "held delete at Close")

	s = openSpool(t, spool.Config{Path: path})
	if got := seqsOf(mustRead(t, s, protocol.LaneGPS, 0)); !equalSeqs(got, []uint64{8, 9, 10}) {
		t.Errorf("gps seqs after reopening = %v, want [8 9 10]", got)
	}
}
