package agent_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/agent/internal/hubtest"
	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/internal/configcheck"
	"github.com/xpress-ops/tower/protocol"
)

// fieldsOf returns the fields named by the FieldErrors in err, walking
// the trees errors.Join builds.
func fieldsOf(err error) []string {
	var field *configcheck.FieldError
	if errors.As(err, &field) && error(field) == err {
		return []string{field.Field}
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return nil
	}
	var out []string
	for _, e := range joined.Unwrap() {
		out = append(out, fieldsOf(e)...)
	}
	return out
}

func TestConfig_ValidateRanges(t *testing.T) {
	valid := agent.Config{ID: "agent-1", Region: "Cebu", DataDir: "/var/lib/xpress", VehicleAuth: agent.VehicleAuthHub}
	for _, tc := range []struct {
		name   string
		mutate func(*agent.Config)
		field  string
	}{
		{"ack timeout 1ns", func(c *agent.Config) { c.AckTimeout = time.Nanosecond }, "AckTimeout"},
		{"ack timeout 1h", func(c *agent.Config) { c.AckTimeout = time.Hour }, "AckTimeout"},
		{"negative ack timeout", func(c *agent.Config) { c.AckTimeout = -time.Second }, "AckTimeout"},
		{"keep-alive 1s", func(c *agent.Config) { c.KeepAlive = time.Second }, "KeepAlive"},
		{"ping timeout 1h", func(c *agent.Config) { c.PingTimeout = time.Hour }, "PingTimeout"},
		{"connect timeout 1ms", func(c *agent.Config) { c.ConnectTimeout = time.Millisecond }, "ConnectTimeout"},
		{"min backoff 1ns", func(c *agent.Config) { c.MinBackoff = time.Nanosecond }, "MinBackoff"},
		{"max backoff 1h", func(c *agent.Config) { c.MaxBackoff = time.Hour }, "MaxBackoff"},
		{"backoff inverted", func(c *agent.Config) { c.MinBackoff, c.MaxBackoff = time.Minute, time.Second }, "MinBackoff"},
		{"window 65 batches", func(c *agent.Config) { c.UplinkMaxInflightBatches = 65 }, "UplinkMaxInflightBatches"},
		{"batch records too many", func(c *agent.Config) { c.UplinkMaxBatchRecords = protocol.MaxBatchRecords + 1 }, "UplinkMaxBatchRecords"},
		{"batch bytes 100", func(c *agent.Config) { c.UplinkMaxBatchBytes = 100 }, "UplinkMaxBatchBytes"},
		{"spool cap 1 byte", func(c *agent.Config) { c.SpoolMaxBytes = 1 }, "SpoolMaxBytes"},
		{"spool cap 8 KiB", func(c *agent.Config) { c.SpoolMaxBytes = 8 << 10 }, "SpoolMaxBytes"},
		{"negative reserve", func(c *agent.Config) { c.SpoolSOSReserveBytes = -1 }, "SpoolSOSReserveBytes"},
		{"reserve 1 KiB", func(c *agent.Config) { c.SpoolSOSReserveBytes = 1 << 10 }, "SpoolSOSReserveBytes"},
		{"reserve above half the cap", func(c *agent.Config) { c.SpoolMaxBytes, c.SpoolSOSReserveBytes = 8<<20, 5<<20 }, "SpoolSOSReserveBytes"},
		{"reserve equal to the cap", func(c *agent.Config) { c.SpoolMaxBytes, c.SpoolSOSReserveBytes = 8<<20, 8<<20 }, "SpoolSOSReserveBytes"},
		{"reserve above half the default cap", func(c *agent.Config) { c.SpoolSOSReserveBytes = spool.DefaultMaxBytes }, "SpoolSOSReserveBytes"},
		{"file limit 1 byte", func(c *agent.Config) { c.SpoolMaxFileBytes = 1 }, "SpoolMaxFileBytes"},
		{"commit wait 1 min", func(c *agent.Config) { c.SpoolCommitInterval = time.Minute }, "SpoolCommitInterval"},
	} {
		c := valid
		tc.mutate(&c)
		err := c.Validate()
		fields := fieldsOf(err)
		if !slices.Contains(fields, tc.field) {
			t.Errorf("%s: Validate = %v, want a FieldError on %s", tc.name, err, tc.field)
		}
		if len(fields) != 1 {
			t.Errorf("%s: Validate reported fields %v, want only %s once", tc.name, fields, tc.field)
		}
		if _, err := agent.New(c); err == nil {
			t.Errorf("%s: New accepted an invalid config", tc.name)
		}
	}

	for name, mutate := range map[string]func(*agent.Config){
		"defaults":             func(*agent.Config) {},
		"shortest ack timeout": func(c *agent.Config) { c.AckTimeout = time.Second },
		"longest ack timeout":  func(c *agent.Config) { c.AckTimeout = 10 * time.Minute },
		"smallest spool cap": func(c *agent.Config) {
			c.SpoolMaxBytes, c.SpoolSOSReserveBytes = agent.MinSpoolMaxBytes, agent.MinSpoolSOSReserveBytes
		},
		"reserve half the cap": func(c *agent.Config) { c.SpoolMaxBytes, c.SpoolSOSReserveBytes = 8<<20, 4<<20 },
		"no spool cap":         func(c *agent.Config) { c.SpoolMaxBytes = -1 },
		"stop-and-wait":        func(c *agent.Config) { c.UplinkMaxInflightBatches = 1 },
	} {
		c := valid
		mutate(&c)
		if err := c.Validate(); err != nil {
			t.Errorf("%s: Validate = %v, want nil", name, err)
		}
	}
}

