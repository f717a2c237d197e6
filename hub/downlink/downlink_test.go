package downlink

import (
	"context"
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

	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/ingest"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for the broker, the store or the downlink.
const waitTimeout = 15 * time.Second

// gate is a Publisher in front of the ingest server that can hold
// publishes back, to make the downlink fall behind the bus on purpose.
type gate struct {
	next Publisher

	mu      sync.Mutex
	closed  chan struct{} // nil while open
	entered chan string
}

func (g *gate) Publish(topic string, payload []byte, retain bool) error {
	g.mu.Lock()
	closed := g.closed
	g.mu.Unlock()
	if closed != nil {
		g.entered <- topic
		<-closed
	}
	return g.next.Publish(topic, payload, retain)
}

// hold makes the next publishes wait until release.
func (g *gate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = make(chan struct{})
}

func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.closed)
	g.closed = nil
}

// hub is the part of a hub the downlink works with: an embedded store on
// a file that outlives restarts, the event bus, the agents' broker and
// the downlink.
type hub struct {
	t        *testing.T
	clock    *storetest.Clock
	path     string
	store    *embedded.Store
	bus      *events.Bus
	ingest   *ingest.Server
	gate     *gate
	downlink *Downlink
	registry *prometheus.Registry
	seq      uint64
}

// options tune one start of the hub.
type options struct {
	bus    events.Config
	config func(*Config)
	// deferDownlink leaves the downlink unstarted, for the test to start
	// once its agent client is subscribed.
	deferDownlink bool
}

func newHub(t *testing.T) *hub {
	return &hub{t: t, clock: storetest.NewClock(storetest.Epoch), path: filepath.Join(t.TempDir(), "hub.db")}
}

