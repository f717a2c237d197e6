package uplink_test

import (
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/agent/internal/hubtest"
	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/internal/faultproxy"
	"github.com/xpress-ops/tower/protocol"
)

// A link whose round trip (1.2 s) is longer than the Ack timeout (1 s)
// times out every batch, whatever its size. The uplink first shrinks the
// GPS batches, then doubles the Ack timeout, and drains the spool instead
// of resending the same batch forever.
func TestUplink_AckTimeoutBacksOffOnSlowLink(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	wan := faultproxy.Start(t, hub.Addr)
	wan.Delay(600*time.Millisecond, 600*time.Millisecond)
	sp := openSpool(t)
	for i := range 8 {
		appendRecords(t, sp, fix("veh-001", i))
	}
	_, reg := startUplink(t, sp, wan.URL(), func(c *uplink.Config) {
		c.AckTimeout = uplink.MinAckTimeout
		c.MaxBatchRecords = 4 // the smallest GPS batch is one record
		c.ConnectTimeout = 5 * time.Second
	})

	waitMetric(t, 90*time.Second, "the spool to drain over the slow link", func() bool { return spoolEmpty(sp) })

	if got := len(hub.Committed(protocol.LaneGPS)); got != 8 {
		t.Errorf("hub committed %d gps records, want 8", got)
	}
	if got := metricValue(t, reg, "xpress_agent_uplink_ack_timeouts_total", nil); got < 3 {
		t.Errorf("ack timeouts = %v, want at least 3 (two to shrink the batch to one record, more to raise the timeout)", got)
	}
	got := metricValue(t, reg, "xpress_agent_uplink_ack_timeout_seconds", nil)
	if got < 2 {
		t.Errorf("ack timeout in force = %vs, want it doubled to at least 2s", got)
	}
	if got > uplink.MaxAckTimeout.Seconds() {
		t.Errorf("ack timeout in force = %vs, above the cap %s", got, uplink.MaxAckTimeout)
	}
	received := hub.Received()
	if first := len(received[0].Records); first != 4 {
		t.Errorf("first batch has %d records, want 4", first)
	}
	if last := len(received[len(received)-1].Records); last != 1 {
		t.Errorf("last batch has %d records, want 1 after the timeouts shrank the batches (%s)", last, batchShape(received))
	}
}

// An SOS published while a GPS backlog drains over a slow link (128 KiB/s,
// 40 ms round trip) is sent behind few GPS bytes. The uplink keeps only
// about what the link drains in a round trip, plus a floor and a batch,
// of GPS in flight. Without that byte budget the GPS window kept four
// batches of 1000 fixes (about 180 KB each) in flight, and three of them
// went ahead of the SOS.
func TestUplink_SOSWaitsBehindLittleGPSOnSlowLink(t *testing.T) {
	const linkRate = 128 << 10
	hub := hubtest.Start(t, "127.0.0.1:0")
	wan := faultproxy.Start(t, hub.Addr)
	wan.Throttle(faultproxy.ToHub, linkRate)
	wan.Delay(20*time.Millisecond, 20*time.Millisecond)
	sp := openSpool(t)
	backlog := make([]protocol.Record, 4000)
	for i := range backlog {
		backlog[i] = fix("veh-001", i)
	}
	appendRecords(t, sp, backlog...)

	// Once the hub has 150 KiB of GPS, an SOS arrives. The hub counts the
	// GPS bytes it receives after that and before the SOS: the bytes that
	// were queued ahead of the SOS.
	var (
		mu                       sync.Mutex
		gpsReceived              int
		sosAppended, sosReceived bool
		bytesAhead, batchesAhead int
	)
	hub.SetRespond(func(h *hubtest.Hub, b *protocol.Batch) []protocol.Ack {
		size := encodedSize(t, b)
		mu.Lock()
		switch {
		case b.Lane == protocol.LaneSOS:
			sosReceived = true
		case sosAppended && !sosReceived:
			bytesAhead += size
			batchesAhead++
		}
		gpsReceived += size
		appendSOS := !sosAppended && gpsReceived >= 150<<10
		if appendSOS {
			sosAppended = true
		}
		mu.Unlock()
		if appendSOS {
			appendRecords(t, sp, sos("veh-009", "sos-slow-link"))
		}
		return []protocol.Ack{h.Commit(b)}
	})
	_, reg := startUplink(t, sp, wan.URL(), nil)

	waitMetric(t, 60*time.Second, "the SOS at the hub", func() bool { return len(hub.Committed(protocol.LaneSOS)) == 1 })

	mu.Lock()
	defer mu.Unlock()
	limit := metricValue(t, reg, "xpress_agent_uplink_gps_inflight_limit_bytes", nil)
	t.Logf("GPS ahead of the SOS: %d bytes in %d batches; GPS in-flight limit now %.0f bytes", bytesAhead, batchesAhead, limit)
	// The GPS in-flight limit adds up the floor (16 KiB), one batch cap
	// (16 KiB) and what the link drains in the round trip of a floor-sized
	// batch (40 ms + 125 ms, so 21 KiB). It counts spool bytes. Batches
	// on the wire are about 15% larger. With one batch published just
	// before the SOS was read, that is about 75 KiB. The bound leaves room
	// for a busy machine stretching the measured round trip.
	const bound = 128 << 10
	if bytesAhead > bound {
		t.Errorf("%d GPS bytes in %d batches were sent ahead of the SOS, want at most %d", bytesAhead, batchesAhead, bound)
	}
}

func encodedSize(t *testing.T, b *protocol.Batch) int {
	t.Helper()
	payload, err := protocol.EncodeBatch(b)
	if err != nil {
		t.Fatal(err)
	}
	return len(payload)
}
