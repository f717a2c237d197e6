package spool_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

func TestMain(m *testing.M) {
	// The test binary doubles as the helper process of
	// TestSpool_FileSizeLimitOfProcess; see runFileSizeLimitChild.
	if path := os.Getenv(fileSizeLimitChildEnv); path != "" {
		os.Exit(runFileSizeLimitChild(path))
	}
	goleak.VerifyTestMain(m)
}

var baseTime = time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)

// openSpool opens a spool on path and closes it on cleanup, then checks
// the file's bbolt consistency and that the spool's statistics match the
// records in the file.
func openSpool(t *testing.T, cfg spool.Config) *spool.Spool {
	t.Helper()
	s := spool.New(cfg)
	if err := s.Open(); err != nil {
		t.Fatalf("open spool: %v", err)
	}
	t.Cleanup(func() {
		stats := s.Stats()
		if err := s.Close(); err != nil {
			t.Errorf("close spool: %v", err)
		}
		checkConsistent(t, cfg.Path)
		checkStatsMatchFile(t, cfg.Path, stats)
	})
	return s
}

// checkStatsMatchFile checks that each lane's record count and bytes in
// stats are those of the records in the file at path.
func checkStatsMatchFile(t *testing.T, path string, stats map[protocol.Lane]spool.LaneStats) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Errorf("open %s to compare statistics: %v", path, err)
		return
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for _, lane := range protocol.Lanes {
			records, bytes := 0, int64(0)
			err := tx.Bucket([]byte(lane)).ForEach(func(_, v []byte) error {
				records++
				bytes += int64(len(v))
				return nil
			})
			if err != nil {
				return err
			}
			if st := stats[lane]; st.Records != records || st.Bytes != bytes {
				t.Errorf("%s lane statistics say %d records, %d bytes; the file holds %d records, %d bytes",
					lane, st.Records, st.Bytes, records, bytes)
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("read %s to compare statistics: %v", path, err)
	}
}

func checkConsistent(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Errorf("open %s for the consistency check: %v", path, err)
		return
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	})
	if err != nil {
		t.Errorf("spool file %s is inconsistent: %v", path, err)
	}
}

func tempPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "spool.db")
}

func fixRecord(vehicle string, n int) protocol.Record {
	return protocol.Record{
		Kind:       protocol.KindFix,
		VehicleID:  vehicle,
		ReceivedAt: baseTime.Add(time.Duration(n) * time.Second),
		Fix:        &protocol.Fix{Time: baseTime.Add(time.Duration(n) * time.Second), Lat: 14.5995, Lon: 120.9842 + float64(n)/1e4},
	}
}

func sosRecord(vehicle, id string, n int) protocol.Record {
	return protocol.Record{
		Kind:       protocol.KindSOS,
		VehicleID:  vehicle,
		ReceivedAt: baseTime.Add(time.Duration(n) * time.Second),
		SOS:        &protocol.SOS{ID: id, Time: baseTime, Kind: protocol.SOSPanic, HasLocation: true, Lat: 10.3157, Lon: 123.8854},
	}
}

func mustAppend(t *testing.T, s *spool.Spool, recs ...protocol.Record) []protocol.Record {
	t.Helper()
	if err := s.Append(context.Background(), recs); err != nil {
		t.Fatalf("append: %v", err)
	}
	return recs
}

func mustRead(t *testing.T, s *spool.Spool, lane protocol.Lane, after uint64) []protocol.Record {
	t.Helper()
	recs, err := s.Read(lane, after, 0, 0)
	if err != nil {
		t.Fatalf("read %s after %d: %v", lane, after, err)
	}
	return recs
}

func seqsOf(recs []protocol.Record) []uint64 {
	out := make([]uint64, len(recs))
	for i, r := range recs {
		out[i] = r.Seq
	}
	return out
}

func equalSeqs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestSpool_AssignsSeqsPerLane(t *testing.T) {
	s := openSpool(t, spool.Config{Path: tempPath(t)})

	recs := mustAppend(t, s, fixRecord("v1", 1), sosRecord("v1", "s1", 2), fixRecord("v1", 3), sosRecord("v2", "s2", 4))

	if got, want := seqsOf(recs), []uint64{1, 1, 2, 2}; !equalSeqs(got, want) {
		t.Errorf("assigned seqs = %v, want %v (gps 1, sos 1, gps 2, sos 2)", got, want)
	}
	gps := mustRead(t, s, protocol.LaneGPS, 0)
	if got := seqsOf(gps); !equalSeqs(got, []uint64{1, 2}) {
		t.Errorf("gps lane seqs = %v, want [1 2]", got)
	}
	sos := mustRead(t, s, protocol.LaneSOS, 0)
	if len(sos) != 2 || sos[0].SOS.ID != "s1" || sos[1].SOS.ID != "s2" {
		t.Errorf("sos lane = %s, want s1 then s2", jsonOf(t, sos))
	}
	if len(s.SpoolID()) != 32 {
		t.Errorf("spool id %q is not 32 hex digits", s.SpoolID())
	}
}

