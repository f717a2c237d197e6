package ingest

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/goleak"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/postgres"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/internal/pgtest"
	"github.com/xpress-ops/tower/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for the broker or the database.
const waitTimeout = 10 * time.Second

type agentStatus struct {
	agentID   string
	connected bool
}

type commit struct {
	batch  *protocol.Batch
	result store.CommitResult
}

// harness is an ingest server on a free loopback port, backed by a
// PostgreSQL store on a fresh database.
type harness struct {
	server   *Server
	store    *postgres.Store
	registry *prometheus.Registry
	statuses chan agentStatus
	commits  chan commit
}

func newHarness(t *testing.T, configure func(*Config)) *harness {
	t.Helper()
	st := postgres.New(postgres.Config{
		URL:      pgtest.NewDatabase(t),
		MaxConns: 4,
		Now:      storetest.NewClock(storetest.Epoch).Now,
	})
	if err := st.Open(context.Background()); err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})

	h := &harness{
		store:    st,
		registry: prometheus.NewRegistry(),
		statuses: make(chan agentStatus, 16),
		commits:  make(chan commit, 16),
	}
	cfg := Config{
		Addr:       "127.0.0.1:0",
		Store:      st,
		Registerer: h.registry,
		OnCommit: func(b *protocol.Batch, res store.CommitResult) {
			h.commits <- commit{b, res}
		},
		OnAgentStatus: func(agentID string, connected bool) {
			h.statuses <- agentStatus{agentID, connected}
		},
	}
	if configure != nil {
		configure(&cfg)
	}
	h.server = New(cfg)
	if err := h.server.Open(); err != nil {
		t.Fatalf("open ingest: %v", err)
	}
	t.Cleanup(func() {
		if err := h.server.Close(); err != nil {
			t.Errorf("close ingest: %v", err)
		}
	})
	return h
}

// agent is a paho client acting as an agent: connected, subscribed to its
// ack topic.
type agent struct {
	id     string
	client paho.Client
	acks   chan *protocol.Ack
	lost   chan error
}

func dialAgent(t *testing.T, addr net.Addr, agentID, password string) (*agent, error) {
	t.Helper()
	return dialAgentAs(t, addr, agentID, agentID, password)
}

// dialAgentAs connects as agentID with the MQTT client id clientID.
func dialAgentAs(t *testing.T, addr net.Addr, agentID, clientID, password string) (*agent, error) {
	t.Helper()
	a := &agent{id: agentID, acks: make(chan *protocol.Ack, 16), lost: make(chan error, 1)}
	opts := paho.NewClientOptions().
		AddBroker("tcp://" + addr.String()).
		SetClientID(clientID).
		SetUsername(agentID).
		SetPassword(password).
		SetCleanSession(true).
		SetProtocolVersion(4). // without it, paho retries a refused CONNECT as MQTT 3.1
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(waitTimeout).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case a.lost <- err:
			default:
			}
		})
	a.client = paho.NewClient(opts)
	tok := a.client.Connect()
	if !tok.WaitTimeout(waitTimeout) {
		a.client.Disconnect(0)
		return nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { a.client.Disconnect(100) })
	return a, nil
}

func connectAgent(t *testing.T, h *harness, agentID string) *agent {
	t.Helper()
	a, err := dialAgent(t, h.server.Addr(), agentID, "dev-password")
	if err != nil {
		t.Fatalf("connect agent %s: %v", agentID, err)
	}
	tok := a.client.Subscribe(protocol.AckTopic(agentID), 1, func(_ paho.Client, m paho.Message) {
		ack, err := protocol.DecodeAck(m.Payload())
		if err != nil {
			t.Errorf("agent %s received an undecodable Ack %q: %v", agentID, m.Payload(), err)
			return
		}
		a.acks <- ack
	})
	if !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		t.Fatalf("subscribe to ack topic: %v", tok.Error())
	}
	if code := tok.(*paho.SubscribeToken).Result()[protocol.AckTopic(agentID)]; code != 1 {
		t.Fatalf("subscribe to own ack topic granted QoS %d, want 1", code)
	}
	return a
}

// publish sends payload to topic with QoS 1 and waits for the PUBACK.
func (a *agent) publish(t *testing.T, topic string, payload []byte) {
	t.Helper()
	tok := a.client.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(waitTimeout) {
		t.Fatalf("publish to %s: no PUBACK within %s", topic, waitTimeout)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("publish to %s: %v", topic, err)
	}
}

