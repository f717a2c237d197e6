package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
)

func TestLogin_RightWrongAndUnknownUser(t *testing.T) {
	as := newAuthServer(t, false, nil)
	password := as.addOperator(t, "maria", store.OperatorRoleOperator, "NCR", "Cebu")

	res, v := as.login(t, "maria", password)
	wantStatus(t, "sign in", res, v, http.StatusOK)
	for key, want := range map[string]any{"operator": "maria", "display_name": "Name of maria", "role": "operator"} {
		if v[key] != want {
			t.Errorf("sign-in %s = %v, want %v", key, v[key], want)
		}
	}
	if regions := fmt.Sprint(v["regions"]); regions != "[Cebu NCR]" {
		t.Errorf("sign-in regions = %s, want [Cebu NCR]", regions)
	}
	c := res.Cookies()[0]
	if c.Name != api.SessionCookie || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Secure {
		t.Errorf("cookie over plain HTTP = %+v, want %s, HttpOnly, SameSite=Strict, Path=/, not Secure", c, api.SessionCookie)
	}
	raw := c.Value
	if len(raw) != 43 {
		t.Errorf("session id %d characters, want 43 (32 bytes of base64url)", len(raw))
	}
	sess := &testSession{as: as, operator: "maria", cookie: c, csrf: v["csrf_token"].(string)}
	res, got := sess.do(t, http.MethodGet, "/api/v1/session", "")
	wantStatus(t, "GET session", res, got, http.StatusOK)
	if got["operator"] != "maria" || got["csrf_token"] != v["csrf_token"] || got["display_name"] != "Name of maria" {
		t.Errorf("GET session = %v, want the sign-in body", got)
	}

	for name, creds := range map[string][2]string{
		"wrong password":  {"maria", password + "x"},
		"unknown user":    {"nobody", password},
		"empty password":  {"maria", ""},
		"long password":   {"maria", strings.Repeat("p", api.MaxPasswordBytes+1)},
		"other user case": {"Maria", password},
	} {
		res, v := as.login(t, creds[0], creds[1])
		if res.StatusCode != http.StatusUnauthorized || v["error"] != "wrong user name or password" {
			t.Errorf("%s: %d %v, want 401 wrong user name or password", name, res.StatusCode, v)
		}
		if len(res.Cookies()) != 0 {
			t.Errorf("%s: a cookie was set", name)
		}
	}

	// A disabled operator gets the same response, even with the right password.
	if _, err := as.accounts.UpdateOperator(context.Background(), "maria", func(o *store.StoredOperator) error {
		o.FailedLogins, o.Disabled = 0, true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	res, v = as.login(t, "maria", password)
	if res.StatusCode != http.StatusUnauthorized || v["error"] != "wrong user name or password" {
		t.Errorf("disabled operator: %d %v, want 401", res.StatusCode, v)
	}

	reasons := map[string]int{}
	for _, e := range as.auditEntries(t, store.AuditFilter{Action: "login"}) {
		reasons[e.Outcome+": "+e.Detail]++
		if e.Remote != "127.0.0.1" {
			t.Errorf("audit entry %+v: remote %q, want 127.0.0.1", e, e.Remote)
		}
	}
	for reason, n := range map[string]int{"success: ": 1, "failure: wrong password": 2, "failure: unknown user name": 2,
		"failure: password too long": 1, "failure: account disabled": 1} {
		if reasons[reason] != n {
			t.Errorf("audit has %d sign-ins %q, want %d (all: %v)", reasons[reason], reason, n, reasons)
		}
	}
}

func TestLogin_LockoutAfterFiveFailuresAndUnlock(t *testing.T) {
	as := newAuthServer(t, false, func(c *api.Config) { c.LoginBurst = 100 })
	password := as.addOperator(t, "maria", store.OperatorRoleOperator, "NCR")
	for i := 1; i < api.MaxLoginFailures; i++ {
		res, v := as.login(t, "maria", "wrong password "+strconv.Itoa(i))
		wantStatus(t, fmt.Sprintf("failure %d", i), res, v, http.StatusUnauthorized)
	}
	res, v := as.login(t, "maria", "wrong password 5")
	wantStatus(t, "fifth failure", res, v, http.StatusLocked)
	if msg, _ := v["error"].(string); !strings.Contains(msg, "locked") || !strings.Contains(msg, "ask an admin") {
		t.Errorf("lockout message %q, want it to say locked and how to unlock", msg)
	}
	// The right password does not get through the lock.
	res, v = as.login(t, "maria", password)
	wantStatus(t, "right password while locked", res, v, http.StatusLocked)
	if ra := res.Header.Get("Retry-After"); ra != "900" {
		t.Errorf("Retry-After = %q, want 900", ra)
	}
	// The lock holds for this address only; the account counts the
	// failures but stays open below api.MaxAccountFailures.
	o, err := as.accounts.Operator(context.Background(), "maria")
	if err != nil || !o.LockedUntil.IsZero() || o.FailedLogins != api.MaxLoginFailures {
		t.Fatalf("stored account = locked until %v, %d failures, %v; want not locked, %d failures", o.LockedUntil, o.FailedLogins, err, api.MaxLoginFailures)
	}
	if n := len(as.auditEntries(t, store.AuditFilter{Action: "lockout", Actor: "login:maria"})); n != 1 {
		t.Errorf("%d lockout audit entries, want 1", n)
	}
	if code := loginFrom(t, as, "127.0.0.2", "maria", password); code != http.StatusOK {
		t.Fatalf("right password from another address while 127.0.0.1 is locked = %d, want 200", code)
	}

	// An admin unlocks the account.
	res, v = as.bearer(t, testAdminToken, http.MethodPatch, "/api/v1/admin/operators/maria", `{"unlock":true}`)
	wantStatus(t, "unlock", res, v, http.StatusOK)
	as.signIn(t, "maria", password)
	if n := len(as.auditEntries(t, store.AuditFilter{Action: "operator.unlock", Actor: api.AdminTokenOperator})); n != 1 {
		t.Errorf("%d unlock audit entries, want 1", n)
	}

	// A lock also ends by itself after LockoutDuration.
	for i := range api.MaxLoginFailures {
		as.login(t, "maria", "wrong again "+strconv.Itoa(i))
	}
	res, v = as.login(t, "maria", password)
	wantStatus(t, "second lock", res, v, http.StatusLocked)
	as.clock.Set(testNow.Add(api.LockoutDuration + time.Second))
	as.signIn(t, "maria", password)
}

func TestLogin_RateLimitedPerRemoteAddress(t *testing.T) {
	as := newAuthServer(t, false, func(c *api.Config) { c.LoginBurst, c.LoginInterval = 3, time.Hour })
	password := as.addOperator(t, "maria", store.OperatorRoleOperator, "NCR")
	for i := range 3 {
		res, v := as.login(t, "nobody", "guess "+strconv.Itoa(i))
		wantStatus(t, "attempt within the burst", res, v, http.StatusUnauthorized)
	}
	res, v := as.login(t, "maria", password)
	wantStatus(t, "attempt past the burst", res, v, http.StatusTooManyRequests)
	if ra, err := strconv.Atoi(res.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 3600 {
		t.Errorf("Retry-After = %q, want 1 to 3600 seconds", res.Header.Get("Retry-After"))
	}
	// Another address is not limited.
	req := as.request(t, http.MethodPost, "/api/v1/session", `{"username":"maria","password":"`+password+`"}`)
	other, err := clientFrom("127.0.0.2").Do(req)
	if err != nil {
		t.Fatalf("sign in from 127.0.0.2: %v", err)
	}
	other.Body.Close()
	if other.StatusCode != http.StatusOK {
		t.Errorf("sign in from another address = %d, want 200", other.StatusCode)
	}
}

func TestSession_LogoutEndsTheSession(t *testing.T) {
	as := newAuthServer(t, false, nil)
	sess := as.sessionAs(t, store.OperatorRoleOperator, "NCR")
	res, v := sess.do(t, http.MethodGet, "/api/v1/incidents", "")
	wantStatus(t, "incidents while signed in", res, v, http.StatusOK)

	// Sign-out is state-changing: without the CSRF token it is refused.
	req := as.request(t, http.MethodDelete, "/api/v1/session", "")
	req.AddCookie(sess.cookie)
	res, v = as.send(t, req)
	wantStatus(t, "logout without CSRF token", res, v, http.StatusForbidden)

	res, v = sess.do(t, http.MethodDelete, "/api/v1/session", "")
	wantStatus(t, "logout", res, v, http.StatusNoContent)
	if c := res.Cookies(); len(c) != 1 || c[0].MaxAge >= 0 || c[0].Value != "" {
		t.Errorf("logout cookies = %+v, want the session cookie deleted", c)
	}
	for _, path := range []string{"/api/v1/incidents", "/api/v1/session", "/api/v1/vehicles"} {
		res, v = sess.do(t, http.MethodGet, path, "")
		wantStatus(t, "GET "+path+" after logout", res, v, http.StatusUnauthorized)
	}
	if n := len(as.auditEntries(t, store.AuditFilter{Action: "logout", Actor: "operator:" + sess.operator})); n != 1 {
		t.Errorf("%d logout audit entries, want 1", n)
	}
}

func TestSession_SurvivesAServerRestartAndExpires(t *testing.T) {
	as := newAuthServer(t, false, nil)
	sess := as.sessionAs(t, store.OperatorRoleOperator, "NCR")
	// A second server on the same store, as after a restart, accepts the session.
	bus := events.NewBus(events.Config{})
	t.Cleanup(func() { bus.Close() })
	restarted := api.New(api.Config{Store: as.incidents, Bus: bus, Accounts: as.accounts, Now: as.clock.Now})
	t.Cleanup(func() { restarted.Close() })
	req := as.request(t, http.MethodGet, "/api/v1/session", "")
	req.AddCookie(sess.cookie)
	rec := httptest.NewRecorder()
	restarted.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Errorf("session on the restarted server = %d %s, want 200", rec.Code, rec.Body)
	}

	// Activity keeps the session alive past the idle timeout ...
	as.clock.Set(testNow.Add(store.SessionIdleTimeout - time.Minute))
	res, v := sess.do(t, http.MethodGet, "/api/v1/incidents", "")
	wantStatus(t, "request before the idle timeout", res, v, http.StatusOK)
	as.clock.Set(testNow.Add(2*store.SessionIdleTimeout - 2*time.Minute))
	res, v = sess.do(t, http.MethodGet, "/api/v1/incidents", "")
	wantStatus(t, "request after activity", res, v, http.StatusOK)
	// ... but idleness ends it.
	as.clock.Set(testNow.Add(3*store.SessionIdleTimeout + time.Minute))
	res, v = sess.do(t, http.MethodGet, "/api/v1/incidents", "")
	wantStatus(t, "request after the idle timeout", res, v, http.StatusUnauthorized)
}

func TestCSRF_RequiredForCookieWritesOnly(t *testing.T) {
	as := newAuthServer(t, false, nil)
	sess := as.sessionAs(t, store.OperatorRoleOperator, "*")
	post := func(token, origin string) (*http.Response, map[string]any) {
		req := as.request(t, http.MethodPost, "/api/v1/incidents/1/notes", `{"text":"called the driver"}`)
		req.AddCookie(sess.cookie)
		if token != "" {
			req.Header.Set(api.CSRFHeader, token)
		}
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		return as.send(t, req)
	}
	for name, token := range map[string]string{"missing": "", "wrong": sess.csrf + "x", "another string": "csrf"} {
		res, v := post(token, "")
		wantStatus(t, name+" CSRF token", res, v, http.StatusForbidden)
		if v["error"] != "missing or wrong CSRF token" {
			t.Errorf("%s CSRF token: error %v", name, v["error"])
		}
	}
	res, v := post(sess.csrf, "https://evil.example")
	wantStatus(t, "foreign origin", res, v, http.StatusForbidden)
	if calls := as.incidents.actionCalls(); len(calls) != 0 {
		t.Fatalf("refused requests reached the store: %+v", calls)
	}
	res, v = post(sess.csrf, as.URL)
	wantStatus(t, "right token, own origin", res, v, http.StatusOK)
	// A GET needs no token.
	req := as.request(t, http.MethodGet, "/api/v1/incidents", "")
	req.AddCookie(sess.cookie)
	res, v = as.send(t, req)
	wantStatus(t, "GET without token", res, v, http.StatusOK)

	// A bearer API token needs none either.
	res, v = as.bearer(t, testAdminToken, http.MethodPost, "/api/v1/admin/tokens", `{"operator":"`+sess.operator+`","name":"cad bridge"}`)
	wantStatus(t, "create token", res, v, http.StatusCreated)
	token := v["token"].(string)
	res, v = as.bearer(t, token, http.MethodPost, "/api/v1/incidents/2/acknowledge", ``)
	wantStatus(t, "action with an API token", res, v, http.StatusOK)
	if got := fmt.Sprint(jsonPath(t, v, "event", "actor")); got != "operator:"+sess.operator {
		t.Errorf("actor of the API token's action = %s, want operator:%s", got, sess.operator)
	}
}

func TestAPIToken_RevokedIsRefused(t *testing.T) {
	as := newAuthServer(t, false, nil)
	as.addOperator(t, "cad", store.OperatorRoleSupervisor, "NCR")
	res, v := as.bearer(t, testAdminToken, http.MethodPost, "/api/v1/admin/tokens", `{"operator":"cad","name":"cad bridge"}`)
	wantStatus(t, "create token", res, v, http.StatusCreated)
	token, id := v["token"].(string), int64(v["id"].(float64))
	if !strings.HasPrefix(token, store.APITokenPrefix) {
		t.Errorf("token %q lacks the prefix %s", token, store.APITokenPrefix)
	}
	res, v = as.bearer(t, token, http.MethodGet, "/api/v1/incidents", "")
	wantStatus(t, "read with the token", res, v, http.StatusOK)
	// The token acts with its operator's role: a supervisor, not an admin.
	res, v = as.bearer(t, token, http.MethodGet, "/api/v1/admin/operators", "")
	wantStatus(t, "admin route with a supervisor's token", res, v, http.StatusForbidden)

	res, v = as.bearer(t, testAdminToken, http.MethodGet, "/api/v1/admin/tokens", "")
	wantStatus(t, "list tokens", res, v, http.StatusOK)
	if list := fmt.Sprint(v["tokens"]); strings.Contains(list, token) || strings.Contains(list, "hash") {
		t.Errorf("token list %s shows the token or its hash", list)
	}
	res, v = as.bearer(t, testAdminToken, http.MethodDelete, "/api/v1/admin/tokens/"+strconv.FormatInt(id, 10), "")
	wantStatus(t, "revoke", res, v, http.StatusNoContent)
	res, v = as.bearer(t, token, http.MethodGet, "/api/v1/incidents", "")
	wantStatus(t, "read with the revoked token", res, v, http.StatusUnauthorized)
	if v["error"] != "wrong or revoked token" {
		t.Errorf("revoked token error %v", v["error"])
	}
	res, v = as.bearer(t, "xpt_made-up", http.MethodGet, "/api/v1/incidents", "")
	wantStatus(t, "made-up token", res, v, http.StatusUnauthorized)
}

func TestRoles_OperatorSupervisorAdmin(t *testing.T) {
	as := newAuthServer(t, false, nil)
	operator := as.sessionAs(t, store.OperatorRoleOperator, "*")
	supervisor := as.sessionAs(t, store.OperatorRoleSupervisor, "*")
	admin := as.sessionAs(t, store.OperatorRoleAdmin, "*")
	contact := `{"name":"Ana Cruz","role":"responder","region":"NCR-Manila","phone":"09171234567"}`
	for _, c := range []struct {
		who          *testSession
		method, path string
		body         string
		want         int
	}{
		{operator, http.MethodGet, "/api/v1/incidents", "", http.StatusOK},
		{operator, http.MethodPost, "/api/v1/incidents/1/acknowledge", "", http.StatusOK},
		{operator, http.MethodGet, "/api/v1/contacts", "", http.StatusOK},
		{operator, http.MethodPost, "/api/v1/contacts", contact, http.StatusForbidden},
		{operator, http.MethodGet, "/api/v1/admin/operators", "", http.StatusForbidden},
		{operator, http.MethodGet, "/api/v1/admin/agents", "", http.StatusForbidden},
		{operator, http.MethodGet, "/api/v1/audit", "", http.StatusForbidden},
		{supervisor, http.MethodPost, "/api/v1/contacts", contact, http.StatusCreated},
		{supervisor, http.MethodGet, "/api/v1/admin/operators", "", http.StatusForbidden},
		{supervisor, http.MethodGet, "/api/v1/audit", "", http.StatusForbidden},
		{admin, http.MethodGet, "/api/v1/admin/operators", "", http.StatusOK},
		{admin, http.MethodGet, "/api/v1/admin/agents", "", http.StatusOK},
		{admin, http.MethodGet, "/api/v1/audit", "", http.StatusOK},
	} {
		res, v := c.who.do(t, c.method, c.path, c.body)
		if res.StatusCode != c.want {
			t.Errorf("%s %s as %s = %d %v, want %d", c.method, c.path, c.who.operator, res.StatusCode, v, c.want)
		}
		if c.want == http.StatusForbidden && !strings.Contains(fmt.Sprint(v["error"]), "needs the") {
			t.Errorf("%s %s as %s: error %v, want it to name the role needed", c.method, c.path, c.who.operator, v["error"])
		}
	}
	contacts, err := as.accounts.Contacts(context.Background(), store.ContactFilter{})
	if err != nil || len(contacts) != 1 {
		t.Errorf("contacts = %v, %v; want only the supervisor's", contacts, err)
	}
}

func TestCookie_SecureOverTLS(t *testing.T) {
	as := newAuthServer(t, true, nil)
	sess := as.sessionAs(t, store.OperatorRoleOperator, "NCR")
	c := sess.cookie
	if c.Name != api.SecureSessionCookie || !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Domain != "" {
		t.Errorf("cookie over TLS = %+v, want %s, Secure, HttpOnly, SameSite=Strict, Path=/, no Domain", c, api.SecureSessionCookie)
	}
	res, v := sess.do(t, http.MethodGet, "/api/v1/session", "")
	wantStatus(t, "session over TLS", res, v, http.StatusOK)
	if hsts := res.Header.Get("Strict-Transport-Security"); hsts == "" {
		t.Error("no HSTS header over TLS")
	}
	// The same value under the plain cookie name is not accepted over TLS.
	req := as.request(t, http.MethodGet, "/api/v1/session", "")
	req.AddCookie(&http.Cookie{Name: api.SessionCookie, Value: c.Value})
	res, v = as.send(t, req)
	wantStatus(t, "plain cookie name over TLS", res, v, http.StatusUnauthorized)
}

func TestSecurityHeaders_OnAuthResponses(t *testing.T) {
	as := newAuthServer(t, false, nil)
	operator := as.sessionAs(t, store.OperatorRoleOperator, "NCR")
	anonymous := func(method, path, body string) (*http.Response, map[string]any) {
		return as.send(t, as.request(t, method, path, body))
	}
	for _, c := range []struct {
		name string
		send func() (*http.Response, map[string]any)
		want int
	}{
		{"health", func() (*http.Response, map[string]any) { return anonymous(http.MethodGet, "/healthz", "") }, http.StatusOK},
		{"dashboard", func() (*http.Response, map[string]any) { return anonymous(http.MethodGet, "/", "") }, http.StatusOK},
		{"API without sign-in", func() (*http.Response, map[string]any) { return anonymous(http.MethodGet, "/api/v1/incidents", "") }, http.StatusUnauthorized},
		{"unknown API path without sign-in", func() (*http.Response, map[string]any) { return anonymous(http.MethodGet, "/api/v1/nothing", "") }, http.StatusUnauthorized},
		{"wrong password", func() (*http.Response, map[string]any) { return as.login(t, operator.operator, "wrong") }, http.StatusUnauthorized},
		{"role too low", func() (*http.Response, map[string]any) {
			return operator.do(t, http.MethodGet, "/api/v1/admin/operators", "")
		}, http.StatusForbidden},
		{"unknown API path", func() (*http.Response, map[string]any) { return operator.do(t, http.MethodGet, "/api/v1/nothing", "") }, http.StatusNotFound},
		{"unknown incident", func() (*http.Response, map[string]any) {
			return operator.do(t, http.MethodGet, "/api/v1/incidents/999", "")
		}, http.StatusNotFound},
		{"signed in", func() (*http.Response, map[string]any) { return operator.do(t, http.MethodGet, "/api/v1/session", "") }, http.StatusOK},
	} {
		res, v := c.send()
		if res.StatusCode != c.want {
			t.Errorf("%s = %d %v, want %d", c.name, res.StatusCode, v, c.want)
		}
		for _, h := range []string{"X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy", "Referrer-Policy"} {
			if res.Header.Get(h) == "" {
				t.Errorf("%s (%d): header %s missing", c.name, res.StatusCode, h)
			}
		}
		if res.StatusCode >= 400 && !strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") && strings.Contains(c.name, "API") {
			t.Errorf("%s: Content-Type %q, want a JSON error", c.name, res.Header.Get("Content-Type"))
		}
	}
}

func TestAudit_SignInsAndActions(t *testing.T) {
	as := newAuthServer(t, false, nil)
	sess := as.sessionAs(t, store.OperatorRoleOperator, "*")
	as.login(t, sess.operator, "not the password")
	res, v := sess.do(t, http.MethodPost, "/api/v1/incidents/3/acknowledge", "")
	wantStatus(t, "acknowledge", res, v, http.StatusOK)
	res, v = sess.do(t, http.MethodPost, "/api/v1/incidents/3/acknowledge", "")
	wantStatus(t, "acknowledge again", res, v, http.StatusConflict)

	actor := "operator:" + sess.operator
	entries := as.auditEntries(t, store.AuditFilter{Action: "incident.acknowledge"})
	if len(entries) != 2 || entries[0].Outcome != "failure" || entries[1].Outcome != "success" ||
		entries[1].Actor != actor || entries[1].Target != "incident:3" || entries[1].Remote != "127.0.0.1" {
		t.Errorf("acknowledge audit entries = %+v, want a success then a failure by %s on incident:3", entries, actor)
	}

	// The admin reads the log through the API, filtered.
	admin := as.sessionAs(t, store.OperatorRoleAdmin, "*")
	res, v = admin.do(t, http.MethodGet, "/api/v1/audit?action=login&actor=login:"+sess.operator, "")
	wantStatus(t, "audit log", res, v, http.StatusOK)
	list, _ := v["entries"].([]any)
	if len(list) != 1 || jsonPath(t, v, "entries", 0, "outcome") != "failure" || jsonPath(t, v, "entries", 0, "detail") != "wrong password" {
		t.Errorf("failed sign-ins of %s = %v, want the one with the wrong password", sess.operator, v)
	}
	res, v = admin.do(t, http.MethodGet, "/api/v1/audit?limit=2", "")
	wantStatus(t, "audit log limit", res, v, http.StatusOK)
	if list, _ := v["entries"].([]any); len(list) != 2 {
		t.Errorf("audit log limit 2 returned %d entries", len(list))
	}
	for _, bad := range []string{"?limit=0", "?limit=x", "?since=yesterday"} {
		res, v = admin.do(t, http.MethodGet, "/api/v1/audit"+bad, "")
		wantStatus(t, "audit log "+bad, res, v, http.StatusBadRequest)
	}
}

func TestPasswords_NeverLoggedOrAudited(t *testing.T) {
	as := newAuthServer(t, false, nil)
	password := as.addOperator(t, "maria", store.OperatorRoleOperator, "NCR")
	const wrong = "wrong-password-that-must-not-be-logged"
	const created = "created-password-that-must-not-be-logged"
	const changed = "changed-password-that-must-not-be-logged"
	as.login(t, "maria", wrong)
	as.login(t, "unknown-user", wrong)
	sess := as.signIn(t, "maria", password)
	res, v := sess.do(t, http.MethodPost, "/api/v1/session/password", `{"current":"`+password+`","new":"`+changed+`"}`)
	wantStatus(t, "change password", res, v, http.StatusOK)
	res, v = as.bearer(t, testAdminToken, http.MethodPost, "/api/v1/admin/operators",
		`{"username":"jose","display_name":"Jose","role":"operator","regions":["NCR"],"password":"`+created+`"}`)
	wantStatus(t, "create operator", res, v, http.StatusCreated)
	res, v = as.bearer(t, testAdminToken, http.MethodPost, "/api/v1/admin/tokens", `{"operator":"jose","name":"x"}`)
	wantStatus(t, "create token", res, v, http.StatusCreated)
	token := v["token"].(string)
	as.bearer(t, token, http.MethodGet, "/api/v1/incidents", "")

	logs := as.logs.String()
	if !strings.Contains(logs, "sign-in failed") {
		t.Fatalf("the captured log lacks the failed sign-ins, so the check below proves nothing:\n%s", logs)
	}
	var audit strings.Builder
	for _, e := range as.auditEntries(t, store.AuditFilter{Limit: store.MaxAuditLimit}) {
		fmt.Fprintf(&audit, "%+v\n", e)
	}
	for _, secret := range []string{password, wrong, created, changed, token, sess.cookie.Value, sess.csrf} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log contains the secret %q", secret)
		}
		if strings.Contains(audit.String(), secret) {
			t.Errorf("the audit log contains the secret %q", secret)
		}
	}
}

