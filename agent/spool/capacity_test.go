package spool_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

// The records of these tests have a fixed encoded size, so the number of
// records that fit under a cap is known exactly.

// gpsFix is the fix with number n; n must stay below 1,000,000.
func gpsFix(n int) protocol.Record {
	at := baseTime.Add(time.Duration(n) * time.Second)
	return protocol.Record{
		Kind:       protocol.KindFix,
		VehicleID:  fmt.Sprintf("veh-%06d", n),
		ReceivedAt: at,
		Fix:        &protocol.Fix{Time: at, Lat: 14.5995, Lon: 120.9842},
	}
}

// sosAlert is the SOS with number n; n must stay below 1,000,000.
func sosAlert(n int) protocol.Record {
	rec := sosRecord("veh-000001", fmt.Sprintf("sos-%06d", n), n)
	rec.ReceivedAt = baseTime.Add(time.Duration(n) * time.Second)
	return rec
}

// statusUpdate is the status record with number n; n must stay below 1,000,000.
func statusUpdate(n int) protocol.Record {
	return protocol.Record{
		Kind:       protocol.KindStatus,
		VehicleID:  fmt.Sprintf("veh-%06d", n),
		ReceivedAt: baseTime.Add(time.Duration(n) * time.Second),
		Status:     &protocol.Status{Online: n%2 == 0},
	}
}

// encodedSize returns the stored size of rec: its JSON without the sequence number.
func encodedSize(t *testing.T, rec protocol.Record) int64 {
	t.Helper()
	rec.Seq = 0
	data, err := json.Marshal(&rec)
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(data))
}

// labelledCounter returns the counter name{labels} in reg, 0 if absent.
func labelledCounter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	for _, f := range mustGather(t, reg) {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			match := 0
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] == l.GetValue() {
					match++
				}
			}
			if match == len(labels) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// unlabelledGauge returns the gauge name in reg.
func unlabelledGauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	for _, f := range mustGather(t, reg) {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("gauge %s not found in the registry", name)
	return 0
}

// appendSOSUntilFull appends SOS records numbered from first, one per
// Append, from several goroutines so that they share commits, until every
// goroutine got an error. It returns the numbers stored and checks that
// every error matches want.
func appendSOSUntilFull(t *testing.T, s *spool.Spool, first int, want error) []int {
	t.Helper()
	const writers = 8
	var mu sync.Mutex
	var stored []int
	next := first
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				n := next
				next++
				mu.Unlock()
				err := s.Append(context.Background(), []protocol.Record{sosAlert(n)})
				if err != nil {
					if !errors.Is(err, want) {
						t.Errorf("SOS append %d: error = %v, want %v", n, err, want)
					}
					return
				}
				mu.Lock()
				stored = append(stored, n)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return stored
}

