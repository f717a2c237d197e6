package spool_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

// compactMinFileBytes is the compaction threshold of these tests, low
// enough that a few thousand fixes cross it.
const compactMinFileBytes = 1 << 20

// fillGPS appends fixes numbered 1 to n in batches of 200.
func fillGPS(t *testing.T, s *spool.Spool, n int) {
	t.Helper()
	for first := 1; first <= n; first += 200 {
		batch := make([]protocol.Record, 0, 200)
		for i := first; i < first+200 && i <= n; i++ {
			batch = append(batch, gpsFix(i))
		}
		mustAppend(t, s, batch...)
	}
}

func sosIDFor(writer, n int) string { return fmt.Sprintf("sos-w%d-%06d", writer, n) }

func mustFileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func histogramCount(t *testing.T, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	for _, f := range mustGather(t, reg) {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatalf("histogram %s not found", name)
	return 0
}

func TestSpool_CompactsAfterDrain(t *testing.T) {
	reg := prometheus.NewRegistry()
	path := tempPath(t)
	s := openSpool(t, spool.Config{Path: path, Registerer: reg, MaxBytes: -1, CompactMinFileBytes: compactMinFileBytes})
	const gpsTotal = 20000
	fillGPS(t, s, gpsTotal)
	for n := 1; n <= 5; n++ {
		mustAppend(t, s, sosAlert(n))
	}
	for n := 1; n <= 3; n++ {
		mustAppend(t, s, statusUpdate(n))
	}
	id := s.SpoolID()
	sosBefore := jsonOf(t, mustRead(t, s, protocol.LaneSOS, 0))
	statusBefore := jsonOf(t, mustRead(t, s, protocol.LaneStatus, 0))
	before := mustFileSize(t, path)
	if before < 4*compactMinFileBytes {
		t.Fatalf("file is %d bytes after filling, want at least %d for this test", before, 4*compactMinFileBytes)
	}

	if err := s.DeleteThrough(protocol.LaneGPS, gpsTotal-10); err != nil {
		t.Fatal(err)
	}
	// The writer compacts right after the delete, so a flush returns after it.
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}

	after := mustFileSize(t, path)
	if after >= compactMinFileBytes {
		t.Errorf("file is %d bytes after the drain (was %d), want below %d", after, before, compactMinFileBytes)
	}
	if got := counterValue(t, reg, "xpress_agent_spool_compactions_total"); got != 1 {
		t.Errorf("compactions metric = %v, want 1", got)
	}
	if got := counterValue(t, reg, "xpress_agent_spool_compaction_reclaimed_bytes_total"); got != float64(before-after) {
		t.Errorf("reclaimed bytes metric = %v, want %d", got, before-after)
	}
	if got := histogramCount(t, reg, "xpress_agent_spool_compaction_seconds"); got != 1 {
		t.Errorf("compaction seconds observations = %d, want 1", got)
	}
	if got := unlabelledGauge(t, reg, "xpress_agent_spool_file_bytes"); got != float64(after) {
		t.Errorf("file bytes gauge = %v, want %d", got, after)
	}
	if _, err := os.Stat(path + ".compact"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("compaction file left behind: stat error = %v", err)
	}

	checkSurvivedCompaction := func(t *testing.T, s *spool.Spool) {
		t.Helper()
		if s.SpoolID() != id {
			t.Errorf("spool id = %q, want %q", s.SpoolID(), id)
		}
		if got := seqsOf(mustRead(t, s, protocol.LaneGPS, 0)); len(got) != 10 || got[0] != gpsTotal-9 || got[9] != gpsTotal {
			t.Errorf("gps seqs = %v, want %d to %d", got, gpsTotal-9, gpsTotal)
		}
		if got := jsonOf(t, mustRead(t, s, protocol.LaneSOS, 0)); got != sosBefore {
			t.Errorf("sos lane changed:\n got %s\nwant %s", got, sosBefore)
		}
		if got := jsonOf(t, mustRead(t, s, protocol.LaneStatus, 0)); got != statusBefore {
			t.Errorf("status lane changed:\n got %s\nwant %s", got, statusBefore)
		}
		st := s.Stats()
		if st[protocol.LaneGPS].Records != 10 || !st[protocol.LaneGPS].Oldest.Equal(gpsFix(gpsTotal-9).ReceivedAt) {
			t.Errorf("gps stats = %+v, want 10 records, oldest %s", st[protocol.LaneGPS], gpsFix(gpsTotal-9).ReceivedAt)
		}
		if st[protocol.LaneSOS].Records != 5 || st[protocol.LaneStatus].Records != 3 {
			t.Errorf("stats = %+v, want 5 sos and 3 status records", st)
		}
	}
	checkSurvivedCompaction(t, s)

	// Appends go to the new file and continue the sequence numbers.
	recs := mustAppend(t, s, gpsFix(gpsTotal+1), sosAlert(6))
	if recs[0].Seq != gpsTotal+1 || recs[1].Seq != 6 {
		t.Errorf("seqs after compaction = %v, want [%d 6]", seqsOf(recs), gpsTotal+1)
	}
	if err := s.DeleteThrough(protocol.LaneGPS, gpsTotal+1); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteThrough(protocol.LaneSOS, 6); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Everything survives a reopen of the compacted file.
	reopened := openSpool(t, spool.Config{Path: path, CompactMinFileBytes: compactMinFileBytes})
	if got := reopened.Stats()[protocol.LaneGPS].NextSeq; got != gpsTotal+2 {
		t.Errorf("gps next seq after reopen = %d, want %d", got, gpsTotal+2)
	}
	if got := reopened.Stats()[protocol.LaneSOS].NextSeq; got != 7 {
		t.Errorf("sos next seq after reopen = %d, want 7", got)
	}
	if got := reopened.Stats()[protocol.LaneSOS].Records; got != 0 {
		t.Errorf("sos lane holds %d records after reopen, want 0", got)
	}
	if reopened.SpoolID() != id {
		t.Errorf("spool id after reopen = %q, want %q", reopened.SpoolID(), id)
	}
}

