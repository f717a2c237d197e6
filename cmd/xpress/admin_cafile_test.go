package main

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"

	"github.com/xpress-ops/tower/hub"
	"github.com/xpress-ops/tower/internal/tlsconfig/tlstest"
)

// xpress admin trusts a hub certificate signed by a private CA given with
// --ca-file or XPRESS_ADMIN_CA_FILE, and refuses it without one.
func TestAdminCLI_CAFile(t *testing.T) {
	ca := tlstest.NewCA(t, "admin test CA")
	dir := t.TempDir()
	certFile, keyFile, _ := ca.WriteServerFiles(t, dir)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	adminToken := randomSecret(t)
	h, err := hub.New(hub.Config{
		HTTPAddr: "127.0.0.1:0", AgentMQTTAddr: "127.0.0.1:0", DataDir: t.TempDir(), AdminToken: adminToken,
		HTTPTLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Open(context.Background()); err != nil {
		t.Fatalf("open hub: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	hubURL := "https://" + h.HTTPAddr().String()
	caFile := ca.WriteCAFile(t, dir)
	env := map[string]string{"XPRESS_ADMIN_TOKEN_FILE": writeSecret(t, adminToken, 0o600)}

	if code, _, errOut := runCLI(t, env, "admin", "agent", "list", "--hub", hubURL); code == 0 || !strings.Contains(errOut, "certificate") {
		t.Errorf("without a CA file: exit %d, stderr %q; want a certificate error", code, errOut)
	}
	if code, _, errOut := runCLI(t, env, "admin", "agent", "list", "--hub", hubURL, "--ca-file", caFile); code != 0 {
		t.Errorf("with --ca-file: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, env, "admin", "operator", "list", "--hub", hubURL, "--ca-file", caFile); code != 0 {
		t.Errorf("operator list with --ca-file: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, env, "admin", "vehicle", "list", "--hub", hubURL, "--ca-file", caFile); code != 0 {
		t.Errorf("vehicle list with --ca-file: exit %d, stderr %q", code, errOut)
	}
	withEnv := map[string]string{"XPRESS_ADMIN_TOKEN_FILE": env["XPRESS_ADMIN_TOKEN_FILE"], envAdminCAFile: caFile}
	if code, _, errOut := runCLI(t, withEnv, "admin", "agent", "list", "--hub", hubURL); code != 0 {
		t.Errorf("with %s: exit %d, stderr %q", envAdminCAFile, code, errOut)
	}
	withEnv[envAdminHub] = hubURL
	if code, _, errOut := runCLI(t, withEnv, "admin", "vehicle", "list"); code != 0 {
		t.Errorf("with %s and %s, no flags: exit %d, stderr %q", envAdminHub, envAdminCAFile, code, errOut)
	}
	if code, _, errOut := runCLI(t, env, "admin", "agent", "list", "--hub", "http://"+h.HTTPAddr().String(), "--ca-file", caFile); code == 0 ||
		!strings.Contains(errOut, "not an https:// URL") {
		t.Errorf("--ca-file with an http:// hub: exit %d, stderr %q; want an error", code, errOut)
	}
}