// start opens the store, bus, broker and downlink. stop closes them again.
func (h *hub) start(opts options) {
	t := h.t
	t.Helper()
	h.store = embedded.New(embedded.Config{Path: h.path, Now: h.clock.Now, RetentionInterval: -1})
	if err := h.store.Open(context.Background()); err != nil {
		t.Fatalf("open store: %v", err)
	}
	h.bus = events.NewBus(opts.bus)

	h.ingest = ingest.New(ingest.Config{Addr: "127.0.0.1:0", Store: h.store})
	if err := h.ingest.Open(); err != nil {
		t.Fatalf("open ingest: %v", err)
	}
	h.gate = &gate{next: h.ingest, entered: make(chan string, 16)}

	h.registry = prometheus.NewRegistry()
	cfg := Config{
		Bus:           h.bus,
		Store:         h.store,
		Publisher:     h.gate,
		Registerer:    h.registry,
		Now:           h.clock.Now,
		RetryInterval: 50 * time.Millisecond,
	}
	if opts.config != nil {
		opts.config(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.downlink = d
	if !opts.deferDownlink {
		d.Start()
	}
	t.Cleanup(h.stop)
}

// stop closes everything start opened, in the hub's order. It is safe to
// call more than once.
func (h *hub) stop() {
	if h.downlink == nil {
		return
	}
	if err := h.downlink.Close(); err != nil {
		h.t.Errorf("close downlink: %v", err)
	}
	if err := h.ingest.Close(); err != nil {
		h.t.Errorf("close ingest: %v", err)
	}
	h.bus.Close()
	if err := h.store.Close(); err != nil {
		h.t.Errorf("close store: %v", err)
	}
	h.downlink = nil
}

// press commits an SOS of vehicle received at at and publishes its
// incident events as the hub does.
func (h *hub) press(vehicle, sosID string, at time.Time) store.IncidentChange {
	h.t.Helper()
	h.seq++
	b := storetest.NewBatch(storetest.SOSRecord(h.seq, vehicle, sosID, at))
	res, err := h.store.CommitBatch(context.Background(), b)
	if err != nil {
		h.t.Fatalf("commit SOS %s: %v", sosID, err)
	}
	if len(res.Incidents) != 1 {
		h.t.Fatalf("SOS %s changed %d incidents, want 1", sosID, len(res.Incidents))
	}
	c := res.Incidents[0]
	typ := events.TypeIncidentUpdated
	if c.Opened {
		typ = events.TypeIncidentOpened
	}
	if _, err := h.bus.Publish(typ, c); err != nil {
		h.t.Fatalf("publish %s: %v", typ, err)
	}
	return c
}

// act applies an operator action at the clock's time and publishes the
// change as the hub does.
func (h *hub) act(a store.Action, id int64) store.IncidentChange {
	h.t.Helper()
	ctx := context.Background()
	const actor = "operator:maria"
	var c store.IncidentChange
	var err error
	switch a {
	case store.ActionAcknowledge:
		c, err = h.store.AcknowledgeIncident(ctx, id, actor)
	case store.ActionDispatch:
		c, err = h.store.DispatchIncident(ctx, id, actor, "ambulance 12")
	case store.ActionResolve:
		c, err = h.store.ResolveIncident(ctx, id, actor, "driver safe")
	case store.ActionCancel:
		c, err = h.store.CancelIncident(ctx, id, actor, "false alarm")
	default:
		h.t.Fatalf("act: unsupported action %s", a)
	}
	if err != nil {
		h.t.Fatalf("%s incident %d: %v", a, id, err)
	}
	if _, err := h.bus.Publish(events.TypeIncidentUpdated, c); err != nil {
		h.t.Fatalf("publish: %v", err)
	}
	return c
}

// agentClient is a paho client connected to the hub's broker as the test
// agent, subscribed to its SOS state topics.
type agentClient struct {
	t      *testing.T
	client paho.Client

	mu sync.Mutex
	// last is the latest payload per topic; an empty one is a clear.
	last map[string][]byte
	// all lists every message in arrival order.
	all     []message
	arrived chan struct{}
}

type message struct {
	topic   string
	payload []byte
}

func (h *hub) connectAgent() *agentClient {
	t := h.t
	t.Helper()
	a := &agentClient{t: t, last: map[string][]byte{}, arrived: make(chan struct{}, 1)}
	opts := paho.NewClientOptions().
		AddBroker("tcp://" + h.ingest.Addr().String()).
		SetClientID(storetest.Agent).
		SetUsername(storetest.Agent).
		SetCleanSession(true).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectTimeout(waitTimeout)
	a.client = paho.NewClient(opts)
	if tok := a.client.Connect(); !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		t.Fatalf("connect agent: %v", tok.Error())
	}
	t.Cleanup(func() { a.client.Disconnect(100) })
	filter := protocol.SOSStateUpdateFilter(storetest.Agent)
	tok := a.client.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		a.mu.Lock()
		a.last[m.Topic()] = m.Payload()
		a.all = append(a.all, message{m.Topic(), m.Payload()})
		a.mu.Unlock()
		select {
		case a.arrived <- struct{}{}:
		default:
		}
	})
	if !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		t.Fatalf("subscribe to %s: %v", filter, tok.Error())
	}
	return a
}

// waitCounter waits until c reaches want. The downlink counts a publish
// after the broker took it, so the agent may see the message first.
func waitCounter(t *testing.T, c prometheus.Collector, want float64, what string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		got := testutil.ToFloat64(c)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s = %v, want %v", what, got, want)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func topicOf(sosID string) string {
	return protocol.SOSStateUpdateTopic(storetest.Agent, vehicle, sosID)
}

const vehicle = "taxi-0917"

// waitState waits until the latest message on the topic of sosID carries
// want, or is a clear when want is "".
func (a *agentClient) waitState(sosID, want string) protocol.SOSStateUpdate {
	a.t.Helper()
	topic := topicOf(sosID)
	deadline := time.After(waitTimeout)
	for {
		a.mu.Lock()
		payload, ok := a.last[topic]
		a.mu.Unlock()
		if ok {
			if want == "" && len(payload) == 0 {
				return protocol.SOSStateUpdate{}
			}
			if len(payload) > 0 {
				u, err := protocol.DecodeSOSStateUpdate(payload)
				if err != nil {
					a.t.Fatalf("undecodable state on %s: %v: %s", topic, err, payload)
				}
				if u.State.State == want {
					return u
				}
			}
		}
		select {
		case <-a.arrived:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			a.t.Fatalf("state on %s: latest payload %q, want %q within %s", topic, payload, want, waitTimeout)
		}
	}
}

