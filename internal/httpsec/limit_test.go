package httpsec

import (
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/internal/testlog"
)

// syncBuffer is a log sink safe for concurrent writes and reads.
type syncBuffer = testlog.Buffer

// acceptWaitLimit bounds the test's waits for an Accept that must (or
// must not yet) return; it detects a hang and measures no speed.
const acceptWaitLimit = 10 * time.Second

// At its cap the listener makes the next connection wait, logs the cap
// with the flag that raises it, and accepts it once a connection closes.
func TestLimitListener_WaitsAndLogsAtCap(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	ln := LimitListener(inner, 1, slog.New(slog.NewTextHandler(&logs, nil)), "--http-max-conns")
	defer ln.Close()

	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	dial()
	var first net.Conn
	select {
	case first = <-accepted:
	case <-time.After(acceptWaitLimit):
		t.Fatal("first connection not accepted")
	}
	dial()
	deadline := time.Now().Add(acceptWaitLimit)
	for !strings.Contains(logs.String(), "HTTP connection cap reached") {
		if time.Now().After(deadline) {
			t.Fatalf("no warning logged at the cap; log: %q", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "--http-max-conns") || !strings.Contains(logs.String(), "max_connections=1") {
		t.Errorf("warning = %q, want the flag and the cap", logs.String())
	}
	select {
	case <-accepted:
		t.Fatal("second connection accepted while the first held the only slot")
	default:
	}

	first.Close()
	select {
	case <-accepted:
	case <-time.After(acceptWaitLimit):
		t.Fatal("second connection not accepted after the first closed")
	}
}

// Closing the listener ends an Accept that waits for a slot.
func TestLimitListener_CloseEndsWaitingAccept(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := LimitListener(inner, 1, slog.New(slog.DiscardHandler), "--flag")
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	held, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	done := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		done <- err
	}()
	ln.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Accept after Close returned a connection")
		}
	case <-time.After(acceptWaitLimit):
		t.Fatal("Accept still waits after Close")
	}
}
