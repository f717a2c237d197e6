package localsos

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/protocol"
)

// idleRelay waits until the relay's goroutine is past its start work and
// waiting for work: the vehicle v hears a state queued through
// QueueHubState. It returns the time the state carries.
func idleRelay(t *testing.T, a *agentSide, v *vehicle) time.Time {
	t.Helper()
	now := time.Now().UTC()
	a.relay.QueueHubState(hubState("sos-idle", 1, protocol.SOSStateAcknowledged, now))
	if got := v.nextState("sos-idle"); got != protocol.SOSStateAcknowledged {
		t.Fatalf("state of sos-idle = %q, want acknowledged", got)
	}
	return now
}

// stallRelay stalls the relay's goroutine on its lock while it records an
// SOS record of "sos-stall", so the hub states queued until release wait
// in the queue and the goroutine takes them together afterwards. The
// vehicle hears "received" of sos-stall before them. Call it once the
// relay is idle (idleRelay).
func stallRelay(t *testing.T, a *agentSide) (release func()) {
	t.Helper()
	a.relay.mu.Lock()
	var once sync.Once
	release = func() { once.Do(a.relay.mu.Unlock) }
	t.Cleanup(release)
	a.relay.SOSStored(appendSOS(t, a, "sos-stall"))
	deadline := time.Now().Add(waitTimeout)
	for len(a.relay.queue) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the relay did not take the SOS record within %s", waitTimeout)
		}
		time.Sleep(time.Millisecond)
	}
	return release
}

// heardStates collects the messages of n state changes, by SOS id, in the
// order the vehicle heard them. The empty clear after a final state is
// kept as "" but not counted.
func heardStates(t *testing.T, v *vehicle, n int) map[string][]string {
	t.Helper()
	heard := map[string][]string{}
	for counted := 0; counted < n; {
		m := v.next()
		rest, ok := strings.CutPrefix(m.topic, protocol.VehiclePrefix+testVehicle+"/sos/")
		sosID, ok2 := strings.CutSuffix(rest, "/state")
		if !ok || !ok2 || m.topic != protocol.SOSStateTopic(testVehicle, sosID) {
			t.Fatalf("message on %s, want a state topic of %s", m.topic, testVehicle)
		}
		state := ""
		if m.payload != "" {
			st, err := protocol.DecodeSOSState([]byte(m.payload))
			if err != nil {
				t.Fatalf("state payload %q: %v", m.payload, err)
			}
			state = st.State
			counted++
		}
		heard[sosID] = append(heard[sosID], state)
	}
	return heard
}

// Hub states queued while the relay is busy are stored together in one
// transaction of the store, and each vehicle still hears each state that
// moves its SOS forward, in order.
func TestRelay_QueuedHubStatesAppliedTogether(t *testing.T) {
	a := startAgentSide(t, t.TempDir())
	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")
	now := idleRelay(t, a, v)

	release := stallRelay(t, a)
	const alerts = 40
	for i := range alerts {
		id := fmt.Sprintf("sos-%02d", i)
		incident := int64(100 + i)
		a.relay.QueueHubState(hubState(id, incident, protocol.SOSStateAcknowledged, now))
		a.relay.QueueHubState(hubState(id, incident, protocol.SOSStateDispatched, now.Add(time.Minute)))
		// A repeat changes nothing, so the vehicle hears nothing of it.
		a.relay.QueueHubState(hubState(id, incident, protocol.SOSStateAcknowledged, now))
	}
	before := writeTxID(t, a.store)
	release()

	heard := heardStates(t, v, 1+2*alerts)
	if got := heard["sos-stall"]; fmt.Sprint(got) != fmt.Sprint([]string{protocol.SOSStateReceived}) {
		t.Errorf("vehicle heard %q for sos-stall, want received", got)
	}
	want := []string{protocol.SOSStateAcknowledged, protocol.SOSStateDispatched}
	for i := range alerts {
		id := fmt.Sprintf("sos-%02d", i)
		if got := heard[id]; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("vehicle heard %q for %s, want %q", got, id, want)
		}
		e := waitEntry(t, a.store, id, "the hub's states", func(e Entry) bool { return e.State == protocol.SOSStateDispatched })
		if e.IncidentID != int64(100+i) {
			t.Errorf("entry of %s = %+v, want incident %d", id, e, 100+i)
		}
	}
	// One transaction records sos-stall, one stores the hub's states.
	if txs := writeTxID(t, a.store) - before; txs > 2 {
		t.Errorf("recording one SOS and applying %d queued states took %d write transactions, want 2", 3*alerts, txs)
	}
	if got := testutil.ToFloat64(a.relay.metrics.delivered.WithLabelValues(protocol.SOSStateDispatched)); got != alerts {
		t.Errorf("delivered{state=dispatched} = %v, want %d", got, alerts)
	}
}

