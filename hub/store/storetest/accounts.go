package storetest

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
)

var accountCases = []testCase{
	{"OperatorCreateReadList", testOperatorCreateReadList},
	{"OperatorUpdate", testOperatorUpdate},
	{"OperatorDeleteCascades", testOperatorDeleteCascades},
	{"SessionLifecycle", testSessionLifecycle},
	{"APITokenLifecycle", testAPITokenLifecycle},
	{"AuditLogFilters", testAuditLogFilters},
	{"AccountsRestart", testAccountsRestart},
}

// testPasswordHash stands for an argon2id hash: stores keep the string
// they are given and never check it.
const testPasswordHash = "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"

func sampleOperator(username, role string, regions ...string) store.Operator {
	return store.Operator{Username: username, DisplayName: "Maria Santos", Role: role, Regions: regions}
}

func mustCreateOperator(t *testing.T, s store.Store, o store.Operator) store.Operator {
	t.Helper()
	got, err := s.CreateOperator(ctx(t), o, testPasswordHash)
	if err != nil {
		t.Fatalf("CreateOperator(%s): %v", o.Username, err)
	}
	return got
}

func mustSession(t *testing.T, s store.Store, operator string, at time.Time) store.Session {
	t.Helper()
	id, err := store.NewSessionID()
	if err != nil {
		t.Fatal(err)
	}
	sess := store.Session{
		IDHash: store.HashSessionID(id), Operator: operator, CreatedAt: at, LastSeenAt: at,
		ExpiresAt: store.SessionExpiry(at, at), CSRFToken: "csrf-" + id[:8], RemoteAddr: "127.0.0.1:5000", UserAgent: "test",
	}
	if err := s.CreateSession(ctx(t), sess); err != nil {
		t.Fatalf("CreateSession(%s): %v", operator, err)
	}
	return sess
}

func testOperatorCreateReadList(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	o := mustCreateOperator(t, s, sampleOperator("maria", store.OperatorRoleOperator, "NCR", "Cebu", "NCR"))
	if !slices.Equal(o.Regions, []string{"Cebu", "NCR"}) || !o.CreatedAt.Equal(Epoch) || !o.PasswordChangedAt.Equal(Epoch) {
		t.Errorf("created operator = %+v, want regions [Cebu NCR] and times at the hub clock", o)
	}
	got, err := s.Operator(ctx(t), "maria")
	if err != nil {
		t.Fatalf("Operator: %v", err)
	}
	if got.PasswordHash != testPasswordHash || got.DisplayName != "Maria Santos" || got.Role != store.OperatorRoleOperator ||
		!slices.Equal(got.Regions, o.Regions) || got.Disabled || got.FailedLogins != 0 || !got.LockedUntil.IsZero() {
		t.Errorf("Operator(maria) = %+v, want it as created", got)
	}
	if _, err := s.CreateOperator(ctx(t), sampleOperator("maria", store.OperatorRoleAdmin, "*"), testPasswordHash); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second CreateOperator(maria) = %v, want ErrConflict", err)
	}
	if _, err := s.Operator(ctx(t), "nobody"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Operator(nobody) = %v, want ErrNotFound", err)
	}
	for name, bad := range map[string]store.Operator{
		"upper-case name": sampleOperator("Maria", store.OperatorRoleOperator, "NCR"),
		"empty name":      sampleOperator("", store.OperatorRoleOperator, "NCR"),
		"unknown role":    sampleOperator("ana", "root", "NCR"),
		"no regions":      sampleOperator("ana", store.OperatorRoleOperator),
		"empty region":    sampleOperator("ana", store.OperatorRoleOperator, ""),
		"no display name": {Username: "ana", Role: store.OperatorRoleOperator, Regions: []string{"NCR"}},
	} {
		if _, err := s.CreateOperator(ctx(t), bad, testPasswordHash); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: CreateOperator = %v, want ErrInvalid", name, err)
		}
	}
	if _, err := s.CreateOperator(ctx(t), sampleOperator("ana", store.OperatorRoleOperator, "NCR"), ""); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("CreateOperator without a hash = %v, want ErrInvalid", err)
	}
	mustCreateOperator(t, s, sampleOperator("admin", store.OperatorRoleAdmin, store.AllRegions))
	list, err := s.Operators(ctx(t))
	if err != nil {
		t.Fatalf("Operators: %v", err)
	}
	var names []string
	for _, o := range list {
		names = append(names, o.Username)
	}
	if !slices.Equal(names, []string{"admin", "maria"}) {
		t.Errorf("Operators = %v, want [admin maria]", names)
	}
}