func TestSpool_EvictsOldestGPSAtCap(t *testing.T) {
	const maxBytes, reserve = 256 << 10, 32 << 10
	reg := prometheus.NewRegistry()
	s := openSpool(t, spool.Config{Path: tempPath(t), Registerer: reg, MaxBytes: maxBytes, SOSReserveBytes: reserve})
	fixSize := encodedSize(t, gpsFix(1))
	const total = 3000 // about 2.5 times the cap
	keep := int((maxBytes - reserve) / fixSize)

	for n := 1; n <= total; n += 10 {
		batch := make([]protocol.Record, 10)
		for i := range batch {
			batch[i] = gpsFix(n + i)
		}
		mustAppend(t, s, batch...)
	}

	gps := mustRead(t, s, protocol.LaneGPS, 0)
	if len(gps) != keep {
		t.Fatalf("gps lane holds %d records, want the newest %d that fit under %d bytes", len(gps), keep, maxBytes-reserve)
	}
	for i, rec := range gps {
		if want := uint64(total - keep + 1 + i); rec.Seq != want {
			t.Fatalf("gps record %d has seq %d, want %d: the remaining records must be exactly the newest", i, rec.Seq, want)
		}
	}
	st := s.Stats()[protocol.LaneGPS]
	if st.Bytes != int64(keep)*fixSize || st.Bytes > maxBytes-reserve {
		t.Errorf("gps lane bytes = %d, want %d (at most %d)", st.Bytes, int64(keep)*fixSize, maxBytes-reserve)
	}
	if want := gpsFix(total - keep + 1).ReceivedAt; !st.Oldest.Equal(want) {
		t.Errorf("gps oldest = %s, want %s, the receive time of the oldest record kept", st.Oldest, want)
	}
	evicted := labelledCounter(t, reg, "xpress_agent_spool_evicted_records_total", map[string]string{"lane": "gps"})
	if evicted != float64(total-keep) {
		t.Errorf("evicted gps records metric = %v, want %d", evicted, total-keep)
	}
	evictedBytes := labelledCounter(t, reg, "xpress_agent_spool_evicted_bytes_total", map[string]string{"lane": "gps"})
	if evictedBytes != float64(int64(total-keep)*fixSize) {
		t.Errorf("evicted gps bytes metric = %v, want %d", evictedBytes, int64(total-keep)*fixSize)
	}
	if u := s.Usage(); u.Full || u.LiveBytes != st.Bytes {
		t.Errorf("usage = %+v, want not full and live bytes %d", u, st.Bytes)
	}
}