// The states of one SOS queued together end in the right state, and the
// vehicle hears those that move it forward, in order. A state of an older
// incident among them is ignored, as Apply ignores it.
func TestRelay_QueuedStatesOfOneSOSInOrder(t *testing.T) {
	a := startAgentSide(t, t.TempDir())
	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")
	pressSOS(v, "sos-1")
	if got := v.nextState("sos-1"); got != protocol.SOSStateReceived {
		t.Fatalf("first state = %q, want received", got)
	}
	now := idleRelay(t, a, v)

	release := stallRelay(t, a)
	a.relay.QueueHubState(hubState("sos-1", 5, protocol.SOSStateReceived, now))
	a.relay.QueueHubState(hubState("sos-1", 5, protocol.SOSStateDispatched, now.Add(time.Minute)))
	// Incident 4 is older than the 5 the states before it stored.
	a.relay.QueueHubState(hubState("sos-1", 4, protocol.SOSStateCancelled, now.Add(2*time.Minute)))
	a.relay.QueueHubState(hubState("sos-1", 5, protocol.SOSStateAcknowledged, now.Add(3*time.Minute)))
	a.relay.QueueHubState(hubState("sos-1", 5, protocol.SOSStateResolved, now.Add(4*time.Minute)))
	release()

	if got := v.nextState("sos-stall"); got != protocol.SOSStateReceived {
		t.Fatalf("state of sos-stall = %q, want received", got)
	}
	var got []string
	for len(got) < 3 {
		got = append(got, v.nextState("sos-1"))
	}
	want := []string{protocol.SOSStateDispatched, protocol.SOSStateResolved, ""}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("vehicle heard %q, want %q", got, want)
	}
	e := waitEntry(t, a.store, "sos-1", "the final state", func(e Entry) bool { return !e.Active() })
	if e.State != protocol.SOSStateResolved || e.IncidentID != 5 || !e.StateAt.Equal(now.Add(4*time.Minute)) {
		t.Errorf("entry = %+v, want resolved of incident 5 at %v", e, now.Add(4*time.Minute))
	}
	if got := testutil.ToFloat64(a.relay.metrics.delivered.WithLabelValues(protocol.SOSStateCancelled)); got != 0 {
		t.Errorf("delivered{state=cancelled} = %v, want 0: the older incident's state was sent", got)
	}
	v.expectNoRetainedState("sos-1")
}

// A group whose transaction fails is stored one state at a time: the
// others are stored, and the state of the damaged entry is counted and
// still reaches its vehicle.
func TestRelay_HubStateGroupFallback(t *testing.T) {
	logs := &lockedBuffer{}
	a := startAgentSideWith(t, t.TempDir(), func(c *RelayConfig) {
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	}, nil)
	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")
	now := idleRelay(t, a, v)
	if err := a.store.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(entriesBucket).Put(entryKey(testVehicle, "sos-damaged"), []byte("{not json"))
	}); err != nil {
		t.Fatal(err)
	}

	release := stallRelay(t, a)
	ids := []string{"sos-a", "sos-damaged", "sos-b", "sos-c"}
	for i, id := range ids {
		a.relay.QueueHubState(hubState(id, int64(10+i), protocol.SOSStateDispatched, now))
	}
	release()

	heard := heardStates(t, v, 1+len(ids))
	for _, id := range ids {
		if got := heard[id]; len(got) != 1 || got[0] != protocol.SOSStateDispatched {
			t.Errorf("vehicle heard %q for %s, want dispatched", got, id)
		}
		if id == "sos-damaged" {
			continue
		}
		waitEntry(t, a.store, id, "the hub's state", func(e Entry) bool { return e.State == protocol.SOSStateDispatched })
	}
	if got := testutil.ToFloat64(a.relay.metrics.failures.WithLabelValues(stageApply)); got != 1 {
		t.Errorf("failures{stage=apply} = %v, want 1 for the damaged entry", got)
	}
	if !strings.Contains(logs.String(), "not stored together") {
		t.Errorf("no log of a group stored one by one; logs:\n%s", logs.String())
	}
}

// Close applies the hub states still queued before it returns.
func TestRelay_CloseAppliesQueuedHubStates(t *testing.T) {
	a := startAgentSide(t, t.TempDir())
	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")
	now := idleRelay(t, a, v)

	release := stallRelay(t, a)
	const alerts = 30
	for i := range alerts {
		a.relay.QueueHubState(hubState(fmt.Sprintf("sos-%02d", i), int64(10+i), protocol.SOSStateDispatched, now))
	}
	closed := make(chan error, 1)
	go func() { closed <- a.relay.Close() }()
	// The goroutine finds the stop once it recorded sos-stall, with every
	// hub state still queued.
	<-a.relay.stop
	release()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}

	if n := len(a.relay.hubStates); n != 0 {
		t.Errorf("%d states still queued after Close", n)
	}
	for i := range alerts {
		id := fmt.Sprintf("sos-%02d", i)
		e, err := a.store.Get(testVehicle, id)
		if err != nil || e.State != protocol.SOSStateDispatched {
			t.Errorf("entry of %s after Close = %+v, %v; want dispatched", id, e, err)
		}
	}
	heard := heardStates(t, v, 1+alerts)
	if len(heard) != 1+alerts {
		t.Errorf("vehicle heard states of %d SOS alerts, want %d", len(heard), 1+alerts)
	}
}