func testOperatorUpdate(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	mustCreateOperator(t, s, sampleOperator("maria", store.OperatorRoleOperator, "NCR"))
	clock.Set(Epoch.Add(time.Hour))
	locked := Epoch.Add(90 * time.Minute)
	got, err := s.UpdateOperator(ctx(t), "maria", func(o *store.StoredOperator) error {
		o.Username, o.CreatedAt = "someone-else", Epoch.Add(-time.Hour) // ignored
		o.Role, o.Regions, o.FailedLogins, o.LockedUntil = store.OperatorRoleSupervisor, []string{"Davao", "NCR"}, 5, locked
		o.PasswordHash = "$argon2id$new"
		return nil
	})
	if err != nil {
		t.Fatalf("UpdateOperator: %v", err)
	}
	read, err := s.Operator(ctx(t), "maria")
	if err != nil {
		t.Fatal(err)
	}
	for name, o := range map[string]store.StoredOperator{"returned": got, "read back": read} {
		if o.Username != "maria" || !o.CreatedAt.Equal(Epoch) || !o.UpdatedAt.Equal(Epoch.Add(time.Hour)) ||
			o.Role != store.OperatorRoleSupervisor || !slices.Equal(o.Regions, []string{"Davao", "NCR"}) ||
			o.FailedLogins != 5 || !o.LockedUntil.Equal(locked) || o.PasswordHash != "$argon2id$new" {
			t.Errorf("%s operator = %+v, want the update applied and name and creation kept", name, o)
		}
	}

	refused := errors.New("refused by the caller")
	if _, err := s.UpdateOperator(ctx(t), "maria", func(o *store.StoredOperator) error {
		o.Disabled = true
		return refused
	}); !errors.Is(err, refused) {
		t.Errorf("UpdateOperator with a failing change = %v, want its error", err)
	}
	if _, err := s.UpdateOperator(ctx(t), "maria", func(o *store.StoredOperator) error {
		o.Role = "root"
		return nil
	}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("UpdateOperator to an unknown role = %v, want ErrInvalid", err)
	}
	if read, _ := s.Operator(ctx(t), "maria"); read.Disabled || read.Role != store.OperatorRoleSupervisor {
		t.Errorf("refused updates changed the operator: %+v", read)
	}
	if _, err := s.UpdateOperator(ctx(t), "nobody", func(*store.StoredOperator) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateOperator(nobody) = %v, want ErrNotFound", err)
	}
}