func TestSpool_SOSEvictsGPSUntilCapThenFails(t *testing.T) {
	const maxBytes, reserve = 256 << 10, 32 << 10
	reg := prometheus.NewRegistry()
	s := openSpool(t, spool.Config{Path: tempPath(t), Registerer: reg, MaxBytes: maxBytes, SOSReserveBytes: reserve})
	fixSize, sosSize := encodedSize(t, gpsFix(1)), encodedSize(t, sosAlert(1))
	const gpsTotal = 2000
	for n := 1; n <= gpsTotal; n += 20 {
		batch := make([]protocol.Record, 20)
		for i := range batch {
			batch[i] = gpsFix(n + i)
		}
		mustAppend(t, s, batch...)
	}

	stored := appendSOSUntilFull(t, s, 1, spool.ErrFull)

	wantSOS := int(maxBytes / sosSize)
	if len(stored) != wantSOS {
		t.Fatalf("stored %d SOS records, want %d: every SOS that fits under %d bytes", len(stored), wantSOS, maxBytes)
	}
	sos := mustRead(t, s, protocol.LaneSOS, 0)
	if len(sos) != wantSOS {
		t.Fatalf("sos lane holds %d records, want %d", len(sos), wantSOS)
	}
	seen := map[string]bool{}
	for i, rec := range sos {
		if rec.Seq != uint64(i+1) {
			t.Fatalf("sos record %d has seq %d, want %d", i, rec.Seq, i+1)
		}
		seen[rec.SOS.ID] = true
	}
	for _, n := range stored {
		if id := fmt.Sprintf("sos-%06d", n); !seen[id] {
			t.Errorf("acknowledged SOS %s is not in the sos lane", id)
		}
	}

	// The GPS records left are the newest ones that still fit next to the SOS records.
	keepGPS := int((maxBytes - int64(wantSOS)*sosSize) / fixSize)
	t.Logf("fix %d bytes, SOS %d bytes: %d SOS records and %d fixes fit under %d bytes", fixSize, sosSize, wantSOS, keepGPS, maxBytes)
	gps := mustRead(t, s, protocol.LaneGPS, 0)
	if len(gps) != keepGPS {
		t.Fatalf("gps lane holds %d records, want %d", len(gps), keepGPS)
	}
	if keepGPS > 0 && gps[0].Seq != uint64(gpsTotal-keepGPS+1) {
		t.Errorf("first gps record left has seq %d, want %d", gps[0].Seq, gpsTotal-keepGPS+1)
	}
	if live := s.Usage().LiveBytes; live > maxBytes {
		t.Errorf("live bytes = %d, above the cap of %d", live, maxBytes)
	}
	if got := labelledCounter(t, reg, "xpress_agent_spool_evicted_records_total", map[string]string{"lane": "gps"}); got != float64(gpsTotal-keepGPS) {
		t.Errorf("evicted gps records metric = %v, want %d", got, gpsTotal-keepGPS)
	}

	// The spool reports that it is full for SOS.
	u := s.Usage()
	if !u.Full || u.FullReason != "max_bytes" || u.FullSince.IsZero() {
		t.Errorf("usage = %+v, want full for reason max_bytes", u)
	}
	if got := unlabelledGauge(t, reg, "xpress_agent_spool_full"); got != 1 {
		t.Errorf("xpress_agent_spool_full = %v, want 1", got)
	}
	refused := labelledCounter(t, reg, "xpress_agent_spool_refused_records_total", map[string]string{"lane": "sos", "reason": "max_bytes"})
	if refused != 8 {
		t.Errorf("refused sos records metric = %v, want 8 (one per writer)", refused)
	}

	// A refused SOS changed nothing, and the error is not the disk's.
	err := s.Append(context.Background(), []protocol.Record{sosAlert(999999)})
	if !errors.Is(err, spool.ErrFull) || errors.Is(err, spool.ErrNoSpace) {
		t.Errorf("SOS append to a full spool: error = %v, want ErrFull and not ErrNoSpace", err)
	}
	if got := len(mustRead(t, s, protocol.LaneSOS, 0)); got != wantSOS {
		t.Errorf("sos lane holds %d records after a refused append, want %d", got, wantSOS)
	}
	if got := len(mustRead(t, s, protocol.LaneGPS, 0)); got != keepGPS {
		t.Errorf("gps lane holds %d records after a refused append, want %d", got, keepGPS)
	}

	// With the GPS lane empty as well, the reserve is used up and an SOS still fails alone.
	if err := s.DeleteThrough(protocol.LaneGPS, gpsTotal); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(context.Background(), []protocol.Record{sosAlert(999997)}); !errors.Is(err, spool.ErrFull) {
		t.Errorf("SOS append with the gps lane empty and the reserve used up: error = %v, want ErrFull", err)
	}
	if got := len(mustRead(t, s, protocol.LaneSOS, 0)); got != wantSOS {
		t.Errorf("sos lane holds %d records after another refused append, want %d", got, wantSOS)
	}
	if !s.Usage().Full {
		t.Error("usage reports not full after an SOS was refused with the gps lane empty")
	}

	// The hub acknowledging SOS records frees space.
	if err := s.DeleteThrough(protocol.LaneSOS, 10); err != nil {
		t.Fatal(err)
	}
	if u := s.Usage(); u.Full {
		t.Errorf("usage after deleting 10 SOS records = %+v, want not full", u)
	}
	mustAppend(t, s, sosAlert(999998))
}

func TestSpool_GPSCannotUseSOSReserve(t *testing.T) {
	const maxBytes, reserve = 64 << 10, 16 << 10
	reg := prometheus.NewRegistry()
	s := openSpool(t, spool.Config{Path: tempPath(t), Registerer: reg, MaxBytes: maxBytes, SOSReserveBytes: reserve})
	fixSize := encodedSize(t, gpsFix(1))
	// Fill SOS records until a fix no longer fits in the part of the cap GPS may use.
	n := 0
	for s.Usage().LiveBytes+fixSize <= maxBytes-reserve {
		n++
		mustAppend(t, s, sosAlert(n))
	}

	err := s.Append(context.Background(), []protocol.Record{gpsFix(1)})

	if !errors.Is(err, spool.ErrFull) {
		t.Fatalf("GPS append with the space outside the reserve used up: error = %v, want ErrFull", err)
	}
	if got := s.Stats()[protocol.LaneGPS].Records; got != 0 {
		t.Errorf("gps lane holds %d records, want 0", got)
	}
	if got := labelledCounter(t, reg, "xpress_agent_spool_refused_records_total", map[string]string{"lane": "gps", "reason": "max_bytes"}); got != 1 {
		t.Errorf("refused gps records metric = %v, want 1", got)
	}
	if s.Usage().Full {
		t.Error("usage reports full after a refused GPS record; only a refused SOS makes the spool full")
	}
	// An SOS may use the reserve.
	mustAppend(t, s, sosAlert(n+1))
	if got := s.Stats()[protocol.LaneSOS].Records; got != n+1 {
		t.Errorf("sos lane holds %d records, want %d", got, n+1)
	}
}