func TestSpool_AppendsDuringCompactionAreKept(t *testing.T) {
	reg := prometheus.NewRegistry()
	path := tempPath(t)
	s := openSpool(t, spool.Config{Path: path, Registerer: reg, MaxBytes: -1, CompactMinFileBytes: compactMinFileBytes})
	const gpsTotal = 20000
	fillGPS(t, s, gpsTotal)

	// Writers append SOS records before, during and after the compaction.
	const writers = 4
	stop := make(chan struct{})
	acked := make([][]protocol.Record, writers)
	errs := make(chan error, writers)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					rec := []protocol.Record{sosRecord("veh-000001", sosIDFor(w, i), i)}
					if err := s.Append(context.Background(), rec); err != nil {
						errs <- err
						return
					}
					acked[w] = append(acked[w], rec[0])
				}
			})
		}
		wg.Wait()
	}()

	if err := s.DeleteThrough(protocol.LaneGPS, gpsTotal); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A few more appends after the switch to the new file.
	mustAppend(t, s, sosAlert(1))
	close(stop)
	<-done
	close(errs)
	for err := range errs {
		t.Errorf("append during compaction: %v", err)
	}

	if got := counterValue(t, reg, "xpress_agent_spool_compactions_total"); got != 1 {
		t.Fatalf("compactions metric = %v, want 1", got)
	}
	want := 1
	for _, recs := range acked {
		want += len(recs)
	}
	sos := mustRead(t, s, protocol.LaneSOS, 0)
	if len(sos) != want {
		t.Fatalf("sos lane holds %d records, want the %d acknowledged", len(sos), want)
	}
	bySeq := map[uint64]string{}
	for i, rec := range sos {
		if rec.Seq != uint64(i+1) {
			t.Fatalf("sos record %d has seq %d, want %d", i, rec.Seq, i+1)
		}
		bySeq[rec.Seq] = rec.SOS.ID
	}
	for w, recs := range acked {
		for _, rec := range recs {
			if bySeq[rec.Seq] != rec.SOS.ID {
				t.Errorf("writer %d: acknowledged SOS %s got seq %d, which holds %q", w, rec.SOS.ID, rec.Seq, bySeq[rec.Seq])
			}
		}
	}
}

func TestSpool_CompactsDrainedFileAtOpen(t *testing.T) {
	path := tempPath(t)
	first := spool.New(spool.Config{Path: path, MaxBytes: -1, CompactMinFileBytes: -1})
	if err := first.Open(); err != nil {
		t.Fatal(err)
	}
	fillGPS(t, first, 20000)
	mustAppend(t, first, sosAlert(1))
	if err := first.DeleteThrough(protocol.LaneGPS, 20000); err != nil {
		t.Fatal(err)
	}
	id := first.SpoolID()
	// Compaction is off, as if the agent crashed right after the drain.
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	before := mustFileSize(t, path)

	reg := prometheus.NewRegistry()
	s := openSpool(t, spool.Config{Path: path, Registerer: reg, CompactMinFileBytes: compactMinFileBytes})

	if after := mustFileSize(t, path); after >= compactMinFileBytes {
		t.Errorf("file is %d bytes after Open (was %d), want below %d", after, before, compactMinFileBytes)
	}
	if got := counterValue(t, reg, "xpress_agent_spool_compactions_total"); got != 1 {
		t.Errorf("compactions metric = %v, want 1", got)
	}
	if s.SpoolID() != id {
		t.Errorf("spool id = %q, want %q", s.SpoolID(), id)
	}
	if got := s.Stats()[protocol.LaneGPS].NextSeq; got != 20001 {
		t.Errorf("gps next seq = %d, want 20001", got)
	}
	sos := mustRead(t, s, protocol.LaneSOS, 0)
	if len(sos) != 1 || sos[0].SOS.ID != "sos-000001" {
		t.Errorf("sos lane = %s, want sos-000001", jsonOf(t, sos))
	}
	if recs := mustAppend(t, s, gpsFix(20001)); recs[0].Seq != 20001 {
		t.Errorf("first gps seq after compaction at Open = %d, want 20001", recs[0].Seq)
	}
}

func TestSpool_OpenDeletesLeftoverCompactFile(t *testing.T) {
	path := tempPath(t)
	first := spool.New(spool.Config{Path: path})
	if err := first.Open(); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, first, sosAlert(1), gpsFix(1))
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	// A crash during a compaction leaves a partial copy next to the spool file.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".compact", data[:len(data)/2], 0o600); err != nil {
		t.Fatal(err)
	}

	s := openSpool(t, spool.Config{Path: path})

	if _, err := os.Stat(path + ".compact"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("leftover compaction file still there after Open: stat error = %v", err)
	}
	if got := len(mustRead(t, s, protocol.LaneSOS, 0)); got != 1 {
		t.Errorf("sos lane holds %d records, want 1", got)
	}
	if got := len(mustRead(t, s, protocol.LaneGPS, 0)); got != 1 {
		t.Errorf("gps lane holds %d records, want 1", got)
	}
}
