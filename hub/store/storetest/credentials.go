package storetest

import (
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
)

var credentialCases = []testCase{
	{"CredentialCreateVerify", testCredentialCreateVerify},
	{"CredentialRotateGrace", testCredentialRotateGrace},
	{"CredentialRevokeAndList", testCredentialRevokeAndList},
	{"CredentialRestart", testCredentialRestart},
}

func mustCreateCredential(t *testing.T, s store.Store, agentID, region string) string {
	t.Helper()
	token, c, err := s.CreateAgentCredential(ctx(t), agentID, region)
	if err != nil {
		t.Fatalf("CreateAgentCredential(%s): %v", agentID, err)
	}
	if c.AgentID != agentID || c.Region != region {
		t.Fatalf("CreateAgentCredential(%s) = %+v, want agent %s in %s", agentID, c, agentID, region)
	}
	return token
}

func wantVerify(t *testing.T, s store.Store, agentID, token string, want error) {
	t.Helper()
	c, err := s.VerifyAgentToken(ctx(t), agentID, token)
	switch {
	case want == nil && err != nil:
		t.Errorf("VerifyAgentToken(%s): %v, want success", agentID, err)
	case want == nil && c.AgentID != agentID:
		t.Errorf("VerifyAgentToken(%s) returned the credential of %q", agentID, c.AgentID)
	case want != nil && !errors.Is(err, want):
		t.Errorf("VerifyAgentToken(%s) = %v, want %v", agentID, err, want)
	}
}

func testCredentialCreateVerify(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	token := mustCreateCredential(t, s, Agent, Region)
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(raw) != store.AgentTokenBytes {
		t.Fatalf("token %q: %d bytes (%v), want %d bytes of base64url", token, len(raw), err, store.AgentTokenBytes)
	}
	other := mustCreateCredential(t, s, "agent-cebu-1", "Cebu")
	if other == token {
		t.Fatal("two agents got the same token")
	}

	wantVerify(t, s, Agent, token, nil)
	wantVerify(t, s, Agent, other, store.ErrBadToken)
	wantVerify(t, s, Agent, "", store.ErrBadToken)
	wantVerify(t, s, "agent-unknown", token, store.ErrNotFound)

	if _, _, err := s.CreateAgentCredential(ctx(t), Agent, Region); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second CreateAgentCredential = %v, want ErrConflict", err)
	}
	wantVerify(t, s, Agent, token, nil) // the refused create changed nothing
	for _, bad := range [][2]string{{"", Region}, {"agent/1", Region}, {"agent-x", ""}} {
		if _, _, err := s.CreateAgentCredential(ctx(t), bad[0], bad[1]); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("CreateAgentCredential(%q, %q) = %v, want ErrInvalid", bad[0], bad[1], err)
		}
	}
}

func testCredentialRotateGrace(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	first := mustCreateCredential(t, s, Agent, Region)

	clock.Set(Epoch.Add(time.Hour))
	second, c, err := s.RotateAgentCredential(ctx(t), Agent, 24*time.Hour)
	if err != nil {
		t.Fatalf("RotateAgentCredential: %v", err)
	}
	if second == first {
		t.Fatal("rotation returned the old token")
	}
	if want := Epoch.Add(25 * time.Hour); !c.PreviousValidUntil.Equal(want) || !c.RotatedAt.Equal(Epoch.Add(time.Hour)) {
		t.Errorf("after rotation: previous valid until %s, rotated %s; want %s and %s", c.PreviousValidUntil, c.RotatedAt, want, Epoch.Add(time.Hour))
	}
	wantVerify(t, s, Agent, first, nil)
	wantVerify(t, s, Agent, second, nil)

	clock.Set(Epoch.Add(25*time.Hour - time.Microsecond))
	wantVerify(t, s, Agent, first, nil)
	clock.Set(Epoch.Add(25 * time.Hour))
	wantVerify(t, s, Agent, first, store.ErrBadToken)
	wantVerify(t, s, Agent, second, nil)

	// A rotation without grace ends the replaced token at once, and the
	// token replaced before it stays dead.
	third, _, err := s.RotateAgentCredential(ctx(t), Agent, 0)
	if err != nil {
		t.Fatalf("RotateAgentCredential without grace: %v", err)
	}
	wantVerify(t, s, Agent, second, store.ErrBadToken)
	wantVerify(t, s, Agent, first, store.ErrBadToken)
	wantVerify(t, s, Agent, third, nil)

	if _, _, err := s.RotateAgentCredential(ctx(t), "agent-unknown", time.Hour); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("rotating an unknown agent = %v, want ErrNotFound", err)
	}
	for _, grace := range []time.Duration{-time.Second, store.MaxRotationGrace + time.Second} {
		if _, _, err := s.RotateAgentCredential(ctx(t), Agent, grace); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("rotating with grace %s = %v, want ErrInvalid", grace, err)
		}
	}
	wantVerify(t, s, Agent, third, nil)
}

func testCredentialRevokeAndList(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	list, err := s.AgentCredentials(ctx(t))
	if err != nil || len(list) != 0 {
		t.Fatalf("AgentCredentials of an empty store = %v, %v; want none", list, err)
	}
	tokenB := mustCreateCredential(t, s, "agent-b", "Cebu")
	mustCreateCredential(t, s, "agent-a", Region)
	list, err = s.AgentCredentials(ctx(t))
	if err != nil {
		t.Fatalf("AgentCredentials: %v", err)
	}
	want := []store.AgentCredential{
		{AgentID: "agent-a", Region: Region, CreatedAt: Epoch},
		{AgentID: "agent-b", Region: "Cebu", CreatedAt: Epoch},
	}
	if len(list) != len(want) || list[0] != want[0] || list[1] != want[1] {
		t.Errorf("AgentCredentials = %+v, want %+v", list, want)
	}

	if err := s.RevokeAgentCredential(ctx(t), "agent-b"); err != nil {
		t.Fatalf("RevokeAgentCredential: %v", err)
	}
	wantVerify(t, s, "agent-b", tokenB, store.ErrNotFound)
	if err := s.RevokeAgentCredential(ctx(t), "agent-b"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second RevokeAgentCredential = %v, want ErrNotFound", err)
	}
	if list, err = s.AgentCredentials(ctx(t)); err != nil || len(list) != 1 || list[0].AgentID != "agent-a" {
		t.Errorf("AgentCredentials after revoke = %+v, %v; want agent-a only", list, err)
	}
	// A revoked agent can be created again, with a new token.
	tokenB2 := mustCreateCredential(t, s, "agent-b", "Cebu")
	wantVerify(t, s, "agent-b", tokenB, store.ErrBadToken)
	wantVerify(t, s, "agent-b", tokenB2, nil)
}

func testCredentialRestart(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	open := f(t, clock.Now)
	s := open()
	old := mustCreateCredential(t, s, Agent, Region)
	token, _, err := s.RotateAgentCredential(ctx(t), Agent, time.Hour)
	if err != nil {
		t.Fatalf("RotateAgentCredential: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = open()
	wantVerify(t, s, Agent, token, nil)
	wantVerify(t, s, Agent, old, nil)
	clock.Set(Epoch.Add(time.Hour))
	wantVerify(t, s, Agent, old, store.ErrBadToken)
}
