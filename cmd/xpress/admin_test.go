package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub"
	"github.com/xpress-ops/tower/hub/store"
)

// randomSecret returns a secret generated for this test run.
func randomSecret(t *testing.T) string {
	t.Helper()
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// writeSecret writes secret to a file of the given mode and returns its path.
func writeSecret(t *testing.T, secret string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(secret+"\n"), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// runCLI runs xpress with args and the environment vars and returns the
// exit code, stdout and stderr.
func runCLI(t *testing.T, vars map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := run(ctx, args, &stdout, &stderr, func(k string) string { return vars[k] })
	return code, stdout.String(), stderr.String()
}

// startAdminHub opens a hub with its data in a temporary directory and
// its listeners on free loopback ports, and returns it, its HTTP base URL
// and the CLI environment that names a file of mode 0600 holding its
// admin token. The hub closes on cleanup.
func startAdminHub(t *testing.T) (*hub.Hub, string, map[string]string) {
	t.Helper()
	adminToken := randomSecret(t)
	h, err := hub.New(hub.Config{
		HTTPAddr: "127.0.0.1:0", AgentMQTTAddr: "127.0.0.1:0", DataDir: t.TempDir(), AdminToken: adminToken,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Open(context.Background()); err != nil {
		t.Fatalf("open hub: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	hubURL := "http://" + h.HTTPAddr().String()
	env := map[string]string{"XPRESS_ADMIN_TOKEN_FILE": writeSecret(t, adminToken, 0o600)}
	return h, hubURL, env
}

func TestAdminCLI_RoundTrip(t *testing.T) {
	t.Parallel()
	h, hubURL, env := startAdminHub(t)
	ctx := context.Background()

	code, out, errOut := runCLI(t, env, "admin", "agent", "add", "ncr-1", "--region", "NCR-Manila", "--hub", hubURL)
	if code != 0 {
		t.Fatalf("add: exit %d: %s", code, errOut)
	}
	token := strings.TrimSpace(out)
	if _, err := h.Credentials().VerifyAgentToken(ctx, "ncr-1", token); err != nil {
		t.Fatalf("the token add printed does not verify: %v", err)
	}
	if !strings.Contains(errOut, "only this once") || strings.Contains(errOut, token) {
		t.Errorf("add stderr %q: want the one-time notice without the token", errOut)
	}

	code, out, errOut = runCLI(t, env, "admin", "agent", "list", "--hub", hubURL)
	if code != 0 || !strings.Contains(out, "ncr-1") || !strings.Contains(out, "NCR-Manila") || strings.Contains(out, token) {
		t.Errorf("list: exit %d, stdout %q, stderr %q; want ncr-1 without its token", code, out, errOut)
	}

	code, out, errOut = runCLI(t, env, "admin", "agent", "rotate", "ncr-1", "--grace", "0s", "--hub", hubURL)
	if code != 0 {
		t.Fatalf("rotate: exit %d: %s", code, errOut)
	}
	rotated := strings.TrimSpace(out)
	if _, err := h.Credentials().VerifyAgentToken(ctx, "ncr-1", rotated); err != nil {
		t.Errorf("rotated token does not verify: %v", err)
	}
	if _, err := h.Credentials().VerifyAgentToken(ctx, "ncr-1", token); !errors.Is(err, store.ErrBadToken) {
		t.Errorf("old token after a rotation without grace = %v, want ErrBadToken", err)
	}

	if code, _, errOut := runCLI(t, env, "admin", "agent", "remove", "ncr-1", "--hub", hubURL); code != 0 {
		t.Fatalf("remove: exit %d: %s", code, errOut)
	}
	if _, err := h.Credentials().VerifyAgentToken(ctx, "ncr-1", rotated); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("token after remove = %v, want ErrNotFound", err)
	}

	// A wrong admin token gets the hub's 401.
	code, _, errOut = runCLI(t, map[string]string{"XPRESS_ADMIN_TOKEN": "wrong"}, "admin", "agent", "list", "--hub", hubURL)
	if code != 1 || !strings.Contains(errOut, "401") {
		t.Errorf("wrong admin token: exit %d, stderr %q; want 1 and 401", code, errOut)
	}
}

func TestAdminCLI_Errors(t *testing.T) {
	t.Parallel()
	readable := writeSecret(t, randomSecret(t), 0o644)
	cases := []struct {
		name string
		env  map[string]string
		args []string
		code int
		want string
	}{
		{"token file readable by others", map[string]string{"XPRESS_ADMIN_TOKEN_FILE": readable},
			[]string{"admin", "agent", "list"}, 1, "chmod 600"},
		{"no admin token", nil, []string{"admin", "agent", "list"}, 1, "XPRESS_ADMIN_TOKEN"},
		{"add without region", map[string]string{"XPRESS_ADMIN_TOKEN": "x"}, []string{"admin", "agent", "add", "ncr-1"}, 1, "--region"},
		{"unknown action", nil, []string{"admin", "agent", "grant", "ncr-1"}, 2, "unknown action"},
		{"missing id", nil, []string{"admin", "agent", "remove"}, 2, "want 1 agent id"},
		{"agent token file readable by others", map[string]string{"XPRESS_AGENT_TOKEN_FILE": readable},
			[]string{"agent", "--id", "ncr-1", "--region", "NCR-Manila"}, 1, "chmod 600"},
		{"agent auth off on a public address", nil,
			[]string{"hub", "--agent-auth=false", "--agent-mqtt-addr", ":0", "--http-addr", "127.0.0.1:0"}, 1, "loopback"},
	}
	for _, c := range cases {
		code, _, errOut := runCLI(t, c.env, c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want %d and %q", c.name, code, errOut, c.code, c.want)
		}
	}
}
