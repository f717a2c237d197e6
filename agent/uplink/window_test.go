package uplink_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/agent/internal/hubtest"
	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/internal/faultproxy"
	"github.com/xpress-ops/tower/protocol"
)

// gate returns a channel that the test closes by calling open. Cleanup
// also closes it, so a hub blocked on it never outlives the test.
func gate(t *testing.T) (wait <-chan struct{}, open func()) {
	t.Helper()
	ch := make(chan struct{})
	var once sync.Once
	open = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(open)
	return ch, open
}

func TestUplink_WindowKeepsBatchesInFlight(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := openSpool(t)
	for i := range 10 {
		appendRecords(t, sp, fix("veh-001", i))
	}
	// The hub stalls on the first batch, like a slow WAN: the agent must
	// keep sending up to its window meanwhile.
	stalled, release := gate(t)
	hub.SetRespond(func(h *hubtest.Hub, b *protocol.Batch) []protocol.Ack {
		if b.First() == 1 {
			<-stalled
		}
		return []protocol.Ack{h.Commit(b)}
	})
	_, reg := startUplink(t, sp, hub.URL(), func(c *uplink.Config) { c.MaxBatchRecords = 2; c.MaxInflightBatches = 3 })

	gpsInflight := func() float64 {
		return metricValue(t, reg, "xpress_agent_uplink_inflight_batches", map[string]string{"lane": "gps"})
	}
	eventually(t, "three GPS batches in flight", func() bool { return gpsInflight() == 3 })
	if got := metricValue(t, reg, "xpress_agent_uplink_batches_sent_total", map[string]string{"lane": "gps"}); got != 3 {
		t.Errorf("gps batches sent while the hub stalls = %v, want 3 (the window)", got)
	}
	if got := sp.Stats()[protocol.LaneGPS].Records; got != 10 {
		t.Errorf("spool holds %d gps records before any Ack, want 10", got)
	}
	release()

	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })
	if got, want := batchShape(hub.Received()), "gps:1-2 gps:3-4 gps:5-6 gps:7-8 gps:9-10"; got != want {
		t.Errorf("batches = %s, want %s", got, want)
	}
	committed := hub.Committed(protocol.LaneGPS)
	for i, r := range committed {
		if r.Seq != uint64(i+1) {
			t.Fatalf("hub committed record %d at position %d: the window broke sequence order", r.Seq, i)
		}
	}
	if len(committed) != 10 {
		t.Errorf("hub committed %d gps records, want 10", len(committed))
	}
	eventually(t, "no batch in flight", func() bool { return gpsInflight() == 0 })
}

func TestUplink_SOSSkipsFullGPSWindow(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := openSpool(t)
	for i := range 8 {
		appendRecords(t, sp, fix("veh-001", i))
	}
	stalled, release := gate(t)
	hub.SetRespond(func(h *hubtest.Hub, b *protocol.Batch) []protocol.Ack {
		if b.Lane == protocol.LaneGPS && b.First() == 1 {
			<-stalled
		}
		return []protocol.Ack{h.Commit(b)}
	})
	_, reg := startUplink(t, sp, hub.URL(), func(c *uplink.Config) { c.MaxBatchRecords = 2; c.MaxInflightBatches = 2 })
	eventually(t, "the GPS window to fill", func() bool {
		return metricValue(t, reg, "xpress_agent_uplink_inflight_batches", map[string]string{"lane": "gps"}) == 2
	})

	appendRecords(t, sp, sos("veh-009", "sos-window-full"))

	// The GPS window is full and the hub acknowledges nothing, yet the SOS goes out.
	eventually(t, "the SOS batch to be published", func() bool {
		return metricValue(t, reg, "xpress_agent_uplink_batches_sent_total", map[string]string{"lane": "sos"}) == 1
	})
	if got := metricValue(t, reg, "xpress_agent_uplink_batches_sent_total", map[string]string{"lane": "gps"}); got != 2 {
		t.Errorf("gps batches sent before the hub answered = %v, want 2", got)
	}
	// On its own link the SOS does not wait for the stalled GPS batch.
	eventually(t, "the SOS to be committed while the GPS window is stalled", func() bool {
		return len(hub.Committed(protocol.LaneSOS)) == 1
	})
	release()

	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })
	if got, want := batchShape(hub.ReceivedOn(agentID)), "gps:1-2 gps:3-4 gps:5-6 gps:7-8"; got != want {
		t.Errorf("batches on the main link = %s, want %s", got, want)
	}
	if got, want := batchShape(hub.ReceivedOn(protocol.SOSLinkClientID(agentID))), "sos:1-1"; got != want {
		t.Errorf("batches on the SOS link = %s, want %s", got, want)
	}
}