func TestSpool_EvictsStatusOnlyAfterGPS(t *testing.T) {
	const maxBytes, reserve = 32 << 10, 4 << 10
	reg := prometheus.NewRegistry()
	s := openSpool(t, spool.Config{Path: tempPath(t), Registerer: reg, MaxBytes: maxBytes, SOSReserveBytes: reserve})
	for n := 1; n <= 40; n++ {
		mustAppend(t, s, statusUpdate(n), gpsFix(n))
	}
	statusBefore := s.Stats()[protocol.LaneStatus]

	// SOS records evict every GPS record before the first status record.
	sos := 0
	for s.Stats()[protocol.LaneGPS].Records > 0 {
		sos++
		mustAppend(t, s, sosAlert(sos))
		if got := s.Stats()[protocol.LaneStatus]; s.Stats()[protocol.LaneGPS].Records > 0 && got.Records != statusBefore.Records {
			t.Fatalf("after SOS %d: status lane holds %d records while gps holds %d, want all %d status records kept until gps is empty",
				sos, got.Records, s.Stats()[protocol.LaneGPS].Records, statusBefore.Records)
		}
	}
	more := appendSOSUntilFull(t, s, sos+1, spool.ErrFull)

	if got := s.Stats()[protocol.LaneSOS].Records; got != sos+len(more) {
		t.Errorf("sos lane holds %d records, want all %d acknowledged", got, sos+len(more))
	}
	status := mustRead(t, s, protocol.LaneStatus, 0)
	evictedStatus := labelledCounter(t, reg, "xpress_agent_spool_evicted_records_total", map[string]string{"lane": "status"})
	if evictedStatus == 0 || int(evictedStatus)+len(status) != statusBefore.Records {
		t.Errorf("evicted status metric = %v with %d status records left, want some evicted and %d in all", evictedStatus, len(status), statusBefore.Records)
	}
	if len(status) > 0 && status[0].Seq != uint64(statusBefore.Records-len(status)+1) {
		t.Errorf("first status record left has seq %d, want the newest ones kept", status[0].Seq)
	}
	if got := labelledCounter(t, reg, "xpress_agent_spool_evicted_records_total", map[string]string{"lane": "sos"}); got != 0 {
		t.Errorf("evicted sos records metric = %v, want 0", got)
	}
}

func TestSpool_AppendThatDoesNotFitFailsAlone(t *testing.T) {
	const maxBytes, reserve = 64 << 10, 16 << 10
	reg := prometheus.NewRegistry()
	// A long commit interval makes the concurrent appends below share a
	// group. They are GPS fixes: a group with an SOS record does not wait.
	s := openSpool(t, spool.Config{Path: tempPath(t), Registerer: reg, MaxBytes: maxBytes, SOSReserveBytes: reserve,
		CommitInterval: 500 * time.Millisecond})
	huge := gpsFix(1)
	huge.VehicleID = strings.Repeat("v", maxBytes)

	errs := make([]error, 6)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := gpsFix(i)
			if i == 0 {
				rec = huge
			}
			errs[i] = s.Append(context.Background(), []protocol.Record{rec})
		}()
	}
	wg.Wait()

	if !errors.Is(errs[0], spool.ErrFull) {
		t.Errorf("append of a record larger than the cap: error = %v, want ErrFull", errs[0])
	}
	for i, err := range errs[1:] {
		if err != nil {
			t.Errorf("GPS append %d next to a refused append: %v", i+1, err)
		}
	}
	if got := s.Stats()[protocol.LaneGPS].Records; got != 5 {
		t.Errorf("gps lane holds %d records, want 5", got)
	}
	if commits := counterValue(t, reg, "xpress_agent_spool_commits_total"); commits != 1 {
		t.Errorf("%v commits, want 1 group commit for the six appends", commits)
	}
}

