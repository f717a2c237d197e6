package main

import (
	"strings"
	"testing"
)

// The agent's help names the outage page, the acknowledge endpoint and
// the outage mode's flags.
func TestRun_AgentHelpNamesOutageMode(t *testing.T) {
	_, out := runAgentArgs(t, nil, "-h")
	for _, want := range []string{
		"the regional outage page", "POST /api/v1/local/sos/{vehicle}/{sos_id}/acknowledge", "sign in with their hub accounts",
		"-public-url", "-http-allowed-hosts", "-twilio-api-url", "-outage-notify-language",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("agent help does not contain %q", want)
		}
	}
}