func TestUplink_AckCoversSeveralBatches(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := openSpool(t)
	for i := range 4 {
		appendRecords(t, sp, fix("veh-001", i))
	}
	// The hub commits the first batch silently and acknowledges both
	// batches with the second batch's Ack.
	hub.SetRespond(func(h *hubtest.Hub, b *protocol.Batch) []protocol.Ack {
		ack := h.Commit(b)
		if b.First() == 1 {
			return nil
		}
		return []protocol.Ack{ack}
	})
	_, reg := startUplink(t, sp, hub.URL(), func(c *uplink.Config) { c.MaxBatchRecords = 2 })

	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })
	if got, want := batchShape(hub.Received()), "gps:1-2 gps:3-4"; got != want {
		t.Errorf("batches = %s, want %s (no resend)", got, want)
	}
	if got := metricValue(t, reg, "xpress_agent_uplink_ack_timeouts_total", nil); got != 0 {
		t.Errorf("ack timeouts = %v, want 0", got)
	}
	if got := metricValue(t, reg, "xpress_agent_uplink_batch_round_trip_seconds", map[string]string{"lane": "gps"}); got != 2 {
		t.Errorf("gps round trips observed = %v, want 2 (one Ack settled both batches)", got)
	}
}

func TestUplink_SOSLaneResendsFailedBatchFirst(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := openSpool(t)
	appendRecords(t, sp, sos("veh-001", "sos-a"))
	// While the hub fails the first SOS batch, a second SOS arrives. It
	// must not be sent (and committed past sos-a) before sos-a is resent.
	hub.SetRespond(func(h *hubtest.Hub, b *protocol.Batch) []protocol.Ack {
		if len(h.Received()) == 1 {
			appendRecords(t, sp, sos("veh-002", "sos-b"))
			return []protocol.Ack{{AgentID: b.AgentID, SpoolID: b.SpoolID, Lane: b.Lane, Error: "database unavailable"}}
		}
		return []protocol.Ack{h.Commit(b)}
	})
	startUplink(t, sp, hub.URL(), nil)

	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })
	if got, want := batchShape(hub.Received()), "sos:1-1 sos:1-2"; got != want {
		t.Errorf("batches = %s, want %s", got, want)
	}
	committed := hub.Committed(protocol.LaneSOS)
	if len(committed) != 2 || committed[0].SOS.ID != "sos-a" || committed[1].SOS.ID != "sos-b" {
		t.Errorf("hub committed %d SOS records, want sos-a then sos-b", len(committed))
	}
}

