package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/internal/testlog"
)

func testEnv(vars map[string]string) env {
	var out bytes.Buffer
	return env{stdout: &out, stderr: &out, getenv: func(k string) string { return vars[k] }}
}

func TestParseFlags_EnvironmentTwin(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var hf hubFlags
	hf.register(fs)
	e := testEnv(map[string]string{"XPRESS_HTTP_ADDR": "127.0.0.1:9999", "XPRESS_AGENT_MQTT_ADDR": "127.0.0.1:7777"})
	if err := parseFlags(fs, []string{"--agent-mqtt-addr", "127.0.0.1:1111"}, e); err != nil {
		t.Fatal(err)
	}
	if hf.httpAddr != "127.0.0.1:9999" {
		t.Errorf("http addr = %q, want the environment's 127.0.0.1:9999", hf.httpAddr)
	}
	if hf.agentMQTTAddr != "127.0.0.1:1111" {
		t.Errorf("agent mqtt addr = %q, want the flag's 127.0.0.1:1111 over the environment", hf.agentMQTTAddr)
	}
}

func TestParseFlags_SecretFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "database_url")
	if err := os.WriteFile(path, []byte("postgres://u:secret@127.0.0.1/x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var hf hubFlags
	hf.register(fs)
	if err := parseFlags(fs, nil, testEnv(map[string]string{"XPRESS_DATABASE_URL_FILE": path})); err != nil {
		t.Fatal(err)
	}
	if hf.databaseURL != "postgres://u:secret@127.0.0.1/x" {
		t.Errorf("database url = %q, want the file's content", hf.databaseURL)
	}
}

func TestParseFlags_SecretFileReadableByOthers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "database_url")
	if err := os.WriteFile(path, []byte("postgres://u:secret@127.0.0.1/x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var hf hubFlags
	hf.register(fs)
	err := parseFlags(fs, nil, testEnv(map[string]string{"XPRESS_DATABASE_URL_FILE": path}))
	if err == nil {
		t.Fatal("a secret file with mode 0644 was accepted")
	}
	if !strings.Contains(err.Error(), "chmod 600") || !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the file and the fix", err)
	}
	if strings.Contains(err.Error(), "secret@") {
		t.Errorf("error %q contains the secret", err)
	}
}

func TestRun_UnknownCommand(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"fly"}, &out, &out, func(string) string { return "" }); code != 2 {
		t.Errorf("exit code = %d, want 2", code)
	}
	if !strings.Contains(out.String(), `unknown command "fly"`) {
		t.Errorf("output %q does not name the unknown command", out.String())
	}
}

func TestRun_Version(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"version"}, &out, &out, func(string) string { return "" }); code != 0 {
		t.Fatalf("exit code = %d, output %q", code, out.String())
	}
	if !strings.HasPrefix(out.String(), "xpress ") {
		t.Errorf("output = %q, want it to start with \"xpress \"", out.String())
	}
}

func TestRun_HubRefusesRedis(t *testing.T) {
	var out bytes.Buffer
	args := []string{"hub", "--http-addr", "127.0.0.1:0", "--agent-mqtt-addr", "127.0.0.1:0",
		"--data-dir", t.TempDir(), "--redis-url", "redis://127.0.0.1:6379"}
	code := run(context.Background(), args, &out, &out, func(string) string { return "" })
	if code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	if !strings.Contains(out.String(), "--redis-url") {
		t.Errorf("output %q does not name the flag to change", out.String())
	}
}

// Without a database URL the hub runs on the embedded store in --data-dir
// and stops when its context ends.
func TestRun_HubWithEmbeddedStore(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var out syncBuffer
	go func() {
		done <- run(ctx, []string{"hub", "--http-addr", "127.0.0.1:0", "--agent-mqtt-addr", "127.0.0.1:0", "--data-dir", dir},
			&out, &out, func(string) string { return "" })
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, "hub.db")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no embedded store file in %s after 30 s; output:\n%s", dir, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit code = %d, want 0; output:\n%s", code, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("hub did not stop within 30 s of its context ending")
	}
}

// syncBuffer is a log sink safe for concurrent writes and reads.
type syncBuffer = testlog.Buffer
