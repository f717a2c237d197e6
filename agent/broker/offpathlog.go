package broker

import (
	"context"
	"log/slog"
	"runtime"
	"sync"
	"time"
)

// offPathLogSize is how many records offPathLog buffers before a caller
// writes its record itself.
const offPathLogSize = 16384

// offPathLog writes log records on a goroutine of its own, so that the
// hook, which logs every SOS it stores, does not hold the vehicle's
// PUBACK while the log output is slow. The output is often a pipe (to
// journald, or to the process that started the agent), and one slow
// write holds every goroutine that logs behind the handler's lock. In a
// burst of 10,000 SOS the PUBACKs waited about three times longer with
// the log line on their path. A record keeps the time it was made. When
// the buffer is full the caller writes its record itself, so no record
// is dropped. Before start and after close, every caller writes its own
// record.
type offPathLog struct {
	handler slog.Handler
	records chan slog.Record
	done    chan struct{}

	mu      sync.RWMutex
	running bool
	stopped bool
}

func newOffPathLog(h slog.Handler) *offPathLog { return newOffPathLogSize(h, offPathLogSize) }

func newOffPathLogSize(h slog.Handler, size int) *offPathLog {
	return &offPathLog{handler: h, records: make(chan slog.Record, size), done: make(chan struct{})}
}

// start starts the goroutine that writes the records. It does nothing
// after close.
func (l *offPathLog) start() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.running || l.stopped {
		return
	}
	l.running = true
	go l.run()
}

// log logs msg with args (alternating keys and values, as slog.Logger.Log
// takes them) at level.
func (l *offPathLog) log(level slog.Level, msg string, args ...any) {
	ctx := context.Background()
	if !l.handler.Enabled(ctx, level) {
		return
	}
	var pcs [1]uintptr
	runtime.Callers(2, pcs[:]) // the caller of log
	r := slog.NewRecord(time.Now(), level, msg, pcs[0])
	r.Add(args...)

	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.running {
		select {
		case l.records <- r:
			return
		default:
		}
	}
	_ = l.handler.Handle(ctx, r)
}

func (l *offPathLog) run() {
	defer close(l.done)
	for r := range l.records {
		_ = l.handler.Handle(context.Background(), r)
	}
}

// close writes the buffered records and stops the goroutine. Records
// logged afterwards are written by their callers.
func (l *offPathLog) close() {
	l.mu.Lock()
	wasRunning := l.running
	l.running, l.stopped = false, true
	if wasRunning {
		close(l.records)
	}
	l.mu.Unlock()
	if wasRunning {
		<-l.done
	}
}
