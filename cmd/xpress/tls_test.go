package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/internal/tlsconfig"
	"github.com/xpress-ops/tower/internal/tlsconfig/tlstest"
)

// The check runs on the flag value only: nothing listens on 192.0.2.1,
// a documentation address.
func TestHTTPTLSFlags_PlainHTTPOnNonLoopbackRejected(t *testing.T) {
	var f httpTLSFlags
	_, err := f.config("192.0.2.1:8080", slog.New(slog.DiscardHandler))
	if !errors.Is(err, tlsconfig.ErrPlainHTTP) {
		t.Fatalf("config(192.0.2.1:8080) = %v, want ErrPlainHTTP", err)
	}
	if !strings.Contains(err.Error(), "--insecure-http") {
		t.Errorf("error %q does not name --insecure-http", err)
	}

	f.insecureHTTP = true
	if cfg, err := f.config("192.0.2.1:8080", slog.New(slog.DiscardHandler)); err != nil || cfg != nil {
		t.Errorf("config with --insecure-http = %v, %v, want plain HTTP", cfg, err)
	}
}

func TestRun_AgentPlainHTTPOnAllInterfacesRejected(t *testing.T) {
	code, out := runAgentArgs(t, nil, "--http-addr", ":9090")
	if code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	if !strings.Contains(out, "not a loopback address") || !strings.Contains(out, "--tls-cert-file") {
		t.Errorf("output %q does not explain the loopback rule", out)
	}
}

func TestRun_AgentReadableKeyRejected(t *testing.T) {
	certFile, keyFile, _ := tlstest.NewCA(t, "test CA").WriteServerFiles(t, t.TempDir())
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out := runAgentArgs(t, nil, "--tls-cert-file", certFile, "--tls-key-file", keyFile)
	if code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	if !strings.Contains(out, "chmod 600 "+keyFile) {
		t.Errorf("output %q does not give the fix chmod 600 %s", out, keyFile)
	}
}

func TestRun_AgentTLSFlagErrors(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, _ := tlstest.NewCA(t, "test CA").WriteServerFiles(t, dir)
	cases := []struct {
		name  string
		extra []string
		want  string
	}{
		{"key without certificate", []string{"--tls-key-file", keyFile}, "must be given together"},
		{"redirect without certificate", []string{"--http-redirect-addr", "127.0.0.1:0"}, "--http-redirect-addr (XPRESS_HTTP_REDIRECT_ADDR) needs"},
		{"MQTT TLS address without certificate", []string{"--mqtt-tls-addr", "127.0.0.1:0"}, "--mqtt-tls-addr (XPRESS_MQTT_TLS_ADDR) needs"},
		{"MQTT TLS certificate without address", []string{"--mqtt-tls-cert-file", certFile, "--mqtt-tls-key-file", keyFile}, "need --mqtt-tls-addr"},
		{"CA file with tcp hub URL", []string{"--hub-ca-file", certFile}, "needs a tls:// or ssl://"},
		{"client certificate with tcp hub URL", []string{"--hub-client-cert-file", certFile, "--hub-client-key-file", keyFile}, "--hub-client-cert-file (XPRESS_HUB_CLIENT_CERT_FILE) needs a tls:// or ssl://"},
		{"client certificate without key", []string{"--hub-url", "tls://127.0.0.1:8883", "--hub-client-cert-file", certFile}, "must be given together"},
	}
	for _, c := range cases {
		code, out := runAgentArgs(t, nil, c.extra...)
		if code != 1 {
			t.Errorf("%s: exit code = %d, want 1", c.name, code)
		}
		if !strings.Contains(out, c.want) {
			t.Errorf("%s: output %q does not contain %q", c.name, out, c.want)
		}
	}
}

// freePort returns a loopback address that nothing listens on.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestRun_HubRedirectsToHTTPS(t *testing.T) {
	certFile, keyFile, _ := tlstest.NewCA(t, "test CA").WriteServerFiles(t, t.TempDir())
	httpsAddr, redirectAddr := freePort(t), freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var out syncBuffer
	go func() {
		done <- run(ctx, []string{"hub", "--http-addr", httpsAddr, "--agent-mqtt-addr", "127.0.0.1:0", "--data-dir", t.TempDir(),
			"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--http-redirect-addr", redirectAddr},
			&out, &out, func(string) string { return "" })
	}()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("exit code = %d, want 0; output:\n%s", code, out.String())
			}
		case <-time.After(30 * time.Second):
			t.Error("hub did not stop within 30 s of its context ending")
		}
	}()

	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	deadline := time.Now().Add(30 * time.Second)
	var resp *http.Response
	for {
		var err error
		if resp, err = client.Get("http://" + redirectAddr + "/api/v1/agents"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("redirect listener not up after 30 s: %v; output:\n%s", err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusPermanentRedirect {
		t.Errorf("status = %d, want 308", resp.StatusCode)
	}
	if got, want := resp.Header.Get("Location"), "https://"+httpsAddr+"/api/v1/agents"; got != want {
		t.Errorf("Location = %q, want %q", got, want)
	}
}

func TestRun_HubClientCAWithoutTLSListenerRejected(t *testing.T) {
	caFile := tlstest.NewCA(t, "agent CA").WriteCAFile(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out syncBuffer
	code := run(ctx, []string{"hub", "--http-addr", "127.0.0.1:0", "--agent-mqtt-addr", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--agent-mqtt-tls-client-ca-file", caFile}, &out, &out, func(string) string { return "" })
	if code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	if want := "--agent-mqtt-tls-client-ca-file (XPRESS_AGENT_MQTT_TLS_CLIENT_CA_FILE) needs --agent-mqtt-tls-addr"; !strings.Contains(out.String(), want) {
		t.Errorf("output %q does not contain %q", out.String(), want)
	}
}