func TestPassword_OwnChange(t *testing.T) {
	as := newAuthServer(t, false, nil)
	password := as.addOperator(t, "maria", store.OperatorRoleOperator, "NCR")
	sess := as.signIn(t, "maria", password)
	other := as.signIn(t, "maria", password)
	const newPassword = "a new password of enough length"
	res, v := sess.do(t, http.MethodPost, "/api/v1/session/password", `{"current":"wrong","new":"`+newPassword+`"}`)
	wantStatus(t, "wrong current password", res, v, http.StatusForbidden)
	res, v = sess.do(t, http.MethodPost, "/api/v1/session/password", `{"current":"`+password+`","new":"short"}`)
	wantStatus(t, "short new password", res, v, http.StatusBadRequest)
	res, v = sess.do(t, http.MethodPost, "/api/v1/session/password", `{"current":"`+password+`","new":"`+newPassword+`"}`)
	wantStatus(t, "change", res, v, http.StatusOK)
	if len(res.Cookies()) != 1 || v["csrf_token"] == sess.csrf {
		t.Fatalf("change returned cookies %v and body %v, want a new session", res.Cookies(), v)
	}
	for name, s := range map[string]*testSession{"changing": sess, "other": other} {
		res, v := s.do(t, http.MethodGet, "/api/v1/session", "")
		wantStatus(t, name+" session after the change", res, v, http.StatusUnauthorized)
	}
	renewed := &testSession{as: as, operator: "maria", cookie: res.Cookies()[0], csrf: v["csrf_token"].(string)}
	res, v = renewed.do(t, http.MethodGet, "/api/v1/session", "")
	wantStatus(t, "new session", res, v, http.StatusOK)
	res, v = as.login(t, "maria", password)
	wantStatus(t, "old password", res, v, http.StatusUnauthorized)
	as.signIn(t, "maria", newPassword)
}

