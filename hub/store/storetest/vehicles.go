package storetest

import (
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/passhash"
)

var vehicleCredentialCases = []testCase{
	{"VehicleCredentialCreate", testVehicleCredentialCreate},
	{"VehicleCredentialRotate", testVehicleCredentialRotate},
	{"VehicleCredentialRevoke", testVehicleCredentialRevoke},
	{"VehicleCredentialSince", testVehicleCredentialSince},
	{"VehicleCredentialRestart", testVehicleCredentialRestart},
}

func mustCreateVehicles(t *testing.T, s store.Store, ids ...string) []string {
	t.Helper()
	issued, err := s.CreateVehicleCredentials(ctx(t), ids)
	if err != nil {
		t.Fatalf("CreateVehicleCredentials(%v): %v", ids, err)
	}
	if len(issued) != len(ids) {
		t.Fatalf("CreateVehicleCredentials(%v) returned %d tokens", ids, len(issued))
	}
	tokens := make([]string, len(ids))
	for i, it := range issued {
		if it.Credential.VehicleID != ids[i] {
			t.Fatalf("token %d belongs to %q, want %q", i, it.Credential.VehicleID, ids[i])
		}
		tokens[i] = it.Token
	}
	return tokens
}

// storedVehicle returns the stored credential of vehicle, with hashes,
// through VehicleCredentialsSince.
func storedVehicle(t *testing.T, s store.Store, vehicle string) store.StoredVehicleCredential {
	t.Helper()
	all, err := s.VehicleCredentialsSince(ctx(t), 0)
	if err != nil {
		t.Fatalf("VehicleCredentialsSince(0): %v", err)
	}
	for _, c := range all {
		if c.VehicleID == vehicle {
			return c
		}
	}
	t.Fatalf("vehicle %s has no stored credential", vehicle)
	return store.StoredVehicleCredential{}
}

// wantHashOf checks that hash is an argon2id hash of token, or of
// nothing that token is when match is false.
func wantHashOf(t *testing.T, label, hash, token string, match bool) {
	t.Helper()
	err := passhash.Verify(hash, token)
	switch {
	case match && err != nil:
		t.Errorf("%s: hash %q does not verify its token: %v", label, hash, err)
	case !match && err == nil:
		t.Errorf("%s: hash verifies a token it should not", label)
	}
}