func testOperatorDeleteCascades(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	mustCreateOperator(t, s, sampleOperator("maria", store.OperatorRoleOperator, "NCR"))
	mustCreateOperator(t, s, sampleOperator("jose", store.OperatorRoleOperator, "NCR"))
	mariaSession := mustSession(t, s, "maria", Epoch)
	joseSession := mustSession(t, s, "jose", Epoch)
	mariaToken, _, err := s.CreateAPIToken(ctx(t), "maria", "cad bridge")
	if err != nil {
		t.Fatal(err)
	}
	joseToken, _, err := s.CreateAPIToken(ctx(t), "jose", "cad bridge")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendAudit(ctx(t), store.AuditEntry{Actor: "operator:maria", Action: "login.success", Outcome: "success"}); err != nil {
		t.Fatal(err)
	}

	if err := s.DeleteOperator(ctx(t), "maria"); err != nil {
		t.Fatalf("DeleteOperator: %v", err)
	}
	if err := s.DeleteOperator(ctx(t), "maria"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteOperator = %v, want ErrNotFound", err)
	}
	if _, err := s.Session(ctx(t), mariaSession.IDHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("session of a deleted operator: %v, want ErrNotFound", err)
	}
	if _, err := s.VerifyAPIToken(ctx(t), mariaToken); !errors.Is(err, store.ErrBadToken) {
		t.Errorf("token of a deleted operator: %v, want ErrBadToken", err)
	}
	if _, err := s.Session(ctx(t), joseSession.IDHash); err != nil {
		t.Errorf("another operator's session went too: %v", err)
	}
	if _, err := s.VerifyAPIToken(ctx(t), joseToken); err != nil {
		t.Errorf("another operator's token went too: %v", err)
	}
	if log, err := s.AuditLog(ctx(t), store.AuditFilter{}); err != nil || len(log) != 1 {
		t.Errorf("audit log after delete = %v, %v, want the entry kept", log, err)
	}
	if _, _, err := s.CreateAPIToken(ctx(t), "maria", "x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("CreateAPIToken for a deleted operator = %v, want ErrNotFound", err)
	}
	if err := s.CreateSession(ctx(t), store.Session{IDHash: store.HashSessionID("x"), Operator: "maria", CreatedAt: Epoch, LastSeenAt: Epoch, ExpiresAt: Epoch.Add(time.Hour)}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("CreateSession for a deleted operator = %v, want ErrNotFound", err)
	}
}

func testSessionLifecycle(t *testing.T, f Factory) {
	s := newStore(t, f, NewClock(Epoch).Now)
	mustCreateOperator(t, s, sampleOperator("maria", store.OperatorRoleOperator, "NCR"))
	first := mustSession(t, s, "maria", Epoch)
	got, err := s.Session(ctx(t), first.IDHash)
	if err != nil {
		t.Fatalf("Session: %v", err)
	}
	if got.Operator != "maria" || !bytes.Equal(got.IDHash, first.IDHash) || !got.CreatedAt.Equal(Epoch) ||
		!got.ExpiresAt.Equal(Epoch.Add(store.SessionIdleTimeout)) || got.CSRFToken != first.CSRFToken ||
		got.RemoteAddr != first.RemoteAddr || got.UserAgent != "test" {
		t.Errorf("Session = %+v, want %+v", got, first)
	}
	seen := Epoch.Add(time.Hour)
	if err := s.TouchSession(ctx(t), first.IDHash, seen, store.SessionExpiry(Epoch, seen)); err != nil {
		t.Fatalf("TouchSession: %v", err)
	}
	if got, _ := s.Session(ctx(t), first.IDHash); !got.LastSeenAt.Equal(seen) || !got.ExpiresAt.Equal(seen.Add(store.SessionIdleTimeout)) {
		t.Errorf("touched session = %+v, want last seen %s", got, seen)
	}
	if err := s.TouchSession(ctx(t), store.HashSessionID("unknown"), seen, seen); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("TouchSession(unknown) = %v, want ErrNotFound", err)
	}

	// A sign-in after the first session expired clears it away.
	later := Epoch.Add(store.SessionMaxAge + time.Hour)
	second := mustSession(t, s, "maria", later)
	if _, err := s.Session(ctx(t), first.IDHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("expired session after a new sign-in: %v, want ErrNotFound", err)
	}
	third := mustSession(t, s, "maria", later)
	if err := s.DeleteSession(ctx(t), second.IDHash); err != nil {
		t.Fatalf("DeleteSession: %v", err)
	}
	if err := s.DeleteSession(ctx(t), second.IDHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteSession = %v, want ErrNotFound", err)
	}
	if _, err := s.Session(ctx(t), third.IDHash); err != nil {
		t.Errorf("the other session went too: %v", err)
	}
	fourth := mustSession(t, s, "maria", later)
	ids, err := s.DeleteOperatorSessions(ctx(t), "maria")
	if err != nil {
		t.Fatalf("DeleteOperatorSessions: %v", err)
	}
	if len(ids) != 2 || !slices.ContainsFunc(ids, func(id []byte) bool { return bytes.Equal(id, third.IDHash) }) ||
		!slices.ContainsFunc(ids, func(id []byte) bool { return bytes.Equal(id, fourth.IDHash) }) {
		t.Errorf("DeleteOperatorSessions returned %x, want the two remaining sessions", ids)
	}
	if _, err := s.Session(ctx(t), fourth.IDHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("session after DeleteOperatorSessions: %v, want ErrNotFound", err)
	}
}

