package hub_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/hub"
	"github.com/xpress-ops/tower/internal/tlsconfig"
	"github.com/xpress-ops/tower/internal/tlsconfig/tlstest"
)

// serverTLS returns a server configuration with a certificate signed by ca.
func serverTLS(t *testing.T, ca *tlstest.CA) *tls.Config {
	t.Helper()
	certFile, keyFile, _ := ca.WriteServerFiles(t, t.TempDir())
	r, err := tlsconfig.NewReloader(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tlsconfig.ServerConfig(r)
}

// openTLSHub opens a hub serving HTTPS and a TLS agent listener with
// certificates signed by ca, and closes it on cleanup.
// tlsTestAdminToken is the admin token of openTLSHub's hubs, made for
// these tests only.
const tlsTestAdminToken = "admin token of the TLS tests"

func openTLSHub(t *testing.T, ca *tlstest.CA) *hub.Hub {
	t.Helper()
	h, err := hub.New(hub.Config{
		HTTPAddr: "127.0.0.1:0", AgentMQTTAddr: "127.0.0.1:0", DataDir: t.TempDir(),
		HTTPTLS:          serverTLS(t, ca),
		AdminToken:       tlsTestAdminToken,
		AgentMQTTTLSAddr: "127.0.0.1:0",
		AgentMQTTTLS:     serverTLS(t, ca),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Open(context.Background()); err != nil {
		t.Fatalf("open hub: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("close hub: %v", err)
		}
	})
	return h
}

// httpsClient returns a client that trusts only ca.
func httpsClient(ca *tlstest.CA) *http.Client {
	return &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}},
		Timeout:   30 * time.Second,
	}
}

// checkSecurityHeaders checks the headers every HTTPS response must carry.
func checkSecurityHeaders(t *testing.T, name string, h http.Header) {
	t.Helper()
	if got := h.Get("Strict-Transport-Security"); got != "max-age=31536000; includeSubDomains" {
		t.Errorf("%s: Strict-Transport-Security = %q", name, got)
	}
	csp := h.Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
		t.Errorf("%s: Content-Security-Policy = %q, want script-src 'self' without unsafe-inline", name, csp)
	}
	if !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("%s: Content-Security-Policy = %q, want frame-ancestors 'none'", name, csp)
	}
	if got := h.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("%s: X-Content-Type-Options = %q", name, got)
	}
	if got := h.Get("Referrer-Policy"); got != "no-referrer" {
		t.Errorf("%s: Referrer-Policy = %q", name, got)
	}
}

