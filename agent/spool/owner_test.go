package spool_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/internal/configcheck"
	"github.com/xpress-ops/tower/protocol"
)

// recordedOwner reads the owner agent id straight from the file's meta
// bucket, empty when the file records none.
func recordedOwner(t *testing.T, path string) string {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var owner string
	err = db.View(func(tx *bolt.Tx) error {
		owner = string(tx.Bucket([]byte("meta")).Get([]byte("agent_id")))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return owner
}

func TestSpool_RecordsOwnerAtCreation(t *testing.T) {
	path := tempPath(t)
	s := spool.New(spool.Config{Path: path, AgentID: "ncr-1"})
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	if got := s.Owner(); got != "ncr-1" {
		t.Errorf("owner after creation = %q, want ncr-1", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	if got := recordedOwner(t, path); got != "ncr-1" {
		t.Errorf("meta bucket records owner %q, want ncr-1", got)
	}
}

func TestSpool_RejectsOtherOwner(t *testing.T) {
	path := tempPath(t)
	first := spool.New(spool.Config{Path: path, AgentID: "ncr-1"})
	if err := first.Open(); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, first, sosRecord("veh-1", "sos-kept", 1))
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	other := spool.New(spool.Config{Path: path, AgentID: "cebu-1"})
	err := other.Open()
	if err == nil {
		other.Close()
		t.Fatal("agent cebu-1 opened the spool of agent ncr-1")
	}

	if !errors.Is(err, spool.ErrOtherOwner) {
		t.Errorf("error = %v, want one matching ErrOtherOwner", err)
	}
	var owner *spool.OwnerError
	if !errors.As(err, &owner) {
		t.Fatalf("error %v is not an *OwnerError", err)
	}
	if owner.Owner != "ncr-1" || owner.AgentID != "cebu-1" || owner.Path != path {
		t.Errorf("owner error = %+v, want owner ncr-1, agent cebu-1, path %s", owner, path)
	}
	for _, want := range []string{`"ncr-1"`, `"cebu-1"`, path, "open it as that agent"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %s", err, want)
		}
	}
	if got := recordedOwner(t, path); got != "ncr-1" {
		t.Errorf("after the rejected open the file records owner %q, want ncr-1 unchanged", got)
	}

	// The owner still opens it, with its record intact.
	again := openSpool(t, spool.Config{Path: path, AgentID: "ncr-1"})
	if got := again.Stats()[protocol.LaneSOS].Records; got != 1 {
		t.Errorf("owner reopened a spool with %d SOS records, want 1", got)
	}
}

func TestSpool_AdoptsFileWithoutOwner(t *testing.T) {
	path := tempPath(t)
	// A spool opened without an agent id records none, as files written
	// before owners were recorded.
	legacy := spool.New(spool.Config{Path: path})
	if err := legacy.Open(); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, legacy, fixRecord("veh-1", 1))
	spoolID := legacy.SpoolID()
	if err := legacy.Close(); err != nil {
		t.Fatal(err)
	}
	if got := recordedOwner(t, path); got != "" {
		t.Fatalf("a spool without AgentID recorded owner %q", got)
	}

	var logs bytes.Buffer
	adopted := spool.New(spool.Config{Path: path, AgentID: "davao-1",
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err := adopted.Open(); err != nil {
		t.Fatalf("open of a spool without an owner record: %v", err)
	}
	if adopted.SpoolID() != spoolID {
		t.Errorf("spool id changed on adoption: %s, was %s", adopted.SpoolID(), spoolID)
	}
	if got := adopted.Stats()[protocol.LaneGPS].Records; got != 1 {
		t.Errorf("adopted spool has %d GPS records, want 1", got)
	}
	if err := adopted.Close(); err != nil {
		t.Fatal(err)
	}

	if got := recordedOwner(t, path); got != "davao-1" {
		t.Errorf("after adoption the file records owner %q, want davao-1", got)
	}
	if !strings.Contains(logs.String(), "spool adopted") || !strings.Contains(logs.String(), "agent=davao-1") {
		t.Errorf("adoption was not logged with the agent id; logs:\n%s", logs.String())
	}

	// From now on the record protects the file like one made by the agent.
	other := spool.New(spool.Config{Path: path, AgentID: "iloilo-1"})
	if err := other.Open(); !errors.Is(err, spool.ErrOtherOwner) {
		other.Close()
		t.Errorf("open by another agent after adoption: error = %v, want ErrOtherOwner", err)
	}
}

func TestSpool_OwnerSurvivesCompaction(t *testing.T) {
	path := tempPath(t)
	s := openSpool(t, spool.Config{Path: path, AgentID: "ncr-1", MaxBytes: -1, CompactMinFileBytes: compactMinFileBytes})
	fillGPS(t, s, 20000)
	last := s.Stats()[protocol.LaneGPS].NextSeq - 1
	if err := s.DeleteThrough(protocol.LaneGPS, last); err != nil {
		t.Fatal(err)
	}
	// The writer compacts right after the delete, so a flush returns after it.
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if size := mustFileSize(t, path); size >= compactMinFileBytes {
		t.Fatalf("file is %d bytes after the drain, want it compacted below %d", size, compactMinFileBytes)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	if got := recordedOwner(t, path); got != "ncr-1" {
		t.Errorf("after compaction the file records owner %q, want ncr-1", got)
	}
}

func TestConfig_ValidateRanges(t *testing.T) {
	valid := spool.Config{Path: "spool.db"}
	if err := valid.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*spool.Config)
		field  string
	}{
		{"no path", func(c *spool.Config) { c.Path = "" }, "Path"},
		{"one-byte cap", func(c *spool.Config) { c.MaxBytes = 1 }, "MaxBytes"},
		{"cap below one page", func(c *spool.Config) { c.MaxBytes = spool.MinMaxBytes - 1 }, "MaxBytes"},
		{"reserve equals cap", func(c *spool.Config) { c.MaxBytes, c.SOSReserveBytes = 1<<20, 1<<20 }, "SOSReserveBytes"},
		{"reserve above default cap", func(c *spool.Config) { c.SOSReserveBytes = spool.DefaultMaxBytes }, "SOSReserveBytes"},
		{"tiny file limit", func(c *spool.Config) { c.MaxFileBytes = 1 }, "MaxFileBytes"},
		{"negative file limit", func(c *spool.Config) { c.MaxFileBytes = -1 }, "MaxFileBytes"},
		{"long commit wait", func(c *spool.Config) { c.CommitInterval = time.Minute }, "CommitInterval"},
		{"negative batch", func(c *spool.Config) { c.MaxBatch = -1 }, "MaxBatch"},
		{"compact ratio below 1", func(c *spool.Config) { c.CompactRatio = 0.5 }, "CompactRatio"},
		{"long agent id", func(c *spool.Config) { c.AgentID = strings.Repeat("a", 65) }, "AgentID"},
	} {
		c := valid
		tc.mutate(&c)
		err := c.Validate()
		var field *configcheck.FieldError
		if !errors.As(err, &field) {
			t.Errorf("%s: Validate = %v, want a FieldError", tc.name, err)
			continue
		}
		if field.Field != tc.field {
			t.Errorf("%s: error names field %q, want %q (%v)", tc.name, field.Field, tc.field, err)
		}
		if s := spool.New(c); s.Open() == nil {
			s.Close()
			t.Errorf("%s: Open accepted an invalid config", tc.name)
		}
	}

	for name, c := range map[string]spool.Config{
		"no cap":               {Path: "spool.db", MaxBytes: -1, SOSReserveBytes: -1},
		"smallest cap":         {Path: "spool.db", MaxBytes: spool.MinMaxBytes},
		"reserve below cap":    {Path: "spool.db", MaxBytes: 1 << 20, SOSReserveBytes: 1<<20 - 1},
		"longest commit wait":  {Path: "spool.db", CommitInterval: spool.MaxCommitInterval},
		"negative commit wait": {Path: "spool.db", CommitInterval: -time.Second},
	} {
		if err := c.Validate(); err != nil {
			t.Errorf("%s: Validate = %v, want nil", name, err)
		}
	}
}
