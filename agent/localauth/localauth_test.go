package localauth_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/agent/localauth"
	"github.com/xpress-ops/tower/internal/passhash"
	"github.com/xpress-ops/tower/protocol"
)

const agentID = "ncr-1"

// clock is a settable test clock.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func open(t *testing.T, path string, reg *prometheus.Registry, c *clock) *localauth.Store {
	t.Helper()
	s := localauth.New(localauth.Config{Path: path, AgentID: agentID, Registerer: reg, Now: c.Now})
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func hash(t *testing.T, password string) string {
	t.Helper()
	h, err := passhash.Hash(password, passhash.Token)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func encode(t *testing.T, ops ...protocol.OperatorCredential) []byte {
	t.Helper()
	data, err := protocol.EncodeOperatorList(&protocol.OperatorList{Agent: agentID, Region: "NCR-Manila", IssuedAt: time.Now().UTC(), Operators: ops})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// The list survives a restart; an invalid message leaves it as it was
// and is counted.
func TestStore_KeepsListAcrossRestartAndRefusesInvalid(t *testing.T) {
	path := filepath.Join(t.TempDir(), localauth.File)
	c := &clock{now: time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC)}
	reg := prometheus.NewRegistry()
	s := open(t, path, reg, c)
	if s.Received() {
		t.Fatal("new store reports a list")
	}
	if _, err := s.Login("ana", "pw", "192.0.2.1"); !errors.Is(err, localauth.ErrNoOperators) {
		t.Fatalf("Login without a list = %v, want ErrNoOperators", err)
	}
	anaHash := hash(t, "ana-password")
	s.HubMessage(protocol.AgentOperatorsTopic(agentID), encode(t, protocol.OperatorCredential{Username: "ana", DisplayName: "Ana Reyes", Role: "operator", Hash: anaHash}))
	if o, ok := s.Operator("ana"); !ok || o.DisplayName != "Ana Reyes" {
		t.Fatalf("operator ana = %+v, %v after the hub's list", o, ok)
	}

	for name, tc := range map[string]struct {
		topic   string
		payload []byte
	}{
		"bad JSON":            {protocol.AgentOperatorsTopic(agentID), []byte(`{"agent":`)},
		"bad hash":            {protocol.AgentOperatorsTopic(agentID), encode(t, protocol.OperatorCredential{Username: "eve", Role: "admin", Hash: "$md5$x"})},
		"another agent topic": {protocol.AgentOperatorsTopic("cebu-1"), encode(t)},
		"empty":               {protocol.AgentOperatorsTopic(agentID), nil},
	} {
		s.HubMessage(tc.topic, tc.payload)
		if _, ok := s.Operator("ana"); !ok {
			t.Errorf("%s: the list held was dropped", name)
		}
		if _, ok := s.Operator("eve"); ok {
			t.Errorf("%s: invalid list applied", name)
		}
	}
	if n := counterValue(t, reg, "xpress_agent_operator_list_updates_total", "invalid"); n != 4 {
		t.Errorf("invalid updates counted = %v, want 4", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := open(t, path, prometheus.NewRegistry(), c)
	if !s2.Received() {
		t.Fatal("reopened store has no list")
	}
	sess, err := s2.Login("ana", "ana-password", "192.0.2.1")
	if err != nil || sess.Username != "ana" || sess.DisplayName != "Ana Reyes" || sess.ID == "" || sess.CSRFToken == "" {
		t.Fatalf("Login after restart = %+v, %v", sess, err)
	}
	// An empty list from the hub removes every operator and session.
	if err := s2.Update(encode(t)); err != nil {
		t.Fatal(err)
	}
	if _, ok := s2.Session(sess.ID); ok {
		t.Error("session lives on after the hub's list dropped its operator")
	}
	if _, err := s2.Login("ana", "ana-password", "192.0.2.1"); !errors.Is(err, localauth.ErrBadCredentials) {
		t.Errorf("Login of a removed operator = %v, want ErrBadCredentials", err)
	}
}

// counterValue returns the counter of name with the result label value.
func counterValue(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{result=%q}", name, result)
	return 0
}

// Sessions end after the idle timeout; a lockout ends after its
// duration; one address is throttled past its burst.
func TestStore_IdleLockoutAndThrottle(t *testing.T) {
	c := &clock{now: time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC)}
	s := localauth.New(localauth.Config{Path: filepath.Join(t.TempDir(), localauth.File), AgentID: agentID, Now: c.Now, LoginBurst: 100})
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Update(encode(t, protocol.OperatorCredential{Username: "ana", Role: "supervisor", Hash: hash(t, "right")})); err != nil {
		t.Fatal(err)
	}
	sess, err := s.Login("ana", "right", "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	c.now = c.now.Add(localauth.DefaultIdleTimeout - time.Minute)
	if _, ok := s.Session(sess.ID); !ok {
		t.Fatal("session ended before the idle timeout")
	}
	c.now = c.now.Add(localauth.DefaultIdleTimeout)
	if _, ok := s.Session(sess.ID); ok {
		t.Fatal("session lives past the idle timeout")
	}

	for range localauth.DefaultMaxFailures - 1 {
		if _, err := s.Login("ana", "wrong", "192.0.2.1"); !errors.Is(err, localauth.ErrBadCredentials) {
			t.Fatalf("wrong password = %v", err)
		}
	}
	var locked *localauth.LockedError
	if _, err := s.Login("ana", "wrong", "192.0.2.1"); !errors.As(err, &locked) {
		t.Fatalf("fifth failure = %v, want locked", err)
	}
	c.now = c.now.Add(localauth.DefaultLockoutDuration + time.Second)
	if _, err := s.Login("ana", "right", "192.0.2.1"); err != nil {
		t.Fatalf("right password after the lockout = %v", err)
	}
	// Unknown user names lock the same way, so a lockout reveals nothing.
	for range localauth.DefaultMaxFailures - 1 {
		s.Login("ghost", "x", "192.0.2.1")
	}
	if _, err := s.Login("ghost", "x", "192.0.2.1"); !errors.As(err, &locked) {
		t.Errorf("fifth failure of an unknown user = %v, want locked", err)
	}

	tight := localauth.New(localauth.Config{Path: filepath.Join(t.TempDir(), localauth.File), AgentID: agentID, Now: c.Now, LoginBurst: 2})
	if err := tight.Open(); err != nil {
		t.Fatal(err)
	}
	defer tight.Close()
	if err := tight.Update(encode(t, protocol.OperatorCredential{Username: "ana", Role: "operator", Hash: hash(t, "right")})); err != nil {
		t.Fatal(err)
	}
	tight.Login("ana", "wrong", "192.0.2.9")
	tight.Login("ana", "wrong", "192.0.2.9")
	var throttled *localauth.ThrottledError
	if _, err := tight.Login("ana", "right", "192.0.2.9"); !errors.As(err, &throttled) || throttled.RetryAfter <= 0 {
		t.Errorf("third attempt from one address = %v, want throttled", err)
	}
	if _, err := tight.Login("ana", "right", "192.0.2.10"); err != nil {
		t.Errorf("another address = %v, want a session", err)
	}
	if !strings.Contains((&localauth.LockedError{Until: c.now}).Error(), "locked until") {
		t.Error("lockout message does not say until when")
	}
}

// Failures from one address lock the user name only for that address:
// the right password from another address still signs in. Failures
// spread over many addresses lock the user name everywhere at
// MaxAccountFailures, and an unknown user name locks the same way.
func TestStore_LockoutPerAddress(t *testing.T) {
	c := &clock{now: time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC)}
	s := localauth.New(localauth.Config{Path: filepath.Join(t.TempDir(), localauth.File), AgentID: agentID, Now: c.Now,
		LoginBurst: 1000, MaxAccountFailures: 12})
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Update(encode(t, protocol.OperatorCredential{Username: "ana", Role: "supervisor", Hash: hash(t, "right")})); err != nil {
		t.Fatal(err)
	}
	var locked *localauth.LockedError
	for _, name := range []string{"ana", "ghost"} {
		for range localauth.DefaultMaxFailures - 1 {
			if _, err := s.Login(name, "wrong", "192.0.2.66"); !errors.Is(err, localauth.ErrBadCredentials) {
				t.Fatalf("%s: wrong password = %v", name, err)
			}
		}
		if _, err := s.Login(name, "wrong", "192.0.2.66"); !errors.As(err, &locked) {
			t.Fatalf("%s: fifth failure from one address = %v, want locked", name, err)
		}
		if _, err := s.Login(name, "right", "192.0.2.66"); !errors.As(err, &locked) {
			t.Errorf("%s: right password from the locked address = %v, want locked", name, err)
		}
	}
	if _, err := s.Login("ana", "right", "192.0.2.1"); err != nil {
		t.Fatalf("right password from another address = %v, want a session", err)
	}
	// 12 failures in a row from three addresses lock the name everywhere.
	for i := range 12 {
		_, err := s.Login("ana", "wrong", fmt.Sprintf("192.0.2.%d", 100+i/4))
		if i < 11 && !errors.Is(err, localauth.ErrBadCredentials) {
			t.Fatalf("failure %d = %v, want bad credentials", i+1, err)
		}
		if i == 11 && !errors.As(err, &locked) {
			t.Fatalf("failure 12 across addresses = %v, want locked", err)
		}
	}
	if _, err := s.Login("ana", "right", "192.0.2.1"); !errors.As(err, &locked) {
		t.Errorf("right password from a fresh address after the account lock = %v, want locked", err)
	}
	c.now = c.now.Add(localauth.DefaultLockoutDuration + time.Second)
	if _, err := s.Login("ana", "right", "192.0.2.66"); err != nil {
		t.Errorf("right password after the lockout = %v, want a session", err)
	}
}
