package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRun_AgentOutageFlagErrors(t *testing.T) {
	readable := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(readable, []byte("secret0token0value"), 0o644); err != nil {
		t.Fatal(err)
	}
	twilio := []string{"--twilio-account-sid", "AC0123456789abcdef", "--twilio-from", "+639170000001", "--twilio-api-url", "http://127.0.0.1:9"}
	token := map[string]string{"XPRESS_TWILIO_AUTH_TOKEN": "secret0token0value"}
	for _, tc := range []struct {
		name string
		vars map[string]string
		args []string
		want string
	}{
		{"invalid number", token, append([]string{"--outage-notify-after", "2m", "--outage-notify-to", "0917 123 4567,12345"}, twilio...),
			`--outage-notify-to (XPRESS_OUTAGE_NOTIFY_TO): phone number "12345"`},
		{"number from the environment", map[string]string{"XPRESS_TWILIO_AUTH_TOKEN": "secret0token0value", "XPRESS_OUTAGE_NOTIFY_TO": "call me"},
			append([]string{"--outage-notify-after", "2m"}, twilio...), `--outage-notify-to (XPRESS_OUTAGE_NOTIFY_TO): phone number "call me"`},
		{"no numbers", token, append([]string{"--outage-notify-after", "2m"}, twilio...),
			"--outage-notify-to (XPRESS_OUTAGE_NOTIFY_TO) is empty"},
		{"delay too short", token, append([]string{"--outage-notify-after", "1s", "--outage-notify-to", "09171234567"}, twilio...),
			"--outage-notify-after (XPRESS_OUTAGE_NOTIFY_AFTER) must be 0 (off) or from 10s to 24h0m0s, got 1s"},
		{"no Twilio account", token, []string{"--outage-notify-after", "2m", "--outage-notify-to", "09171234567", "--twilio-from", "+639170000001"},
			"needs --twilio-account-sid"},
		{"no auth token", nil, append([]string{"--outage-notify-after", "2m", "--outage-notify-to", "09171234567"}, twilio...),
			"XPRESS_TWILIO_AUTH_TOKEN"},
		{"token file readable by others", map[string]string{"XPRESS_TWILIO_AUTH_TOKEN_FILE": readable},
			append([]string{"--outage-notify-after", "2m", "--outage-notify-to", "09171234567"}, twilio...), "chmod 600"},
		{"bad sender number", token, []string{"--outage-notify-after", "2m", "--outage-notify-to", "09171234567",
			"--twilio-account-sid", "AC0123456789abcdef", "--twilio-from", "12"}, "invalid --twilio-from"},
		{"Twilio without delay", token, twilio, "--outage-notify-after (XPRESS_OUTAGE_NOTIFY_AFTER) is 0"},
		{"numbers without delay", nil, []string{"--outage-notify-to", "09171234567"},
			"--outage-notify-to (XPRESS_OUTAGE_NOTIFY_TO) is set but --outage-notify-after (XPRESS_OUTAGE_NOTIFY_AFTER) is 0"},
		{"unknown language", nil, []string{"--outage-notify-language", "de"}, `--outage-notify-language (XPRESS_OUTAGE_NOTIFY_LANGUAGE) is "de"`},
		{"page URL without scheme", nil, []string{"--public-url", "agent-ncr:9090"}, `--public-url (XPRESS_PUBLIC_URL) is "agent-ncr:9090"`},
		{"allowed host with port", nil, []string{"--http-allowed-hosts", "agent-ncr.example.ph:9090"},
			`--http-allowed-hosts (XPRESS_HTTP_ALLOWED_HOSTS) contains "agent-ncr.example.ph:9090"`},
	} {
		code, out := runAgentArgs(t, tc.vars, tc.args...)
		if code != 1 {
			t.Errorf("%s: exit code %d, want 1; output %q", tc.name, code, out)
		}
		if !strings.Contains(out, tc.want) {
			t.Errorf("%s: output %q does not contain %q", tc.name, out, tc.want)
		}
		if strings.Contains(out, "secret0token0value") {
			t.Errorf("%s: output %q shows the auth token", tc.name, out)
		}
	}
}
