package localsos

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/goleak"

	"github.com/xpress-ops/tower/agent/broker"
	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	testAgent   = "ncr-1"
	testVehicle = "taxi-1"
	// waitTimeout bounds every wait for the broker.
	waitTimeout = 10 * time.Second
)

// agentSide is the part of an agent the relay works with: a spool, the
// vehicles' broker, the local SOS store and the relay.
type agentSide struct {
	spool    *spool.Spool
	broker   *broker.Broker
	store    *Store
	relay    *Relay
	registry *prometheus.Registry
	// stop closes everything; cleanup calls it too.
	stop func()
}

// startAgentSide starts a broker on a free port over a spool in dir, and
// a relay over the store file in dir, and stops them with stop or on
// cleanup.
func startAgentSide(t *testing.T, dir string) *agentSide {
	t.Helper()
	return startAgentSideWith(t, dir, nil, nil)
}

// startAgentSideWith is startAgentSide with the relay's config changed by
// mutate, and beforeStart run after the spool and store opened and before
// the broker and relay start.
func startAgentSideWith(t *testing.T, dir string, mutate func(*RelayConfig), beforeStart func(*agentSide)) *agentSide {
	t.Helper()
	a := &agentSide{registry: prometheus.NewRegistry()}

	sp := spool.New(spool.Config{Path: filepath.Join(dir, "spool.db")})
	if err := sp.Open(); err != nil {
		t.Fatalf("open spool: %v", err)
	}
	a.spool = sp
	a.store = New(Config{Path: filepath.Join(dir, File)})
	if err := a.store.Open(); err != nil {
		t.Fatalf("open store: %v", err)
	}
	a.broker = broker.New(broker.Config{
		Addr:        "127.0.0.1:0",
		Spool:       sp,
		OnSOSStored: func(rec protocol.Record) { a.relay.SOSStored(rec) },
	})
	cfg := RelayConfig{AgentID: testAgent, Store: a.store, Publisher: a.broker, Spool: sp, Registerer: a.registry}
	if mutate != nil {
		mutate(&cfg)
	}
	a.relay = NewRelay(cfg)
	if beforeStart != nil {
		beforeStart(a)
	}

	if err := a.broker.Open(); err != nil {
		t.Fatalf("open broker: %v", err)
	}
	if err := a.relay.Start(); err != nil {
		t.Fatalf("start relay: %v", err)
	}

	var once sync.Once
	stop := func() {
		once.Do(func() {
			for _, err := range []error{a.broker.Close(), a.relay.Close(), a.store.Close(), sp.Close()} {
				if err != nil {
					t.Errorf("stop agent side: %v", err)
				}
			}
		})
	}
	t.Cleanup(stop)
	a.stop = stop
	return a
}

// vehicle is a paho MQTT 3.1.1 client of a vehicle that collects the
// messages it receives.
type vehicle struct {
	t      *testing.T
	client paho.Client
	msgs   chan received
}

type received struct {
	topic   string
	payload string
}

// connectVehicle connects as testVehicle with clientID. With persistent
// set the session survives a disconnect.
func connectVehicle(t *testing.T, a *agentSide, clientID string, persistent bool) *vehicle {
	t.Helper()
	v := &vehicle{t: t, msgs: make(chan received, 64)}
	opts := paho.NewClientOptions().
		AddBroker("tcp://" + a.broker.Addr().String()).
		SetClientID(clientID).
		SetUsername(testVehicle).
		SetPassword("dev").
		SetProtocolVersion(4).
		SetCleanSession(!persistent).
		SetAutoReconnect(false).
		SetConnectTimeout(waitTimeout).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			v.msgs <- received{m.Topic(), string(m.Payload())}
		})
	v.client = paho.NewClient(opts)
	if tok := v.client.Connect(); !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		t.Fatalf("connect vehicle %s: %v", clientID, tok.Error())
	}
	t.Cleanup(func() { v.client.Disconnect(50) })
	return v
}

// subscribe subscribes to filter with QoS 1 and waits for the SUBACK.
func (v *vehicle) subscribe(filter string) {
	v.t.Helper()
	tok := v.client.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		v.t.Fatalf("subscribe to %s: %v", filter, tok.Error())
	}
}

// publish publishes with QoS 1 and waits for the PUBACK.
func (v *vehicle) publish(topic string, retained bool, payload string) {
	v.t.Helper()
	tok := v.client.Publish(topic, 1, retained, payload)
	if !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		v.t.Fatalf("publish to %s: %v", topic, tok.Error())
	}
}

// next returns the next message the vehicle received.
func (v *vehicle) next() received {
	v.t.Helper()
	select {
	case m := <-v.msgs:
		return m
	case <-time.After(waitTimeout):
		v.t.Fatalf("vehicle received nothing within %s", waitTimeout)
		return received{}
	}
}

