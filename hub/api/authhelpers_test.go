package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/internal/passhash"
	"github.com/xpress-ops/tower/internal/testlog"
)

// testHashParams keep the test passwords' hashes cheap; Verify reads the
// parameters from each hash, so the sign-in code runs unchanged.
var testHashParams = passhash.Params{Memory: 64, Time: 1, Threads: 1}

// testAdminToken is the admin token of authServer; it is made up for
// the tests and guards nothing else.
const testAdminToken = "admin-token-of-the-auth-tests-0123456789"

// syncBuffer is a log sink safe for concurrent writes and reads.
type syncBuffer = testlog.Buffer

// authServer is an API server with real authentication: operator
// accounts, sessions, tokens and the audit log in an embedded store on a
// temporary file, which also serves the contacts. Requests go through
// the real sign-in route; nothing puts a principal in their context.
type authServer struct {
	*httptest.Server
	api       *api.Server
	accounts  *embedded.Store
	incidents *fakeStore
	clock     *storetest.Clock
	logs      *syncBuffer
	names     atomic.Int64
}

// newAuthServer starts an authServer, over TLS when tls is set. edit
// adjusts the configuration before New.
func newAuthServer(t *testing.T, tls bool, edit func(*api.Config)) *authServer {
	t.Helper()
	clock := storetest.NewClock(testNow)
	st := embedded.New(embedded.Config{Path: filepath.Join(t.TempDir(), "hub.db"), Now: clock.Now, RetentionInterval: -1})
	if err := st.Open(context.Background()); err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	bus := events.NewBus(events.Config{})
	t.Cleanup(func() { bus.Close() })
	fs := &fakeStore{events: map[int64][]store.IncidentEvent{}, now: testNow}
	fs.update(func(f *fakeStore) {
		for i := range 5 {
			f.incidents = append(f.incidents, sampleIncident(int64(i+1), "MNL-000"+string(rune('1'+i)), store.StateOpen, testNow.Add(-time.Hour)))
		}
	})
	logs := &syncBuffer{}
	cfg := api.Config{
		Store: fs, Bus: bus, Accounts: st, Contacts: st, Credentials: st, AdminToken: testAdminToken,
		Now:    clock.Now,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if edit != nil {
		edit(&cfg)
	}
	srv := api.New(cfg)
	var ts *httptest.Server
	if tls {
		ts = httptest.NewTLSServer(srv.Handler())
	} else {
		ts = httptest.NewServer(srv.Handler())
	}
	t.Cleanup(func() {
		srv.Close()
		ts.Close()
	})
	return &authServer{Server: ts, api: srv, accounts: st, incidents: fs, clock: clock, logs: logs}
}

// addOperator creates an operator with a new password and returns it.
func (as *authServer) addOperator(t *testing.T, username, role string, regions ...string) string {
	t.Helper()
	password := "pw-" + username + "-correct horse battery"
	hash, err := passhash.Hash(password, testHashParams)
	if err != nil {
		t.Fatal(err)
	}
	o := store.Operator{Username: username, DisplayName: "Name of " + username, Role: role, Regions: regions}
	if _, err := as.accounts.CreateOperator(context.Background(), o, hash); err != nil {
		t.Fatalf("create operator %s: %v", username, err)
	}
	return password
}

// sessionAs creates an operator of role and regions and signs it in
// through POST /api/v1/session.
func (as *authServer) sessionAs(t *testing.T, role string, regions ...string) *testSession {
	t.Helper()
	name := role + "-" + string(rune('a'+as.names.Add(1)))
	password := as.addOperator(t, name, role, regions...)
	return as.signIn(t, name, password)
}

// testSession is a signed-in operator: the session cookie and its CSRF
// token.
type testSession struct {
	as       *authServer
	operator string
	cookie   *http.Cookie
	csrf     string
}

// login sends POST /api/v1/session and returns the response with its body.
func (as *authServer) login(t *testing.T, username, password string) (*http.Response, map[string]any) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"username": username, "password": password})
	req, err := http.NewRequest(http.MethodPost, as.URL+"/api/v1/session", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	return as.send(t, req)
}

// signIn signs in and fails the test unless it succeeds.
func (as *authServer) signIn(t *testing.T, username, password string) *testSession {
	t.Helper()
	res, v := as.login(t, username, password)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("sign in as %s = %d %v", username, res.StatusCode, v)
	}
	cookies := res.Cookies()
	if len(cookies) != 1 {
		t.Fatalf("sign in set %d cookies, want 1", len(cookies))
	}
	csrf, _ := v["csrf_token"].(string)
	if csrf == "" {
		t.Fatalf("sign in response %v has no csrf_token", v)
	}
	return &testSession{as: as, operator: username, cookie: cookies[0], csrf: csrf}
}

// send sends req with the server's client and decodes a JSON body (nil
// for an empty one).
func (as *authServer) send(t *testing.T, req *http.Request) (*http.Response, map[string]any) {
	t.Helper()
	res, err := as.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if len(bytes.TrimSpace(raw)) > 0 && strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatalf("%s %s: body %s is not JSON: %v", req.Method, req.URL.Path, raw, err)
		}
	}
	return res, v
}

// request builds a request, with a JSON content type unless it is a GET
// without a body.
func (as *authServer) request(t *testing.T, method, path, body string) *http.Request {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, as.URL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" || method != http.MethodGet {
		req.Header.Set("Content-Type", "application/json")
	}
	return req
}

// do sends a request with the session cookie and its CSRF token.
func (s *testSession) do(t *testing.T, method, path, body string) (*http.Response, map[string]any) {
	t.Helper()
	req := s.as.request(t, method, path, body)
	req.AddCookie(s.cookie)
	req.Header.Set(api.CSRFHeader, s.csrf)
	return s.as.send(t, req)
}

// bearer sends a request with Authorization: Bearer token.
func (as *authServer) bearer(t *testing.T, token, method, path, body string) (*http.Response, map[string]any) {
	t.Helper()
	req := as.request(t, method, path, body)
	req.Header.Set("Authorization", "Bearer "+token)
	return as.send(t, req)
}

// wantStatus fails the test unless res has status code.
func wantStatus(t *testing.T, what string, res *http.Response, v map[string]any, code int) {
	t.Helper()
	if res.StatusCode != code {
		t.Fatalf("%s = %d %v, want %d", what, res.StatusCode, v, code)
	}
}

// auditEntries returns the audit log, newest first.
func (as *authServer) auditEntries(t *testing.T, f store.AuditFilter) []store.AuditEntry {
	t.Helper()
	log, err := as.accounts.AuditLog(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	return log
}

// clientFrom returns an HTTP client whose connections come from the
// loopback address ip, so tests can act as a second remote address.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}