func TestSpool_AppendsSurviveReopen(t *testing.T) {
	path := tempPath(t)
	first := spool.New(spool.Config{Path: path})
	if err := first.Open(); err != nil {
		t.Fatal(err)
	}
	want := mustAppend(t, first, fixRecord("v1", 1), sosRecord("v1", "s1", 2), fixRecord("v2", 3))
	id := first.SpoolID()
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	s := openSpool(t, spool.Config{Path: path})

	if s.SpoolID() != id {
		t.Errorf("spool id after reopen = %q, want %q", s.SpoolID(), id)
	}
	gps := mustRead(t, s, protocol.LaneGPS, 0)
	if got, want := jsonOf(t, gps), jsonOf(t, []protocol.Record{want[0], want[2]}); got != want {
		t.Errorf("gps lane after reopen:\n got %s\nwant %s", got, want)
	}
	sos := mustRead(t, s, protocol.LaneSOS, 0)
	if got, want := jsonOf(t, sos), jsonOf(t, []protocol.Record{want[1]}); got != want {
		t.Errorf("sos lane after reopen:\n got %s\nwant %s", got, want)
	}
	st := s.Stats()[protocol.LaneGPS]
	if st.Records != 2 || st.NextSeq != 3 || !st.Oldest.Equal(want[0].ReceivedAt) {
		t.Errorf("gps stats after reopen = %+v, want 2 records, next seq 3, oldest %s", st, want[0].ReceivedAt)
	}
}

func TestSpool_SeqsContinueAfterReopenAndDeleteAll(t *testing.T) {
	path := tempPath(t)
	first := spool.New(spool.Config{Path: path})
	if err := first.Open(); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, first, fixRecord("v1", 1), fixRecord("v1", 2), fixRecord("v1", 3))
	if err := first.DeleteThrough(protocol.LaneGPS, 3); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	s := openSpool(t, spool.Config{Path: path})
	recs := mustAppend(t, s, fixRecord("v1", 4))

	if recs[0].Seq != 4 {
		t.Errorf("seq after reopen of an emptied lane = %d, want 4", recs[0].Seq)
	}
	if err := s.DeleteThrough(protocol.LaneGPS, 4); err != nil {
		t.Fatal(err)
	}
	recs = mustAppend(t, s, fixRecord("v1", 5))
	if recs[0].Seq != 5 {
		t.Errorf("seq after deleting every record = %d, want 5", recs[0].Seq)
	}
	sos := mustAppend(t, s, sosRecord("v1", "s1", 6))
	if sos[0].Seq != 1 {
		t.Errorf("first sos seq = %d, want 1 (lanes count separately)", sos[0].Seq)
	}
}

func TestSpool_ConcurrentAppendsShareCommits(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := openSpool(t, spool.Config{Path: tempPath(t), Registerer: reg})
	const writers, perWriter = 50, 20

	start := make(chan struct{})
	seqs := make([][]uint64, writers)
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := range perWriter {
				recs := []protocol.Record{fixRecord(fmt.Sprintf("v%d", w), i)}
				if err := s.Append(context.Background(), recs); err != nil {
					errs <- err
					return
				}
				seqs[w] = append(seqs[w], recs[0].Seq)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent append: %v", err)
	}

	var all []uint64
	for w, got := range seqs {
		for i := 1; i < len(got); i++ {
			if got[i] <= got[i-1] {
				t.Errorf("writer %d got seqs %v, not increasing", w, got)
				break
			}
		}
		all = append(all, got...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	for i, seq := range all {
		if seq != uint64(i+1) {
			t.Fatalf("sorted seqs break at index %d: %d, want %d (each of 1..%d exactly once)", i, seq, i+1, writers*perWriter)
		}
	}
	commits := counterValue(t, reg, "xpress_agent_spool_commits_total")
	if commits >= writers*perWriter {
		t.Errorf("%v commits for %d appends; group commit shared none", commits, writers*perWriter)
	}
	if got := len(mustRead(t, s, protocol.LaneGPS, 0)); got != writers*perWriter {
		t.Errorf("gps lane holds %d records, want %d", got, writers*perWriter)
	}
}

// counterValue returns the value of the unlabelled counter name in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	for _, f := range mustGather(t, reg) {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("counter %s not found in the registry", name)
	return 0
}

func TestSpool_SecondOpenFailsFast(t *testing.T) {
	path := tempPath(t)
	openSpool(t, spool.Config{Path: path})

	second := spool.New(spool.Config{Path: path, Timeout: 50 * time.Millisecond})
	err := second.Open()

	if !errors.Is(err, spool.ErrLocked) {
		t.Fatalf("second open error = %v, want ErrLocked", err)
	}
	if err := second.Close(); err != nil {
		t.Errorf("close of a spool that failed to open: %v", err)
	}
}

func TestSpool_ReadReturnsCopies(t *testing.T) {
	s := openSpool(t, spool.Config{Path: tempPath(t)})
	mustAppend(t, s, fixRecord("v1", 1), fixRecord("v2", 2))
	read := mustRead(t, s, protocol.LaneGPS, 0)
	before := jsonOf(t, read)

	// Rewrite the pages the read records came from.
	if err := s.DeleteThrough(protocol.LaneGPS, 2); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		mustAppend(t, s, fixRecord("overwrite-vehicle", 100+i))
	}

	if after := jsonOf(t, read); after != before {
		t.Errorf("records read before the rewrite changed:\nbefore %s\n after %s", before, after)
	}
}

