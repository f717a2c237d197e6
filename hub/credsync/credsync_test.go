package credsync_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/hub/credsync"
	"github.com/xpress-ops/tower/hub/ingest"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/internal/passhash"
	"github.com/xpress-ops/tower/protocol"
)

type env struct {
	store  *embedded.Store
	ingest *ingest.Server
	syncer *credsync.Syncer
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
	sy, err := credsync.New(credsync.Config{Store: st, Publisher: in, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	sy.Start()
	e := &env{store: st, ingest: in, syncer: sy}
	t.Cleanup(func() { e.close(t) })
	return e
}

func (e *env) close(t *testing.T) {
	t.Helper()
	e.syncer.Close()
	if err := e.ingest.Close(); err != nil {
		t.Errorf("close ingest: %v", err)
	}
	if err := e.store.Close(); err != nil {
		t.Errorf("close store: %v", err)
	}
}

// agent is an MQTT client connected as an agent that records the
// vehicle credentials it receives.
type agent struct {
	client paho.Client
	mu     sync.Mutex
	got    map[string]protocol.VehicleCredential
}

func connectAgent(t *testing.T, e *env, id string) *agent {
	t.Helper()
	a := &agent{got: map[string]protocol.VehicleCredential{}}
	a.client = paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + e.ingest.Addr().String()).SetClientID(id).
		SetUsername(id).SetPassword("unused").SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := a.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect agent %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { a.client.Disconnect(100) })
	sub := a.client.Subscribe(protocol.VehicleCredentialFilter, 1, func(_ paho.Client, m paho.Message) {
		c, err := protocol.DecodeVehicleCredential(m.Payload())
		if err != nil {
			t.Errorf("agent %s got an invalid credential on %s: %v", id, m.Topic(), err)
			return
		}
		if vehicle, _ := protocol.ParseVehicleCredentialTopic(m.Topic()); vehicle != c.VehicleID {
			t.Errorf("credential of %s on topic %s", c.VehicleID, m.Topic())
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if old, ok := a.got[c.VehicleID]; !ok || c.Version > old.Version {
			a.got[c.VehicleID] = *c
		}
	})
	if !sub.WaitTimeout(10 * time.Second) {
		t.Fatal("no SUBACK")
	}
	if code := sub.(*paho.SubscribeToken).Result()[protocol.VehicleCredentialFilter]; code != 1 {
		t.Fatalf("subscription to %s granted code 0x%02x, want QoS 1", protocol.VehicleCredentialFilter, code)
	}
	return a
}

func (a *agent) credential(vehicle string) (protocol.VehicleCredential, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.got[vehicle]
	return c, ok
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

func TestSyncer_PublishesStoredAndChangedCredentials(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	ctx := context.Background()
	issued, err := e.store.CreateVehicleCredentials(ctx, []string{"veh-1", "veh-2"})
	if err != nil {
		t.Fatal(err)
	}
	e.syncer.Notify()
	<-e.syncer.Synced()

	a := connectAgent(t, e, "agent-ncr-1")
	eventually(t, "both credentials at the agent", func() bool {
		_, ok1 := a.credential("veh-1")
		_, ok2 := a.credential("veh-2")
		return ok1 && ok2
	})
	c1, _ := a.credential("veh-1")
	if err := passhash.Verify(c1.Hash, issued[0].Token); err != nil {
		t.Errorf("the synced hash does not verify veh-1's token: %v", err)
	}

	// Changes reach a connected agent after Notify.
	token, _, err := e.store.RotateVehicleCredential(ctx, "veh-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.RevokeVehicleCredential(ctx, "veh-2"); err != nil {
		t.Fatal(err)
	}
	e.syncer.Notify()
	eventually(t, "the rotation and the revocation at the agent", func() bool {
		c1, _ := a.credential("veh-1")
		c2, _ := a.credential("veh-2")
		return c1.PreviousHash != "" && c2.Revoked
	})
	c1, _ = a.credential("veh-1")
	if passhash.Verify(c1.Hash, token) != nil || passhash.Verify(c1.PreviousHash, issued[0].Token) != nil {
		t.Error("after rotation the agent cannot verify the new token and, during the grace, the old one")
	}

	// A hub restart publishes everything again: the broker kept nothing.
	e.close(t)
	e2 := start(t, dir)
	<-e2.syncer.Synced()
	b := connectAgent(t, e2, "agent-cebu-1")
	eventually(t, "the credentials at an agent of the restarted hub", func() bool {
		c1, ok1 := b.credential("veh-1")
		c2, ok2 := b.credential("veh-2")
		return ok1 && ok2 && c1.PreviousHash != "" && c2.Revoked
	})
}

func TestSyncer_AgentsCannotPublishCredentials(t *testing.T) {
	e := start(t, t.TempDir())
	ctx := context.Background()
	if _, err := e.store.CreateVehicleCredentials(ctx, []string{"veh-1"}); err != nil {
		t.Fatal(err)
	}
	e.syncer.Notify()
	<-e.syncer.Synced()

	forger := connectAgent(t, e, "agent-rogue")
	eventually(t, "the credential at the agent", func() bool { _, ok := forger.credential("veh-1"); return ok })
	real, _ := forger.credential("veh-1")
	forged, _ := protocol.EncodeVehicleCredential(&protocol.VehicleCredential{VehicleID: "veh-1", Hash: "$argon2id$forged", Version: real.Version + 100})
	pub := forger.client.Publish(protocol.VehicleCredentialTopic("veh-1"), 1, true, forged)
	pub.WaitTimeout(5 * time.Second)

	// A fresh subscriber gets the hub's credential, not the forged one.
	other := connectAgent(t, e, "agent-ncr-2")
	eventually(t, "the credential at another agent", func() bool { _, ok := other.credential("veh-1"); return ok })
	if got, _ := other.credential("veh-1"); got.Hash != real.Hash || got.Version != real.Version {
		t.Errorf("another agent got %+v, want the hub's version %d", got, real.Version)
	}
}

func TestMessage_OfStoredCredential(t *testing.T) {
	until := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	c := store.StoredVehicleCredential{
		VehicleCredential: store.VehicleCredential{VehicleID: "veh-1", PreviousValidUntil: until, Version: 5},
		TokenHash:         "$argon2id$new", PreviousHash: "$argon2id$old",
	}
	want := protocol.VehicleCredential{VehicleID: "veh-1", Hash: "$argon2id$new", PreviousHash: "$argon2id$old", PreviousValidUntil: until, Version: 5}
	if got := credsync.Message(c); got != want {
		t.Errorf("Message = %+v, want %+v", got, want)
	}
	c.Revoke(until, 6)
	if got := credsync.Message(c); !got.Revoked || got.Hash != "" || got.PreviousHash != "" || got.Version != 6 {
		t.Errorf("Message of a tombstone = %+v", got)
	}
}
