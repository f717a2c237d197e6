package spool

import (
	"errors"
	"fmt"
	"time"

	"github.com/xpress-ops/tower/internal/configcheck"
)

// Ranges of Config's fields that Validate accepts besides zero, which
// selects the default.
const (
	// MinMaxBytes is the smallest positive Config.MaxBytes: one bbolt page,
	// room for about 15 GPS fixes. The agent requires far more (see
	// agent.MinSpoolMaxBytes); tests of the eviction rules use small caps.
	MinMaxBytes = 4 << 10
	// MinMaxFileBytes is the smallest positive Config.MaxFileBytes. bbolt
	// creates a file of 32 KiB, and the file needs room to grow.
	MinMaxFileBytes = 64 << 10
	// MaxCommitInterval bounds Config.CommitInterval, because every vehicle
	// waits this long for its PUBACK when the spool is idle.
	MaxCommitInterval = time.Second
	// MaxMaxBatch bounds Config.MaxBatch.
	MaxMaxBatch = 1 << 20
)

// Validate checks the configuration as given to New, where zero selects
// a default. The errors are configcheck.FieldErrors named by the Config
// fields.
func (c *Config) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, configcheck.Newf("Path", "is empty"))
	}

	if c.MaxBytes > 0 {
		errs = append(errs, configcheck.Bytes("MaxBytes", c.MaxBytes, MinMaxBytes, 1<<62))
	}
	maxBytes := c.MaxBytes
	if maxBytes == 0 {
		maxBytes = DefaultMaxBytes
	}
	if maxBytes > 0 && c.SOSReserveBytes > 0 && c.SOSReserveBytes >= maxBytes {
		errs = append(errs, configcheck.Compare("SOSReserveBytes", "MaxBytes", func(related string) string {
			return fmt.Sprintf("must be less than %s (%d), got %d", related, maxBytes, c.SOSReserveBytes)
		}))
	}

	if c.MaxFileBytes < 0 {
		errs = append(errs, configcheck.Newf("MaxFileBytes", "must not be negative, got %d", c.MaxFileBytes))
	} else {
		errs = append(errs, configcheck.Bytes("MaxFileBytes", int64(c.MaxFileBytes), MinMaxFileBytes, 1<<62))
	}
	if c.CommitInterval > MaxCommitInterval {
		errs = append(errs, configcheck.Newf("CommitInterval", "must be at most %s, got %s", MaxCommitInterval, c.CommitInterval))
	}
	if c.MaxBatch < 0 || c.MaxBatch > MaxMaxBatch {
		errs = append(errs, configcheck.Newf("MaxBatch", "must be from 1 to %d, got %d", MaxMaxBatch, c.MaxBatch))
	}
	if c.CompactRatio != 0 && !(c.CompactRatio >= 1) { // also catches NaN
		errs = append(errs, configcheck.Newf("CompactRatio", "must be at least 1, got %v", c.CompactRatio))
	}
	if c.AgentID != "" && len(c.AgentID) > maxAgentIDBytes {
		errs = append(errs, configcheck.Newf("AgentID", "must be at most %d bytes, got %d", maxAgentIDBytes, len(c.AgentID)))
	}
	return errors.Join(errs...)
}
