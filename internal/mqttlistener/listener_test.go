package mqttlistener

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startServer runs a mochi server with one Listener on port 0.
func startServer(t *testing.T, configure func(*Listener)) *Listener {
	t.Helper()
	server := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := server.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New("test", ln, server, slog.New(slog.DiscardHandler))
	configure(l)
	if err := server.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := server.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return l
}

// readUntilClosed reads from conn until the server closes it, or fails
// the test after limit.
func readUntilClosed(t *testing.T, conn net.Conn, limit time.Duration) {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(limit)); err != nil {
		t.Fatal(err)
	}
	_, err := io.Copy(io.Discard, conn)
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		t.Fatalf("connection still open after %s", limit)
	}
}

func TestListener_ClosesConnectionWithoutConnect(t *testing.T) {
	l := startServer(t, func(l *Listener) { l.ConnectTimeout = 200 * time.Millisecond })
	conn, err := net.Dial("tcp", l.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	readUntilClosed(t, conn, 10*time.Second)
}

func TestListener_RejectsPastMaxConnections(t *testing.T) {
	l := startServer(t, func(l *Listener) { l.MaxConnections = 2 })
	var open []net.Conn
	for range 2 {
		conn, err := net.Dial("tcp", l.Address())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		open = append(open, conn)
	}
	// The first two are tracked once the listener accepted them; wait for that.
	deadline := time.Now().Add(10 * time.Second)
	for !l.full() {
		if time.Now().After(deadline) {
			t.Fatal("the first two connections were never accepted")
		}
		time.Sleep(10 * time.Millisecond)
	}

	extra, err := net.Dial("tcp", l.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	readUntilClosed(t, extra, 10*time.Second)
	if got := l.Rejected.Load(); got != 1 {
		t.Errorf("rejected = %d, want 1", got)
	}
	if len(open) != 2 {
		t.Fatalf("opened %d connections, want 2", len(open))
	}
}
