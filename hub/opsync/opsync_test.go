package opsync_test

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/hub/ingest"
	"github.com/xpress-ops/tower/hub/opsync"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/internal/passhash"
	"github.com/xpress-ops/tower/protocol"
)

type env struct {
	store  *embedded.Store
	ingest *ingest.Server
	syncer *opsync.Syncer
}

// start opens an embedded store in dir, the hub's agent broker on a free
// loopback port, and a syncer between them; all stop on cleanup.
func start(t *testing.T, dir string) *env {
	t.Helper()
	st := embedded.New(embedded.Config{Path: filepath.Join(dir, "hub.db")})
	if err := st.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	in := ingest.New(ingest.Config{Addr: "127.0.0.1:0", Store: st, Registerer: prometheus.NewRegistry()})
	if err := in.Open(); err != nil {
		t.Fatal(err)
	}
	sy, err := opsync.New(opsync.Config{Store: st, Publisher: in, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{store: st, ingest: in, syncer: sy}
	t.Cleanup(func() {
		sy.Close()
		if err := in.Close(); err != nil {
			t.Errorf("close ingest: %v", err)
		}
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return e
}

// agent is an MQTT client connected as an agent that records the last
// operator list it received on a topic.
type agent struct {
	client paho.Client
	mu     sync.Mutex
	lists  map[string]*protocol.OperatorList
	count  int
}

func connectAgent(t *testing.T, e *env, id string) *agent {
	t.Helper()
	a := &agent{lists: map[string]*protocol.OperatorList{}}
	a.client = paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + e.ingest.Addr().String()).SetClientID(id).
		SetUsername(id).SetPassword("unused").SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := a.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect agent %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { a.client.Disconnect(100) })
	return a
}

// subscribe subscribes to the operator list of agentID and returns the
// code the hub granted.
func (a *agent) subscribe(t *testing.T, agentID string) byte {
	t.Helper()
	topic := protocol.AgentOperatorsTopic(agentID)
	sub := a.client.Subscribe(topic, 1, func(_ paho.Client, m paho.Message) {
		l, err := protocol.DecodeOperatorList(m.Payload())
		if err != nil {
			t.Errorf("invalid operator list on %s: %v", m.Topic(), err)
			return
		}
		a.mu.Lock()
		a.lists[agentID] = l
		a.count++
		a.mu.Unlock()
	})
	if !sub.WaitTimeout(10 * time.Second) {
		t.Fatalf("subscribe to %s: no SUBACK", topic)
	}
	return sub.(*paho.SubscribeToken).Result()[topic]
}

// usernames returns the user names of the last list of agentID, and
// whether one arrived.
func (a *agent) usernames(agentID string) ([]string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.lists[agentID]
	if !ok {
		return nil, false
	}
	var out []string
	for _, o := range l.Operators {
		out = append(out, o.Username)
	}
	return out, true
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 10 s waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func createOperator(t *testing.T, st store.Store, username, role string, regions []string, password string) {
	t.Helper()
	h, err := passhash.Hash(password, passhash.Token)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateOperator(context.Background(), store.Operator{Username: username, DisplayName: "Name of " + username, Role: role, Regions: regions}, h); err != nil {
		t.Fatal(err)
	}
}

// Each agent gets the operators of its region: a Cebu-only operator is
// not sent to the NCR agent, an admin goes to both, a disabled operator
// to none. A later change reaches the agent as a whole new list.
func TestSyncer_PublishesOperatorsOfEachAgentRegion(t *testing.T) {
	e := start(t, t.TempDir())
	ctx := context.Background()
	for id, region := range map[string]string{"ncr-1": "NCR-Manila", "cebu-1": "Cebu"} {
		if _, _, err := e.store.CreateAgentCredential(ctx, id, region); err != nil {
			t.Fatal(err)
		}
	}
	createOperator(t, e.store, "ana", store.OperatorRoleOperator, []string{"Cebu"}, "ana-password")
	createOperator(t, e.store, "ben", store.OperatorRoleOperator, []string{"NCR-Manila"}, "ben-password")
	createOperator(t, e.store, "root", store.OperatorRoleAdmin, []string{"Davao"}, "root-password")
	createOperator(t, e.store, "sup", store.OperatorRoleSupervisor, []string{store.AllRegions}, "sup-password")
	createOperator(t, e.store, "zed", store.OperatorRoleOperator, []string{"NCR-Manila", "Cebu"}, "zed-password")
	if _, err := e.store.UpdateOperator(ctx, "zed", func(o *store.StoredOperator) error { o.Disabled = true; return nil }); err != nil {
		t.Fatal(err)
	}
	e.syncer.Start()
	<-e.syncer.Synced()

	ncr, cebu := connectAgent(t, e, "ncr-1"), connectAgent(t, e, "cebu-1")
	if code := ncr.subscribe(t, "ncr-1"); code >= 0x80 {
		t.Fatalf("agent's own list refused with 0x%02x", code)
	}
	if code := cebu.subscribe(t, "cebu-1"); code >= 0x80 {
		t.Fatalf("agent's own list refused with 0x%02x", code)
	}
	eventually(t, "both lists", func() bool {
		_, ok1 := ncr.usernames("ncr-1")
		_, ok2 := cebu.usernames("cebu-1")
		return ok1 && ok2
	})
	if got, _ := ncr.usernames("ncr-1"); !slices.Equal(got, []string{"ben", "root", "sup"}) {
		t.Errorf("NCR agent's operators = %v, want ben, root, sup", got)
	}
	if got, _ := cebu.usernames("cebu-1"); !slices.Equal(got, []string{"ana", "root", "sup"}) {
		t.Errorf("Cebu agent's operators = %v, want ana, root, sup", got)
	}
	ncr.mu.Lock()
	ben := ncr.lists["ncr-1"].Operators[0]
	ncr.mu.Unlock()
	if passhash.Verify(ben.Hash, "ben-password") != nil || ben.DisplayName != "Name of ben" || ben.Role != store.OperatorRoleOperator {
		t.Errorf("ben's entry %+v does not carry his account", ben)
	}

	// A deletion reaches the agent as a new list without him; the Cebu
	// agent, whose list did not change, gets nothing new.
	cebu.mu.Lock()
	cebuCount := cebu.count
	cebu.mu.Unlock()
	if err := e.store.DeleteOperator(ctx, "ben"); err != nil {
		t.Fatal(err)
	}
	e.syncer.Notify()
	eventually(t, "the NCR list without ben", func() bool {
		got, _ := ncr.usernames("ncr-1")
		return slices.Equal(got, []string{"root", "sup"})
	})
	// Another sync with no change publishes nothing either.
	e.syncer.Notify()
	createOperator(t, e.store, "cara", store.OperatorRoleOperator, []string{"NCR-Manila"}, "cara-password")
	e.syncer.Notify()
	eventually(t, "the NCR list with cara", func() bool {
		got, _ := ncr.usernames("ncr-1")
		return slices.Contains(got, "cara")
	})
	cebu.mu.Lock()
	defer cebu.mu.Unlock()
	if cebu.count != cebuCount {
		t.Errorf("Cebu agent got %d more lists, want none: its operators did not change", cebu.count-cebuCount)
	}
}

// An agent may subscribe to its own operator list only.
func TestACL_AgentCannotReadAnotherAgentsOperators(t *testing.T) {
	e := start(t, t.TempDir())
	ctx := context.Background()
	for id, region := range map[string]string{"ncr-1": "NCR-Manila", "cebu-1": "Cebu"} {
		if _, _, err := e.store.CreateAgentCredential(ctx, id, region); err != nil {
			t.Fatal(err)
		}
	}
	createOperator(t, e.store, "ana", store.OperatorRoleOperator, []string{"Cebu"}, "ana-password")
	e.syncer.Start()
	<-e.syncer.Synced()

	snoop := connectAgent(t, e, "ncr-1")
	if code := snoop.subscribe(t, "cebu-1"); code < 0x80 {
		t.Errorf("NCR agent's subscription to the Cebu agent's list granted with 0x%02x", code)
	}
	// A wildcard over every agent's list is refused too.
	wild := snoop.client.Subscribe(protocol.AgentPrefix+"+/operators", 1, func(paho.Client, paho.Message) {
		t.Error("NCR agent received an operator list through a wildcard")
	})
	wild.WaitTimeout(10 * time.Second)
	if code := wild.(*paho.SubscribeToken).Result()[protocol.AgentPrefix+"+/operators"]; code < 0x80 {
		t.Errorf("wildcard subscription granted with 0x%02x", code)
	}
	// The Cebu agent gets its list, so it was there to leak.
	own := connectAgent(t, e, "cebu-1")
	own.subscribe(t, "cebu-1")
	eventually(t, "the Cebu list at the Cebu agent", func() bool { _, ok := own.usernames("cebu-1"); return ok })
	if _, ok := snoop.usernames("cebu-1"); ok {
		t.Error("NCR agent received the Cebu agent's list")
	}
}

func TestListFor_LeavesOutDisabledAndOtherRegions(t *testing.T) {
	ops := []store.StoredOperator{
		{Operator: store.Operator{Username: "b", Role: store.OperatorRoleOperator, Regions: []string{"Davao"}}, PasswordHash: "h"},
		{Operator: store.Operator{Username: "a", Role: store.OperatorRoleAdmin}, PasswordHash: "h"},
		{Operator: store.Operator{Username: "c", Role: store.OperatorRoleAdmin, Disabled: true}, PasswordHash: "h"},
	}
	l := opsync.ListFor(store.AgentCredential{AgentID: "ncr-1", Region: "NCR-Manila"}, ops)
	if len(l.Operators) != 1 || l.Operators[0].Username != "a" || l.Agent != "ncr-1" || l.Region != "NCR-Manila" {
		t.Errorf("list = %+v, want the enabled admin only", l)
	}
}