// A hub whose store fails batch k and then commits batch k+1, which was
// already on the wire, skips k's records. The window allows this only in
// the GPS lane, and the uplink counts it.
func TestUplink_FailedBatchBlocksTheNext(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := openSpool(t)
	for i := range 4 {
		appendRecords(t, sp, fix("veh-001", i))
	}
	hub.SetRespond(func(h *hubtest.Hub, b *protocol.Batch) []protocol.Ack {
		if len(h.Received()) == 1 {
			return []protocol.Ack{{AgentID: b.AgentID, SpoolID: b.SpoolID, Lane: b.Lane, Error: "commit failed; resend later"}}
		}
		return []protocol.Ack{h.Commit(b)}
	})
	_, reg := startUplink(t, sp, hub.URL(), func(c *uplink.Config) { c.MaxBatchRecords = 2 })

	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })
	// The second batch names the first as its Prev, so the hub refuses it
	// too and nothing is skipped: both are resent in order.
	if got := metricValue(t, reg, "xpress_agent_uplink_hub_skipped_records_total", map[string]string{"lane": "gps"}); got != 0 {
		t.Errorf("gps records skipped by the hub = %v, want 0", got)
	}
	if got, want := batchShape(hub.Received()), "gps:1-2 gps:3-4 gps:1-2 gps:3-4"; got != want {
		t.Errorf("batches = %s, want %s", got, want)
	}
	if committed := hub.Committed(protocol.LaneGPS); len(committed) != 4 {
		t.Errorf("hub committed %d records, want all 4", len(committed))
	}
	prevs := []uint64{}
	for _, b := range hub.Received() {
		prevs = append(prevs, b.Prev)
	}
	if fmt.Sprint(prevs) != "[0 2 0 2]" {
		t.Errorf("prev of each batch = %v, want [0 2 0 2]", prevs)
	}
}

func TestUplink_DetectsBlackholeByKeepAlive(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	wan := faultproxy.Start(t, hub.Addr)
	sp := openSpool(t)
	u, reg := startUplink(t, sp, wan.URL(), func(c *uplink.Config) {
		c.KeepAlive, c.PingTimeout = 2*time.Second, time.Second
		c.AckTimeout = time.Minute
		c.ConnectTimeout = time.Second
	})
	appendRecords(t, sp, fix("veh-001", 1))
	eventually(t, "the first record to reach the hub", func() bool { return len(hub.Committed(protocol.LaneGPS)) == 1 })

	// An idle link goes silent: only the keep-alive can notice.
	wan.Blackhole()
	deadline := 30 * time.Second // the bound is KeepAlive + PingTimeout + 2 × 500 ms; generous for a busy machine
	waitMetric(t, deadline, "a dead link by keep-alive", func() bool {
		return metricValue(t, reg, "xpress_agent_uplink_link_dead_total", map[string]string{"cause": "keepalive"}) >= 1
	})
	eventually(t, "the uplink to report disconnected", func() bool { return u.State() == uplink.StateDisconnected })
	if got := metricValue(t, reg, "xpress_agent_uplink_link_dead_total", map[string]string{"cause": "ack_timeout"}); got != 0 {
		t.Errorf("ack timeouts = %v, want 0 (nothing was in flight)", got)
	}

	appendRecords(t, sp, sos("veh-002", "sos-after-blackhole"))
	wan.Pass()
	eventually(t, "the SOS to reach the hub after the blackhole", func() bool { return len(hub.Committed(protocol.LaneSOS)) == 1 })
	if got := metricValue(t, reg, "xpress_agent_uplink_reconnects_total", nil); got < 1 {
		t.Errorf("reconnects = %v, want at least 1", got)
	}
	if r := hub.Committed(protocol.LaneSOS)[0]; !r.Historical {
		t.Error("SOS queued while the link was dead is not marked historical")
	}
}