func (a *agent) publishBatch(t *testing.T, b *protocol.Batch) {
	t.Helper()
	payload, err := protocol.EncodeBatch(b)
	if err != nil {
		t.Fatalf("encode batch: %v", err)
	}
	a.publish(t, protocol.BatchTopic(a.id), payload)
}

func (a *agent) nextAck(t *testing.T) *protocol.Ack {
	t.Helper()
	select {
	case ack := <-a.acks:
		return ack
	case <-time.After(waitTimeout):
		t.Fatalf("agent %s: no Ack within %s", a.id, waitTimeout)
		return nil
	}
}

func (h *harness) fixCount(t *testing.T, vehicle string) int {
	t.Helper()
	fixes, err := h.store.Fixes(context.Background(), vehicle, storetest.Epoch.AddDate(-1, 0, 0), storetest.Epoch.AddDate(1, 0, 0), 0)
	if err != nil {
		t.Fatalf("read fixes: %v", err)
	}
	return len(fixes)
}

func (h *harness) nextStatus(t *testing.T) agentStatus {
	t.Helper()
	select {
	case st := <-h.statuses:
		return st
	case <-time.After(waitTimeout):
		t.Fatalf("no agent status callback within %s", waitTimeout)
		return agentStatus{}
	}
}

func TestServer_CommitsBatchAndAcks(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := connectAgent(t, h, storetest.Agent)

	a.publishBatch(t, storetest.FixBatch(1, 5, "veh-1"))

	ack := a.nextAck(t)
	if ack.Through != 5 {
		t.Errorf("Ack through %d, want 5", ack.Through)
	}
	if ack.Error != "" || ack.Permanent {
		t.Errorf("Ack error %q permanent %v, want none", ack.Error, ack.Permanent)
	}
	if ack.AgentID != storetest.Agent || ack.SpoolID != storetest.Spool || ack.Lane != protocol.LaneGPS {
		t.Errorf("Ack for %s/%s/%s, want %s/%s/gps", ack.AgentID, ack.SpoolID, ack.Lane, storetest.Agent, storetest.Spool)
	}
	if n := h.fixCount(t, "veh-1"); n != 5 {
		t.Errorf("%d fixes stored, want 5", n)
	}
	select {
	case c := <-h.commits:
		if len(c.result.Fixes) != 5 || c.batch.Last() != 5 {
			t.Errorf("OnCommit got %d fixes through %d, want 5 through 5", len(c.result.Fixes), c.batch.Last())
		}
	default:
		t.Error("OnCommit was not called before the Ack")
	}
	if got := testutil.ToFloat64(h.server.metrics.batchesCommitted); got != 1 {
		t.Errorf("batches committed = %v, want 1", got)
	}
	if got := testutil.ToFloat64(h.server.metrics.recordsCommitted.WithLabelValues("gps")); got != 5 {
		t.Errorf("records committed = %v, want 5", got)
	}
}

func TestServer_SOSBatchOpensIncident(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := connectAgent(t, h, storetest.Agent)

	a.publishBatch(t, storetest.NewBatch(storetest.SOSRecord(1, "veh-1", "sos-1", storetest.Epoch)))
	if ack := a.nextAck(t); ack.Through != 1 || ack.Lane != protocol.LaneSOS {
		t.Errorf("Ack = %+v, want through 1 in lane sos", ack)
	}
	c := <-h.commits
	if len(c.result.Incidents) != 1 || !c.result.Incidents[0].Opened {
		t.Errorf("commit result incidents = %+v, want one opened", c.result.Incidents)
	}
}

