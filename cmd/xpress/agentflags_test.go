package main

import (
	"bytes"
	"context"
	"flag"
	"slices"
	"strings"
	"testing"
	"time"
)

// runAgentArgs runs xpress agent with a valid base configuration plus
// extra, and returns the exit code and output. A configuration the agent
// accepts would start it, so the context ends it after 20 s at the latest.
func runAgentArgs(t *testing.T, vars map[string]string, extra ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args := append([]string{"agent", "--id", "ncr-1", "--region", "NCR-Manila", "--data-dir", t.TempDir(),
		"--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--hub-url", "tcp://127.0.0.1:9"}, extra...)
	var out syncBuffer
	code := run(ctx, args, &out, &out, func(k string) string { return vars[k] })
	return code, out.String()
}

func TestRun_AgentRangeErrorNamesFlag(t *testing.T) {
	code, out := runAgentArgs(t, nil, "--uplink-ack-timeout", "1ns")

	if code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	if want := "--uplink-ack-timeout (XPRESS_UPLINK_ACK_TIMEOUT) must be at least 1s, got 1ns"; !strings.Contains(out, want) {
		t.Errorf("output %q does not contain %q", out, want)
	}
	if strings.Contains(out, "AckTimeout") {
		t.Errorf("output %q names the Go field AckTimeout", out)
	}
}

func TestRun_AgentRangeErrorFromEnvironment(t *testing.T) {
	code, out := runAgentArgs(t, map[string]string{"XPRESS_SPOOL_MAX_BYTES": "1"})

	if code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	if want := "--spool-max-bytes (XPRESS_SPOOL_MAX_BYTES) must be at least 4194304 bytes (4 MiB), got 1"; !strings.Contains(out, want) {
		t.Errorf("output %q does not contain %q", out, want)
	}
}

func TestRun_AgentRejectsAbsurdValues(t *testing.T) {
	for _, tc := range []struct {
		flag, value string
	}{
		{"uplink-ack-timeout", "1h"},
		{"uplink-keepalive", "1s"},
		{"uplink-ping-timeout", "1ms"},
		{"uplink-connect-timeout", "10h"},
		{"uplink-min-backoff", "1ns"},
		{"uplink-max-backoff", "24h"},
		{"uplink-max-inflight", "1000"},
		{"uplink-max-inflight", "-1"},
		{"uplink-max-batch-records", "1000000"},
		{"uplink-max-batch-bytes", "10"},
		{"spool-max-bytes", "1"},
		{"spool-sos-reserve-bytes", "1"},
		{"spool-sos-reserve-bytes", "-1"},
		{"spool-sos-reserve-bytes", "2147483648"},
		{"region", "Manilla"},
		{"id", "ncr 1"},
		{"hub-url", "localhost:1884"},
	} {
		code, out := runAgentArgs(t, nil, "--"+tc.flag, tc.value)
		if code != 1 {
			t.Errorf("--%s %s: exit code = %d, want 1", tc.flag, tc.value, code)
		}
		if want := flagLabel(tc.flag); !strings.Contains(out, want) {
			t.Errorf("--%s %s: output %q does not name %s", tc.flag, tc.value, out, want)
		}
	}
}

func TestRun_AgentUnknownRegionListsKnown(t *testing.T) {
	_, out := runAgentArgs(t, nil, "--region", "Manilla")

	for _, want := range []string{`"Manilla" is not a known region`, "NCR-Manila, Cebu, Davao, Iloilo", "--allow-region (XPRESS_ALLOW_REGION)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output %q does not contain %q", out, want)
		}
	}
}

func TestAgentFlags_RegionRules(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		valid bool
	}{
		{[]string{"--region", "cebu"}, true},
		{[]string{"--region", "ILOILO"}, true},
		{[]string{"--region", "Bacolod"}, false},
		{[]string{"--region", "bacolod", "--allow-region", "Bacolod, Tacloban"}, true},
		{[]string{"--region", "Tacloban", "--allow-region", "Bacolod"}, false},
	} {
		fs := flag.NewFlagSet("agent", flag.ContinueOnError)
		var af agentFlags
		af.register(fs)
		args := append([]string{"--id", "ncr-1", "--data-dir", "/var/lib/xpress"}, tc.args...)
		if err := parseFlags(fs, args, testEnv(nil)); err != nil {
			t.Fatal(err)
		}
		cfg := af.config()
		if err := cfg.Validate(); (err == nil) != tc.valid {
			t.Errorf("%v: Validate = %v, want valid %v", tc.args, err, tc.valid)
		}
	}
}

func TestParseRegions(t *testing.T) {
	for _, tc := range []struct {
		list  string
		extra []string
		want  []string
	}{
		{"NCR-Manila", nil, []string{"NCR-Manila"}},
		{"ncr-manila, cebu,DAVAO,iloilo", nil, []string{"NCR-Manila", "Cebu", "Davao", "Iloilo"}},
		{"cebu,bacolod", []string{"Bacolod"}, []string{"Cebu", "Bacolod"}},
	} {
		got, err := parseRegions(tc.list, tc.extra)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("parseRegions(%q, %q) = %q, %v; want %q", tc.list, tc.extra, got, err, tc.want)
		}
	}

	for _, tc := range []struct {
		list, want string
	}{
		{"Cebu,cebu", `"Cebu" appears twice`},
		{"Cebu,Manilla", `--regions (XPRESS_REGIONS) "Manilla" is not a known region`},
		{" , ", "name at least one region"},
	} {
		_, err := parseRegions(tc.list, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseRegions(%q) = %v, want an error containing %q", tc.list, err, tc.want)
		}
	}
}

func TestRun_DevUnknownRegionNamesFlag(t *testing.T) {
	var out syncBuffer
	args := []string{"dev", "--regions", "Cebu,Bacolod", "--data-dir", t.TempDir(), "--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0",
		"--vehicles", "0"}
	// A tower that accepted the regions would run until the context ends.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	code := run(ctx, args, &out, &out, func(string) string { return "" })

	if code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	for _, want := range []string{"--regions (XPRESS_REGIONS)", `"Bacolod"`, "--allow-region (XPRESS_ALLOW_REGION)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output %q does not contain %q", out.String(), want)
		}
	}
}

func TestRun_HubInvalidOriginNamesFlag(t *testing.T) {
	var out bytes.Buffer
	args := []string{"hub", "--http-addr", "127.0.0.1:0", "--agent-mqtt-addr", "127.0.0.1:0",
		"--data-dir", t.TempDir(), "--allowed-origins", "ops.example.com,[bad"}

	code := run(context.Background(), args, &out, &out, func(string) string { return "" })

	if code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	if want := `--allowed-origins (XPRESS_ALLOWED_ORIGINS) contains the invalid pattern "[bad"`; !strings.Contains(out.String(), want) {
		t.Errorf("output %q does not contain %q", out.String(), want)
	}
}