func TestSpool_DiskFullCapsSpoolAndKeepsSOS(t *testing.T) {
	const maxFileBytes = 512 << 10
	reg := prometheus.NewRegistry()
	path := tempPath(t)
	// MaxFileBytes makes bbolt fail to grow the file as a full disk would.
	s := openSpool(t, spool.Config{Path: path, Registerer: reg, MaxBytes: -1, MaxFileBytes: maxFileBytes})
	sosSize := encodedSize(t, sosAlert(1))

	// About three times what the file holds: once it cannot grow, old fixes make room for new ones.
	const gpsTotal = 6000
	for n := 1; n <= gpsTotal; n += 100 {
		batch := make([]protocol.Record, 100)
		for i := range batch {
			batch[i] = gpsFix(n + i)
		}
		mustAppend(t, s, batch...)
	}

	u := s.Usage()
	if u.DiskLimitBytes == 0 || u.Full {
		t.Errorf("usage = %+v, want a disk limit and not full", u)
	}
	if u.FileBytes > maxFileBytes {
		t.Errorf("file is %d bytes, above its limit of %d", u.FileBytes, maxFileBytes)
	}
	gps := mustRead(t, s, protocol.LaneGPS, 0)
	if len(gps) == 0 || gps[len(gps)-1].Seq != gpsTotal || gps[0].Seq != uint64(gpsTotal-len(gps)+1) {
		t.Fatalf("gps lane holds %d records, want the newest ones up to seq %d", len(gps), gpsTotal)
	}
	evicted := labelledCounter(t, reg, "xpress_agent_spool_evicted_records_total", map[string]string{"lane": "gps"})
	if int(evicted)+len(gps) != gpsTotal {
		t.Errorf("evicted %v gps records and %d are left, want %d in all", evicted, len(gps), gpsTotal)
	}

	// SOS records evict GPS records until none could make room, then fail with ErrNoSpace.
	stored := appendSOSUntilFull(t, s, 1, spool.ErrNoSpace)

	if got := len(mustRead(t, s, protocol.LaneSOS, 0)); got != len(stored) || got == 0 {
		t.Errorf("sos lane holds %d records, want all %d acknowledged (and some)", got, len(stored))
	}
	if left := s.Stats()[protocol.LaneGPS].Bytes; left >= sosSize {
		t.Errorf("SOS records failed while the gps lane still holds %d bytes, enough for an SOS of %d bytes", left, sosSize)
	}
	u = s.Usage()
	if !u.Full || u.FullReason != "disk" {
		t.Errorf("usage = %+v, want full for reason disk", u)
	}
	if got := labelledCounter(t, reg, "xpress_agent_spool_refused_records_total", map[string]string{"lane": "sos", "reason": "disk"}); got != 8 {
		t.Errorf("refused sos records metric for reason disk = %v, want 8 (one per writer)", got)
	}
	if u.FileBytes > maxFileBytes {
		t.Errorf("file is %d bytes, above its limit of %d", u.FileBytes, maxFileBytes)
	}

	// The hub acknowledging SOS records makes room again.
	if err := s.DeleteThrough(protocol.LaneSOS, uint64(len(stored))); err != nil {
		t.Fatalf("delete from a full file: %v", err)
	}
	if u := s.Usage(); u.Full {
		t.Errorf("usage after the delete = %+v, want not full", u)
	}
	mustAppend(t, s, sosAlert(999999))
}

