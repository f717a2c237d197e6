package api_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/store"
)

// A request whose Host header names neither an IP address, localhost nor
// a host of Config.AllowedHosts gets 421 on every route: the dashboard,
// sign-in, a cookie request with its CSRF token and the WebSocket
// upgrade. This keeps a DNS rebinding page away from a plain-HTTP hub.
func TestHost_RejectsUnknownHost(t *testing.T) {
	as := newAuthServer(t, false, func(c *api.Config) { c.AllowedHosts = []string{"Ops.Example.PH."} })
	password := as.addOperator(t, "maria", store.OperatorRoleOperator, "NCR")
	sess := as.signIn(t, "maria", password)

	withHost := func(req *http.Request, host, origin string) *http.Request {
		req.Host = host
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		return req
	}
	upgrade := func(host, origin string) *http.Request {
		req := withHost(as.request(t, http.MethodGet, "/api/v1/stream", ""), host, origin)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		req.AddCookie(sess.cookie)
		return req
	}
	note := func(host, origin string) *http.Request {
		req := withHost(as.request(t, http.MethodPost, "/api/v1/incidents/1/notes", `{"text":"x"}`), host, origin)
		req.AddCookie(sess.cookie)
		req.Header.Set(api.CSRFHeader, sess.csrf)
		return req
	}
	login := func(host, origin string) *http.Request {
		return withHost(as.request(t, http.MethodPost, "/api/v1/session", `{"username":"maria","password":"`+password+`"}`), host, origin)
	}
	for _, c := range []struct {
		what string
		req  *http.Request
		want int
	}{
		{"dashboard", withHost(as.request(t, http.MethodGet, "/", ""), "evil.example", ""), http.StatusMisdirectedRequest},
		{"sign-in", login("evil.example", "https://evil.example"), http.StatusMisdirectedRequest},
		{"note with cookie and CSRF", note("evil.example:443", "https://evil.example"), http.StatusMisdirectedRequest},
		{"WebSocket", upgrade("evil.example", "https://evil.example"), http.StatusMisdirectedRequest},
		{"probe", withHost(as.request(t, http.MethodGet, "/healthz", ""), "evil.example", ""), http.StatusMisdirectedRequest},
		// An allowed name, any case, with a port and a trailing dot.
		{"allowed name", withHost(as.request(t, http.MethodGet, "/healthz", ""), "ops.example.ph.:8443", ""), http.StatusOK},
		{"sign-in on an allowed name", login("ops.example.ph", "https://ops.example.ph"), http.StatusOK},
		{"note on an allowed name", note("ops.example.ph", "https://ops.example.ph"), http.StatusOK},
		{"localhost", withHost(as.request(t, http.MethodGet, "/healthz", ""), "localhost:8080", ""), http.StatusOK},
		// The Origin must name the host the request was sent to.
		{"foreign Origin on an allowed name", note("ops.example.ph", "https://evil.example"), http.StatusForbidden},
		{"null Origin", note("ops.example.ph", "null"), http.StatusForbidden},
		{"Origin of another allowed host", note("ops.example.ph", "http://localhost"), http.StatusForbidden},
	} {
		res, v := as.send(t, c.req)
		if res.StatusCode != c.want {
			t.Errorf("%s: %d %v, want %d", c.what, res.StatusCode, v, c.want)
		}
		if c.want == http.StatusMisdirectedRequest {
			if msg, _ := v["error"].(string); !strings.Contains(msg, "--http-allowed-hosts") {
				t.Errorf("%s: message %q, want it to name --http-allowed-hosts", c.what, msg)
			}
		}
	}
	if !strings.Contains(as.logs.String(), "Host not allowed") {
		t.Error("no log line for a rejected Host")
	}
}