// states returns the states received on the topic of sosID, in order;
// a clear is "".
func (a *agentClient) states(sosID string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, m := range a.all {
		if m.topic != topicOf(sosID) {
			continue
		}
		if len(m.payload) == 0 {
			out = append(out, "")
			continue
		}
		u, err := protocol.DecodeSOSStateUpdate(m.payload)
		if err != nil {
			a.t.Fatalf("undecodable state on %s: %v", m.topic, err)
		}
		out = append(out, u.State.State)
	}
	return out
}

func TestDownlink_FollowsIncidentLifecycle(t *testing.T) {
	h := newHub(t)
	h.start(options{})
	a := h.connectAgent()

	inc := h.press(vehicle, "sos-1", storetest.Epoch).Incident
	got := a.waitState("sos-1", protocol.SOSStateReceived)
	if got.VehicleID != vehicle || got.SOSID != "sos-1" || got.IncidentID != inc.ID {
		t.Errorf("received update %+v, want vehicle %s, sos-1, incident %d", got, vehicle, inc.ID)
	}
	if !got.State.TS.Equal(storetest.Epoch) {
		t.Errorf("received ts = %v, want the agent's receive time %v", got.State.TS, storetest.Epoch)
	}
	if got.State.Message != protocol.DefaultSOSStateMessage(protocol.SOSStateReceived) {
		t.Errorf("received message = %q, want the built-in English text", got.State.Message)
	}

	h.clock.Set(storetest.Epoch.Add(time.Minute))
	h.act(store.ActionAcknowledge, inc.ID)
	got = a.waitState("sos-1", protocol.SOSStateAcknowledged)
	if !got.State.TS.Equal(storetest.Epoch.Add(time.Minute)) {
		t.Errorf("acknowledged ts = %v, want %v", got.State.TS, storetest.Epoch.Add(time.Minute))
	}

	// A note changes no state, so nothing is sent for it.
	if _, err := h.store.AddIncidentNote(context.Background(), inc.ID, "operator:maria", "called the driver"); err != nil {
		t.Fatal(err)
	}
	h.act(store.ActionDispatch, inc.ID)
	a.waitState("sos-1", protocol.SOSStateDispatched)
	h.act(store.ActionResolve, inc.ID)
	a.waitState("sos-1", protocol.SOSStateResolved)

	want := []string{protocol.SOSStateReceived, protocol.SOSStateAcknowledged, protocol.SOSStateDispatched, protocol.SOSStateResolved}
	if got := a.states("sos-1"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("states on sos-1 = %v, want %v", got, want)
	}
	for _, s := range want {
		waitCounter(t, h.downlink.metrics.published.WithLabelValues(s), 1, "published{state="+s+"}")
	}
}

func TestDownlink_RepeatPressGetsIncidentState(t *testing.T) {
	h := newHub(t)
	h.start(options{})
	a := h.connectAgent()

	inc := h.press(vehicle, "sos-1", storetest.Epoch).Incident
	// Another SOS id within store.RepeatWindow attaches to the same incident.
	repeat := h.press(vehicle, "sos-1b", storetest.Epoch.Add(30*time.Second))
	if repeat.Incident.ID != inc.ID || repeat.Event.Type != store.EventRepeatPress {
		t.Fatalf("second press: incident %d, event %s; want a repeat press of incident %d", repeat.Incident.ID, repeat.Event.Type, inc.ID)
	}
	got := a.waitState("sos-1b", protocol.SOSStateReceived)
	if got.IncidentID != inc.ID {
		t.Errorf("sos-1b belongs to incident %d, want %d", got.IncidentID, inc.ID)
	}

	h.act(store.ActionAcknowledge, inc.ID)
	a.waitState("sos-1", protocol.SOSStateAcknowledged)
	a.waitState("sos-1b", protocol.SOSStateAcknowledged)
}

