package agent_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/agent/localauth"
	"github.com/xpress-ops/tower/internal/passhash"
	"github.com/xpress-ops/tower/protocol"
)

// Test operator accounts. Passwords are made per test run.
const (
	staffUser    = "maria"
	staffDisplay = "Maria Santos"
	otherUser    = "ben"
)

// staffActor is the name an acknowledgement by staffUser records.
const staffActor = staffDisplay + " (" + staffUser + ")"

// pageSession is a signed-in browser of an agent's page.
type pageSession struct {
	client *http.Client
	csrf   string
}

var (
	sessionsMu sync.Mutex
	sessions   = map[*agent.Agent]*pageSession{}
)

// testPassword returns a password made at run time.
func testPassword(t *testing.T, user string) string {
	t.Helper()
	return "pw-" + user + "-" + t.Name()
}

// giveOperators hands the agent an operator list as the hub would, with
// staffUser and otherUser and their testPassword.
func giveOperators(t *testing.T, a *agent.Agent, users ...string) {
	t.Helper()
	if len(users) == 0 {
		users = []string{otherUser, staffUser}
	}
	list := protocol.OperatorList{Agent: a.LocalAuth().AgentID(), Region: "NCR-Manila", IssuedAt: time.Now().UTC()}
	for _, u := range users {
		hash := testHash(t, u)
		display := staffDisplay
		if u != staffUser {
			display = "Ben Cruz"
		}
		list.Operators = append(list.Operators, protocol.OperatorCredential{Username: u, DisplayName: display, Role: "operator", Hash: hash})
	}
	payload, err := protocol.EncodeOperatorList(&list)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.LocalAuth().Update(payload); err != nil {
		t.Fatal(err)
	}
}

var (
	hashesMu sync.Mutex
	hashes   = map[string]string{}
)

// testHash returns the hash of user's testPassword, the same for each
// call of a test, as the hub sends an unchanged account.
func testHash(t *testing.T, user string) string {
	t.Helper()
	hashesMu.Lock()
	defer hashesMu.Unlock()
	key := t.Name() + "\x00" + user
	if h, ok := hashes[key]; ok {
		return h
	}
	// Token parameters keep the tests fast; the hub uses passhash.Password.
	h, err := passhash.Hash(testPassword(t, user), passhash.Token)
	if err != nil {
		t.Fatal(err)
	}
	hashes[key] = h
	return h
}

