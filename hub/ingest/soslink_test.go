package ingest

import (
	"context"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/protocol"
)

// stallingStore holds every GPS batch commit until release is closed,
// like a hub busy with a long GPS drain, and commits everything else at
// once.
type stallingStore struct {
	store.Store
	stalled chan struct{}
	release chan struct{}
}

func (s *stallingStore) CommitBatch(ctx context.Context, b *protocol.Batch) (store.CommitResult, error) {
	if b.Lane == protocol.LaneGPS {
		select {
		case s.stalled <- struct{}{}:
		default:
		}
		select {
		case <-s.release:
		case <-ctx.Done():
			return store.CommitResult{}, ctx.Err()
		}
	}
	return s.Store.CommitBatch(ctx, b)
}

// connectLink connects as agentID with clientID and subscribes to ackTopic.
func connectLink(t *testing.T, h *harness, agentID, clientID, ackTopic string) *agent {
	t.Helper()
	a, err := dialAgentAs(t, h.server.Addr(), agentID, clientID, "dev-password")
	if err != nil {
		t.Fatalf("connect %s as %s: %v", agentID, clientID, err)
	}
	tok := a.client.Subscribe(ackTopic, 1, func(_ paho.Client, m paho.Message) {
		ack, err := protocol.DecodeAck(m.Payload())
		if err != nil {
			t.Errorf("%s received an undecodable Ack %q: %v", clientID, m.Payload(), err)
			return
		}
		a.acks <- ack
	})
	if !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		t.Fatalf("subscribe to %s: %v", ackTopic, tok.Error())
	}
	if code := tok.(*paho.SubscribeToken).Result()[ackTopic]; code != 1 {
		t.Fatalf("subscribe to %s granted code %d, want QoS 1", ackTopic, code)
	}
	return a
}

// An agent's SOS link commits an SOS, and gets its Ack on the SOS Ack
// topic, while a GPS batch of its main link is stuck in the store. The
// two connections count as one agent, online until both are gone.
func TestServer_SOSLinkCommitsWhileMainLinkStalls(t *testing.T) {
	t.Parallel()
	stall := &stallingStore{stalled: make(chan struct{}, 1), release: make(chan struct{})}
	h := newHarness(t, func(c *Config) {
		stall.Store = c.Store
		c.Store = stall
	})
	released := false
	release := func() {
		if !released {
			released = true
			close(stall.release)
		}
	}
	t.Cleanup(release)

	agentID := storetest.Agent
	main := connectLink(t, h, agentID, agentID, protocol.AckTopic(agentID))
	if st := h.nextStatus(t); st != (agentStatus{agentID, true}) {
		t.Fatalf("status after the main link connected = %+v, want %s online", st, agentID)
	}
	sos := connectLink(t, h, agentID, protocol.SOSLinkClientID(agentID), protocol.SOSAckTopic(agentID))

	payload, err := protocol.EncodeBatch(storetest.FixBatch(1, 5, "veh-1"))
	if err != nil {
		t.Fatalf("encode batch: %v", err)
	}
	gpsDone := main.client.Publish(protocol.BatchTopic(agentID), 1, false, payload)
	select {
	case <-stall.stalled:
	case <-time.After(waitTimeout):
		t.Fatalf("the GPS batch did not reach the store within %s", waitTimeout)
	}

	sos.publishBatch(t, storetest.NewBatch(storetest.SOSRecord(1, "veh-2", "sos-1", storetest.Epoch)))
	// The SOS link commits inside the hook, before the PUBACK that
	// publishBatch waited for, and never through a committer.
	incidents, err := h.store.Incidents(context.Background(), store.IncidentFilter{})
	if err != nil {
		t.Fatalf("read incidents: %v", err)
	}
	if len(incidents) != 1 {
		t.Errorf("incidents at the SOS link's PUBACK = %+v, want the one of sos-1", incidents)
	}
	if h.server.committerOf(protocol.SOSLinkClientID(agentID)) != nil {
		t.Error("the SOS link has a committer; its batches must commit in the hook")
	}
	if h.server.committerOf(agentID) == nil {
		t.Error("the main link's GPS batch is held, but the main link has no committer")
	}
	if ack := sos.nextAck(t); ack.Lane != protocol.LaneSOS || ack.Through != 1 || ack.Error != "" {
		t.Errorf("SOS link Ack = %+v, want sos through 1", ack)
	}
	incidents, err = h.store.Incidents(context.Background(), store.IncidentFilter{})
	if err != nil {
		t.Fatalf("read incidents: %v", err)
	}
	if len(incidents) != 1 || incidents[0].SOSID != "sos-1" {
		t.Errorf("incidents while the GPS batch is stuck = %+v, want the one of sos-1", incidents)
	}
	select {
	case ack := <-main.acks:
		t.Errorf("main link got Ack %+v while its GPS batch is stuck; the SOS Ack belongs to the SOS link", ack)
	default:
	}

	release()
	if !gpsDone.WaitTimeout(waitTimeout) || gpsDone.Error() != nil {
		t.Fatalf("GPS batch: no PUBACK after the store went on: %v", gpsDone.Error())
	}
	if ack := main.nextAck(t); ack.Lane != protocol.LaneGPS || ack.Through != 5 {
		t.Errorf("main link Ack = %+v, want gps through 5", ack)
	}
	select {
	case ack := <-sos.acks:
		t.Errorf("SOS link got Ack %+v meant for the main link", ack)
	default:
	}

	// One agent, two connections: offline only when both are gone.
	sos.client.Disconnect(100)
	select {
	case st := <-h.statuses:
		t.Errorf("status %+v after only the SOS link closed, want none", st)
	case <-time.After(200 * time.Millisecond):
	}
	main.client.Disconnect(100)
	if st := h.nextStatus(t); st != (agentStatus{agentID, false}) {
		t.Errorf("status after both links closed = %+v, want %s offline", st, agentID)
	}
}