func TestHub_HTTPSResponsesCarrySecurityHeaders(t *testing.T) {
	ca := tlstest.NewCA(t, "hub CA")
	h := openTLSHub(t, ca)
	client := httpsClient(ca)
	base := "https://" + h.HTTPAddr().String()

	cases := []struct {
		name, path, origin string
		wantCode           int
	}{
		{"health", "/healthz", "", http.StatusOK},
		{"metrics", "/metrics", "", http.StatusOK},
		{"dashboard", "/", "", http.StatusOK},
		{"unknown API route", "/api/v1/nope", "", http.StatusNotFound},
		{"WebSocket from a foreign origin", "/api/v1/stream", "https://evil.example", http.StatusForbidden},
		{"API without credentials", "/api/v1/incidents", "", http.StatusUnauthorized},
	}
	for _, c := range cases {
		req, err := http.NewRequest(http.MethodGet, base+c.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if c.wantCode != http.StatusUnauthorized {
			req.Header.Set("Authorization", "Bearer "+tlsTestAdminToken)
		}
		if c.origin != "" {
			req.Header.Set("Origin", c.origin)
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Sec-WebSocket-Version", "13")
			req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.wantCode {
			t.Errorf("%s: status = %d, want %d", c.name, resp.StatusCode, c.wantCode)
		}
		checkSecurityHeaders(t, c.name, resp.Header)
	}
}

func TestHub_PlainHTTPHasNoHSTS(t *testing.T) {
	h, err := hub.New(hub.Config{HTTPAddr: "127.0.0.1:0", AgentMQTTAddr: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Open(context.Background()); err != nil {
		t.Fatalf("open hub: %v", err)
	}
	defer h.Close()
	resp, err := http.Get("http://" + h.HTTPAddr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// Browsers ignore HSTS over plain HTTP, and a loopback development
	// server must not pin the host to HTTPS.
	if got := resp.Header.Get("Strict-Transport-Security"); got != "" {
		t.Errorf("plain HTTP Strict-Transport-Security = %q, want none", got)
	}
	if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("plain HTTP X-Content-Type-Options = %q, want nosniff", got)
	}
}

// logRecorder is a slog handler that keeps each record as one line of its
// message and attributes.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	line := rec.Message
	rec.Attrs(func(a slog.Attr) bool {
		line += " " + a.Key + "=" + a.Value.String()
		return true
	})
	r.mu.Lock()
	r.lines = append(r.lines, line)
	r.mu.Unlock()
	return nil
}

func (r *logRecorder) find(substr string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.lines {
		if strings.Contains(l, substr) {
			return true
		}
	}
	return false
}

// openTLSAgent opens an agent whose uplink connects to the hub's TLS
// listener trusting hubCA, and which serves HTTPS and MQTT over TLS
// with certificates signed by ca.
func openTLSAgent(t *testing.T, h *hub.Hub, ca, hubCA *tlstest.CA, log *slog.Logger) *agent.Agent {
	t.Helper()
	hubTLS, err := tlsconfig.ClientConfig(hubCA.WriteCAFile(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	token, err := h.ProvisionAgent(context.Background(), "cebu-1", "Cebu")
	if err != nil {
		t.Fatalf("provision agent: %v", err)
	}
	a, err := agent.New(agent.Config{
		ID: "cebu-1", Region: "Cebu",
		MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(),
		HubURL: "tls://" + h.AgentMQTTTLSAddr().String(), HubTLS: hubTLS, HubPassword: token,
		HTTPTLS:     serverTLS(t, ca),
		MQTTTLSAddr: "127.0.0.1:0", MQTTTLS: serverTLS(t, ca),
		Logger:     log,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Open(context.Background()); err != nil {
		t.Fatalf("open agent: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Close(); err != nil {
			t.Errorf("close agent: %v", err)
		}
	})
	return a
}

func TestHub_AgentConnectsOverTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "private CA")
	h := openTLSHub(t, ca)
	a := openTLSAgent(t, h, ca, ca, slog.New(slog.DiscardHandler))
	client := httpsClient(ca)

	// The hub lists the agent once its uplink is connected over TLS.
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequest(http.MethodGet, "https://"+h.HTTPAddr().String()+"/api/v1/agents", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tlsTestAdminToken)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct {
			Agents []struct {
				ID        string `json:"agent_id"`
				Connected bool   `json:"connected"`
			} `json:"agents"`
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(body.Agents) == 1 && body.Agents[0].ID == "cebu-1" && body.Agents[0].Connected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not connected over TLS after 30 s; hub lists %+v", body.Agents)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The agent serves HTTPS with HSTS, also on a 404.
	for _, path := range []string{"/healthz", "/metrics", "/no-such-page"} {
		resp, err := client.Get("https://" + a.HTTPAddr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		checkSecurityHeaders(t, "agent "+path, resp.Header)
	}

	// A vehicle connects to the agent over MQTT over TLS, trusting the CA.
	opts := paho.NewClientOptions().AddBroker("tls://" + a.MQTTTLSAddr().String()).
		SetClientID("veh-042").SetUsername("veh-042").
		SetTLSConfig(&tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}).
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	vehicle := paho.NewClient(opts)
	tok := vehicle.Connect()
	if !tok.WaitTimeout(30 * time.Second) {
		t.Fatal("vehicle connect did not finish within 30 s")
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("vehicle connect over TLS: %v", err)
	}
	vehicle.Disconnect(250)
}

func TestHub_AgentRejectsHubSignedByOtherCA(t *testing.T) {
	ca := tlstest.NewCA(t, "hub CA")
	h := openTLSHub(t, ca)
	logs := &logRecorder{}
	openTLSAgent(t, h, ca, tlstest.NewCA(t, "other CA"), slog.New(logs))

	deadline := time.Now().Add(30 * time.Second)
	for !logs.find("certificate signed by unknown authority") {
		if time.Now().After(deadline) {
			t.Fatal("no uplink error about the unknown authority after 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := httpsClient(ca).Get("https://" + h.HTTPAddr().String() + "/api/v1/agents")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(body), "cebu-1") {
		t.Errorf("hub lists the agent that does not trust its certificate: %s", body)
	}
}
