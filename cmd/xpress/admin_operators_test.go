package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// signInStatus signs in to the hub at hubURL and returns the status code.
func signInStatus(t *testing.T, hubURL, username, password string) int {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"username": username, "password": password})
	resp, err := http.Post(hubURL+"/api/v1/session", "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("sign in: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestAdminCLI_OperatorsAndTokens manages an operator and an API token
// of a real hub with the CLI. It replaces adminStdin, so it does not run
// in parallel.
func TestAdminCLI_OperatorsAndTokens(t *testing.T) {
	_, hubURL, env := startAdminHub(t)
	password := randomSecret(t)

	// A password file others can read is refused, and nothing is created.
	code, _, errOut := runCLI(t, env, "admin", "operator", "add", "maria", "--role", "operator", "--regions", "NCR-Manila,Cebu",
		"--password-file", writeSecret(t, password, 0o644), "--hub", hubURL)
	if code == 0 || !strings.Contains(errOut, "chmod 600") {
		t.Errorf("add with a 0644 password file: exit %d, stderr %q; want a refusal naming chmod 600", code, errOut)
	}
	code, out, errOut := runCLI(t, env, "admin", "operator", "add", "maria", "--role", "operator", "--regions", "NCR-Manila,Cebu",
		"--display-name", "Maria Santos", "--password-file", writeSecret(t, password, 0o600), "--hub", hubURL)
	if code != 0 || !strings.Contains(out, "operator maria created") {
		t.Fatalf("add: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if strings.Contains(out+errOut, password) {
		t.Error("add printed the password")
	}
	if got := signInStatus(t, hubURL, "maria", password); got != http.StatusOK {
		t.Fatalf("sign in with the password from the file = %d, want 200", got)
	}

	code, out, errOut = runCLI(t, env, "admin", "operator", "list", "--hub", hubURL)
	if code != 0 || !strings.Contains(out, "maria") || !strings.Contains(out, "Maria Santos") || !strings.Contains(out, "Cebu,NCR-Manila") {
		t.Errorf("list: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	// A new password from standard input.
	newPassword := randomSecret(t)
	oldStdin := adminStdin
	adminStdin = strings.NewReader(newPassword + "\n")
	t.Cleanup(func() { adminStdin = oldStdin })
	code, out, errOut = runCLI(t, env, "admin", "operator", "set", "maria", "--role", "supervisor", "--new-password", "--hub", hubURL)
	if code != 0 || !strings.Contains(out, "role supervisor") {
		t.Fatalf("set: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if got := signInStatus(t, hubURL, "maria", password); got != http.StatusUnauthorized {
		t.Errorf("sign in with the old password = %d, want 401", got)
	}
	// Lock the account with wrong passwords, then unlock it.
	for range 5 {
		signInStatus(t, hubURL, "maria", "wrong password")
	}
	if got := signInStatus(t, hubURL, "maria", newPassword); got != http.StatusLocked {
		t.Fatalf("sign in to a locked account = %d, want 423", got)
	}
	if code, _, errOut := runCLI(t, env, "admin", "operator", "unlock", "maria", "--hub", hubURL); code != 0 {
		t.Fatalf("unlock: exit %d: %s", code, errOut)
	}
	if got := signInStatus(t, hubURL, "maria", newPassword); got != http.StatusOK {
		t.Errorf("sign in after unlock = %d, want 200", got)
	}

	// An API token for maria.
	code, out, errOut = runCLI(t, env, "admin", "token", "add", "--operator", "maria", "--name", "cad bridge", "--hub", hubURL)
	if code != 0 {
		t.Fatalf("token add: exit %d: %s", code, errOut)
	}
	token := strings.TrimSpace(out)
	get := func() int {
		req, _ := http.NewRequest(http.MethodGet, hubURL+"/api/v1/incidents", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get(); got != http.StatusOK {
		t.Errorf("request with the new token = %d, want 200", got)
	}
	code, out, _ = runCLI(t, env, "admin", "token", "list", "--hub", hubURL)
	if code != 0 || !strings.Contains(out, "cad bridge") || strings.Contains(out, token) {
		t.Errorf("token list: exit %d, stdout %q; want the token listed without its value", code, out)
	}
	if code, _, errOut := runCLI(t, env, "admin", "token", "remove", "1", "--hub", hubURL); code != 0 {
		t.Fatalf("token remove: exit %d: %s", code, errOut)
	}
	if got := get(); got != http.StatusUnauthorized {
		t.Errorf("request with the revoked token = %d, want 401", got)
	}

	if code, _, errOut := runCLI(t, env, "admin", "operator", "remove", "maria", "--hub", hubURL); code != 0 {
		t.Fatalf("remove: exit %d: %s", code, errOut)
	}
	if got := signInStatus(t, hubURL, "maria", newPassword); got != http.StatusUnauthorized {
		t.Errorf("sign in after remove = %d, want 401", got)
	}
	if code, _, _ := runCLI(t, env, "admin", "operator", "frobnicate", "x"); code != 2 {
		t.Errorf("unknown action: exit %d, want 2", code)
	}
}