func TestConfig_ValidateMessageNamesField(t *testing.T) {
	c := agent.Config{ID: "agent-1", Region: "Cebu", DataDir: "/var/lib/xpress", VehicleAuth: agent.VehicleAuthHub, AckTimeout: time.Nanosecond}

	err := c.Validate()

	if want := "AckTimeout must be at least 1s, got 1ns"; err == nil || err.Error() != want {
		t.Errorf("Validate = %v, want %q", err, want)
	}
}

func TestNormalizeRegion(t *testing.T) {
	for _, tc := range []struct {
		in    string
		extra []string
		want  string
	}{
		{"NCR-Manila", nil, "NCR-Manila"},
		{"ncr-manila", nil, "NCR-Manila"},
		{"  CEBU ", nil, "Cebu"},
		{"davao", nil, "Davao"},
		{"ILOILO", nil, "Iloilo"},
		{"bacolod", []string{"Bacolod"}, "Bacolod"},
	} {
		got, err := agent.NormalizeRegion(tc.in, tc.extra)
		if err != nil || got != tc.want {
			t.Errorf("NormalizeRegion(%q, %q) = %q, %v; want %q", tc.in, tc.extra, got, err, tc.want)
		}
	}

	for _, in := range []string{"Manilla", "", "NCR", "Cebu City"} {
		_, err := agent.NormalizeRegion(in, nil)
		if err == nil {
			t.Errorf("NormalizeRegion(%q) accepted an unknown region", in)
			continue
		}
		for _, known := range agent.KnownRegions {
			if !strings.Contains(err.Error(), known) {
				t.Errorf("NormalizeRegion(%q) error %q does not list %s", in, err, known)
			}
		}
	}
}

func TestConfig_RegionRules(t *testing.T) {
	valid := agent.Config{ID: "agent-1", Region: "Cebu", DataDir: "/var/lib/xpress", VehicleAuth: agent.VehicleAuthHub}
	for name, tc := range map[string]struct {
		region string
		extra  []string
		field  string
	}{
		"unknown region":          {"Manilla", nil, "Region"},
		"empty region":            {"", nil, "Region"},
		"other extra region":      {"Bacolod", []string{"Tacloban"}, "Region"},
		"extra with a slash":      {"Cebu", []string{"Bacolod/North"}, "ExtraRegions"},
		"empty extra region":      {"Cebu", []string{" "}, "ExtraRegions"},
		"extra region too long":   {"Cebu", []string{strings.Repeat("x", 65)}, "ExtraRegions"},
		"extra with control char": {"Cebu", []string{"Baco\tlod"}, "ExtraRegions"},
	} {
		c := valid
		c.Region, c.ExtraRegions = tc.region, tc.extra
		if fields := fieldsOf(c.Validate()); !slices.Contains(fields, tc.field) {
			t.Errorf("%s: Validate reported fields %v, want %s", name, fields, tc.field)
		}
	}

	c := valid
	c.Region, c.ExtraRegions = "Bacolod", []string{"Bacolod"}
	if err := c.Validate(); err != nil {
		t.Errorf("a region allowed in ExtraRegions: Validate = %v, want nil", err)
	}
}

func TestAgent_SendsCanonicalRegion(t *testing.T) {
	hub := hubtest.Start(t, "127.0.0.1:0")
	cfg := testConfig(t, hub.URL(), t.TempDir())
	cfg.Region = "ncr-MANILA"
	a := openAgent(t, cfg)
	c := connectVehicle(t, a)

	publish(t, c, protocol.TopicSOS, `{"id":"sos-region-1","lat":14.6,"lon":121.0}`)

	eventually(t, "the SOS at the hub", func() bool { return len(hub.Received()) > 0 })
	if got := hub.Received()[0].Region; got != "NCR-Manila" {
		t.Errorf("batch region = %q, want the canonical NCR-Manila", got)
	}
}

