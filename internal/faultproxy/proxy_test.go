package faultproxy_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	"github.com/xpress-ops/tower/internal/faultproxy"
)

// startEcho starts a TCP server on a loopback port that echoes every
// connection, and returns its address.
func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

// echoThrough sends payload through the proxy to the echo server and
// returns what comes back and how long the round trip took.
func echoThrough(t *testing.T, p *faultproxy.Proxy, payload []byte) ([]byte, time.Duration) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		writeErr <- err
	}()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	elapsed := time.Since(start)
	if err := <-writeErr; err != nil {
		t.Fatalf("write: %v", err)
	}
	return got, elapsed
}

func TestProxy_ThrottleLimitsBandwidth(t *testing.T) {
	p := faultproxy.Start(t, startEcho(t))
	const rate = 64 << 10
	p.Throttle(faultproxy.ToHub, rate)
	payload := make([]byte, 48<<10)
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}

	got, elapsed := echoThrough(t, p, payload)

	if !bytes.Equal(got, payload) {
		t.Fatal("the throttled stream came back changed or reordered")
	}
	// A lower bound, fixed by the throttle itself: 48 KiB cannot pass a
	// 64 KiB/s link in less than 750 ms, however fast the machine.
	if least := time.Duration(len(payload)) * time.Second / rate; elapsed < least-10*time.Millisecond {
		t.Errorf("48 KiB passed a %d B/s link in %s, want at least %s", rate, elapsed, least)
	}
}

func TestProxy_PassLiftsThrottle(t *testing.T) {
	p := faultproxy.Start(t, startEcho(t))
	p.Throttle(faultproxy.ToHub, 1)
	p.Throttle(faultproxy.ToAgent, 1)
	p.Pass()
	payload := bytes.Repeat([]byte("x"), 4<<10)

	// At 1 B/s the echo would take more than an hour, past the
	// connection's 30 s deadline.
	got, _ := echoThrough(t, p, payload)

	if !bytes.Equal(got, payload) {
		t.Error("the stream came back changed after Pass")
	}
}
