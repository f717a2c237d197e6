package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/internal/passhash"
)

// TestEnsureDevAdmin creates xpress dev's admin on an empty store: the
// password file has mode 0600 and holds the password that the stored hash
// accepts. A second start finds the operator and leaves file and
// password alone.
func TestEnsureDevAdmin(t *testing.T) {
	dir := t.TempDir()
	st := embedded.New(embedded.Config{Path: filepath.Join(dir, "hub.db")})
	if err := st.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	dataDir := filepath.Join(dir, "data")

	path, created, err := ensureDevAdmin(context.Background(), st, dataDir)
	if err != nil || !created {
		t.Fatalf("first start: created=%v err=%v, want the operator created", created, err)
	}
	if want := filepath.Join(dataDir, devAdminPasswordFile); path != want {
		t.Errorf("password file = %s, want %s", path, want)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := info.Mode().Perm(); mode != 0o600 {
		t.Errorf("password file mode = %o, want 600", mode)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	password := strings.TrimSpace(string(raw))
	if len(password) < 12 {
		t.Errorf("password %d characters long, want at least 12", len(password))
	}
	o, err := st.Operator(context.Background(), devAdminUser)
	if err != nil {
		t.Fatal(err)
	}
	if o.Role != store.OperatorRoleAdmin || len(o.Regions) != 1 || o.Regions[0] != store.AllRegions {
		t.Errorf("operator = %+v, want an admin of every region", o.Operator)
	}
	if err := passhash.Verify(o.PasswordHash, password); err != nil {
		t.Errorf("the stored hash refuses the file's password: %v", err)
	}

	again, created, err := ensureDevAdmin(context.Background(), st, dataDir)
	if err != nil || created || again != path {
		t.Fatalf("second start: path=%s created=%v err=%v, want the operator found", again, created, err)
	}
	if raw2, err := os.ReadFile(path); err != nil || string(raw2) != string(raw) {
		t.Errorf("password file after the second start = %q, %v, want it unchanged", raw2, err)
	}
}