func testVehicleCredentialCreate(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	tokens := mustCreateVehicles(t, s, "veh-1", "veh-2", "veh-3")
	for i, tok := range tokens {
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || len(raw) != store.VehicleTokenBytes {
			t.Fatalf("token %d %q: %d bytes (%v), want %d bytes of base64url", i, tok, len(raw), err, store.VehicleTokenBytes)
		}
	}
	if tokens[0] == tokens[1] || tokens[1] == tokens[2] {
		t.Fatal("two vehicles got the same token")
	}
	c := storedVehicle(t, s, "veh-2")
	wantHashOf(t, "veh-2", c.TokenHash, tokens[1], true)
	wantHashOf(t, "veh-2 with veh-1's token", c.TokenHash, tokens[0], false)
	if p, err := passhash.ParamsOf(c.TokenHash); err != nil || p != passhash.Token {
		t.Errorf("hash parameters %+v (%v), want passhash.Token", p, err)
	}

	// A list with one live vehicle creates nothing.
	if _, err := s.CreateVehicleCredentials(ctx(t), []string{"veh-4", "veh-2"}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("creating a live vehicle again = %v, want ErrConflict", err)
	}
	for _, bad := range [][]string{nil, {"veh/1"}, {""}, {"veh-5", "veh-5"}} {
		if _, err := s.CreateVehicleCredentials(ctx(t), bad); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("CreateVehicleCredentials(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	list, err := s.VehicleCredentials(ctx(t))
	if err != nil {
		t.Fatalf("VehicleCredentials: %v", err)
	}
	if len(list) != 3 || list[0].VehicleID != "veh-1" || list[2].VehicleID != "veh-3" {
		t.Fatalf("VehicleCredentials = %+v, want veh-1 to veh-3 in order", list)
	}
	if !list[0].CreatedAt.Equal(Epoch) || list[0].Revoked() || list[0].Version == 0 {
		t.Errorf("VehicleCredentials[0] = %+v, want created at %s, live, with a version", list[0], Epoch)
	}
	if wantHashOf(t, "veh-2 unchanged", storedVehicle(t, s, "veh-2").TokenHash, tokens[1], true); t.Failed() {
		t.Fatal("the refused create changed a credential")
	}
}

func testVehicleCredentialRotate(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	first := mustCreateVehicles(t, s, "veh-1")[0]
	created := storedVehicle(t, s, "veh-1")

	clock.Set(Epoch.Add(time.Hour))
	second, c, err := s.RotateVehicleCredential(ctx(t), "veh-1", 24*time.Hour)
	if err != nil {
		t.Fatalf("RotateVehicleCredential: %v", err)
	}
	if second == first {
		t.Fatal("rotation returned the old token")
	}
	if want := Epoch.Add(25 * time.Hour); !c.PreviousValidUntil.Equal(want) || !c.RotatedAt.Equal(Epoch.Add(time.Hour)) {
		t.Errorf("after rotation: previous valid until %s, rotated %s; want %s and %s", c.PreviousValidUntil, c.RotatedAt, want, Epoch.Add(time.Hour))
	}
	if c.Version <= created.Version {
		t.Errorf("rotation left version %d, want more than %d", c.Version, created.Version)
	}
	stored := storedVehicle(t, s, "veh-1")
	wantHashOf(t, "current", stored.TokenHash, second, true)
	wantHashOf(t, "previous", stored.PreviousHash, first, true)

	// Without grace the replaced token ends at once, and the one before stays dead.
	third, _, err := s.RotateVehicleCredential(ctx(t), "veh-1", 0)
	if err != nil {
		t.Fatalf("RotateVehicleCredential without grace: %v", err)
	}
	stored = storedVehicle(t, s, "veh-1")
	wantHashOf(t, "current after second rotation", stored.TokenHash, third, true)
	if stored.PreviousHash != "" || !stored.PreviousValidUntil.IsZero() {
		t.Errorf("rotation without grace kept previous hash %q until %s", stored.PreviousHash, stored.PreviousValidUntil)
	}

	if _, _, err := s.RotateVehicleCredential(ctx(t), "veh-unknown", time.Hour); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("rotating an unknown vehicle = %v, want ErrNotFound", err)
	}
	for _, grace := range []time.Duration{-time.Second, store.MaxRotationGrace + time.Second} {
		if _, _, err := s.RotateVehicleCredential(ctx(t), "veh-1", grace); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("rotating with grace %s = %v, want ErrInvalid", grace, err)
		}
	}
}

func testVehicleCredentialRevoke(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	old := mustCreateVehicles(t, s, "veh-1", "veh-2")[0]
	if _, _, err := s.RotateVehicleCredential(ctx(t), "veh-1", time.Hour); err != nil {
		t.Fatalf("RotateVehicleCredential: %v", err)
	}

	clock.Set(Epoch.Add(time.Minute))
	c, err := s.RevokeVehicleCredential(ctx(t), "veh-1")
	if err != nil {
		t.Fatalf("RevokeVehicleCredential: %v", err)
	}
	if !c.Revoked() || !c.RevokedAt.Equal(Epoch.Add(time.Minute)) {
		t.Errorf("revoked credential %+v, want revoked at %s", c, Epoch.Add(time.Minute))
	}
	tomb := storedVehicle(t, s, "veh-1")
	if !tomb.Revoked() || tomb.TokenHash != "" || tomb.PreviousHash != "" || tomb.Version != c.Version {
		t.Errorf("tombstone %+v, want revoked, without hashes, at version %d", tomb, c.Version)
	}
	for _, fn := range map[string]func() error{
		"revoke again": func() error { _, err := s.RevokeVehicleCredential(ctx(t), "veh-1"); return err },
		"rotate":       func() error { _, _, err := s.RotateVehicleCredential(ctx(t), "veh-1", 0); return err },
		"revoke unknown": func() error {
			_, err := s.RevokeVehicleCredential(ctx(t), "veh-unknown")
			return err
		},
	} {
		if err := fn(); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%v, want ErrNotFound", err)
		}
	}
	list, err := s.VehicleCredentials(ctx(t))
	if err != nil || len(list) != 2 || !list[0].Revoked() || list[1].Revoked() {
		t.Errorf("VehicleCredentials after revoke = %+v, %v; want veh-1 revoked and veh-2 live", list, err)
	}

	// A revoked vehicle can be provisioned again, with a new token.
	again := mustCreateVehicles(t, s, "veh-1")[0]
	c2 := storedVehicle(t, s, "veh-1")
	if c2.Revoked() || c2.Version <= tomb.Version {
		t.Errorf("credential created over a tombstone: %+v, want live with a version past %d", c2, tomb.Version)
	}
	wantHashOf(t, "new token", c2.TokenHash, again, true)
	wantHashOf(t, "old token", c2.TokenHash, old, false)
}

