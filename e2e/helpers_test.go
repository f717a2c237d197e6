package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/hub"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/hub/store/postgres"
	"github.com/xpress-ops/tower/internal/pgtest"
)

// testLogger logs to the test output when -v is given.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
}

// startHub starts a hub on port 0 with its own database.
func startHub(t testing.TB, databaseURL string) *hub.Hub {
	t.Helper()
	h, err := hub.New(hub.Config{
		HTTPAddr:      "127.0.0.1:0",
		AgentMQTTAddr: "127.0.0.1:0",
		DatabaseURL:   databaseURL,
		DataDir:       t.TempDir(),
		AdminToken:    adminToken,
		Logger:        testLogger(t).With("process", "hub"),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Open(ctx); err != nil {
		t.Fatalf("open hub: %v", err)
	}
	inProcessHubs.Store(h.AgentMQTTAddr().String(), h)
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("close hub: %v", err)
		}
	})
	return h
}

// startAgent starts an agent on port 0 that forwards to hubAddr.
func startAgent(t testing.TB, id, hubAddr, dataDir string) *agent.Agent {
	t.Helper()
	a, err := agent.New(agent.Config{
		ID:       id,
		Region:   "NCR-Manila",
		MQTTAddr: "127.0.0.1:0",
		HubURL:   "tcp://" + hubAddr,
		DataDir:  dataDir,
		HTTPAddr: "127.0.0.1:0",
		Logger:   testLogger(t).With("process", "agent"),

		HubPassword: hubToken(t, hubAddr, id),
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

// connectVehicle connects a paho MQTT 3.1.1 client as the given vehicle.
func connectVehicle(t testing.TB, brokerAddr, vehicleID string) mqtt.Client {
	t.Helper()
	opts := mqtt.NewClientOptions().
		AddBroker("tcp://" + brokerAddr).
		SetClientID(vehicleID).
		SetUsername(vehicleID).
		SetPassword("dev").
		SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second)
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect vehicle %s to %s: %v", vehicleID, brokerAddr, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// publish sends one QoS 1 message and waits for its PUBACK.
func publish(t testing.TB, c mqtt.Client, topic, payload string) {
	t.Helper()
	tok := c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("publish to %s: no PUBACK within 10 s", topic)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("publish to %s: %v", topic, err)
	}
}

// openPool connects to a test database.
func openPool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// queryInt runs a query that returns one integer.
func queryInt(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// waitFor polls cond until it returns true or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// streamEvent is one frame of the operator WebSocket.
type streamEvent struct {
	Type string          `json:"type"`
	Seq  uint64          `json:"seq"`
	Data json.RawMessage `json:"data"`
}

// wsClient collects the frames of an operator WebSocket.
type wsClient struct {
	mu     sync.Mutex
	events []streamEvent
	conn   *websocket.Conn
	// done is closed when the stream ends; err is why, set before.
	done chan struct{}
	err  error
}

// openStream dials the hub's event stream with the headers of
// authHeader and collects frames until cleanup.
func openStream(t testing.TB, httpAddr string) *wsClient {
	t.Helper()
	return openStreamWith(t, httpAddr, authHeader(httpAddr))
}

// openStreamWith is openStream with the given request headers.
func openStreamWith(t testing.TB, httpAddr string, header http.Header) *wsClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, _, err := websocket.Dial(ctx, "ws://"+httpAddr+"/api/v1/stream", &websocket.DialOptions{HTTPHeader: header})
	if err != nil {
		cancel()
		t.Fatalf("dial stream: %v", err)
	}
	conn.SetReadLimit(1 << 20)
	w := &wsClient{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			_, data, err := conn.Read(ctx)
			if err != nil {
				w.err = err
				return
			}
			var ev streamEvent
			if err := json.Unmarshal(data, &ev); err != nil {
				t.Errorf("stream frame is not JSON: %q", data)
				return
			}
			w.mu.Lock()
			w.events = append(w.events, ev)
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		conn.Close(websocket.StatusNormalClosure, "test done")
		cancel()
		<-w.done
	})
	return w
}

// count returns how many frames of the given type arrived.
func (w *wsClient) count(typ string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, ev := range w.events {
		if ev.Type == typ {
			n++
		}
	}
	return n
}

// ofType returns the frames of the given type.
func (w *wsClient) ofType(typ string) []streamEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []streamEvent
	for _, ev := range w.events {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

// getJSON fetches a URL with the headers of authHeader and decodes its
// JSON body into v.
func getJSON(t testing.TB, url string, v any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	authorize(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: body is not JSON: %v: %s", url, err, body)
	}
}

// metricValue returns the sum of a metric's samples whose label set
// contains every given label pair, scraped from a /metrics URL.
func metricValue(t testing.TB, url, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		matches := true
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(line, fmt.Sprintf("%s=%q", labels[i], labels[i+1])) {
				matches = false
			}
		}
		if !matches {
			continue
		}
		var v float64
		fields := strings.Fields(line)
		if _, err := fmt.Sscanf(fields[len(fields)-1], "%g", &v); err == nil {
			sum += v
		}
	}
	return sum
}

