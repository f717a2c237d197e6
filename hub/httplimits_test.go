package hub_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/xpress-ops/tower/hub"
	"github.com/xpress-ops/tower/hub/dispatch"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/internal/passhash"
)

// readTimeout is the hub's HTTPReadTimeout in these tests, short so a
// stream clearly outlives it.
const readTimeout = 300 * time.Millisecond

// openLimitedHub opens a hub with HTTPReadTimeout readTimeout and an
// operator maria with password.
func openLimitedHub(ctx context.Context, t *testing.T, password string) *hub.Hub {
	t.Helper()
	dir := t.TempDir()
	st := embedded.New(embedded.Config{Path: filepath.Join(dir, hub.EmbeddedStoreFile), RetentionInterval: -1})
	if err := st.Open(ctx); err != nil {
		t.Fatalf("open store: %v", err)
	}
	hash, err := passhash.Hash(password, passhash.Params{Memory: 64, Time: 1, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateOperator(ctx, store.Operator{Username: "maria", DisplayName: "Maria Santos", Role: store.OperatorRoleOperator, Regions: []string{store.AllRegions}}, hash); err != nil {
		t.Fatalf("create operator: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("close store: %v", err)
	}
	h, err := hub.New(hub.Config{HTTPAddr: "127.0.0.1:0", AgentMQTTAddr: "127.0.0.1:0", DataDir: dir, HTTPReadTimeout: readTimeout})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Open(ctx); err != nil {
		t.Fatalf("open hub: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("close hub: %v", err)
		}
	})
	return h
}

// A client that sends its headers and holds back the body loses the
// connection after HTTPReadTimeout, while a WebSocket stream, which
// takes its connection over from net/http, lives on past it.
func TestHub_ReadTimeoutClosesSlowBodyButNotStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const password = "a password made for this test"
	h := openLimitedHub(ctx, t, password)
	addr := h.HTTPAddr().String()

	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := io.WriteString(slow, "POST /api/v1/session HTTP/1.1\r\nHost: "+addr+"\r\nContent-Type: application/json\r\n"+
		"Content-Length: 10000\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	// The test's own deadline is far beyond the hub's timeout: hitting it
	// means the hub kept the connection open.
	if err := slow.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, bufio.NewReader(slow))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the hub kept a connection with a held-back body open")
	}

	cookie, _ := signIn(ctx, t, "http://"+addr, "maria", password)
	conn, _, err := websocket.Dial(ctx, "ws://"+addr+"/api/v1/stream", &websocket.DialOptions{HTTPHeader: http.Header{"Cookie": {cookie.String()}}})
	if err != nil {
		t.Fatalf("dial stream: %v", err)
	}
	defer conn.CloseNow() //nolint:errcheck // the test is over
	if hello := readFrame(ctx, t, conn); hello.Type != "hello" {
		t.Fatalf("first frame %q, want hello", hello.Type)
	}
	// Read on in the background: it delivers the pong Ping waits for.
	readErr := make(chan error, 1)
	go func() {
		for {
			if _, _, err := conn.Read(ctx); err != nil {
				readErr <- err
				return
			}
		}
	}()
	time.Sleep(5 * readTimeout)
	select {
	case err := <-readErr:
		t.Fatalf("stream closed after the read timeout: %v", err)
	default:
	}
	if err := conn.Ping(ctx); err != nil {
		t.Fatalf("ping the stream after 5 read timeouts: %v", err)
	}
}

// The hub serves the names of HTTPAllowedHosts and the host of its public
// URL, which Twilio's callbacks use, and responds 421 to other names.
func TestHub_AllowedHostsIncludePublicURL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h, err := hub.New(hub.Config{HTTPAddr: "127.0.0.1:0", AgentMQTTAddr: "127.0.0.1:0", DataDir: t.TempDir(),
		HTTPAllowedHosts: []string{"dash.example.ph"}, Dispatch: dispatch.Config{PublicURL: "https://ops.example.ph:8443"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Open(ctx); err != nil {
		t.Fatalf("open hub: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	for host, want := range map[string]int{
		"ops.example.ph:8443": http.StatusOK,
		"dash.example.ph":     http.StatusOK,
		"evil.example":        http.StatusMisdirectedRequest,
	} {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+h.HTTPAddr().String()+"/healthz", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Host %s: %d, want %d", host, resp.StatusCode, want)
		}
	}
}