func TestAgent_RefusesSpoolOfAnotherAgent(t *testing.T) {
	// Agent agent-test stores an SOS, then its spool file is moved to a
	// fresh data dir, which has no agent-id file to protect it.
	oldDir := t.TempDir()
	first := openAgent(t, testConfig(t, unusedHubURL(t), oldDir))
	publish(t, connectVehicle(t, first), protocol.TopicSOS, `{"id":"sos-moved-1"}`)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	newDir := t.TempDir()
	if err := os.Rename(filepath.Join(oldDir, agent.SpoolFile), filepath.Join(newDir, agent.SpoolFile)); err != nil {
		t.Fatal(err)
	}

	cfg := testConfig(t, unusedHubURL(t), newDir)
	cfg.ID = "another-agent"
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = a.Open(context.Background())
	if err == nil {
		a.Close()
		t.Fatal("agent another-agent opened the spool of agent-test")
	}

	if !errors.Is(err, spool.ErrOtherOwner) {
		t.Errorf("error = %v, want one matching spool.ErrOtherOwner", err)
	}
	for _, want := range []string{`"agent-test"`, `"another-agent"`, "--id agent-test", "--data-dir"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %s", err, want)
		}
	}
	if _, statErr := os.Stat(filepath.Join(newDir, agent.AgentIDFile)); !errors.Is(statErr, os.ErrNotExist) {
		t.Errorf("the refused agent claimed the data dir: %s exists (%v)", agent.AgentIDFile, statErr)
	}

	// The owner opens the moved spool and finds its SOS.
	owner := openAgent(t, testConfig(t, unusedHubURL(t), newDir))
	if _, r := readyz(t, owner); r.Lanes[protocol.LaneSOS].Records != 1 {
		t.Errorf("owner's moved spool has %d SOS records, want 1", r.Lanes[protocol.LaneSOS].Records)
	}
}

// writeUnownedSpool writes a spool file with one GPS fix and no owner
// record, as agents wrote before spools recorded their owner, and the
// data dir's agent-id file naming owner.
func writeUnownedSpool(t *testing.T, dataDir, owner string) {
	t.Helper()
	sp := spool.New(spool.Config{Path: filepath.Join(dataDir, agent.SpoolFile)})
	if err := sp.Open(); err != nil {
		t.Fatal(err)
	}
	rec := protocol.Record{Kind: protocol.KindFix, VehicleID: vehicle, ReceivedAt: time.Now().UTC(),
		Fix: &protocol.Fix{Time: time.Now().UTC(), Lat: 14.6, Lon: 121.0}}
	if err := sp.Append(context.Background(), []protocol.Record{rec}); err != nil {
		t.Fatal(err)
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, agent.AgentIDFile), []byte(owner+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// spoolOwner opens the spool file in dataDir without an agent id and
// returns the owner it records.
func spoolOwner(t *testing.T, dataDir string) string {
	t.Helper()
	sp := spool.New(spool.Config{Path: filepath.Join(dataDir, agent.SpoolFile)})
	if err := sp.Open(); err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	return sp.Owner()
}

func TestAgent_AdoptsUnownedSpool(t *testing.T) {
	dir := t.TempDir()
	writeUnownedSpool(t, dir, "agent-test")

	a := openAgent(t, testConfig(t, unusedHubURL(t), dir))
	if _, r := readyz(t, a); r.Lanes[protocol.LaneGPS].Records != 1 {
		t.Errorf("adopted spool has %d GPS records, want 1", r.Lanes[protocol.LaneGPS].Records)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	if got := spoolOwner(t, dir); got != "agent-test" {
		t.Errorf("spool records owner %q after adoption, want agent-test", got)
	}
}

func TestAgent_WrongIDDoesNotAdoptSpool(t *testing.T) {
	dir := t.TempDir()
	writeUnownedSpool(t, dir, "agent-test")

	cfg := testConfig(t, unusedHubURL(t), dir)
	cfg.ID = "intruder"
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = a.Open(context.Background())
	if err == nil {
		a.Close()
		t.Fatal("agent intruder opened the data dir of agent-test")
	}
	if !strings.Contains(err.Error(), `belongs to agent "agent-test"`) {
		t.Errorf("error %q does not name the owning agent", err)
	}

	if got := spoolOwner(t, dir); got != "" {
		t.Errorf("the refused agent left owner %q in the spool, want none recorded", got)
	}
}