// nextState returns the state of the next message, which must be on the
// state topic of sosID; "" for an empty payload.
func (v *vehicle) nextState(sosID string) string {
	v.t.Helper()
	m := v.next()
	if m.topic != protocol.SOSStateTopic(testVehicle, sosID) {
		v.t.Fatalf("message on %s, want the state topic of %s: %q", m.topic, sosID, m.payload)
	}
	if m.payload == "" {
		return ""
	}
	st, err := protocol.DecodeSOSState([]byte(m.payload))
	if err != nil {
		v.t.Fatalf("state payload %q: %v", m.payload, err)
	}
	return st.State
}

// expectNoRetainedState checks that a new subscription to the state topic
// of sosID delivers nothing: the vehicle publishes a retained status as a
// marker and subscribes to it after the state. mochi queues a
// subscription's retained messages before it reads the next packet, so a
// retained state would arrive before the marker.
func (v *vehicle) expectNoRetainedState(sosID string) {
	v.t.Helper()
	statusTopic := protocol.VehicleTopicFor(testVehicle, protocol.TopicStatus)
	v.publish(statusTopic, true, `{"online":true}`)
	v.subscribe(protocol.SOSStateTopic(testVehicle, sosID))
	v.subscribe(statusTopic)
	if m := v.next(); m.topic != statusTopic {
		v.t.Errorf("retained message on %s (%q), want none before the marker", m.topic, m.payload)
	}
}

func hubState(sosID string, incident int64, state string, at time.Time) (string, []byte) {
	payload, err := protocol.EncodeSOSStateUpdate(&protocol.SOSStateUpdate{
		VehicleID: testVehicle, SOSID: sosID, IncidentID: incident,
		State: protocol.SOSState{State: state, TS: at, Message: "hub: " + state},
	})
	if err != nil {
		panic(err)
	}
	return protocol.SOSStateUpdateTopic(testAgent, testVehicle, sosID), payload
}

func pressSOS(v *vehicle, sosID string) {
	v.t.Helper()
	v.publish(protocol.VehicleTopicFor(testVehicle, protocol.TopicSOS), false,
		fmt.Sprintf(`{"id":%q,"kind":"crash","lat":10.3157,"lon":123.8854}`, sosID))
}

func TestRelay_VehicleHearsEveryState(t *testing.T) {
	a := startAgentSide(t, t.TempDir())
	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")

	pressSOS(v, "sos-1")
	if got := v.nextState("sos-1"); got != protocol.SOSStateReceived {
		t.Fatalf("first state = %q, want received", got)
	}
	e, err := a.store.Get(testVehicle, "sos-1")
	if err != nil || e.Kind != protocol.SOSCrash || !e.HasLocation {
		t.Errorf("recorded entry = %+v, %v; want the crash SOS with its position", e, err)
	}

	now := time.Now().UTC()
	a.relay.HubState(hubState("sos-1", 3, protocol.SOSStateAcknowledged, now))
	if got := v.nextState("sos-1"); got != protocol.SOSStateAcknowledged {
		t.Fatalf("second state = %q, want acknowledged", got)
	}

	// A second connection of the vehicle gets the retained state.
	second := connectVehicle(t, a, "taxi-1-second", false)
	second.subscribe(protocol.SOSStateTopic(testVehicle, "sos-1"))
	if got := second.nextState("sos-1"); got != protocol.SOSStateAcknowledged {
		t.Errorf("retained state for a new subscriber = %q, want acknowledged", got)
	}

	// A repeated or older state sends no message; dispatched does.
	a.relay.HubState(hubState("sos-1", 3, protocol.SOSStateAcknowledged, now))
	a.relay.HubState(hubState("sos-1", 3, protocol.SOSStateReceived, now))
	a.relay.HubState(hubState("sos-1", 3, protocol.SOSStateDispatched, now.Add(time.Minute)))
	if got := v.nextState("sos-1"); got != protocol.SOSStateDispatched {
		t.Fatalf("third state = %q, want dispatched", got)
	}

	// A final state arrives, then the clear of the retained state.
	a.relay.HubState(hubState("sos-1", 3, protocol.SOSStateResolved, now.Add(2*time.Minute)))
	if got := v.nextState("sos-1"); got != protocol.SOSStateResolved {
		t.Fatalf("fourth state = %q, want resolved", got)
	}
	if got := v.nextState("sos-1"); got != "" {
		t.Fatalf("after resolved: %q, want the empty payload that clears the retained state", got)
	}
	third := connectVehicle(t, a, "taxi-1-third", false)
	third.expectNoRetainedState("sos-1")

	for state, want := range map[string]float64{
		protocol.SOSStateReceived: 1, protocol.SOSStateAcknowledged: 1, protocol.SOSStateDispatched: 1, protocol.SOSStateResolved: 1,
	} {
		if got := testutil.ToFloat64(a.relay.metrics.delivered.WithLabelValues(state)); got != want {
			t.Errorf("delivered{state=%s} = %v, want %v", state, got, want)
		}
	}
}