func TestAdminOperators_Lifecycle(t *testing.T) {
	as := newAuthServer(t, false, nil)
	admin := as.sessionAs(t, store.OperatorRoleAdmin, "*")
	for name, body := range map[string]string{
		"short password": `{"username":"jose","display_name":"Jose","role":"operator","regions":["NCR"],"password":"short"}`,
		"invalid UTF-8":  `{"username":"jose","display_name":"Jose","role":"operator","regions":["NCR"],"password":"` + strings.Repeat("\xff", 12) + `"}`,
		"long password":  `{"username":"jose","display_name":"Jose","role":"operator","regions":["NCR"],"password":"` + strings.Repeat("p", 257) + `"}`,
		"bad user name":  `{"username":"Jose Rizal","display_name":"Jose","role":"operator","regions":["NCR"],"password":"long enough password"}`,
		"unknown role":   `{"username":"jose","display_name":"Jose","role":"root","regions":["NCR"],"password":"long enough password"}`,
		"no regions":     `{"username":"jose","display_name":"Jose","role":"operator","regions":[],"password":"long enough password"}`,
		"reserved name":  `{"username":"admin-token","display_name":"Jose","role":"operator","regions":["NCR"],"password":"long enough password"}`,
		"unknown field":  `{"username":"jose","display_name":"Jose","role":"operator","regions":["NCR"],"password":"long enough password","x":1}`,
	} {
		res, v := admin.do(t, http.MethodPost, "/api/v1/admin/operators", body)
		wantStatus(t, name, res, v, http.StatusBadRequest)
	}
	res, v := admin.do(t, http.MethodPost, "/api/v1/admin/operators",
		`{"username":"jose","display_name":"Jose Rizal","role":"operator","regions":["NCR"],"password":"long enough password"}`)
	wantStatus(t, "create", res, v, http.StatusCreated)
	if _, ok := v["password_hash"]; ok {
		t.Errorf("create response %v shows the hash", v)
	}
	res, v = admin.do(t, http.MethodPost, "/api/v1/admin/operators",
		`{"username":"jose","display_name":"Jose Rizal","role":"operator","regions":["NCR"],"password":"long enough password"}`)
	wantStatus(t, "create twice", res, v, http.StatusConflict)

	jose := as.signIn(t, "jose", "long enough password")
	res, v = admin.do(t, http.MethodPatch, "/api/v1/admin/operators/jose", `{"role":"supervisor","regions":["NCR","Cebu"]}`)
	wantStatus(t, "promote", res, v, http.StatusOK)
	if v["role"] != "supervisor" || fmt.Sprint(v["regions"]) != "[Cebu NCR]" {
		t.Errorf("promoted operator = %v", v)
	}
	res, v = jose.do(t, http.MethodGet, "/api/v1/session", "")
	wantStatus(t, "session after a role change", res, v, http.StatusUnauthorized)

	jose = as.signIn(t, "jose", "long enough password")
	res, v = jose.do(t, http.MethodGet, "/api/v1/session", "")
	if wantStatus(t, "new session", res, v, http.StatusOK); v["role"] != "supervisor" {
		t.Errorf("new session role %v, want supervisor", v["role"])
	}
	res, v = admin.do(t, http.MethodPatch, "/api/v1/admin/operators/jose", `{"disabled":true}`)
	wantStatus(t, "disable", res, v, http.StatusOK)
	res, v = jose.do(t, http.MethodGet, "/api/v1/incidents", "")
	wantStatus(t, "disabled operator's session", res, v, http.StatusUnauthorized)

	res, v = admin.do(t, http.MethodGet, "/api/v1/admin/operators", "")
	wantStatus(t, "list", res, v, http.StatusOK)
	if list := fmt.Sprint(v["operators"]); !strings.Contains(list, "jose") || strings.Contains(list, "argon2") {
		t.Errorf("operator list %s: want jose and no hashes", list)
	}

	// The last enabled admin cannot remove itself.
	res, v = admin.do(t, http.MethodDelete, "/api/v1/admin/operators/"+admin.operator, "")
	wantStatus(t, "delete the last admin", res, v, http.StatusConflict)
	res, v = admin.do(t, http.MethodPatch, "/api/v1/admin/operators/"+admin.operator, `{"role":"operator"}`)
	wantStatus(t, "demote the last admin", res, v, http.StatusConflict)

	res, v = admin.do(t, http.MethodDelete, "/api/v1/admin/operators/jose", "")
	wantStatus(t, "delete", res, v, http.StatusNoContent)
	res, v = admin.do(t, http.MethodDelete, "/api/v1/admin/operators/jose", "")
	wantStatus(t, "delete twice", res, v, http.StatusNotFound)

	var actions []string
	for _, e := range as.auditEntries(t, store.AuditFilter{Actor: "operator:" + admin.operator}) {
		if strings.HasPrefix(e.Action, "operator.") {
			actions = append(actions, e.Action+" "+e.Target)
		}
	}
	slices.Reverse(actions)
	want := []string{"operator.create operator:jose", "operator.update operator:jose", "operator.update operator:jose", "operator.delete operator:jose"}
	if !slices.Equal(actions, want) {
		t.Errorf("admin's audit entries = %v, want %v", actions, want)
	}
}

