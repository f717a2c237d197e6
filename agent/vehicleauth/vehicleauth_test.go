package vehicleauth_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/agent/broker"
	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/agent/vehicleauth"
	"github.com/xpress-ops/tower/internal/passhash"
	"github.com/xpress-ops/tower/protocol"
)

// clock is a settable agent clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

var epoch = time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC)

// newToken returns a random token and its argon2id hash, as the hub makes them.
func newToken(t testing.TB) (string, string) {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	token := base64.RawURLEncoding.EncodeToString(b)
	hash, err := passhash.Hash(token, passhash.Token)
	if err != nil {
		t.Fatal(err)
	}
	return token, hash
}

type fixture struct {
	store *vehicleauth.Store
	reg   *prometheus.Registry
	path  string
	clock *clock
}

func openStore(t testing.TB, path string, c *clock) *fixture {
	t.Helper()
	reg := prometheus.NewRegistry()
	s := vehicleauth.New(vehicleauth.Config{Path: path, Registerer: reg, Now: c.Now})
	if err := s.Open(); err != nil {
		t.Fatalf("open vehicle store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close vehicle store: %v", err)
		}
	})
	return &fixture{store: s, reg: reg, path: path, clock: c}
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	return openStore(t, filepath.Join(t.TempDir(), vehicleauth.File), &clock{now: epoch})
}

func mustApply(t testing.TB, s *vehicleauth.Store, creds ...protocol.VehicleCredential) int {
	t.Helper()
	n, err := s.Apply(creds...)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return n
}

func TestStore_AppliesOnlyNewerVersions(t *testing.T) {
	f := newFixture(t)
	tok1, hash1 := newToken(t)
	tok2, hash2 := newToken(t)

	if n := mustApply(t, f.store, protocol.VehicleCredential{VehicleID: "veh-1", Hash: hash2, Version: 7}); n != 1 {
		t.Fatalf("applied %d, want 1", n)
	}
	// An older message, as from a hub replaying its retained copy late, changes nothing.
	if n := mustApply(t, f.store, protocol.VehicleCredential{VehicleID: "veh-1", Hash: hash1, Version: 3}); n != 0 {
		t.Errorf("an older version was applied")
	}
	if n := mustApply(t, f.store, protocol.VehicleCredential{VehicleID: "veh-1", Hash: hash1, Version: 7}); n != 0 {
		t.Errorf("the same version was applied again")
	}
	if err := f.store.Authenticate("veh-1", []byte(tok2)); err != nil {
		t.Errorf("token of version 7: %v", err)
	}
	if err := f.store.Authenticate("veh-1", []byte(tok1)); !errors.Is(err, broker.ErrBadPassword) {
		t.Errorf("token of version 3 = %v, want ErrBadPassword", err)
	}
	// Within one batch the newest version of a vehicle wins.
	mustApply(t, f.store,
		protocol.VehicleCredential{VehicleID: "veh-2", Hash: hash2, Version: 9},
		protocol.VehicleCredential{VehicleID: "veh-2", Hash: hash1, Version: 8})
	if c, _ := f.store.Credential("veh-2"); c.Version != 9 {
		t.Errorf("veh-2 holds version %d, want 9", c.Version)
	}
	if got := metricValue(t, f.reg, "xpress_agent_vehicle_credential_updates_total", "stale"); got < 2 {
		t.Errorf("stale updates = %v, want at least 2", got)
	}
}

func TestStore_HubMessagesCheckedAndApplied(t *testing.T) {
	f := newFixture(t)
	tok, hash := newToken(t)
	good, err := protocol.EncodeVehicleCredential(&protocol.VehicleCredential{VehicleID: "veh-1", Hash: hash, Version: 1})
	if err != nil {
		t.Fatal(err)
	}
	f.store.HubMessage(protocol.VehicleCredentialTopic("veh-2"), good) // names another vehicle
	f.store.HubMessage(protocol.VehicleCredentialTopic("veh-1"), []byte(`{"vehicle":"veh-1"`))
	f.store.HubMessage(protocol.VehicleCredentialTopic("veh-1"), nil)
	f.store.HubMessage("xpress/v1/hub/vehicle-credentials/a/b", good)
	f.store.HubMessage(protocol.VehicleCredentialTopic("veh-1"), good)
	eventually(t, "the valid message applied", func() bool {
		c, ok := f.store.Credential("veh-1")
		return ok && c.Version == 1
	})
	if _, ok := f.store.Credential("veh-2"); ok {
		t.Error("a message naming veh-1 on veh-2's topic was applied to veh-2")
	}
	if got := metricValue(t, f.reg, "xpress_agent_vehicle_credential_updates_total", "invalid"); got != 4 {
		t.Errorf("invalid updates = %v, want 4", got)
	}
	if err := f.store.Authenticate("veh-1", []byte(tok)); err != nil {
		t.Errorf("Authenticate after the hub message: %v", err)
	}
}