func TestUplink_DetectsBlackholeByAckTimeout(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	wan := faultproxy.Start(t, hub.Addr)
	sp := openSpool(t)
	u, reg := startUplink(t, sp, wan.URL(), func(c *uplink.Config) {
		c.AckTimeout = uplink.MinAckTimeout
		c.ConnectTimeout = time.Second
	})
	eventually(t, "the uplink to connect", func() bool { return u.State() == uplink.StateConnected })

	wan.Blackhole()
	appendRecords(t, sp, sos("veh-001", "sos-into-blackhole"))
	eventually(t, "a dead link by Ack timeout", func() bool {
		return metricValue(t, reg, "xpress_agent_uplink_link_dead_total", map[string]string{"cause": "ack_timeout"}) >= 1
	})
	if got := sp.Stats()[protocol.LaneSOS].Records; got != 1 {
		t.Errorf("spool holds %d SOS records during the blackhole, want 1", got)
	}

	wan.Pass()
	eventually(t, "the SOS to reach the hub", func() bool { return len(hub.Committed(protocol.LaneSOS)) == 1 })
	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })
	if got := metricValue(t, reg, "xpress_agent_uplink_link_dead_total", map[string]string{"cause": "keepalive"}); got != 0 {
		t.Errorf("keep-alive detections = %v, want 0 (the Ack timeout is shorter)", got)
	}
}

func TestUplink_KeepsRecordsUntilAckAfterReset(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	wan := faultproxy.Start(t, hub.Addr)
	sp := openSpool(t)
	u, reg := startUplink(t, sp, wan.URL(), func(c *uplink.Config) { c.AckTimeout = time.Minute })
	eventually(t, "the uplink to connect", func() bool { return u.State() == uplink.StateConnected })

	// The hub commits, but neither its PUBACK nor its Ack gets back.
	wan.Drop(faultproxy.ToAgent)
	appendRecords(t, sp, fix("veh-001", 1), fix("veh-001", 2), fix("veh-001", 3))
	eventually(t, "the hub to commit the batch", func() bool { return len(hub.Committed(protocol.LaneGPS)) == 3 })
	if got := sp.Stats()[protocol.LaneGPS].Records; got != 3 {
		t.Fatalf("spool holds %d gps records after a commit whose Ack was lost, want 3", got)
	}

	wan.Pass()
	wan.Reset()
	eventually(t, "a dead link by TCP error", func() bool {
		return metricValue(t, reg, "xpress_agent_uplink_link_dead_total", map[string]string{"cause": "tcp_error"}) >= 1
	})
	eventually(t, "the spool to drain", func() bool { return spoolEmpty(sp) })
	if got, want := batchShape(hub.Received()), "gps:1-3 gps:1-3"; got != want {
		t.Errorf("batches = %s, want %s (one resend from the oldest unacknowledged record)", got, want)
	}
	if got := len(hub.Committed(protocol.LaneGPS)); got != 3 {
		t.Errorf("hub committed %d gps records, want 3", got)
	}
}

func TestUplink_BatchSizeAdaptsToRoundTrip(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	wan := faultproxy.Start(t, hub.Addr)
	sp := openSpool(t)
	// A WAN round trip of at least 1.2 s is slower than AckTimeout/2.
	wan.Delay(600*time.Millisecond, 600*time.Millisecond)
	for i := range 32 {
		appendRecords(t, sp, fix("veh-001", i))
	}
	_, reg := startUplink(t, sp, wan.URL(), func(c *uplink.Config) {
		c.MaxBatchRecords = 8
		c.AckTimeout = 2 * time.Second
	})
	target := func() float64 {
		return metricValue(t, reg, "xpress_agent_uplink_gps_batch_target_records", nil)
	}
	eventually(t, "the GPS batch target to shrink below 8 on slow Acks", func() bool { return target() < 8 })

	// On a fast link, full batches acknowledged quickly grow it back.
	wan.Pass()
	more := make([]protocol.Record, 400)
	for i := range more {
		more[i] = fix("veh-002", i)
	}
	appendRecords(t, sp, more...)
	waitMetric(t, 30*time.Second, "the GPS batch target to grow back to 8", func() bool { return target() == 8 })
	waitMetric(t, 30*time.Second, "the spool to drain", func() bool { return spoolEmpty(sp) })
	if got := len(hub.Committed(protocol.LaneGPS)); got != 432 {
		t.Errorf("hub committed %d gps records, want 432", got)
	}
}

// waitMetric is eventually with its own deadline.
func waitMetric(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