func testAPITokenLifecycle(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	mustCreateOperator(t, s, sampleOperator("maria", store.OperatorRoleSupervisor, "NCR"))
	token, created, err := s.CreateAPIToken(ctx(t), "maria", "cad bridge")
	if err != nil {
		t.Fatalf("CreateAPIToken: %v", err)
	}
	if !strings.HasPrefix(token, store.APITokenPrefix) || len(token) < 40 || created.ID == 0 || created.Operator != "maria" || created.Name != "cad bridge" {
		t.Fatalf("CreateAPIToken = %q, %+v", token, created)
	}
	other, _, err := s.CreateAPIToken(ctx(t), "maria", "second")
	if err != nil || other == token {
		t.Fatalf("second token %q, %v: want a different token", other, err)
	}
	if _, _, err := s.CreateAPIToken(ctx(t), "maria", ""); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("CreateAPIToken without a name = %v, want ErrInvalid", err)
	}

	clock.Set(Epoch.Add(time.Hour))
	got, err := s.VerifyAPIToken(ctx(t), token)
	if err != nil || got.ID != created.ID || got.Operator != "maria" {
		t.Fatalf("VerifyAPIToken = %+v, %v", got, err)
	}
	for _, bad := range []string{"", token + "x", strings.TrimPrefix(token, store.APITokenPrefix)} {
		if _, err := s.VerifyAPIToken(ctx(t), bad); !errors.Is(err, store.ErrBadToken) {
			t.Errorf("VerifyAPIToken(wrong token) = %v, want ErrBadToken", err)
		}
	}
	list, err := s.APITokens(ctx(t))
	if err != nil || len(list) != 2 || list[0].ID != created.ID || !list[0].LastUsedAt.Equal(Epoch.Add(time.Hour)) || !list[1].LastUsedAt.IsZero() {
		t.Fatalf("APITokens = %+v, %v, want both, the first used at the verify", list, err)
	}

	if err := s.RevokeAPIToken(ctx(t), created.ID); err != nil {
		t.Fatalf("RevokeAPIToken: %v", err)
	}
	if _, err := s.VerifyAPIToken(ctx(t), token); !errors.Is(err, store.ErrBadToken) {
		t.Errorf("VerifyAPIToken(revoked) = %v, want ErrBadToken", err)
	}
	if err := s.RevokeAPIToken(ctx(t), created.ID); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second RevokeAPIToken = %v, want ErrConflict", err)
	}
	if err := s.RevokeAPIToken(ctx(t), 9999); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeAPIToken(9999) = %v, want ErrNotFound", err)
	}
	if _, err := s.VerifyAPIToken(ctx(t), other); err != nil {
		t.Errorf("the other token stopped working: %v", err)
	}
	list, _ = s.APITokens(ctx(t))
	if len(list) != 2 || !list[0].RevokedAt.Equal(Epoch.Add(time.Hour)) {
		t.Errorf("APITokens after revoke = %+v, want the revoked one listed with its time", list)
	}
}