func TestSession_LogoutClosesItsStreams(t *testing.T) {
	as := newAuthServer(t, false, nil)
	sess := as.sessionAs(t, store.OperatorRoleOperator, "*")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	url := "ws" + strings.TrimPrefix(as.URL, "http") + "/api/v1/stream"
	conn, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: http.Header{"Cookie": {sess.cookie.String()}}})
	if err != nil {
		t.Fatalf("dial the stream with the session cookie: %v", err)
	}
	defer conn.CloseNow() //nolint:errcheck // the test is over
	if _, _, err := conn.Read(ctx); err != nil {
		t.Fatalf("read the hello frame: %v", err)
	}
	if _, _, err := websocket.Dial(ctx, url, nil); err == nil {
		t.Error("the stream accepted a client without a principal")
	}

	res, v := sess.do(t, http.MethodDelete, "/api/v1/session", "")
	wantStatus(t, "logout", res, v, http.StatusNoContent)
	for {
		_, _, err := conn.Read(ctx)
		if err == nil {
			continue // an event sent before the close
		}
		if status := websocket.CloseStatus(err); status != websocket.StatusPolicyViolation {
			t.Fatalf("stream after logout ended with %v (status %d), want status 1008", err, status)
		}
		return
	}
}

// loginFrom signs in from the loopback address ip and returns the status.
func loginFrom(t *testing.T, as *authServer, ip, username, password string) int {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"username": username, "password": password})
	req := as.request(t, http.MethodPost, "/api/v1/session", string(body))
	res, err := clientFrom(ip).Do(req)
	if err != nil {
		t.Fatalf("sign in from %s: %v", ip, err)
	}
	res.Body.Close()
	return res.StatusCode
}

