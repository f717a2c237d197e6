package main

import (
	"strings"
	"testing"
)

func TestRun_AgentVehicleAuthOffNeedsLoopback(t *testing.T) {
	code, out := runAgentArgs(t, nil, "--vehicle-auth", "off", "--mqtt-addr", ":0")

	if code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	if want := `--vehicle-auth (XPRESS_VEHICLE_AUTH) is "off", which accepts any vehicle password and is allowed only when the vehicle listeners are on loopback addresses`; !strings.Contains(out, want) {
		t.Errorf("output %q does not contain %q", out, want)
	}
}

func TestRun_AgentVehicleLimitsNameFlags(t *testing.T) {
	code, out := runAgentArgs(t, map[string]string{"XPRESS_VEHICLE_CONNECT_RATE": "0", "XPRESS_VEHICLE_AUTH_BLOCK": "1ms"},
		"--vehicle-auth-failures", "-3", "--vehicle-auth", "maybe")

	if code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	for _, want := range []string{
		"--vehicle-auth-failures (XPRESS_VEHICLE_AUTH_FAILURES) must be at least 1, got -3",
		"--vehicle-auth-block (XPRESS_VEHICLE_AUTH_BLOCK) must be at least 1s, got 1ms",
		`--vehicle-auth (XPRESS_VEHICLE_AUTH) must be "hub" or "off", got "maybe"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output %q does not contain %q", out, want)
		}
	}
}
