package configcheck_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/internal/configcheck"
)

func TestDuration(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, ""},
		{time.Second, ""},
		{time.Minute, ""},
		{time.Nanosecond, "AckTimeout must be at least 1s, got 1ns"},
		{time.Hour, "AckTimeout must be at most 1m0s, got 1h0m0s"},
		{-time.Second, "AckTimeout must be at least 1s, got -1s"},
	} {
		err := configcheck.Duration("AckTimeout", tc.d, time.Second, time.Minute)
		if got := fmt.Sprint(err); (tc.want == "" && err != nil) || (tc.want != "" && got != tc.want) {
			t.Errorf("Duration(%s) = %v, want %q", tc.d, err, tc.want)
		}
	}
}

func TestBytes(t *testing.T) {
	err := configcheck.Bytes("SpoolMaxBytes", 1, 4<<20, 1<<40)
	if want := "SpoolMaxBytes must be at least 4194304 bytes (4 MiB), got 1"; fmt.Sprint(err) != want {
		t.Errorf("Bytes = %v, want %q", err, want)
	}
	if got := configcheck.FormatBytes(1000); got != "1000 bytes" {
		t.Errorf("FormatBytes(1000) = %q, want 1000 bytes", got)
	}
	if got := configcheck.FormatBytes(3 << 10); got != "3072 bytes (3 KiB)" {
		t.Errorf("FormatBytes(3 KiB) = %q", got)
	}
}

func TestRename(t *testing.T) {
	names := configcheck.Map(map[string]string{
		"AckTimeout": "--uplink-ack-timeout (XPRESS_UPLINK_ACK_TIMEOUT)",
		"MaxBytes":   "--spool-max-bytes (XPRESS_SPOOL_MAX_BYTES)",
	})
	reserve := configcheck.Compare("SOSReserveBytes", "MaxBytes", func(related string) string {
		return "must be less than " + related + " (8), got 9"
	})
	err := errors.Join(
		configcheck.Duration("AckTimeout", time.Nanosecond, time.Second, time.Minute),
		errors.Join(reserve, errors.New("registerer is not a gatherer")),
		configcheck.Newf("Unmapped", "is empty"),
	)

	renamed := configcheck.Rename(err, names)

	want := strings.Join([]string{
		"--uplink-ack-timeout (XPRESS_UPLINK_ACK_TIMEOUT) must be at least 1s, got 1ns",
		"SOSReserveBytes must be less than --spool-max-bytes (XPRESS_SPOOL_MAX_BYTES) (8), got 9",
		"registerer is not a gatherer",
		"Unmapped is empty",
	}, "\n")
	if renamed.Error() != want {
		t.Errorf("renamed error:\n%s\nwant:\n%s", renamed, want)
	}
	if err.Error() == renamed.Error() {
		t.Error("Rename changed nothing")
	}
	var field *configcheck.FieldError
	if !errors.As(renamed, &field) || field.Field != "--uplink-ack-timeout (XPRESS_UPLINK_ACK_TIMEOUT)" {
		t.Errorf("renamed error holds field %v, want the flag name", field)
	}
	if configcheck.Rename(nil, names) != nil {
		t.Error("Rename(nil) is not nil")
	}
	wrapped := fmt.Errorf("open: %w", err)
	if configcheck.Rename(wrapped, names) != wrapped {
		t.Error("Rename rebuilt an error wrapped by fmt.Errorf")
	}
}

func TestWrap(t *testing.T) {
	err := configcheck.Wrap("ID", errors.New("invalid id: agent id must be 1 to 64 characters, got 0"))
	renamed := configcheck.Rename(err, configcheck.Map(map[string]string{"ID": "--id (XPRESS_ID)"}))
	if want := "--id (XPRESS_ID): invalid id: agent id must be 1 to 64 characters, got 0"; renamed.Error() != want {
		t.Errorf("renamed = %q, want %q", renamed, want)
	}
}