// Failures spread over many addresses lock the account for every
// address at api.MaxAccountFailures, and the lock is stored. An admin
// unlock ends it and the locks of single addresses.
func TestLogin_AccountLockAcrossAddresses(t *testing.T) {
	as := newAuthServer(t, false, func(c *api.Config) { c.LoginBurst = 1000 })
	password := as.addOperator(t, "maria", store.OperatorRoleSupervisor, "NCR")
	for i := range api.MaxAccountFailures {
		ip := fmt.Sprintf("127.0.1.%d", 1+i/api.MaxLoginFailures)
		code := loginFrom(t, as, ip, "maria", "guess "+strconv.Itoa(i))
		last := i == api.MaxAccountFailures-1 || i%api.MaxLoginFailures == api.MaxLoginFailures-1
		if want := map[bool]int{true: http.StatusLocked, false: http.StatusUnauthorized}[last]; code != want {
			t.Fatalf("failure %d from %s = %d, want %d", i+1, ip, code, want)
		}
	}
	if code := loginFrom(t, as, "127.0.2.1", "maria", password); code != http.StatusLocked {
		t.Fatalf("right password from a new address after %d failures = %d, want 423", api.MaxAccountFailures, code)
	}
	o, err := as.accounts.Operator(context.Background(), "maria")
	if err != nil || !o.LockedUntil.Equal(testNow.Add(api.LockoutDuration)) {
		t.Fatalf("stored lock = %v, %v; want until %s", o.LockedUntil, err, testNow.Add(api.LockoutDuration))
	}
	res, v := as.bearer(t, testAdminToken, http.MethodPatch, "/api/v1/admin/operators/maria", `{"unlock":true}`)
	wantStatus(t, "unlock", res, v, http.StatusOK)
	for _, ip := range []string{"127.0.2.1", "127.0.1.1"} {
		if code := loginFrom(t, as, ip, "maria", password); code != http.StatusOK {
			t.Errorf("right password from %s after the unlock = %d, want 200", ip, code)
		}
	}
}

