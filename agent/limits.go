package agent

import (
	"fmt"

	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/internal/configcheck"
)

// Ranges of the spool settings that Config.Validate accepts besides zero,
// which selects the default. The uplink's ranges are those of
// uplink.Config.ValidateLimits (MinAckTimeout and the constants after it).
const (
	// MinSpoolMaxBytes is the smallest positive Config.SpoolMaxBytes. As an
	// estimate, 4 MiB holds about 16,000 GPS fixes of 250 bytes: a few
	// minutes of a busy office's traffic during an outage.
	MinSpoolMaxBytes = 4 << 20
	// MaxSpoolMaxBytes is the largest Config.SpoolMaxBytes.
	MaxSpoolMaxBytes = 1 << 40
	// MinSpoolSOSReserveBytes is the smallest positive
	// Config.SpoolSOSReserveBytes. As an estimate, 256 KiB holds about 200
	// SOS records with a full note and 1,000 without one.
	MinSpoolSOSReserveBytes = 256 << 10
)

// uplinkFieldNames maps uplink.Config fields to the Config fields that
// set them, for errors of uplink.Config.ValidateLimits.
var uplinkFieldNames = map[string]string{
	"MaxBatchRecords":    "UplinkMaxBatchRecords",
	"MaxBatchBytes":      "UplinkMaxBatchBytes",
	"MaxInflightBatches": "UplinkMaxInflightBatches",
}

// spoolFieldNames maps spool.Config fields to the Config fields that set
// them, for errors of spool.Config.Validate.
var spoolFieldNames = map[string]string{
	"MaxFileBytes":   "SpoolMaxFileBytes",
	"CommitInterval": "SpoolCommitInterval",
	"MaxBatch":       "SpoolMaxBatch",
}

// validateTunables checks the spool and uplink settings: the agent's own
// spool ranges, then the ranges the spool and uplink packages enforce,
// with their errors renamed to the Config fields.
func (c *Config) validateTunables() []error {
	errs := c.validateSpoolSize()

	// The cap and the reserve are left out: validateSpoolSize's rules
	// imply the spool's, and each problem is reported once.
	spoolLimits := spool.Config{
		Path:           SpoolFile,
		MaxFileBytes:   c.SpoolMaxFileBytes,
		CommitInterval: c.SpoolCommitInterval,
		MaxBatch:       c.SpoolMaxBatch,
	}
	errs = append(errs, configcheck.Rename(spoolLimits.Validate(), configcheck.Map(spoolFieldNames)))

	uplinkLimits := uplink.Config{
		MaxBatchRecords:    c.UplinkMaxBatchRecords,
		MaxBatchBytes:      c.UplinkMaxBatchBytes,
		MaxInflightBatches: c.UplinkMaxInflightBatches,
		AckTimeout:         c.AckTimeout,
		ConnectTimeout:     c.ConnectTimeout,
		KeepAlive:          c.KeepAlive,
		PingTimeout:        c.PingTimeout,
		MinBackoff:         c.MinBackoff,
		MaxBackoff:         c.MaxBackoff,
	}
	errs = append(errs, configcheck.Rename(uplinkLimits.ValidateLimits(), configcheck.Map(uplinkFieldNames)))
	return errs
}

// validateSpoolSize checks the agent's stricter rules for the spool cap
// and the SOS reserve: a cap of at least MinSpoolMaxBytes (or none), and a
// reserve of at least MinSpoolSOSReserveBytes and at most half the cap.
// The agent cannot turn the SOS reserve off: that would let GPS fixes
// fill the space an SOS needs.
func (c *Config) validateSpoolSize() []error {
	var errs []error
	if c.SpoolMaxBytes > 0 {
		errs = append(errs, configcheck.Bytes("SpoolMaxBytes", c.SpoolMaxBytes, MinSpoolMaxBytes, MaxSpoolMaxBytes))
	}
	switch {
	case c.SpoolSOSReserveBytes < 0:
		errs = append(errs, configcheck.Newf("SpoolSOSReserveBytes",
			"must not be negative, got %d: the agent always keeps space for SOS records (0 selects the default)", c.SpoolSOSReserveBytes))
	case c.SpoolSOSReserveBytes > 0:
		errs = append(errs, configcheck.Bytes("SpoolSOSReserveBytes", c.SpoolSOSReserveBytes, MinSpoolSOSReserveBytes, MaxSpoolMaxBytes/2))
		maxBytes := c.SpoolMaxBytes
		if maxBytes == 0 {
			maxBytes = spool.DefaultMaxBytes
		}
		if maxBytes > 0 && c.SpoolSOSReserveBytes > maxBytes/2 {
			errs = append(errs, configcheck.Compare("SpoolSOSReserveBytes", "SpoolMaxBytes", func(related string) string {
				return fmt.Sprintf("must be at most half of %s (%d), got %d, so GPS fixes keep room", related, maxBytes, c.SpoolSOSReserveBytes)
			}))
		}
	}
	return errs
}