func TestSpool_OpenRejectsReserveNotBelowCap(t *testing.T) {
	s := spool.New(spool.Config{Path: tempPath(t), MaxBytes: 1 << 20, SOSReserveBytes: 1 << 20})

	err := s.Open()

	if err == nil || !strings.Contains(err.Error(), "SOSReserveBytes") {
		t.Errorf("open with a reserve as large as the cap: error = %v, want one naming SOSReserveBytes", err)
	}
}

func TestSpool_DefaultReserveFitsSmallCap(t *testing.T) {
	s := openSpool(t, spool.Config{Path: tempPath(t), MaxBytes: 1 << 20})

	u := s.Usage()

	if u.MaxBytes != 1<<20 || u.SOSReserveBytes != 256<<10 {
		t.Errorf("usage = %+v, want max 1 MiB and the default reserve cut to a quarter of it", u)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the decoded JSON log lines with message msg.
func (b *syncBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(b.buf.String(), "\n") {
		if line == "" {
			continue
		}
		var fields map[string]any
		if err := json.Unmarshal([]byte(line), &fields); err != nil {
			t.Fatalf("decode log line %q: %v", line, err)
		}
		if fields["msg"] == msg {
			out = append(out, fields)
		}
	}
	return out
}

func TestSpool_EvictionLogIsRateLimited(t *testing.T) {
	const msg = "spool at its size limit: evicted the oldest records to make room"
	logs := &syncBuffer{}
	var clock atomic.Int64
	clock.Store(baseTime.UnixNano())
	reg := prometheus.NewRegistry()
	path := tempPath(t)
	s := spool.New(spool.Config{
		Path: path, Registerer: reg, MaxBytes: 16 << 10, SOSReserveBytes: 4 << 10,
		Logger: slog.New(slog.NewJSONHandler(logs, nil)),
		Now:    func() time.Time { return time.Unix(0, clock.Load()) },
	})
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	fixSize := encodedSize(t, gpsFix(1))
	perCap := int((16<<10 - 4<<10) / fixSize)

	// Three times the cap at one instant: many evicting commits, one line.
	for n := 1; n <= 3*perCap; n++ {
		mustAppend(t, s, gpsFix(n))
	}
	first := logs.lines(t, msg)
	if len(first) != 1 {
		t.Fatalf("%d eviction log lines within one interval, want 1", len(first))
	}
	if got, want := first[0]["oldest_evicted_received_at"], gpsFix(1).ReceivedAt.Format(time.RFC3339); got != want {
		t.Errorf("first line's oldest evicted receive time = %v, want %s", got, want)
	}

	// After the interval, the next eviction logs the sum of the suppressed ones.
	clock.Add(int64(11 * time.Second))
	mustAppend(t, s, gpsFix(3*perCap+1))
	second := logs.lines(t, msg)
	if len(second) != 2 {
		t.Fatalf("%d eviction log lines after the interval, want 2", len(second))
	}
	if got, want := second[1]["oldest_evicted_received_at"], gpsFix(2).ReceivedAt.Format(time.RFC3339); got != want {
		t.Errorf("second line's oldest evicted receive time = %v, want %s", got, want)
	}

	// Close logs what is still pending.
	mustAppend(t, s, gpsFix(3*perCap+2))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	all := logs.lines(t, msg)
	if len(all) != 3 {
		t.Fatalf("%d eviction log lines after Close, want 3", len(all))
	}
	total := 0.0
	for _, line := range all {
		total += line["gps_evicted"].(float64)
	}
	if want := float64(3*perCap + 2 - perCap); total != want {
		t.Errorf("eviction log lines count %v evicted fixes, want %v", total, want)
	}
	checkConsistent(t, path)
}