// An unknown user name locks after api.MaxLoginFailures like a real one,
// with the same message, so a lock does not reveal which names exist.
func TestLogin_UnknownUserLocksLikeARealOne(t *testing.T) {
	as := newAuthServer(t, false, func(c *api.Config) { c.LoginBurst = 1000 })
	as.addOperator(t, "maria", store.OperatorRoleOperator, "NCR")
	msgs := map[string]any{}
	for _, name := range []string{"maria", "ghostuser"} {
		for i := 1; i < api.MaxLoginFailures; i++ {
			res, v := as.login(t, name, "guess "+strconv.Itoa(i))
			wantStatus(t, fmt.Sprintf("%s failure %d", name, i), res, v, http.StatusUnauthorized)
		}
		res, v := as.login(t, name, "guess 5")
		wantStatus(t, name+" fifth failure", res, v, http.StatusLocked)
		res, v = as.login(t, name, "guess 6")
		wantStatus(t, name+" while locked", res, v, http.StatusLocked)
		if ra := res.Header.Get("Retry-After"); ra != "900" {
			t.Errorf("%s: Retry-After = %q, want 900", name, ra)
		}
		msgs[name] = v["error"]
	}
	if msgs["maria"] != msgs["ghostuser"] {
		t.Errorf("lock messages differ: %q and %q", msgs["maria"], msgs["ghostuser"])
	}
	if n := len(as.auditEntries(t, store.AuditFilter{Action: "lockout", Actor: "login:ghostuser"})); n != 1 {
		t.Errorf("%d lockout audit entries of the unknown name, want 1", n)
	}
}

