package uplink_test

import (
	"sync"
	"testing"

	"github.com/xpress-ops/tower/agent/internal/hubtest"
	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/protocol"
)

// gatedSpool is a spool whose deletes wait until the gate opens, like a
// spool writer busy with the commits of many vehicles' appends.
type gatedSpool struct {
	*spool.Spool
	gate    chan struct{}
	mu      sync.Mutex
	deletes int
}

func (g *gatedSpool) DeleteThrough(lane protocol.Lane, seq uint64) error {
	g.mu.Lock()
	g.deletes++
	g.mu.Unlock()
	<-g.gate
	return g.Spool.DeleteThrough(lane, seq)
}

// The uplink keeps forwarding while the spool deletes acknowledged
// records: the session does not wait for a delete before the next batch.
func TestUplink_ForwardsWhileDeleteWaits(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	sp := &gatedSpool{Spool: openSpool(t), gate: make(chan struct{})}
	const fixes = 2000
	backlog := make([]protocol.Record, fixes)
	for i := range backlog {
		backlog[i] = fix("veh-001", i)
	}
	appendRecords(t, sp.Spool, backlog...)

	opened := false
	defer func() {
		if !opened {
			close(sp.gate)
		}
	}()
	startUplink(t, sp.Spool, hub.URL(), func(c *uplink.Config) {
		c.Spool = sp
		c.MaxBatchRecords = 100
	})

	// 20 batches of 100 fixes, with room for 4 in flight: the hub gets
	// them all only if Acks are handled while the first delete waits.
	eventually(t, "every fix committed at the hub", func() bool {
		return len(hub.Committed(protocol.LaneGPS)) == fixes
	})
	if got := sp.Stats()[protocol.LaneGPS].Records; got != fixes {
		t.Errorf("spool holds %d fixes while its deletes wait, want all %d", got, fixes)
	}

	close(sp.gate)
	opened = true
	eventually(t, "the spool emptied once deletes proceed", func() bool { return spoolEmpty(sp.Spool) })
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.deletes >= fixes/100 {
		t.Errorf("%d deletes for %d batches, want fewer: waiting releases are merged", sp.deletes, fixes/100)
	}
}