func TestRelay_RejectsBadHubStates(t *testing.T) {
	a := startAgentSide(t, t.TempDir())
	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")
	now := time.Now().UTC()

	topic, payload := hubState("sos-1", 3, protocol.SOSStateAcknowledged, now)
	a.relay.HubState(topic, []byte(`{"vehicle":"taxi-1"`))
	a.relay.HubState(protocol.SOSStateUpdateTopic("other-agent", testVehicle, "sos-1"), payload)
	a.relay.HubState(protocol.SOSStateUpdateTopic(testAgent, testVehicle, "sos-2"), payload)
	a.relay.HubState(topic, nil) // a clear from the hub, not an error

	for reason, want := range map[string]float64{"malformed": 1, "unknown_topic": 1, "invalid_id": 1} {
		if got := testutil.ToFloat64(a.relay.metrics.hubRejects.WithLabelValues(reason)); got != want {
			t.Errorf("rejects{reason=%s} = %v, want %v", reason, got, want)
		}
	}
	if _, err := a.store.Get(testVehicle, "sos-1"); err == nil {
		t.Error("a rejected state was stored")
	}

	// The valid state still gets through, and it is the first message.
	a.relay.HubState(topic, payload)
	if got := v.nextState("sos-1"); got != protocol.SOSStateAcknowledged {
		t.Errorf("state = %q, want acknowledged", got)
	}
}

func TestRelay_StartRepublishesActiveStates(t *testing.T) {
	dir := t.TempDir()
	a := startAgentSide(t, dir)
	v := connectVehicle(t, a, "taxi-1-main", false)
	pressSOS(v, "sos-active")
	pressSOS(v, "sos-closed")
	a.relay.HubState(hubState("sos-active", 1, protocol.SOSStateDispatched, time.Now().UTC()))
	a.relay.HubState(hubState("sos-closed", 2, protocol.SOSStateCancelled, time.Now().UTC()))
	v.client.Disconnect(50)

	// A restart loses the broker's retained messages.
	a.stop()
	a = startAgentSide(t, dir)
	v = connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.SOSStateTopic(testVehicle, "sos-active"))
	if got := v.nextState("sos-active"); got != protocol.SOSStateDispatched {
		t.Errorf("state after restart = %q, want dispatched", got)
	}
	v.expectNoRetainedState("sos-closed")
}

func TestRelay_PersistentSessionGetsFinalState(t *testing.T) {
	a := startAgentSide(t, t.TempDir())
	v := connectVehicle(t, a, "taxi-1-persistent", true)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")
	pressSOS(v, "sos-1")
	if got := v.nextState("sos-1"); got != protocol.SOSStateReceived {
		t.Fatalf("state = %q, want received", got)
	}
	v.client.Disconnect(50)

	a.relay.HubState(hubState("sos-1", 1, protocol.SOSStateResolved, time.Now().UTC()))
	if got := testutil.ToFloat64(a.relay.metrics.delivered.WithLabelValues(protocol.SOSStateResolved)); got != 1 {
		t.Fatalf("delivered{state=resolved} = %v, want 1", got)
	}

	// The session kept the subscription and both QoS 1 messages: the final
	// state and the empty clear, which mochi may resend in either order.
	// "received" may come again too when its PUBACK did not reach the
	// broker before the disconnect, as QoS 1 allows.
	v = connectVehicle(t, a, "taxi-1-persistent", true)
	var got []string
	sawResolved, sawClear := false, false
	for !sawResolved || !sawClear {
		state := v.nextState("sos-1")
		got = append(got, state)
		switch state {
		case protocol.SOSStateResolved:
			sawResolved = true
		case "":
			sawClear = true
		case protocol.SOSStateReceived:
		default:
			t.Fatalf("states on reconnect = %q, want resolved and the empty clear", got)
		}
		if len(got) > 3 {
			t.Fatalf("states on reconnect = %q, want resolved and the empty clear", got)
		}
	}
}

func TestRelay_AcknowledgeLocally(t *testing.T) {
	a := startAgentSide(t, t.TempDir())
	v := connectVehicle(t, a, "taxi-1-main", false)
	v.subscribe(protocol.VehiclePrefix + testVehicle + "/sos/+/state")
	pressSOS(v, "sos-1")
	v.nextState("sos-1")

	e, err := a.relay.AcknowledgeLocally(testVehicle, "sos-1", "Ana Reyes")
	if err != nil {
		t.Fatal(err)
	}
	if e.LocalAckBy != "Ana Reyes" {
		t.Errorf("entry = %+v, want acknowledged by Ana Reyes", e)
	}
	if got := v.nextState("sos-1"); got != protocol.SOSStateAcknowledged {
		t.Errorf("state = %q, want acknowledged", got)
	}
	if _, err := a.relay.AcknowledgeLocally(testVehicle, "sos-404", "Ana Reyes"); err == nil {
		t.Error("acknowledging an unknown SOS succeeded")
	}
}

func TestRelay_MetricsPassLint(t *testing.T) {
	a := startAgentSide(t, t.TempDir())
	mfs, err := a.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) == 0 {
		t.Fatal("no metrics registered")
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
}