func TestDownlink_ResyncAfterRestart(t *testing.T) {
	h := newHub(t)
	h.start(options{})

	// Closed 30 hours ago: older than FinalRetention, so not resent.
	h.clock.Set(storetest.Epoch.Add(-30 * time.Hour))
	old := h.press(vehicle, "sos-old", storetest.Epoch.Add(-30*time.Hour)).Incident
	h.act(store.ActionResolve, old.ID)

	h.clock.Set(storetest.Epoch)
	resolved := h.press(vehicle, "sos-1", storetest.Epoch).Incident
	h.act(store.ActionAcknowledge, resolved.ID)
	h.act(store.ActionResolve, resolved.ID)
	active := h.press(vehicle, "sos-2", storetest.Epoch.Add(10*time.Minute)).Incident
	h.press(vehicle, "sos-2b", storetest.Epoch.Add(10*time.Minute+time.Second))
	h.act(store.ActionDispatch, active.ID)
	cancelled := h.press("taxi-0001", "sos-3", storetest.Epoch).Incident
	h.act(store.ActionCancel, cancelled.ID)

	// A restart loses the broker's retained messages and the bus history.
	// The agent subscribes before the resync, because mochi v2.7.9 races
	// on a retained publish that runs during a wildcard subscription.
	h.stop()
	h.clock.Set(storetest.Epoch.Add(time.Hour))
	h.start(options{deferDownlink: true})
	a := h.connectAgent()
	h.downlink.Start()

	a.waitState("sos-1", protocol.SOSStateResolved)
	a.waitState("sos-2", protocol.SOSStateDispatched)
	a.waitState("sos-2b", protocol.SOSStateDispatched)
	u := func() protocol.SOSStateUpdate {
		topic := protocol.SOSStateUpdateTopic(storetest.Agent, "taxi-0001", "sos-3")
		deadline := time.Now().Add(waitTimeout)
		for time.Now().Before(deadline) {
			a.mu.Lock()
			payload := a.last[topic]
			a.mu.Unlock()
			if len(payload) > 0 {
				u, err := protocol.DecodeSOSStateUpdate(payload)
				if err != nil {
					t.Fatal(err)
				}
				return u
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("no state for sos-3 of taxi-0001 within %s", waitTimeout)
		return protocol.SOSStateUpdate{}
	}()
	if u.State.State != protocol.SOSStateCancelled {
		t.Errorf("sos-3 state = %s, want cancelled", u.State.State)
	}

	// Events are handled only after the resync, so once a new incident's
	// state arrives the resync is over.
	h.press(vehicle, "sos-4", storetest.Epoch.Add(time.Hour))
	a.waitState("sos-4", protocol.SOSStateReceived)
	if got := a.states("sos-old"); len(got) != 0 {
		t.Errorf("states on sos-old = %v, want none: it closed more than FinalRetention ago", got)
	}
	// Each state was published once, and none for sos-old.
	for state, want := range map[string]float64{
		protocol.SOSStateReceived: 1, protocol.SOSStateAcknowledged: 0, protocol.SOSStateDispatched: 2,
		protocol.SOSStateResolved: 1, protocol.SOSStateCancelled: 1,
	} {
		waitCounter(t, h.downlink.metrics.published.WithLabelValues(state), want, "published{state="+state+"} after restart")
	}
	if n := testutil.ToFloat64(h.downlink.metrics.resyncs.WithLabelValues(causeStart)); n != 1 {
		t.Errorf("resyncs{cause=start} = %v, want 1", n)
	}
}

func TestDownlink_ResyncAfterBusGap(t *testing.T) {
	h := newHub(t)
	// A one-event buffer and a two-event history make a held publish
	// overflow the subscription and lose the events it missed.
	h.start(options{bus: events.Config{Buffer: 1, History: 2}})
	a := h.connectAgent()

	h.gate.hold()
	first := h.press(vehicle, "sos-1", storetest.Epoch).Incident
	select {
	case <-h.gate.entered:
	case <-time.After(waitTimeout):
		t.Fatal("the downlink did not publish the first SOS")
	}
	h.act(store.ActionAcknowledge, first.ID)
	second := h.press(vehicle, "sos-2", storetest.Epoch.Add(10*time.Minute)).Incident
	h.act(store.ActionAcknowledge, second.ID)
	h.act(store.ActionDispatch, second.ID)
	h.gate.release()

	a.waitState("sos-1", protocol.SOSStateAcknowledged)
	a.waitState("sos-2", protocol.SOSStateDispatched)
	if n := testutil.ToFloat64(h.downlink.metrics.resyncs.WithLabelValues(causeGap)); n != 1 {
		t.Errorf("resyncs{cause=gap} = %v, want 1", n)
	}

	// Live events flow again after the resync.
	h.act(store.ActionResolve, second.ID)
	a.waitState("sos-2", protocol.SOSStateResolved)
}

func TestDownlink_NeverPublishesBackwards(t *testing.T) {
	h := newHub(t)
	h.start(options{})
	a := h.connectAgent()

	c := h.press(vehicle, "sos-1", storetest.Epoch)
	h.act(store.ActionAcknowledge, c.Incident.ID)
	a.waitState("sos-1", protocol.SOSStateAcknowledged)

	// A late copy of the opening event, as a resumed subscription might
	// replay it, must not move the vehicle back to received.
	if _, err := h.bus.Publish(events.TypeIncidentOpened, c); err != nil {
		t.Fatal(err)
	}
	h.act(store.ActionDispatch, c.Incident.ID)
	a.waitState("sos-1", protocol.SOSStateDispatched)
	want := []string{protocol.SOSStateReceived, protocol.SOSStateAcknowledged, protocol.SOSStateDispatched}
	if got := a.states("sos-1"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("states on sos-1 = %v, want %v", got, want)
	}

	// An event that is not an incident change is counted and skipped.
	if _, err := h.bus.Publish(events.TypeIncidentUpdated, map[string]string{"incident": "x"}); err != nil {
		t.Fatal(err)
	}
	h.act(store.ActionResolve, c.Incident.ID)
	a.waitState("sos-1", protocol.SOSStateResolved)
	if n := testutil.ToFloat64(h.downlink.metrics.invalidEvents); n != 1 {
		t.Errorf("invalid events = %v, want 1", n)
	}
}

func TestDownlink_SweepClearsExpiredFinalStates(t *testing.T) {
	h := newHub(t)
	h.start(options{config: func(c *Config) { c.SweepInterval = 20 * time.Millisecond }})
	a := h.connectAgent()

	done := h.press(vehicle, "sos-1", storetest.Epoch).Incident
	h.act(store.ActionResolve, done.ID)
	open := h.press(vehicle, "sos-2", storetest.Epoch.Add(10*time.Minute)).Incident
	a.waitState("sos-1", protocol.SOSStateResolved)
	a.waitState("sos-2", protocol.SOSStateReceived)

	h.clock.Set(storetest.Epoch.Add(DefaultFinalRetention + time.Minute))
	a.waitState("sos-1", "")
	waitCounter(t, h.downlink.metrics.cleared, 1, "cleared")

	// The active incident keeps its state, and it still changes.
	h.act(store.ActionAcknowledge, open.ID)
	a.waitState("sos-2", protocol.SOSStateAcknowledged)
	if got := a.states("sos-2"); len(got) != 2 {
		t.Errorf("states on sos-2 = %v, want received and acknowledged, no clear", got)
	}
}

func TestDownlink_MessageInDriversLanguage(t *testing.T) {
	h := newHub(t)
	var mu sync.Mutex
	var requested []string
	h.start(options{config: func(c *Config) {
		c.Language = func(_ context.Context, vehicleID string) string {
			mu.Lock()
			defer mu.Unlock()
			requested = append(requested, vehicleID)
			return "fil"
		}
		c.Message = func(lang, state string) string { return lang + ":" + state }
	}})
	a := h.connectAgent()

	h.press(vehicle, "sos-1", storetest.Epoch)
	got := a.waitState("sos-1", protocol.SOSStateReceived)
	if got.State.Message != "fil:received" {
		t.Errorf("message = %q, want the configured text for fil", got.State.Message)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(requested) != 1 || requested[0] != vehicle {
		t.Errorf("Language called for %v, want [%s]", requested, vehicle)
	}
}

func TestNew_RejectsIncompleteConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without Bus, Store and Publisher succeeded")
	}
	bus := events.NewBus(events.Config{})
	defer bus.Close()
	if _, err := New(Config{Bus: bus, Store: (*embedded.Store)(nil), Publisher: &gate{}, SweepInterval: -time.Second}); err == nil {
		t.Error("New with a negative SweepInterval succeeded")
	}
}

func TestMetrics_PassLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := newMetrics(reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
	if _, err := newMetrics(reg); err == nil {
		t.Error("registering the metrics twice succeeded")
	}
}

// Inflight passes the ingest server's count through, so the downlink
// paces as it does in a hub.
func (g *gate) Inflight(agentID string) int {
	if c, ok := g.next.(InflightCounter); ok {
		return c.Inflight(agentID)
	}
	return 0
}

func TestDownlink_PacesByAgentInflight(t *testing.T) {
	const limit, incidents = 5, 20
	h := newHub(t)
	h.start(options{deferDownlink: true, config: func(c *Config) { c.MaxInflight = limit }})
	for i := range incidents {
		h.press(fmt.Sprintf("taxi-%04d", 100+i), fmt.Sprintf("sos-pace-%d", i), storetest.Epoch)
	}

	// An agent client that acknowledges each message only when the test calls Ack.
	var mu sync.Mutex
	var unacked []paho.Message
	received := 0
	opts := paho.NewClientOptions().
		AddBroker("tcp://" + h.ingest.Addr().String()).
		SetClientID(storetest.Agent).
		SetUsername(storetest.Agent).
		SetCleanSession(true).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetAutoAckDisabled(true).
		SetConnectTimeout(waitTimeout)
	client := paho.NewClient(opts)
	if tok := client.Connect(); !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		t.Fatalf("connect agent: %v", tok.Error())
	}
	t.Cleanup(func() { client.Disconnect(100) })
	tok := client.Subscribe(protocol.SOSStateUpdateFilter(storetest.Agent), 1, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		defer mu.Unlock()
		unacked = append(unacked, m)
		received++
	})
	if !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	h.downlink.Start()

	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return received
	}
	deadline := time.Now().Add(waitTimeout)
	for count() < limit && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	waitCounter(t, h.downlink.metrics.paced, 1, "a paced publish")
	if n := h.ingest.Inflight(storetest.Agent); n > limit {
		t.Errorf("messages in flight to the agent = %d, want at most %d", n, limit)
	}
	if n := count(); n > limit {
		t.Errorf("states received before any acknowledgement = %d, want at most %d", n, limit)
	}

	// Acknowledging lets the rest through, each batch at most limit.
	for time.Now().Before(deadline) && count() < incidents {
		mu.Lock()
		batch := unacked
		unacked = nil
		mu.Unlock()
		for _, m := range batch {
			m.Ack()
		}
		if n := h.ingest.Inflight(storetest.Agent); n > limit {
			t.Errorf("messages in flight to the agent = %d, want at most %d", n, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A state may arrive twice (its event and the resync at start).
	if n := count(); n < incidents {
		t.Errorf("states received = %d, want all %d", n, incidents)
	}
}