func TestServer_SOSBatchWithMoreMarksAgentCatchingUp(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := connectAgent(t, h, storetest.Agent)
	if h.server.CatchingUp(storetest.Agent) {
		t.Fatal("agent catching up before any batch")
	}

	first := storetest.NewBatch(storetest.SOSRecord(1, "veh-1", "sos-1", storetest.Epoch))
	first.More = true
	a.publishBatch(t, first)
	a.nextAck(t)
	if !h.server.CatchingUp(storetest.Agent) {
		t.Error("agent not catching up after an SOS batch with more behind it")
	}

	// A GPS batch does not change the SOS lane's catch-up state.
	gps := storetest.FixBatch(1, 2, "veh-1")
	a.publishBatch(t, gps)
	a.nextAck(t)
	if !h.server.CatchingUp(storetest.Agent) {
		t.Error("a GPS batch ended the SOS catch-up")
	}

	last := storetest.NewBatch(storetest.SOSRecord(2, "veh-2", "sos-2", storetest.Epoch))
	a.publishBatch(t, last)
	a.nextAck(t)
	if h.server.CatchingUp(storetest.Agent) {
		t.Error("agent still catching up after an SOS batch with nothing behind it")
	}
}

func TestServer_ResentBatchAcksSameThrough(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := connectAgent(t, h, storetest.Agent)
	b := storetest.FixBatch(1, 5, "veh-1")

	a.publishBatch(t, b)
	first := a.nextAck(t)
	a.publishBatch(t, b)
	second := a.nextAck(t)

	if first.Through != 5 || second.Through != 5 {
		t.Errorf("Acks through %d and %d, want 5 and 5", first.Through, second.Through)
	}
	if second.Error != "" {
		t.Errorf("resent batch got error %q, want none", second.Error)
	}
	if n := h.fixCount(t, "veh-1"); n != 5 {
		t.Errorf("%d fixes stored, want 5", n)
	}
	if got := testutil.ToFloat64(h.server.metrics.recordsDuplicate); got != 5 {
		t.Errorf("duplicate records = %v, want 5", got)
	}
}

func TestServer_RejectsBatchClaimingAnotherAgent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := connectAgent(t, h, "agent-a")

	b := storetest.FixBatch(1, 3, "veh-1")
	b.AgentID = "agent-b"
	a.publishBatch(t, b)

	ack := a.nextAck(t)
	if !ack.Permanent || !strings.Contains(ack.Error, "agent-b") {
		t.Errorf("Ack = %+v, want a permanent error naming agent-b", ack)
	}
	if ack.AgentID != "agent-a" || ack.Through != 0 {
		t.Errorf("Ack for %s through %d, want agent-a through 0", ack.AgentID, ack.Through)
	}
	if n := h.fixCount(t, "veh-1"); n != 0 {
		t.Errorf("%d fixes stored from an impostor batch, want 0", n)
	}
	for _, id := range []string{"agent-a", "agent-b"} {
		if seq, err := h.store.Cursor(context.Background(), id, b.SpoolID, protocol.LaneGPS); err != nil || seq != 0 {
			t.Errorf("cursor of %s = %d, %v, want 0", id, seq, err)
		}
	}
	if got := testutil.ToFloat64(h.server.metrics.batchesRejected.WithLabelValues(reasonAgentMismatch)); got != 1 {
		t.Errorf("rejected (agent_mismatch) = %v, want 1", got)
	}
}

func TestServer_ACLDeniesAnotherAgentsTopics(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := connectAgent(t, h, "agent-a")

	sub := a.client.Subscribe(protocol.AckTopic("agent-b"), 1, func(paho.Client, paho.Message) {})
	if !sub.WaitTimeout(waitTimeout) {
		t.Fatal("no SUBACK")
	}
	if code := sub.(*paho.SubscribeToken).Result()[protocol.AckTopic("agent-b")]; code != 0x80 {
		t.Errorf("subscription to agent-b's ack topic granted with code %#x, want failure 0x80", code)
	}

	payload, err := protocol.EncodeBatch(func() *protocol.Batch {
		b := storetest.FixBatch(1, 3, "veh-1")
		b.AgentID = "agent-b"
		return b
	}())
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	// MQTT 3.1.1 has no negative PUBACK, so mochi disconnects the client.
	a.client.Publish(protocol.BatchTopic("agent-b"), 1, false, payload)
	select {
	case <-a.lost:
	case <-time.After(waitTimeout):
		t.Fatal("agent publishing to another agent's batch topic was not disconnected")
	}
	if got := testutil.ToFloat64(h.server.metrics.aclDenied.WithLabelValues("publish")); got != 1 {
		t.Errorf("acl denied (publish) = %v, want 1", got)
	}
	if got := testutil.ToFloat64(h.server.metrics.aclDenied.WithLabelValues("subscribe")); got != 1 {
		t.Errorf("acl denied (subscribe) = %v, want 1", got)
	}
	if n := h.fixCount(t, "veh-1"); n != 0 {
		t.Errorf("%d fixes stored, want 0", n)
	}
}