func TestStore_KeepsCredentialsAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	c := &clock{now: epoch}
	path := filepath.Join(dir, vehicleauth.File)
	tok, hash := newToken(t)
	_, hash2 := newToken(t)

	reg := prometheus.NewRegistry()
	s := vehicleauth.New(vehicleauth.Config{Path: path, Registerer: reg, Now: c.Now})
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	mustApply(t, s,
		protocol.VehicleCredential{VehicleID: "veh-1", Hash: hash, Version: 4},
		protocol.VehicleCredential{VehicleID: "veh-2", Hash: hash2, Version: 5},
	)
	mustApply(t, s, protocol.VehicleCredential{VehicleID: "veh-2", Version: 6, Revoked: true})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	f := openStore(t, path, c)
	if err := f.store.Authenticate("veh-1", []byte(tok)); err != nil {
		t.Errorf("veh-1 after restart: %v", err)
	}
	if err := f.store.Authenticate("veh-2", []byte(tok)); !errors.Is(err, broker.ErrVehicleNotAuthorized) {
		t.Errorf("revoked veh-2 after restart = %v, want ErrVehicleNotAuthorized", err)
	}
	if got := metricValue(t, f.reg, "xpress_agent_vehicle_credentials", ""); got != 1 {
		t.Errorf("live credentials gauge = %v, want 1", got)
	}
	// The version guard holds across the restart too.
	if n := mustApply(t, f.store, protocol.VehicleCredential{VehicleID: "veh-2", Hash: hash2, Version: 5}); n != 0 {
		t.Error("a version older than the stored tombstone was applied after restart")
	}
}

func TestStore_RotationGraceAndRemembering(t *testing.T) {
	f := newFixture(t)
	oldTok, oldHash := newToken(t)
	newTok, newHash := newToken(t)
	mustApply(t, f.store, protocol.VehicleCredential{VehicleID: "veh-1", Hash: oldHash, Version: 1})
	if err := f.store.Authenticate("veh-1", []byte(oldTok)); err != nil {
		t.Fatal(err)
	}
	if !f.store.Remembers("veh-1", []byte(oldTok)) || f.store.Remembers("veh-1", []byte(newTok)) {
		t.Fatal("Remembers does not match the accepted token")
	}

	until := epoch.Add(time.Hour)
	mustApply(t, f.store, protocol.VehicleCredential{VehicleID: "veh-1", Hash: newHash, PreviousHash: oldHash, PreviousValidUntil: until, Version: 2})
	if f.store.Remembers("veh-1", []byte(oldTok)) {
		t.Error("a token accepted under version 1 is still remembered under version 2")
	}
	for _, tok := range []string{oldTok, newTok, oldTok} { // the second old check is remembered
		if err := f.store.Authenticate("veh-1", []byte(tok)); err != nil {
			t.Errorf("during the grace: %v", err)
		}
	}
	f.clock.Set(until)
	if err := f.store.Authenticate("veh-1", []byte(oldTok)); !errors.Is(err, broker.ErrBadPassword) {
		t.Errorf("old token after the grace = %v, want ErrBadPassword (also when remembered)", err)
	}
	if err := f.store.Authenticate("veh-1", []byte(newTok)); err != nil {
		t.Errorf("new token after the grace: %v", err)
	}
	if err := f.store.Authenticate("veh-1", nil); !errors.Is(err, broker.ErrBadPassword) {
		t.Errorf("no password = %v, want ErrBadPassword", err)
	}
	if err := f.store.Authenticate("veh-9", []byte(newTok)); !errors.Is(err, broker.ErrVehicleNotAuthorized) {
		t.Errorf("unknown vehicle = %v, want ErrVehicleNotAuthorized", err)
	}
	if got := metricValue(t, f.reg, "xpress_agent_vehicle_auth_checks_total", "remembered"); got < 1 {
		t.Errorf("remembered checks = %v, want at least 1", got)
	}
}