func testAuditLogFilters(t *testing.T, f Factory) {
	clock := NewClock(Epoch)
	s := newStore(t, f, clock.Now)
	add := func(at time.Duration, actor, action string) store.AuditEntry {
		t.Helper()
		clock.Set(Epoch.Add(at))
		e, err := s.AppendAudit(ctx(t), store.AuditEntry{Actor: actor, Action: action, Target: "incident:1", Remote: "127.0.0.1", Outcome: "success", Detail: "d"})
		if err != nil {
			t.Fatalf("AppendAudit: %v", err)
		}
		return e
	}
	a := add(0, "operator:maria", "login.success")
	b := add(time.Minute, "operator:maria", "incident.acknowledge")
	c := add(2*time.Minute, "operator:jose", "incident.acknowledge")
	if a.ID == 0 || b.ID <= a.ID || c.ID <= b.ID || !c.At.Equal(Epoch.Add(2*time.Minute)) {
		t.Fatalf("ids %d %d %d at %s: want increasing ids stamped by the hub clock", a.ID, b.ID, c.ID, c.At)
	}
	ids := func(f store.AuditFilter) []int64 {
		t.Helper()
		log, err := s.AuditLog(ctx(t), f)
		if err != nil {
			t.Fatalf("AuditLog(%+v): %v", f, err)
		}
		var out []int64
		for _, e := range log {
			out = append(out, e.ID)
		}
		return out
	}
	for name, c2 := range map[string]struct {
		f    store.AuditFilter
		want []int64
	}{
		"all, newest first": {store.AuditFilter{}, []int64{c.ID, b.ID, a.ID}},
		"actor":             {store.AuditFilter{Actor: "operator:maria"}, []int64{b.ID, a.ID}},
		"action":            {store.AuditFilter{Action: "incident.acknowledge"}, []int64{c.ID, b.ID}},
		"since":             {store.AuditFilter{Since: Epoch.Add(time.Minute)}, []int64{c.ID, b.ID}},
		"limit":             {store.AuditFilter{Limit: 1}, []int64{c.ID}},
		"combined":          {store.AuditFilter{Actor: "operator:maria", Action: "incident.acknowledge", Since: Epoch}, []int64{b.ID}},
		"nothing":           {store.AuditFilter{Actor: "operator:nobody"}, nil},
	} {
		if got := ids(c2.f); !slices.Equal(got, c2.want) {
			t.Errorf("%s: ids %v, want %v", name, got, c2.want)
		}
	}
	long, err := s.AppendAudit(ctx(t), store.AuditEntry{Actor: "x", Action: "y", Outcome: "failure", Detail: strings.Repeat("é", store.MaxAuditField)})
	if err != nil || len(long.Detail) > store.MaxAuditField {
		t.Errorf("long detail: %d bytes, %v, want it cut to %d", len(long.Detail), err, store.MaxAuditField)
	}
	if log, _ := s.AuditLog(ctx(t), store.AuditFilter{Limit: 1}); len(log) != 1 || log[0].Detail != long.Detail || log[0].Target != "" {
		t.Errorf("read-back of the cut entry differs: %+v", log)
	}
}

func testAccountsRestart(t *testing.T, f Factory) {
	open := f(t, NewClock(Epoch).Now)
	s := open()
	mustCreateOperator(t, s, sampleOperator("maria", store.OperatorRoleOperator, "NCR"))
	if _, err := s.UpdateOperator(ctx(t), "maria", func(o *store.StoredOperator) error {
		o.FailedLogins, o.LockedUntil = 0, Epoch.Add(15*time.Minute)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sess := mustSession(t, s, "maria", Epoch)
	token, _, err := s.CreateAPIToken(ctx(t), "maria", "cad")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendAudit(ctx(t), store.AuditEntry{Actor: "operator:maria", Action: "login.success", Outcome: "success"}); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)

	s = open()
	if o, err := s.Operator(ctx(t), "maria"); err != nil || !o.LockedUntil.Equal(Epoch.Add(15*time.Minute)) {
		t.Errorf("operator after restart = %+v, %v, want the lockout kept", o, err)
	}
	if got, err := s.Session(ctx(t), sess.IDHash); err != nil || got.CSRFToken != sess.CSRFToken {
		t.Errorf("session after restart = %+v, %v", got, err)
	}
	if _, err := s.VerifyAPIToken(ctx(t), token); err != nil {
		t.Errorf("API token after restart: %v", err)
	}
	if log, err := s.AuditLog(ctx(t), store.AuditFilter{}); err != nil || len(log) != 1 {
		t.Errorf("audit log after restart = %+v, %v", log, err)
	}
	if _, err := s.AppendAudit(ctx(t), store.AuditEntry{Actor: "a", Action: "b", Outcome: "success"}); err != nil {
		t.Errorf("append after restart: %v", err)
	}
}
