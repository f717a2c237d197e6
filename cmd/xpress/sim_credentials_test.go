package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRun_SimCredentialsFileChecks(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.csv")
	if err := os.WriteFile(open, []byte("sim-0001,tok-a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short.csv")
	if err := os.WriteFile(short, []byte("sim-0001,tok-a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, file, want string
	}{
		{"readable by others", open, "chmod 600"},
		{"a vehicle without a token", short, "no password for vehicle sim-0002"},
		{"missing file", filepath.Join(dir, "none.csv"), "no such file"},
	} {
		code, _, errOut := runCLI(t, nil, "sim", "--broker", "tcp://127.0.0.1:9", "--vehicles", "2", "--credentials-file", c.file)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want a failure naming %q", c.name, code, errOut, c.want)
		}
		if strings.Contains(errOut, "tok-a") {
			t.Errorf("%s: stderr shows the token", c.name)
		}
	}
}