func TestSpool_ReadLimits(t *testing.T) {
	s := openSpool(t, spool.Config{Path: tempPath(t)})
	for i := range 10 {
		mustAppend(t, s, fixRecord("v1", i))
	}

	got, err := s.Read(protocol.LaneGPS, 3, 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !equalSeqs(seqsOf(got), []uint64{4, 5, 6, 7}) {
		t.Errorf("read after 3, max 4 = %v, want [4 5 6 7]", seqsOf(got))
	}
	got, err = s.Read(protocol.LaneGPS, 0, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !equalSeqs(seqsOf(got), []uint64{1}) {
		t.Errorf("read with a 1-byte limit = %v, want only the first record [1]", seqsOf(got))
	}
	if _, err := s.Read("other", 0, 0, 0); !errors.Is(err, spool.ErrUnknownLane) {
		t.Errorf("read of an unknown lane: error = %v, want ErrUnknownLane", err)
	}
}

func TestSpool_DeleteThrough(t *testing.T) {
	s := openSpool(t, spool.Config{Path: tempPath(t)})
	for i := range 5 {
		mustAppend(t, s, fixRecord("v1", i))
	}
	mustAppend(t, s, sosRecord("v1", "s1", 9))

	if err := s.DeleteThrough(protocol.LaneGPS, 3); err != nil {
		t.Fatal(err)
	}

	if got := seqsOf(mustRead(t, s, protocol.LaneGPS, 0)); !equalSeqs(got, []uint64{4, 5}) {
		t.Errorf("gps after DeleteThrough(3) = %v, want [4 5]", got)
	}
	if got := len(mustRead(t, s, protocol.LaneSOS, 0)); got != 1 {
		t.Errorf("sos lane holds %d records after a gps delete, want 1", got)
	}
	st := s.Stats()[protocol.LaneGPS]
	if st.Records != 2 || !st.Oldest.Equal(baseTime.Add(3*time.Second)) {
		t.Errorf("gps stats = %+v, want 2 records, oldest %s", st, baseTime.Add(3*time.Second))
	}
	if err := s.DeleteThrough(protocol.LaneGPS, 3); err != nil {
		t.Errorf("repeated DeleteThrough(3): %v", err)
	}
	if err := s.DeleteThrough(protocol.LaneGPS, 100); err != nil {
		t.Fatal(err)
	}
	st = s.Stats()[protocol.LaneGPS]
	if st.Records != 0 || st.Bytes != 0 || !st.Oldest.IsZero() {
		t.Errorf("gps stats after deleting all = %+v, want empty", st)
	}
}

func TestSpool_RejectThroughMovesRecords(t *testing.T) {
	s := openSpool(t, spool.Config{Path: tempPath(t)})
	mustAppend(t, s, sosRecord("v1", "s1", 1), sosRecord("v1", "s2", 2), sosRecord("v1", "s3", 3))

	moved, err := s.RejectThrough(protocol.LaneSOS, 2)
	if err != nil {
		t.Fatal(err)
	}

	if moved != 2 {
		t.Errorf("moved %d records, want 2", moved)
	}
	if got := seqsOf(mustRead(t, s, protocol.LaneSOS, 0)); !equalSeqs(got, []uint64{3}) {
		t.Errorf("sos lane after reject = %v, want [3]", got)
	}
	rejected, err := s.ReadRejected(protocol.LaneSOS, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rejected) != 2 || rejected[0].SOS.ID != "s1" || rejected[1].Seq != 2 {
		t.Errorf("rejected records = %s, want s1 (seq 1) and s2 (seq 2)", jsonOf(t, rejected))
	}
	if st := s.Stats()[protocol.LaneSOS]; st.Rejected != 2 || st.Records != 1 {
		t.Errorf("sos stats = %+v, want 1 record and 2 rejected", st)
	}
}

func TestSpool_FullFileFailsEveryWaiter(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := openSpool(t, spool.Config{Path: tempPath(t), MaxFileBytes: 1 << 20, Registerer: reg})
	note := strings.Repeat("x", 4000)

	var stored int
	var err error
	for stored = 0; stored < 10000; stored++ {
		rec := sosRecord("v1", fmt.Sprintf("s%d", stored), stored)
		rec.SOS.Note = note
		if err = s.Append(context.Background(), []protocol.Record{rec}); err != nil {
			break
		}
	}
	if !errors.Is(err, spool.ErrFull) {
		t.Fatalf("append to a spool at its size cap: error = %v, want ErrFull", err)
	}

	errs := make(chan error, 20)
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := sosRecord("v1", "late", 1)
			rec.SOS.Note = note
			errs <- s.Append(context.Background(), []protocol.Record{rec})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, spool.ErrFull) {
			t.Errorf("concurrent append to a full spool: error = %v, want ErrFull", err)
		}
	}
	if got := len(mustRead(t, s, protocol.LaneSOS, 0)); got != stored {
		t.Errorf("sos lane holds %d records, want the %d stored before the cap", got, stored)
	}
	if got := s.Stats()[protocol.LaneSOS].Records; got != stored {
		t.Errorf("stats count %d sos records, want %d", got, stored)
	}
	if failed := counterValue(t, reg, "xpress_agent_spool_commit_errors_total"); failed < 1 {
		t.Errorf("commit errors metric = %v, want at least 1", failed)
	}

	// Deleting frees pages, so appends work again.
	if err := s.DeleteThrough(protocol.LaneSOS, uint64(stored)); err != nil {
		t.Fatalf("delete from a full spool: %v", err)
	}
	if err := s.Append(context.Background(), []protocol.Record{sosRecord("v1", "after", 1)}); err != nil {
		t.Errorf("append after freeing space: %v", err)
	}
}