// Sign-ins refused by the rate limit get one audit entry per address per
// minute, however many there are.
func TestLogin_RateLimitAudited(t *testing.T) {
	as := newAuthServer(t, false, func(c *api.Config) { c.LoginBurst, c.LoginInterval = 1, time.Hour })
	res, v := as.login(t, "nobody", "guess")
	wantStatus(t, "attempt within the burst", res, v, http.StatusUnauthorized)
	for range 5 {
		res, v = as.login(t, "nobody", "guess")
		wantStatus(t, "attempt past the burst", res, v, http.StatusTooManyRequests)
	}
	denied := func() int {
		n := 0
		for _, e := range as.auditEntries(t, store.AuditFilter{Action: "login"}) {
			if e.Outcome == "denied" && strings.Contains(e.Detail, "rate limit") && e.Remote == "127.0.0.1" {
				n++
			}
		}
		return n
	}
	if n := denied(); n != 1 {
		t.Fatalf("%d audit entries for 5 refusals within a minute, want 1", n)
	}
	as.clock.Set(testNow.Add(time.Minute + time.Second))
	res, v = as.login(t, "nobody", "guess")
	wantStatus(t, "attempt a minute later", res, v, http.StatusTooManyRequests)
	if n := denied(); n != 2 {
		t.Errorf("%d audit entries after a refusal a minute later, want 2", n)
	}
}

