package sim

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLimitedLog_LogsOncePerIntervalPerKey(t *testing.T) {
	var buf bytes.Buffer
	l := newLimitedLog(slog.New(slog.NewTextHandler(&buf, nil)), time.Hour)

	for range 3 {
		l.warn("lost", "connection lost", "vehicle", "sim-0001")
	}
	l.warn("failed", "publish failed", "vehicle", "sim-0002")
	if n := strings.Count(buf.String(), "\n"); n != 2 {
		t.Fatalf("%d lines logged, want one per key:\n%s", n, buf.String())
	}

	// Once the interval has passed, the next line reports what was left out.
	l.mu.Lock()
	l.last["lost"] = time.Now().Add(-2 * time.Hour)
	l.mu.Unlock()
	buf.Reset()
	l.warn("lost", "connection lost", "vehicle", "sim-0003")
	if !strings.Contains(buf.String(), "similar_left_out=2") || !strings.Contains(buf.String(), "vehicle=sim-0003") {
		t.Errorf("line after the interval %q, want vehicle=sim-0003 and similar_left_out=2", buf.String())
	}
}
