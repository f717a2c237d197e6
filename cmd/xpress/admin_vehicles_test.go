package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xpress-ops/tower/hub"
	"github.com/xpress-ops/tower/internal/passhash"
)

// vehicleHashes returns the current token hash of every live vehicle.
func vehicleHashes(t *testing.T, h *hub.Hub) map[string]string {
	t.Helper()
	all, err := h.VehicleCredentials().VehicleCredentialsSince(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, c := range all {
		if !c.Revoked() {
			out[c.VehicleID] = c.TokenHash
		}
	}
	return out
}

// parseTokenLines reads "vehicle_id,token" lines.
func parseTokenLines(t *testing.T, text string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		id, token, ok := strings.Cut(line, ",")
		if !ok || id == "" || token == "" {
			t.Fatalf("line %q is not vehicle_id,token", line)
		}
		out[id] = token
	}
	return out
}

func TestAdminCLI_VehicleRoundTrip(t *testing.T) {
	t.Parallel()
	h, hubURL, env := startAdminHub(t)

	// Several ids to stdout.
	code, out, errOut := runCLI(t, env, "admin", "vehicle", "add", "veh-1", "veh-2", "--hub", hubURL)
	if code != 0 {
		t.Fatalf("add: exit %d: %s", code, errOut)
	}
	tokens := parseTokenLines(t, out)
	hashes := vehicleHashes(t, h)
	for _, id := range []string{"veh-1", "veh-2"} {
		if err := passhash.Verify(hashes[id], tokens[id]); err != nil {
			t.Errorf("token of %s printed by add does not verify: %v", id, err)
		}
	}
	if strings.Contains(errOut, tokens["veh-1"]) {
		t.Error("a token appears on stderr")
	}

	// A fleet to a new file of mode 0600, more than one request's worth.
	fleet := make([]string, vehicleAddChunk+3)
	for i := range fleet {
		fleet[i] = fmt.Sprintf("bus-%04d", i)
	}
	outFile := filepath.Join(t.TempDir(), "fleet.csv")
	code, _, errOut = runCLI(t, env, append([]string{"admin", "vehicle", "add", "--hub", hubURL, "--out", outFile}, fleet...)...)
	if code != 0 {
		t.Fatalf("add --out: exit %d: %s", code, errOut)
	}
	info, err := os.Stat(outFile)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("--out file: %v, mode %v; want 0600", err, info.Mode().Perm())
	}
	data, _ := os.ReadFile(outFile)
	if got := parseTokenLines(t, string(data)); len(got) != len(fleet) {
		t.Errorf("--out file has %d tokens, want %d", len(got), len(fleet))
	}
	// An existing file is not overwritten.
	if code, _, errOut = runCLI(t, env, "admin", "vehicle", "add", "veh-3", "--out", outFile, "--hub", hubURL); code == 0 || !strings.Contains(errOut, "new file") {
		t.Errorf("add to an existing --out file: exit %d, stderr %q; want a refusal", code, errOut)
	}

	// A vehicle that exists already is refused with the hub's reason.
	if code, _, errOut = runCLI(t, env, "admin", "vehicle", "add", "veh-1", "--hub", hubURL); code == 0 || !strings.Contains(errOut, "veh-1 already has a credential") {
		t.Errorf("adding veh-1 again: exit %d, stderr %q", code, errOut)
	}

	code, out, errOut = runCLI(t, env, "admin", "vehicle", "rotate", "veh-1", "--grace", "1h", "--hub", hubURL)
	if code != 0 {
		t.Fatalf("rotate: exit %d: %s", code, errOut)
	}
	rotated := parseTokenLines(t, out)["veh-1"]
	if err := passhash.Verify(vehicleHashes(t, h)["veh-1"], rotated); err != nil {
		t.Errorf("rotated token does not verify: %v", err)
	}
	if !strings.Contains(errOut, "old token works until") {
		t.Errorf("rotate stderr %q: want when the old token ends", errOut)
	}

	if code, _, errOut := runCLI(t, env, "admin", "vehicle", "remove", "veh-2", "--hub", hubURL); code != 0 {
		t.Fatalf("remove: exit %d: %s", code, errOut)
	}
	code, out, errOut = runCLI(t, env, "admin", "vehicle", "list", "--hub", hubURL)
	if code != 0 || !strings.Contains(out, "veh-1") || !strings.Contains(out, "revoked") || strings.Contains(out, rotated) {
		t.Errorf("list: exit %d, stdout %q, stderr %q; want veh-1 and the revoked veh-2, no tokens", code, out, errOut)
	}
	if code, _, _ := runCLI(t, env, "admin", "vehicle", "rotate", "--hub", hubURL); code != 2 {
		t.Errorf("rotate without an id: exit %d, want 2 (usage)", code)
	}
}
