package syncloop

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// never is an interval that no test waits for, so each sync in a test
// comes from the start, a Notify or a retry.
const never = time.Hour

// call is one call of a test's Sync: the loop's context, and the channel
// on which the test sends the call's result.
type call struct {
	ctx    context.Context
	result chan error
}

// stepper is a Sync function that hands each call to the test and
// returns the result the test sends.
type stepper struct {
	calls chan call
}

func newStepper() *stepper { return &stepper{calls: make(chan call)} }

// sync also returns when ctx is canceled, so that Close ends a test even
// when a call came that the test does not take.
func (s *stepper) sync(ctx context.Context) error {
	c := call{ctx: ctx, result: make(chan error, 1)}
	select {
	case s.calls <- c:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-c.result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// next waits for the loop's next call of Sync.
func (s *stepper) next(t *testing.T) call {
	t.Helper()
	select {
	case c := <-s.calls:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("Sync was not called")
		return call{}
	}
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s was not closed", what)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestLoop_NotifyCoalescing(t *testing.T) {
	st := newStepper()
	l := New(Config{Interval: never, RetryInterval: never, Sync: st.sync})
	l.Start()
	t.Cleanup(l.Close)

	first := st.next(t)
	for range 3 {
		l.Notify() // nothing reads the requests while Sync runs; none blocks
	}
	first.result <- nil

	second := st.next(t)
	// The loop took the only pending request to start this sync, so the
	// three notifies made exactly one more sync.
	if n := len(l.notify); n != 0 {
		t.Errorf("%d sync requests pending after the second sync started, want 0", n)
	}
	second.result <- nil

	l.Notify()
	third := st.next(t)
	third.result <- nil
}

func TestLoop_RetryAfterFailure(t *testing.T) {
	st := newStepper()
	failure := errors.New("store unreachable")
	var errs []error
	var firstSyncs atomic.Int32
	var l *Loop
	l = New(Config{
		Interval:      never,
		RetryInterval: time.Millisecond,
		Sync:          st.sync,
		OnError:       func(err error) { errs = append(errs, err) },
		OnFirstSync: func() {
			firstSyncs.Add(1)
			if isClosed(l.Synced()) {
				t.Error("Synced was closed before OnFirstSync was called")
			}
		},
	})
	l.Start()
	t.Cleanup(l.Close)

	st.next(t).result <- failure
	st.next(t).result <- failure
	retry := st.next(t) // no Notify: the retry interval brought it
	if isClosed(l.Synced()) {
		t.Fatal("Synced is closed while no sync has succeeded")
	}
	// OnError runs on the loop's goroutine before it waits to retry, so
	// both failures are recorded by now.
	if len(errs) != 2 || !errors.Is(errs[0], failure) || !errors.Is(errs[1], failure) {
		t.Fatalf("OnError got %v, want the two failures", errs)
	}
	retry.result <- nil
	waitClosed(t, l.Synced(), "Synced after a successful sync")

	l.Notify()
	st.next(t).result <- nil
	l.Notify()
	st.next(t).result <- nil
	l.Close()
	if n := firstSyncs.Load(); n != 1 {
		t.Errorf("OnFirstSync called %d times, want 1", n)
	}
}

func TestLoop_FailureAfterFirstSyncKeepsSynced(t *testing.T) {
	st := newStepper()
	l := New(Config{Interval: never, RetryInterval: time.Millisecond, Sync: st.sync})
	l.Start()
	t.Cleanup(l.Close)

	st.next(t).result <- nil
	waitClosed(t, l.Synced(), "Synced")
	l.Notify()
	st.next(t).result <- errors.New("publish failed")
	st.next(t).result <- nil // the retry
	if !isClosed(l.Synced()) {
		t.Error("Synced reopened after a later failure")
	}
}

func TestLoop_CloseCancelsSyncAndWaits(t *testing.T) {
	var returned atomic.Bool
	started := make(chan struct{})
	l := New(Config{
		Interval:      never,
		RetryInterval: never,
		Sync: func(ctx context.Context) error {
			close(started)
			<-ctx.Done()
			returned.Store(true)
			return ctx.Err()
		},
		OnError: func(err error) {
			if !errors.Is(err, context.Canceled) {
				t.Errorf("OnError got %v, want context.Canceled", err)
			}
		},
	})
	l.Start()
	waitClosed(t, started, "the first sync's start")

	l.Close()
	if !returned.Load() {
		t.Fatal("Close returned before the running sync did")
	}
	if !isClosed(l.done) {
		t.Error("the loop's goroutine is still running after Close")
	}
	l.Close() // a second Close returns at once
	if isClosed(l.Synced()) {
		t.Error("Synced is closed although no sync succeeded")
	}
}

func TestLoop_StartAfterCloseDoesNothing(t *testing.T) {
	l := New(Config{
		Interval:      never,
		RetryInterval: never,
		Sync: func(context.Context) error {
			t.Error("Sync called after Close")
			return nil
		},
	})
	l.Close()
	l.Start()
	if l.started {
		t.Error("Start after Close started the loop")
	}
	l.Close()
}

func TestLoop_CloseWithoutStart(t *testing.T) {
	l := New(Config{Interval: never, RetryInterval: never, Sync: func(context.Context) error { return nil }})
	l.Close() // must not wait for a goroutine that never ran
	l.Close()
}

func TestTiming_Resolve(t *testing.T) {
	defaults := Timing{Interval: 30 * time.Second, RetryInterval: 2 * time.Second, QueryTimeout: 10 * time.Second}

	got, err := Timing{RetryInterval: 5 * time.Second}.Resolve(defaults)
	if err != nil {
		t.Fatal(err)
	}
	want := Timing{Interval: 30 * time.Second, RetryInterval: 5 * time.Second, QueryTimeout: 10 * time.Second}
	if got != want {
		t.Errorf("Resolve = %+v, want %+v", got, want)
	}

	_, err = Timing{Interval: -time.Second, QueryTimeout: -time.Millisecond}.Resolve(defaults)
	if err == nil {
		t.Fatal("negative durations accepted")
	}
	msg := err.Error()
	for _, part := range []string{"Interval -1s is negative", "QueryTimeout -1ms is negative"} {
		if !strings.Contains(msg, part) {
			t.Errorf("error %q does not contain %q", msg, part)
		}
	}
	if strings.Contains(msg, "RetryInterval") {
		t.Errorf("error %q names RetryInterval, which is valid", msg)
	}
}