// TestBroker_VehicleCredentials runs the store as the authenticator of a
// real broker and connects as vehicles over MQTT 5 and 3.1.1.
func TestBroker_VehicleCredentials(t *testing.T) {
	f := newFixture(t)
	addr, sp := startBroker(t, f.store)
	tok1, hash1 := newToken(t)
	tok2, hash2 := newToken(t)
	mustApply(t, f.store,
		protocol.VehicleCredential{VehicleID: "veh-1", Hash: hash1, Version: 1},
		protocol.VehicleCredential{VehicleID: "veh-2", Hash: hash2, Version: 2},
	)

	for _, c := range []struct {
		name            string
		vehicle, pass   string
		want5, want3111 byte
	}{
		{"right token", "veh-1", tok1, 0, 0},
		{"another vehicle's token", "veh-1", tok2, 0x86, 0x04},
		{"no token", "veh-1", "", 0x86, 0x04},
		{"unknown vehicle", "veh-404", tok1, 0x87, 0x05},
	} {
		if got := connackCode(t, addr, 5, c.vehicle, c.pass); got != c.want5 {
			t.Errorf("%s, MQTT 5: CONNACK 0x%02x, want 0x%02x", c.name, got, c.want5)
		}
		if got := connackCode(t, addr, 4, c.vehicle, c.pass); got != c.want3111 {
			t.Errorf("%s, MQTT 3.1.1: CONNACK 0x%02x, want 0x%02x", c.name, got, c.want3111)
		}
	}

	// Revoked after a connect, so the remembered check must not let it in.
	mustApply(t, f.store, protocol.VehicleCredential{VehicleID: "veh-1", Version: 3, Revoked: true})
	if got := connackCode(t, addr, 5, "veh-1", tok1); got != 0x87 {
		t.Errorf("revoked vehicle: CONNACK 0x%02x, want 0x87", got)
	}

	// An authenticated vehicle stays confined to its own topics.
	cl := connectPaho(t, addr, "veh-2", tok2)
	// MQTT 3.1.1 has no negative PUBACK: the broker acknowledges and discards.
	tok := cl.Publish(protocol.VehicleTopicFor("veh-1", protocol.TopicFix), 1, false, []byte(`{"ts":"2026-12-05T01:00:00Z","lat":14.5,"lon":121}`))
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish to veh-1's topic: %v", tok.Error())
	}
	if recs, err := sp.Read(protocol.LaneGPS, 0, 0, 0); err != nil || len(recs) != 0 {
		t.Errorf("spool after veh-2 published to veh-1's topic: %d records (%v), want none", len(recs), err)
	}
	sub := cl.Subscribe(protocol.VehiclePrefix+"veh-1/#", 1, nil)
	sub.Wait()
	if st, ok := sub.(*paho.SubscribeToken); !ok || st.Result()[protocol.VehiclePrefix+"veh-1/#"] < 0x80 {
		t.Errorf("veh-2 subscribed to veh-1's topics: %v", sub.(*paho.SubscribeToken).Result())
	}
}

func startBroker(t testing.TB, auth broker.VehicleAuthenticator) (net.Addr, *spool.Spool) {
	t.Helper()
	sp := spool.New(spool.Config{Path: filepath.Join(t.TempDir(), "spool.db"), Registerer: prometheus.NewRegistry()})
	if err := sp.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	b := broker.New(broker.Config{Addr: "127.0.0.1:0", Spool: sp, Authenticator: auth, Registerer: prometheus.NewRegistry(),
		// Every test client connects from one address, and some fail on purpose.
		ConnectRate: broker.MaxConnectRate, ConnectBurst: broker.MaxConnectBurst, AuthFailures: broker.MaxAuthFailures})
	if err := b.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b.Addr(), sp
}