func testVehicleCredentialSince(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	if all, err := s.VehicleCredentialsSince(ctx(t), 0); err != nil || len(all) != 0 {
		t.Fatalf("VehicleCredentialsSince of an empty store = %+v, %v; want none", all, err)
	}
	mustCreateVehicles(t, s, "veh-b", "veh-a")
	all, err := s.VehicleCredentialsSince(ctx(t), 0)
	if err != nil || len(all) != 2 {
		t.Fatalf("VehicleCredentialsSince(0) = %+v, %v; want 2", all, err)
	}
	if all[0].VehicleID != "veh-b" || all[1].VehicleID != "veh-a" || all[0].Version >= all[1].Version {
		t.Errorf("VehicleCredentialsSince(0) = %s@%d, %s@%d; want veh-b then veh-a by version",
			all[0].VehicleID, all[0].Version, all[1].VehicleID, all[1].Version)
	}
	mark := all[1].Version
	if since, err := s.VehicleCredentialsSince(ctx(t), mark); err != nil || len(since) != 0 {
		t.Errorf("VehicleCredentialsSince(latest) = %+v, %v; want none", since, err)
	}

	// Each change shows once, with a version past every earlier one.
	if _, _, err := s.RotateVehicleCredential(ctx(t), "veh-b", time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeVehicleCredential(ctx(t), "veh-a"); err != nil {
		t.Fatal(err)
	}
	mustCreateVehicles(t, s, "veh-c")
	since, err := s.VehicleCredentialsSince(ctx(t), mark)
	if err != nil || len(since) != 3 {
		t.Fatalf("VehicleCredentialsSince(%d) = %+v, %v; want 3 changes", mark, since, err)
	}
	want := []string{"veh-b", "veh-a", "veh-c"}
	last := mark
	for i, c := range since {
		if c.VehicleID != want[i] || c.Version <= last {
			t.Errorf("change %d: %s at version %d, want %s after version %d", i, c.VehicleID, c.Version, want[i], last)
		}
		last = c.Version
	}
	if !since[1].Revoked() {
		t.Errorf("revoked veh-a shows as %+v, want a tombstone", since[1])
	}
	// A refused change bumps nothing.
	if _, err := s.CreateVehicleCredentials(ctx(t), []string{"veh-d", "veh-c"}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("conflicting create = %v", err)
	}
	if more, err := s.VehicleCredentialsSince(ctx(t), last); err != nil || len(more) != 0 {
		t.Errorf("after a refused create, VehicleCredentialsSince(%d) = %+v, %v; want none", last, more, err)
	}
}

func testVehicleCredentialRestart(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	open := f(t, clock.Now)
	s := open()
	tokens := mustCreateVehicles(t, s, "veh-1", "veh-2")
	if _, err := s.RevokeVehicleCredential(ctx(t), "veh-2"); err != nil {
		t.Fatal(err)
	}
	before, err := s.VehicleCredentialsSince(ctx(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = open()
	after, err := s.VehicleCredentialsSince(ctx(t), 0)
	if err != nil || len(after) != len(before) {
		t.Fatalf("after restart: %+v, %v; want %d credentials", after, err, len(before))
	}
	for i := range after {
		if after[i].VehicleID != before[i].VehicleID || after[i].Version != before[i].Version || after[i].TokenHash != before[i].TokenHash ||
			!after[i].RevokedAt.Equal(before[i].RevokedAt) {
			t.Errorf("credential %d after restart %+v, before %+v", i, after[i], before[i])
		}
	}
	wantHashOf(t, "veh-1 after restart", storedVehicle(t, s, "veh-1").TokenHash, tokens[0], true)
	// The counter continues past the versions written before the restart.
	mustCreateVehicles(t, s, "veh-3")
	if c := storedVehicle(t, s, "veh-3"); c.Version <= before[len(before)-1].Version {
		t.Errorf("version after restart %d, want more than %d", c.Version, before[len(before)-1].Version)
	}
}
