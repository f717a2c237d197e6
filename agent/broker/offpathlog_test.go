package broker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// recordingHandler keeps the messages it handles. While gate is not nil,
// Handle waits until gate is closed.
type recordingHandler struct {
	mu    sync.Mutex
	msgs  []string
	gate  chan struct{}
	level slog.Level
}

func (h *recordingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	if h.gate != nil {
		<-h.gate
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Message)
	return nil
}

func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordingHandler) messages() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.msgs...)
}

// callerWaitLimit bounds how long a test waits for a call that must not
// block; it detects a hang, it measures no speed.
const callerWaitLimit = 10 * time.Second

// A caller's record is written by the log's goroutine, so a stalled
// output does not hold the caller; close writes everything buffered.
func TestOffPathLog_StalledOutput(t *testing.T) {
	h := &recordingHandler{gate: make(chan struct{})}
	l := newOffPathLogSize(h, 10)
	l.start()

	logged := make(chan struct{})
	go func() {
		defer close(logged)
		for i := range 5 {
			l.log(slog.LevelInfo, fmt.Sprintf("sos %d", i))
		}
	}()
	select {
	case <-logged:
	case <-time.After(callerWaitLimit):
		t.Fatal("log blocked its caller while the output was stalled")
	}

	close(h.gate)
	l.close()
	got := h.messages()
	if len(got) != 5 {
		t.Fatalf("messages written = %q, want 5", got)
	}
	for i, m := range got {
		if want := fmt.Sprintf("sos %d", i); m != want {
			t.Errorf("message %d = %q, want %q (records must keep their order)", i, m, want)
		}
	}
}

// With the buffer full the caller writes its own record, so nothing is
// dropped.
func TestOffPathLog_FullBuffer(t *testing.T) {
	h := &recordingHandler{gate: make(chan struct{})}
	l := newOffPathLogSize(h, 2)
	l.start()

	// The goroutine takes the first record and waits at the gate, the
	// next two fill the buffer, and the fourth caller writes its own.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 4 {
			l.log(slog.LevelWarn, fmt.Sprintf("sos %d", i))
		}
	}()
	close(h.gate)
	select {
	case <-done:
	case <-time.After(callerWaitLimit):
		t.Fatal("log callers did not return")
	}
	l.close()
	if got := h.messages(); len(got) != 4 {
		t.Errorf("messages written = %q, want all 4", got)
	}
}

// Before start and after close the caller writes its own record, and a
// level the handler does not want is not written at all.
func TestOffPathLog_NotRunning(t *testing.T) {
	h := &recordingHandler{level: slog.LevelInfo}
	l := newOffPathLogSize(h, 4)
	l.log(slog.LevelInfo, "before start")
	l.log(slog.LevelDebug, "filtered")
	if got := h.messages(); len(got) != 1 || got[0] != "before start" {
		t.Fatalf("messages before start = %q, want only the info record", got)
	}
	l.start()
	l.close()
	l.log(slog.LevelWarn, "after close")
	if got := h.messages(); len(got) != 2 || got[1] != "after close" {
		t.Errorf("messages after close = %q, want the record logged after close", got)
	}
	l.close() // a second close does nothing
	l.start() // and start after close starts nothing
	l.log(slog.LevelWarn, "after restart")
	if got := h.messages(); len(got) != 3 {
		t.Errorf("messages = %q, want the last record written by its caller", got)
	}
}