// QueueHubState waiting for room in a full queue returns once Close
// began, even while the relay's goroutine is still busy, and after Close
// it returns at once and queues nothing.
func TestRelay_QueueHubStateReturnsAfterClose(t *testing.T) {
	a := startAgentSideWith(t, t.TempDir(), func(c *RelayConfig) { c.HubQueueSize = 2 }, nil)
	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")
	now := idleRelay(t, a, v)

	// The stalled goroutine takes nothing, so two states fill the queue
	// and the third waits for room.
	release := stallRelay(t, a)
	a.relay.QueueHubState(hubState("sos-0", 10, protocol.SOSStateDispatched, now))
	a.relay.QueueHubState(hubState("sos-1", 11, protocol.SOSStateDispatched, now))
	returned := make(chan struct{})
	go func() {
		a.relay.QueueHubState(hubState("sos-waits", 12, protocol.SOSStateDispatched, now))
		close(returned)
	}()
	deadline := time.Now().Add(waitTimeout)
	for testutil.ToFloat64(a.relay.metrics.hubQueueWaits) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("QueueHubState on a full queue did not wait within %s", waitTimeout)
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case <-returned:
		t.Fatal("QueueHubState returned with the queue full and the relay open")
	default:
	}

	closed := make(chan error, 1)
	go func() { closed <- a.relay.Close() }()
	select {
	case <-returned:
	case <-time.After(waitTimeout):
		t.Fatalf("QueueHubState still waits %s after Close began", waitTimeout)
	}
	release()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"sos-0", "sos-1"} {
		if e, err := a.store.Get(testVehicle, id); err != nil || e.State != protocol.SOSStateDispatched {
			t.Errorf("entry of %s after Close = %+v, %v; want dispatched", id, e, err)
		}
	}
	if _, err := a.store.Get(testVehicle, "sos-waits"); err == nil {
		t.Error("the state that waited until Close was applied")
	}

	late := make(chan struct{})
	go func() {
		a.relay.QueueHubState(hubState("sos-late", 99, protocol.SOSStateDispatched, now))
		close(late)
	}()
	select {
	case <-late:
	case <-time.After(waitTimeout):
		t.Fatalf("QueueHubState after Close did not return within %s", waitTimeout)
	}
	if n := len(a.relay.hubStates); n != 0 {
		t.Errorf("QueueHubState after Close queued: %d states in the queue", n)
	}
	if _, err := a.store.Get(testVehicle, "sos-late"); err == nil {
		t.Error("state queued after Close was applied")
	}
}

// Invalid messages are rejected by QueueHubState before it returns, as
// HubState rejects them, and never reach the queue.
func TestRelay_QueueHubStateRejectsAtOnce(t *testing.T) {
	a := startAgentSide(t, t.TempDir())
	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")
	now := idleRelay(t, a, v)

	release := stallRelay(t, a)
	topic, payload := hubState("sos-1", 3, protocol.SOSStateAcknowledged, now)
	a.relay.QueueHubState(topic, []byte(`{"vehicle":"taxi-1"`))
	a.relay.QueueHubState(protocol.SOSStateUpdateTopic("other-agent", testVehicle, "sos-1"), payload)
	a.relay.QueueHubState(protocol.SOSStateUpdateTopic(testAgent, testVehicle, "sos-2"), payload)
	a.relay.QueueHubState(topic, nil) // a clear from the hub, not an error
	queued := len(a.relay.hubStates)
	release()
	if queued != 0 {
		t.Errorf("%d rejected messages queued", queued)
	}
	for reason, want := range map[string]float64{"malformed": 1, "unknown_topic": 1, "invalid_id": 1} {
		if got := testutil.ToFloat64(a.relay.metrics.hubRejects.WithLabelValues(reason)); got != want {
			t.Errorf("rejects{reason=%s} = %v, want %v", reason, got, want)
		}
	}

	// The valid state still gets through, and it is the next message.
	if got := v.nextState("sos-stall"); got != protocol.SOSStateReceived {
		t.Fatalf("state of sos-stall = %q, want received", got)
	}
	a.relay.QueueHubState(topic, payload)
	if got := v.nextState("sos-1"); got != protocol.SOSStateAcknowledged {
		t.Errorf("state = %q, want acknowledged", got)
	}
}
