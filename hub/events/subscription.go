package events

import (
	"errors"
	"sync/atomic"
)

// How a subscription is read, in Subscription.mode.
const (
	modeUnread int32 = iota
	modeNext
	modeChannel
)

// errReadThroughC is the error Next returns for a subscription read through C.
var errReadThroughC = errors.New("events: Next called on a subscription that is read through C")

// closedChan is the channel Ready returns when Next has something to return.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// Subscription is one subscriber's view of the bus. It is read either
// through C or with Next and Ready, and the first of those calls decides
// which. Next, Ready and C must be called from one goroutine at a time;
// Close and Err may be called from any.
type Subscription struct {
	bus *Bus
	// mode is modeUnread until the first call of C, Next or Ready.
	mode atomic.Int32
	// ch is the channel of a subscription read through C. C sets it under
	// bus.mu before it stores modeChannel.
	ch chan Event

	// next is the sequence number of the next event due, and start the
	// newest one when Subscribe was called: events up to start are the
	// replay. behind is set once the subscription fell too far behind, and
	// limit is then the last event it still gets. The goroutine that reads
	// the subscription owns these fields.
	next, start, limit uint64
	behind             bool

	// unsubscribed is set by Close.
	unsubscribed atomic.Bool
	// index is the position in bus.subs and chanIndex in bus.chans, -1 when
	// not there. Guarded by bus.mu.
	index, chanIndex int
	// err is the reason the subscription ended. Guarded by bus.mu.
	err error
}

// C returns the channel of events. Publish sends each event into it, and
// it has room for the replay plus Config.Buffer events. It is closed when
// the subscription ends. Events already in it can still be received, and
// Err then returns the reason it ended. The first call makes the channel
// and moves the events due so far into it.
func (s *Subscription) C() <-chan Event {
	if s.mode.Load() == modeChannel {
		return s.ch
	}
	b := s.bus
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.mode.Load() != modeChannel {
		s.bindChannelLocked()
	}
	return s.ch
}

// bindChannelLocked makes the subscription's channel, moves the events due
// so far into it and registers it with Publish, or closes it when the
// subscription has ended. The caller holds bus.mu.
func (s *Subscription) bindChannelLocked() {
	b := s.bus
	latest := b.latest.Load()
	last, slow := latest, s.behind
	switch {
	case s.unsubscribed.Load():
		last = s.next - 1
	case s.behind:
		last = s.limit
	case s.lag(latest) > b.buffer:
		last, slow = s.lagLimit(), true
	}

	replay := uint64(0)
	if s.start >= s.next {
		replay = s.start - s.next + 1
	}
	// The events from next to last number at most replay+buffer: the lag
	// check above bounds the live ones by buffer.
	s.ch = make(chan Event, replay+b.buffer)
	for seq := s.next; seq <= last && len(s.ch) < cap(s.ch); seq++ {
		ev := b.slots[seq%b.history].Load()
		if ev == nil || ev.Seq != seq {
			slow = true
			break
		}
		s.ch <- *ev
	}
	s.mode.Store(modeChannel)

	switch {
	case s.index < 0:
		// Ended before the first C: by Close, by the bus's Close or by a
		// lag that Next found.
		close(s.ch)
	case slow:
		b.endLocked(s, ErrSlowConsumer)
		b.metrics.slowConsumers.Inc()
		b.log.Warn("subscriber fell behind, closing it",
			"seq", last+1, "last_delivered", s.next-1, "buffer", cap(s.ch))
	default:
		s.chanIndex = len(b.chans)
		b.chans = append(b.chans, s)
	}
}

// Next returns the next event without waiting. It returns ok false and a
// nil error when none is published yet, and Ready signals when to call
// again.
// Once the subscription has ended and the events still due to it were
// returned, Next returns the reason: ErrSlowConsumer, ErrClosed when the
// bus closed, or ErrUnsubscribed after Close. It also returns an error for
// a subscription read through C.
func (s *Subscription) Next() (ev Event, ok bool, err error) {
	if !s.readWithNext() {
		return Event{}, false, errReadThroughC
	}
	if s.unsubscribed.Load() {
		return Event{}, false, ErrUnsubscribed
	}
	b := s.bus
	latest := b.latest.Load()
	if !s.behind && s.lag(latest) > b.buffer {
		s.fallBehind(s.lagLimit(), latest)
	}
	if s.behind && s.next > s.limit {
		return Event{}, false, s.endReason()
	}
	if s.next > latest {
		// Close stops Publish before it sets closed, so once closed is
		// set a new load of latest is final.
		if b.closed.Load() && s.next > b.latest.Load() {
			return Event{}, false, s.endReason()
		}
		return Event{}, false, nil
	}

	e := b.slots[s.next%b.history].Load()
	if e == nil || e.Seq != s.next {
		// Newer events overwrote this one: the subscription fell behind
		// the kept history.
		s.fallBehind(s.next-1, latest)
		return Event{}, false, s.endReason()
	}
	s.next++
	return *e, true, nil
}

// Ready returns a channel that is closed once Next has something to return:
// an event, or the end of the subscription. When Next already has, the
// channel is closed on return. A Close called from another goroutine does
// not close the channel, so the goroutine that waits on it should also
// wait on its own cancellation.
func (s *Subscription) Ready() <-chan struct{} {
	if !s.readWithNext() || s.hasNext() {
		return closedChan
	}
	b := s.bus
	wake := b.wake.Load()
	// Publish replaces and closes the wake channel only when wakeTaken is
	// set. Setting it before checking again means that an event published
	// after the check closes the channel returned here.
	b.wakeTaken.Store(true)
	if s.hasNext() {
		return closedChan
	}
	return *wake
}

// hasNext reports whether Next would return an event or an error.
func (s *Subscription) hasNext() bool {
	b := s.bus
	return s.next <= b.latest.Load() || s.behind || b.closed.Load() || s.unsubscribed.Load()
}

// readWithNext switches an unread subscription to reading with Next and
// reports whether it reads that way.
func (s *Subscription) readWithNext() bool {
	return s.mode.CompareAndSwap(modeUnread, modeNext) || s.mode.Load() == modeNext
}

// lag returns how many live events, those after start, are due but not yet
// returned when latest is the newest.
func (s *Subscription) lag(latest uint64) uint64 {
	return latest - max(s.next-1, s.start)
}

// lagLimit returns the last event a subscription that lags more than
// Config.Buffer live events still gets: the one that filled its buffer.
func (s *Subscription) lagLimit() uint64 {
	return max(s.next-1, s.start) + s.bus.buffer
}

// fallBehind ends the subscription with ErrSlowConsumer after event limit.
func (s *Subscription) fallBehind(limit, latest uint64) {
	s.behind, s.limit = true, limit
	b := s.bus
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.endLocked(s, ErrSlowConsumer) {
		b.metrics.slowConsumers.Inc()
		b.log.Warn("subscriber fell behind, closing it",
			"seq", latest, "last_delivered", s.next-1, "last_due", limit, "buffer", b.buffer)
	}
}

// endReason returns why the subscription ended, ErrUnsubscribed after Close.
func (s *Subscription) endReason() error {
	if err := s.Err(); err != nil {
		return err
	}
	return ErrUnsubscribed
}

// Close ends the subscription and closes C. It is safe to call more than
// once and concurrently with Publish.
func (s *Subscription) Close() {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	s.unsubscribed.Store(true)
	s.bus.endLocked(s, nil)
}

// Err returns why the subscription ended: ErrSlowConsumer, ErrClosed when
// the bus closed, or nil after Close or while the subscription is open.
func (s *Subscription) Err() error {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	return s.err
}