// connackCode sends a CONNECT with mochi's codec and returns the CONNACK code.
func connackCode(t testing.TB, addr net.Addr, version byte, vehicle, password string) byte {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "c-" + vehicle,
			UsernameFlag: true, Username: []byte(vehicle), PasswordFlag: password != "", Password: []byte(password),
		},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	first, err := r.ReadByte()
	if err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	ack := packets.Packet{ProtocolVersion: version}
	if err := ack.FixedHeader.Decode(first); err != nil || ack.FixedHeader.Type != packets.Connack {
		t.Fatalf("first packet type %d (%v), want CONNACK", ack.FixedHeader.Type, err)
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatal(err)
	}
	if err := ack.ConnackDecode(body); err != nil {
		t.Fatal(err)
	}
	return ack.ReasonCode
}

func connectPaho(t testing.TB, addr net.Addr, vehicle, password string) paho.Client {
	t.Helper()
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + addr.String()).SetClientID("paho-" + vehicle).
		SetUsername(vehicle).SetPassword(password).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect as %s: %v", vehicle, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// metricValue returns the value of name, with label result when set,
// gathered from reg.
func metricValue(t testing.TB, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range families {
		if fam.GetName() != name {
			continue
		}
		for _, m := range fam.GetMetric() {
			if result != "" && (len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != result) {
				continue
			}
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s{result=%q} not found", name, result)
	return 0
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 10 s waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func BenchmarkAuthenticate(b *testing.B) {
	f := newFixture(b)
	tok, hash := newToken(b)
	mustApply(b, f.store, protocol.VehicleCredential{VehicleID: "veh-1", Hash: hash, Version: 1})
	b.Run("remembered", func(b *testing.B) {
		for b.Loop() {
			if err := f.store.Authenticate("veh-1", []byte(tok)); err != nil {
				b.Fatal(err)
			}
		}
	})
	// A wrong token is never remembered, so each check runs argon2id.
	b.Run("uncached", func(b *testing.B) {
		for b.Loop() {
			if err := f.store.Authenticate("veh-1", []byte("wrong")); !errors.Is(err, broker.ErrBadPassword) {
				b.Fatal(err)
			}
		}
	})
	b.Run("uncached_parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := f.store.Authenticate("veh-1", []byte("wrong")); !errors.Is(err, broker.ErrBadPassword) {
					b.Fatal(err)
				}
			}
		})
	})
}

func TestBroker_RevocationClosesOpenConnections(t *testing.T) {
	var b *broker.Broker
	s := vehicleauth.New(vehicleauth.Config{
		Path: filepath.Join(t.TempDir(), vehicleauth.File), Registerer: prometheus.NewRegistry(),
		OnRevoke: func(id string) { b.DisconnectVehicle(id) },
	})
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	sp := spool.New(spool.Config{Path: filepath.Join(t.TempDir(), "spool.db"), Registerer: prometheus.NewRegistry()})
	if err := sp.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	b = broker.New(broker.Config{Addr: "127.0.0.1:0", Spool: sp, Authenticator: s, Registerer: prometheus.NewRegistry()})
	if err := b.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })

	tok1, hash1 := newToken(t)
	tok2, hash2 := newToken(t)
	mustApply(t, s,
		protocol.VehicleCredential{VehicleID: "veh-1", Hash: hash1, Version: 1},
		protocol.VehicleCredential{VehicleID: "veh-2", Hash: hash2, Version: 2},
	)
	lost := make(chan string, 2)
	for vehicle, tok := range map[string]string{"veh-1": tok1, "veh-2": tok2} {
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + b.Addr().String()).SetClientID("paho-" + vehicle).
			SetUsername(vehicle).SetPassword(tok).SetProtocolVersion(4).SetAutoReconnect(false).
			SetConnectionLostHandler(func(paho.Client, error) { lost <- vehicle }))
		if ct := c.Connect(); !ct.WaitTimeout(10*time.Second) || ct.Error() != nil {
			t.Fatalf("connect %s: %v", vehicle, ct.Error())
		}
		t.Cleanup(func() { c.Disconnect(100) })
	}

	mustApply(t, s, protocol.VehicleCredential{VehicleID: "veh-1", Version: 3, Revoked: true})
	select {
	case vehicle := <-lost:
		if vehicle != "veh-1" {
			t.Errorf("connection of %s closed, want veh-1's", vehicle)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the revoked vehicle's connection is still open after 10 s")
	}
	select {
	case vehicle := <-lost:
		t.Errorf("connection of %s closed too", vehicle)
	default:
	}
}