func TestSpool_AppendAfterCloseFails(t *testing.T) {
	s := spool.New(spool.Config{Path: tempPath(t)})
	if err := s.Append(context.Background(), []protocol.Record{fixRecord("v1", 1)}); !errors.Is(err, spool.ErrClosed) {
		t.Errorf("append before open: error = %v, want ErrClosed", err)
	}
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}

	if err := s.Append(context.Background(), []protocol.Record{fixRecord("v1", 1)}); !errors.Is(err, spool.ErrClosed) {
		t.Errorf("append after close: error = %v, want ErrClosed", err)
	}
	if _, err := s.Read(protocol.LaneGPS, 0, 0, 0); !errors.Is(err, spool.ErrClosed) {
		t.Errorf("read after close: error = %v, want ErrClosed", err)
	}
}

func TestSpool_NotifiesAfterAppend(t *testing.T) {
	s := openSpool(t, spool.Config{Path: tempPath(t)})
	select {
	case <-s.Notify():
		t.Fatal("notification before any append")
	default:
	}

	mustAppend(t, s, fixRecord("v1", 1))

	select {
	case <-s.Notify():
	default:
		t.Error("no notification after an append returned")
	}
}

func TestSpool_MetricsLintClean(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := openSpool(t, spool.Config{Path: tempPath(t), Registerer: reg, Now: func() time.Time { return baseTime.Add(time.Minute) }})
	mustAppend(t, s, fixRecord("v1", 0), sosRecord("v1", "s1", 0))

	problems, err := promlint.NewWithMetricFamilies(mustGather(t, reg)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	age := gaugeWithLabel(t, reg, "xpress_agent_spool_oldest_record_age_seconds", "lane", "gps")
	if age != 60 {
		t.Errorf("gps oldest record age = %v s, want 60", age)
	}
	if got := gaugeWithLabel(t, reg, "xpress_agent_spool_records", "lane", "sos"); got != 1 {
		t.Errorf("sos records gauge = %v, want 1", got)
	}
}

func mustGather(t *testing.T, reg *prometheus.Registry) []*dto.MetricFamily {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return families
}

func gaugeWithLabel(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	for _, f := range mustGather(t, reg) {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("metric %s{%s=%q} not found", name, label, value)
	return 0
}

func BenchmarkSpool_Append(b *testing.B) {
	s := spool.New(spool.Config{Path: filepath.Join(b.TempDir(), "spool.db")})
	if err := s.Open(); err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			if err := s.Append(context.Background(), []protocol.Record{fixRecord("bench-vehicle", i)}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
