package main

import (
	"strings"
	"testing"
)

// xpress hub takes --http-allowed-hosts, or XPRESS_HTTP_ALLOWED_HOSTS, as
// host names without scheme or port, and names the flag in its error.
func TestHubCLI_HTTPAllowedHosts(t *testing.T) {
	for _, c := range []struct {
		vars map[string]string
		args []string
	}{
		{nil, []string{"hub", "--http-allowed-hosts", "ops.example.ph:8443"}},
		{map[string]string{"XPRESS_HTTP_ALLOWED_HOSTS": "https://ops.example.ph"}, []string{"hub"}},
	} {
		code, _, errOut := runCLI(t, c.vars, c.args...)
		if code == 0 || !strings.Contains(errOut, "--http-allowed-hosts (XPRESS_HTTP_ALLOWED_HOSTS) contains") {
			t.Errorf("%v %v: exit %d, stderr %q; want an error naming the flag", c.vars, c.args, code, errOut)
		}
	}
	code, _, errOut := runCLI(t, nil, "hub", "-h")
	if !strings.Contains(errOut, "-http-allowed-hosts") {
		t.Errorf("hub -h: exit %d, help does not list -http-allowed-hosts:\n%s", code, errOut)
	}
}

// xpress hub takes --http-max-conns, or XPRESS_HTTP_MAX_CONNS, within its
// range, and names the flag in its error.
func TestHubCLI_HTTPMaxConnsRange(t *testing.T) {
	for _, c := range []struct {
		vars map[string]string
		args []string
	}{
		{nil, []string{"hub", "--http-max-conns", "-1"}},
		{map[string]string{"XPRESS_HTTP_MAX_CONNS": "2000000"}, []string{"hub"}},
	} {
		code, _, errOut := runCLI(t, c.vars, c.args...)
		if code == 0 || !strings.Contains(errOut, "invalid --http-max-conns (XPRESS_HTTP_MAX_CONNS)") {
			t.Errorf("%v %v: exit %d, stderr %q; want an error naming the flag", c.vars, c.args, code, errOut)
		}
	}
}
