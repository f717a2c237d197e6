package uplink_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/internal/configcheck"
	"github.com/xpress-ops/tower/protocol"
)

func TestConfig_ValidateLimits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*uplink.Config)
		want   string
	}{
		{"ack timeout 1ns", func(c *uplink.Config) { c.AckTimeout = time.Nanosecond }, "AckTimeout must be at least 1s, got 1ns"},
		{"ack timeout 1h", func(c *uplink.Config) { c.AckTimeout = time.Hour }, "AckTimeout must be at most 10m0s, got 1h0m0s"},
		{"keep-alive 1s", func(c *uplink.Config) { c.KeepAlive = time.Second }, "KeepAlive must be at least 2s, got 1s"},
		{"ping timeout 1ms", func(c *uplink.Config) { c.PingTimeout = time.Millisecond }, "PingTimeout must be at least 1s"},
		{"connect timeout 1h", func(c *uplink.Config) { c.ConnectTimeout = time.Hour }, "ConnectTimeout must be at most 5m0s"},
		{"min backoff 1ns", func(c *uplink.Config) { c.MinBackoff = time.Nanosecond }, "MinBackoff must be at least 10ms"},
		{"max backoff 1h", func(c *uplink.Config) { c.MaxBackoff = time.Hour }, "MaxBackoff must be at most 10m0s"},
		{"max backoff below default min", func(c *uplink.Config) { c.MaxBackoff = 50 * time.Millisecond },
			"MinBackoff must not exceed MaxBackoff (50ms), got the default 100ms"},
		{"batch bytes 1", func(c *uplink.Config) { c.MaxBatchBytes = 1 }, "MaxBatchBytes must be at least 16384 bytes (16 KiB), got 1"},
		{"negative batch bytes", func(c *uplink.Config) { c.MaxBatchBytes = -1 }, "MaxBatchBytes must not be negative"},
		{"batch records too many", func(c *uplink.Config) { c.MaxBatchRecords = protocol.MaxBatchRecords + 1 }, "MaxBatchRecords must be from 1 to"},
		{"window 65", func(c *uplink.Config) { c.MaxInflightBatches = 65 }, "MaxInflightBatches must be from 1 to 64, got 65"},
	} {
		var c uplink.Config
		tc.mutate(&c)
		err := c.ValidateLimits()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ValidateLimits = %v, want an error containing %q", tc.name, err, tc.want)
			continue
		}
		var field *configcheck.FieldError
		if !errors.As(err, &field) {
			t.Errorf("%s: error %v is not a configcheck.FieldError", tc.name, err)
		}
	}

	limits := uplink.Config{
		AckTimeout: uplink.MaxAckTimeout, KeepAlive: uplink.MinKeepAlive, PingTimeout: uplink.MinPingTimeout,
		ConnectTimeout: uplink.MaxConnectTimeout, MinBackoff: uplink.MinBackoffBound, MaxBackoff: uplink.MaxBackoffBound,
		MaxBatchBytes: uplink.MinBatchBytes, MaxBatchRecords: 1, MaxInflightBatches: 1,
	}
	if err := limits.ValidateLimits(); err != nil {
		t.Errorf("the range ends: ValidateLimits = %v, want nil", err)
	}
	var zero uplink.Config
	if err := zero.ValidateLimits(); err != nil {
		t.Errorf("the defaults: ValidateLimits = %v, want nil", err)
	}
}