// login posts a sign-in with a fresh cookie jar and returns the status,
// the body and the session on success.
func login(t *testing.T, a *agent.Agent, user, password string) (int, map[string]string, *pageSession) {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	body, _ := json.Marshal(map[string]string{"username": user, "password": password})
	resp, err := client.Post("http://"+a.HTTPAddr().String()+"/api/v1/local/session", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("sign in: %v", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	out := map[string]string{}
	_ = json.Unmarshal(data, &out)
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, out, nil
	}
	return resp.StatusCode, out, &pageSession{client: client, csrf: out["csrf_token"]}
}

// session returns a signed-in browser of a's page as staffUser, giving
// the agent an operator list first when it holds none.
func session(t *testing.T, a *agent.Agent) *pageSession {
	t.Helper()
	sessionsMu.Lock()
	defer sessionsMu.Unlock()
	if s, ok := sessions[a]; ok {
		return s
	}
	if !a.LocalAuth().Received() {
		giveOperators(t, a)
	}
	code, body, s := login(t, a, staffUser, testPassword(t, staffUser))
	if s == nil {
		t.Fatalf("sign in as %s = %d %v", staffUser, code, body)
	}
	sessions[a] = s
	t.Cleanup(func() {
		sessionsMu.Lock()
		delete(sessions, a)
		sessionsMu.Unlock()
	})
	return s
}

// do sends req with s's cookie and, for other methods than GET, its CSRF token.
func (s *pageSession) do(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodGet {
		req.Header.Set(agent.CSRFHeader, s.csrf)
	}
	return s.client.Do(req)
}

// send sends a request to a's HTTP server without a session and returns
// the status and body.
func send(t *testing.T, client *http.Client, method, url, contentType, body string, header map[string]string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

// Sign-in takes the right password, refuses a wrong one and an unknown
// user with one message, and locks a user name after five failures in a
// row, even for the right password.
func TestLocalLogin_RightWrongUnknownLocked(t *testing.T) {
	a := openAgent(t, testConfig(t, unusedHubURL(t), t.TempDir()))
	giveOperators(t, a)

	code, body, s := login(t, a, staffUser, testPassword(t, staffUser))
	if code != http.StatusOK || body["operator"] != staffUser || body["display_name"] != staffDisplay || body["role"] != "operator" || body["csrf_token"] == "" {
		t.Fatalf("sign in = %d %v", code, body)
	}
	u := "http://" + a.HTTPAddr().String()
	req, _ := http.NewRequest(http.MethodGet, u+"/api/v1/local/session", nil)
	resp, err := s.do(req)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || got["operator"] != staffUser || got["csrf_token"] != s.csrf {
		t.Errorf("GET session = %d %v", resp.StatusCode, got)
	}

	wrongCode, wrong, _ := login(t, a, staffUser, "not-the-password")
	unknownCode, unknown, _ := login(t, a, "nobody", "whatever")
	if wrongCode != http.StatusUnauthorized || unknownCode != http.StatusUnauthorized || wrong["error"] != unknown["error"] {
		t.Errorf("wrong password = %d %v, unknown user = %d %v; want one 401 for both", wrongCode, wrong, unknownCode, unknown)
	}

	// With the wrong password above, four more make five in a row.
	for i := range 3 {
		if code, body, _ := login(t, a, staffUser, "guess"); code != http.StatusUnauthorized {
			t.Fatalf("failure %d = %d %v, want 401", i+2, code, body)
		}
	}
	if code, body, _ := login(t, a, staffUser, "guess"); code != http.StatusLocked {
		t.Fatalf("fifth failure = %d %v, want 423", code, body)
	}
	if code, body, _ := login(t, a, staffUser, testPassword(t, staffUser)); code != http.StatusLocked || !strings.Contains(body["error"], "locked") {
		t.Errorf("right password while locked = %d %v, want 423", code, body)
	}
	// Another user name is not locked.
	if code, body, _ := login(t, a, otherUser, testPassword(t, otherUser)); code != http.StatusOK {
		t.Errorf("other operator = %d %v, want 200", code, body)
	}

	// Sign-out ends the session.
	req, _ = http.NewRequest(http.MethodDelete, u+"/api/v1/local/session", nil)
	resp, err = s.do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("sign out = %d, want 204", resp.StatusCode)
	}
	if code, _ := send(t, s.client, http.MethodGet, u+"/api/v1/local/sos", "", "", nil); code != http.StatusUnauthorized {
		t.Errorf("GET after sign-out = %d, want 401", code)
	}
}

// Without a session the local API responds 401 and reports whether the
// agent has an operator list. The probes and metrics stay open, and the
// acknowledgement needs the CSRF header.
func TestLocalAPI_RequiresSession(t *testing.T) {
	a := openAgent(t, testConfig(t, unusedHubURL(t), t.TempDir()))
	u := "http://" + a.HTTPAddr().String()
	ackURL := u + "/api/v1/local/sos/" + vehicle + "/sos-1/acknowledge"

	var rejected struct {
		Error    string `json:"error"`
		Received bool   `json:"operator_list_received"`
	}
	code, body := send(t, http.DefaultClient, http.MethodGet, u+"/api/v1/local/sos", "", "", nil)
	if err := json.Unmarshal(body, &rejected); err != nil || code != http.StatusUnauthorized || rejected.Received ||
		!strings.Contains(rejected.Error, "no operator accounts received from the hub yet") {
		t.Errorf("GET local SOS without list = %d %s", code, body)
	}
	code, loginBody, _ := login(t, a, staffUser, "x")
	if code != http.StatusServiceUnavailable || !strings.Contains(loginBody["error"], "needs to reach the hub once") {
		t.Errorf("sign in without list = %d %v, want 503", code, loginBody)
	}

	giveOperators(t, a)
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/api/v1/info"},
		{http.MethodGet, "/api/v1/local/sos"},
		{http.MethodGet, "/api/v1/local/session"},
		{http.MethodGet, "/api/v1/other"},
		{http.MethodPost, "/api/v1/local/sos/" + vehicle + "/sos-1/acknowledge"},
	} {
		code, body := send(t, http.DefaultClient, tc.method, u+tc.path, "application/json", `{"actor":"Mallory"}`, nil)
		if err := json.Unmarshal(body, &rejected); err != nil || code != http.StatusUnauthorized || !rejected.Received {
			t.Errorf("%s %s without session = %d %s, want 401 JSON", tc.method, tc.path, code, body)
		}
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/"} {
		if code, _ := send(t, http.DefaultClient, http.MethodGet, u+path, "", "", nil); code != http.StatusOK {
			t.Errorf("GET %s without session = %d, want 200", path, code)
		}
	}

	s := session(t, a)
	code, body = send(t, s.client, http.MethodPost, ackURL, "application/json", `{}`, nil)
	if code != http.StatusForbidden {
		t.Errorf("acknowledge without CSRF header = %d %s, want 403", code, body)
	}
	code, body = send(t, s.client, http.MethodPost, ackURL, "application/json", `{}`, map[string]string{agent.CSRFHeader: "wrong"})
	if code != http.StatusForbidden {
		t.Errorf("acknowledge with a wrong CSRF token = %d %s, want 403", code, body)
	}
	code, body = send(t, s.client, http.MethodPost, ackURL, "application/json", `{}`, map[string]string{agent.CSRFHeader: s.csrf})
	if code != http.StatusNotFound {
		t.Errorf("acknowledge of an unknown SOS with session and CSRF = %d %s, want 404", code, body)
	}
}