var _ = pgtest.NewDatabase

// inProcessHubs holds the hubs startHub started, by agent listener
// address, for hubToken.
var inProcessHubs sync.Map

// hubToken returns the token of agent id on the hub listening for agents
// on hubAddr, creating its credential the first time.
func hubToken(t testing.TB, hubAddr, id string) string {
	t.Helper()
	if h, ok := inProcessHubs.Load(hubAddr); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		token, err := h.(*hub.Hub).ProvisionAgent(ctx, id, "NCR-Manila")
		if err != nil {
			t.Fatalf("provision agent %s: %v", id, err)
		}
		return token
	}
	t.Fatalf("no test hub listens for agents on %s", hubAddr)
	return ""
}

// provisionAgent creates the credential of agent id in a hub's store, as
// the admin API does, and returns its token: in PostgreSQL at dbURL, or
// in the embedded store of the hub data directory hubDir when dbURL is
// empty, which needs that hub stopped. An existing credential is rotated
// without grace.
func provisionAgent(t testing.TB, dbURL, hubDir, id string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var s interface {
		store.Store
		Open(context.Context) error
	}
	if dbURL != "" {
		s = postgres.New(postgres.Config{URL: dbURL})
	} else {
		s = embedded.New(embedded.Config{Path: filepath.Join(hubDir, hub.EmbeddedStoreFile)})
	}
	if err := s.Open(ctx); err != nil {
		t.Fatalf("open the hub store to provision agent %s: %v", id, err)
	}
	defer s.Close()
	token, _, err := s.CreateAgentCredential(ctx, id, "NCR-Manila")
	if errors.Is(err, store.ErrConflict) {
		token, _, err = s.RotateAgentCredential(ctx, id, 0)
	}
	if err != nil {
		t.Fatalf("provision agent %s: %v", id, err)
	}
	return token
}

// adminToken is the admin token of every hub the tests start, in process
// or as a subprocess (XPRESS_ADMIN_TOKEN), made at random for each run.
var adminToken = func() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("make the admin token: %v", err))
	}
	return hex.EncodeToString(b)
}()

// sessionCookies holds the session cookie of each hub HTTP address that
// a test signed in to with signIn.
var sessionCookies sync.Map

// authHeader returns the headers that authenticate a request to the hub
// at host (host:port): the session cookie signIn got from it, else the
// admin token.
func authHeader(host string) http.Header {
	if c, ok := sessionCookies.Load(host); ok {
		return http.Header{"Cookie": {c.(*http.Cookie).String()}}
	}
	return http.Header{"Authorization": {"Bearer " + adminToken}}
}

// authorize adds authHeader's headers to a request to the hub. Requests
// to an agent's local API (/api/v1/local/) get none: the hub's
// credentials are not the agent's.
func authorize(req *http.Request) {
	if strings.HasPrefix(req.URL.Path, "/api/v1/local/") {
		return
	}
	for k, v := range authHeader(req.URL.Host) {
		req.Header[k] = v
	}
}

// signIn signs in to the hub at base (http://host:port) as an operator
// and keeps the session cookie, which getJSON and openStream then send to
// that hub instead of the admin token. It returns the CSRF token.
func signIn(t testing.TB, base, username, password string) string {
	t.Helper()
	cookie, csrf := login(t, base, username, password)
	sessionCookies.Store(strings.TrimPrefix(base, "http://"), cookie)
	return csrf
}

// login signs in to the hub at base as an operator and returns the
// session cookie and the CSRF token.
func login(t testing.TB, base, username, password string) (*http.Cookie, string) {
	t.Helper()
	body, err := json.Marshal(map[string]string{"username": username, "password": password})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(base+"/api/v1/session", "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("sign in to %s as %s: %s: %s", base, username, resp.Status, data)
	}
	var session struct {
		Operator  string `json:"operator"`
		CSRFToken string `json:"csrf_token"`
	}
	if err := json.Unmarshal(data, &session); err != nil || session.Operator != username || session.CSRFToken == "" {
		t.Fatalf("sign in to %s as %s: body %s (%v), want the operator and a CSRF token", base, username, data, err)
	}
	for _, c := range resp.Cookies() {
		if c.Value != "" && c.HttpOnly {
			return &http.Cookie{Name: c.Name, Value: c.Value}, session.CSRFToken
		}
	}
	t.Fatalf("sign in to %s as %s set no HttpOnly session cookie", base, username)
	return nil, ""
}