// The Authorization scheme is case-insensitive, on the API and the admin
// routes.
func TestBearer_SchemeAnyCase(t *testing.T) {
	as := newAuthServer(t, false, nil)
	for _, scheme := range []string{"bearer", "BEARER", "Bearer", "bEaReR"} {
		req := as.request(t, http.MethodGet, "/api/v1/admin/operators", "")
		req.Header.Set("Authorization", scheme+" "+testAdminToken)
		res, v := as.send(t, req)
		wantStatus(t, "admin route with scheme "+scheme, res, v, http.StatusOK)
		req = as.request(t, http.MethodGet, "/api/v1/incidents", "")
		req.Header.Set("Authorization", scheme+" "+testAdminToken)
		res, v = as.send(t, req)
		wantStatus(t, "API with scheme "+scheme, res, v, http.StatusOK)
	}
	req := as.request(t, http.MethodGet, "/api/v1/incidents", "")
	req.Header.Set("Authorization", "Basic "+testAdminToken)
	res, v := as.send(t, req)
	wantStatus(t, "another scheme", res, v, http.StatusUnauthorized)
}

// On a hub with accounts, an incident can only be assigned to an
// enabled operator who can see its region.
func TestAssign_AssigneeMustBeAnOperatorOfTheRegion(t *testing.T) {
	as := newAuthServer(t, false, nil)
	sup := as.sessionAs(t, store.OperatorRoleSupervisor, "NCR")
	as.addOperator(t, "ncr-op", store.OperatorRoleOperator, "NCR")
	as.addOperator(t, "cebu-op", store.OperatorRoleOperator, "Cebu")
	as.addOperator(t, "every-op", store.OperatorRoleOperator, store.AllRegions)
	as.addOperator(t, "gone-op", store.OperatorRoleOperator, "NCR")
	if _, err := as.accounts.UpdateOperator(context.Background(), "gone-op", func(o *store.StoredOperator) error {
		o.Disabled = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for assignee, want := range map[string]string{
		"nobody":   "not an operator's user name",
		"cebu-op":  "cannot see region NCR",
		"gone-op":  "disabled account",
		"ncr-op":   "",
		"every-op": "",
	} {
		res, v := sup.do(t, http.MethodPost, "/api/v1/incidents/1/assign", `{"assignee":"`+assignee+`"}`)
		if want == "" {
			wantStatus(t, "assign to "+assignee, res, v, http.StatusOK)
			continue
		}
		wantStatus(t, "assign to "+assignee, res, v, http.StatusBadRequest)
		if msg, _ := v["error"].(string); !strings.Contains(msg, want) {
			t.Errorf("assign to %s: message %q, want it to contain %q", assignee, msg, want)
		}
	}
}