// A list from the hub that no longer holds an operator ends that
// operator's sessions; the others keep theirs.
func TestLocalSession_EndsWhenHubListDropsOperator(t *testing.T) {
	a := openAgent(t, testConfig(t, unusedHubURL(t), t.TempDir()))
	giveOperators(t, a)
	u := "http://" + a.HTTPAddr().String()
	_, _, maria := login(t, a, staffUser, testPassword(t, staffUser))
	_, _, ben := login(t, a, otherUser, testPassword(t, otherUser))
	if maria == nil || ben == nil {
		t.Fatal("sign-ins failed")
	}
	giveOperators(t, a, otherUser)
	if code, _ := send(t, maria.client, http.MethodGet, u+"/api/v1/local/sos", "", "", nil); code != http.StatusUnauthorized {
		t.Errorf("removed operator's session = %d, want 401", code)
	}
	if code, _ := send(t, ben.client, http.MethodGet, u+"/api/v1/local/sos", "", "", nil); code != http.StatusOK {
		t.Errorf("remaining operator's session = %d, want 200", code)
	}
	if code, _, _ := login(t, a, staffUser, testPassword(t, staffUser)); code != http.StatusUnauthorized {
		t.Errorf("removed operator signs in = %d, want 401", code)
	}
	if _, err := a.LocalAuth().Login(staffUser, testPassword(t, staffUser), "192.0.2.7"); !errors.Is(err, localauth.ErrBadCredentials) {
		t.Errorf("Login of removed operator = %v", err)
	}
}

// A cookie request whose Origin header is another site's, or null, is
// refused with 403 even with the right CSRF token; the page's own origin
// and a request without Origin are served. Sign-in checks Origin too.
func TestLocalAPI_RefusesForeignOrigin(t *testing.T) {
	a := openAgent(t, testConfig(t, unusedHubURL(t), t.TempDir()))
	s := session(t, a)
	u := "http://" + a.HTTPAddr().String()
	for origin, want := range map[string]int{
		"https://evil.example": http.StatusForbidden,
		"null":                 http.StatusForbidden,
		"http://" + a.HTTPAddr().String() + ".evil.example": http.StatusForbidden,
		"": http.StatusOK,
		u:  http.StatusOK,
	} {
		req, _ := http.NewRequest(http.MethodGet, u+"/api/v1/local/session", nil)
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := s.do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET session with Origin %q = %d %s, want %d", origin, resp.StatusCode, body, want)
		}
	}
	// A state-changing request with the right token from another origin.
	req, _ := http.NewRequest(http.MethodPost, u+"/api/v1/local/sos/"+vehicle+"/sos-1/acknowledge", strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Origin", "https://evil.example")
	resp, err := s.do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "another origin") {
		t.Errorf("acknowledge from another origin = %d %s, want 403", resp.StatusCode, body)
	}
	code, _ := send(t, http.DefaultClient, http.MethodPost, u+"/api/v1/local/session", "application/json",
		`{"username":"`+staffUser+`","password":"`+testPassword(t, staffUser)+`"}`, map[string]string{"Origin": "null"})
	if code != http.StatusForbidden {
		t.Errorf("sign in with Origin null = %d, want 403", code)
	}
}

// A client that sends its headers and holds back the body loses the
// connection after Config.HTTPReadTimeout.
func TestHTTP_ReadTimeoutClosesSlowBody(t *testing.T) {
	cfg := testConfig(t, unusedHubURL(t), t.TempDir())
	cfg.HTTPReadTimeout = 300 * time.Millisecond
	a := openAgent(t, cfg)
	addr := a.HTTPAddr().String()
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := io.WriteString(slow, "POST /api/v1/local/session HTTP/1.1\r\nHost: "+addr+"\r\nContent-Type: application/json\r\n"+
		"Content-Length: 4000\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	// The test's own deadline is far beyond the agent's timeout: hitting
	// it means the agent kept the connection open.
	if err := slow.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, slow); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the agent kept a connection with a held-back body open")
	}
}