func TestServer_InvalidBatchGetsPermanentAck(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := connectAgent(t, h, storetest.Agent)
	a.publishBatch(t, storetest.FixBatch(1, 3, "veh-1"))
	if ack := a.nextAck(t); ack.Through != 3 {
		t.Fatalf("first Ack through %d, want 3", ack.Through)
	}

	// Sequence numbers must increase; this envelope is readable, its records are not valid.
	bad := storetest.FixBatch(4, 3, "veh-1")
	bad.Records[2].Seq = 4
	payload, err := protocol.EncodeBatch(bad)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	a.publish(t, protocol.BatchTopic(a.id), payload)

	ack := a.nextAck(t)
	if !ack.Permanent || ack.Error == "" {
		t.Errorf("Ack = %+v, want a permanent error", ack)
	}
	if ack.Through != 3 {
		t.Errorf("Ack through %d, want the cursor 3", ack.Through)
	}
	if n := h.fixCount(t, "veh-1"); n != 3 {
		t.Errorf("%d fixes stored, want 3", n)
	}
	if got := testutil.ToFloat64(h.server.metrics.batchesRejected.WithLabelValues("invalid_batch")); got != 1 {
		t.Errorf("rejected (invalid_batch) = %v, want 1", got)
	}
}

func TestServer_UnreadableBatchCountedWithoutAck(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := connectAgent(t, h, storetest.Agent)

	a.publish(t, protocol.BatchTopic(a.id), []byte("not json at all"))
	// The hook runs before the PUBACK, so the count is final once publish returns.
	if got := testutil.ToFloat64(h.server.metrics.batchesRejected.WithLabelValues("malformed")); got != 1 {
		t.Errorf("rejected (malformed) = %v, want 1", got)
	}

	// The next Ack the agent receives is for the valid batch after it, so none was sent for the garbage.
	a.publishBatch(t, storetest.FixBatch(1, 2, "veh-1"))
	if ack := a.nextAck(t); ack.Error != "" || ack.Through != 2 {
		t.Errorf("Ack = %+v, want through 2 without error", ack)
	}
}

// A batch naming an uncommitted batch as its Prev gets a retryable error
// Ack and stores nothing; after the batch before it, the resend commits.
func TestServer_BatchAfterMissingPrevGetsRetryableAck(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := connectAgent(t, h, storetest.Agent)
	second := storetest.FixBatch(3, 2, "veh-1")
	second.Prev = 2

	a.publishBatch(t, second)
	ack := a.nextAck(t)
	if ack.Error == "" || ack.Permanent || ack.Through != 0 {
		t.Errorf("Ack = %+v, want a non-permanent error through 0", ack)
	}
	if got := testutil.ToFloat64(h.server.metrics.batchesRejected.WithLabelValues(reasonPrevMissing)); got != 1 {
		t.Errorf("rejected (prev_missing) = %v, want 1", got)
	}
	if n := h.fixCount(t, "veh-1"); n != 0 {
		t.Errorf("%d fixes stored from the refused batch, want 0", n)
	}

	a.publishBatch(t, storetest.FixBatch(1, 2, "veh-1"))
	if ack := a.nextAck(t); ack.Through != 2 {
		t.Errorf("first batch Ack through %d, want 2", ack.Through)
	}
	a.publishBatch(t, second)
	if ack := a.nextAck(t); ack.Through != 4 || ack.Error != "" {
		t.Errorf("resent second batch Ack = %+v, want through 4 without error", ack)
	}
	if n := h.fixCount(t, "veh-1"); n != 4 {
		t.Errorf("%d fixes stored, want 4", n)
	}
}

func TestServer_StoreFailureGetsRetryableAck(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := connectAgent(t, h, storetest.Agent)
	if err := h.store.Close(); err != nil {
		t.Fatalf("close store: %v", err)
	}

	a.publishBatch(t, storetest.FixBatch(1, 2, "veh-1"))
	ack := a.nextAck(t)
	if ack.Error == "" || ack.Permanent {
		t.Errorf("Ack = %+v, want a non-permanent error", ack)
	}
	if ack.Through != 0 {
		t.Errorf("Ack through %d, want 0 when the cursor cannot be read", ack.Through)
	}
	if got := testutil.ToFloat64(h.server.metrics.batchesRejected.WithLabelValues(reasonStoreUnavailable)); got != 1 {
		t.Errorf("rejected (store_unavailable) = %v, want 1", got)
	}
	select {
	case c := <-h.commits:
		t.Errorf("OnCommit called for a failed commit: %+v", c.result)
	default:
	}
}

func TestServer_ReportsAgentStatus(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := connectAgent(t, h, storetest.Agent)

	if st := h.nextStatus(t); st != (agentStatus{storetest.Agent, true}) {
		t.Errorf("status = %+v, want %s connected", st, storetest.Agent)
	}
	if got := testutil.ToFloat64(h.server.metrics.agentsConnected); got != 1 {
		t.Errorf("agents connected = %v, want 1", got)
	}

	a.client.Disconnect(100)
	if st := h.nextStatus(t); st != (agentStatus{storetest.Agent, false}) {
		t.Errorf("status = %+v, want %s disconnected", st, storetest.Agent)
	}
	if got := testutil.ToFloat64(h.server.metrics.agentsConnected); got != 0 {
		t.Errorf("agents connected = %v, want 0", got)
	}
}

type denyAgent string

func (d denyAgent) Authenticate(agentID string, _ []byte) error {
	if agentID == string(d) {
		return errors.New("unknown agent")
	}
	return nil
}

func TestServer_RejectsBadConnections(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(cfg *Config) { cfg.Authenticator = denyAgent("agent-denied") })

	if _, err := dialAgent(t, h.server.Addr(), "not a valid id!", "x"); err == nil {
		t.Error("connection with an invalid agent id succeeded")
	}
	if _, err := dialAgent(t, h.server.Addr(), "agent-denied", "x"); err == nil {
		t.Error("connection refused by the authenticator succeeded")
	}
	if got := testutil.ToFloat64(h.server.metrics.connectionsRejected.WithLabelValues("invalid_agent_id")); got != 1 {
		t.Errorf("rejected (invalid_agent_id) = %v, want 1", got)
	}
	if got := testutil.ToFloat64(h.server.metrics.connectionsRejected.WithLabelValues("bad_credentials")); got != 1 {
		t.Errorf("rejected (bad_credentials) = %v, want 1", got)
	}
	select {
	case st := <-h.statuses:
		t.Errorf("status callback for a rejected connection: %+v", st)
	default:
	}
}

func TestServer_OversizePacketDisconnects(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(cfg *Config) { cfg.MaxPacketBytes = 4096 })
	a := connectAgent(t, h, storetest.Agent)

	a.client.Publish(protocol.BatchTopic(a.id), 1, false, make([]byte, 8192))
	select {
	case <-a.lost:
	case <-time.After(waitTimeout):
		t.Fatal("agent sending a packet over MaxPacketBytes was not disconnected")
	}
	if got := testutil.ToFloat64(h.server.metrics.batchesReceived); got != 0 {
		t.Errorf("batches received = %v, want 0", got)
	}
}

func TestServer_OpenValidatesAndCloseTwice(t *testing.T) {
	t.Parallel()
	if err := New(Config{Addr: "127.0.0.1:0"}).Open(); err == nil {
		t.Error("Open without a store succeeded")
	}
	h := newHarness(t, nil)
	if err := h.server.Open(); err == nil {
		t.Error("second Open succeeded")
	}
	if err := h.server.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := h.server.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestServer_CloseReportsAgentsOffline(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	connectAgent(t, h, storetest.Agent)
	h.nextStatus(t)

	if err := h.server.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Close waits for every connection to end, so the callback has run.
	select {
	case st := <-h.statuses:
		if st.connected {
			t.Errorf("status after Close = %+v, want disconnected", st)
		}
	default:
		t.Error("no disconnected status after Close")
	}
}

func TestServer_MetricsPassLint(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := connectAgent(t, h, storetest.Agent)
	a.publishBatch(t, storetest.FixBatch(1, 2, "veh-1"))
	a.nextAck(t)

	families, err := h.registry.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	if len(families) == 0 {
		t.Fatal("no metrics gathered")
	}
	problems, err := promlint.NewWithMetricFamilies(families).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}
