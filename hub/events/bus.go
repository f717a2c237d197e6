// Package events fans hub events out to in-process subscribers. The bus
// numbers every event and keeps the most recent ones, so a subscriber that
// reconnects resumes after the last sequence number it saw and misses
// nothing, or learns that it must reload its state.
//
// The payloads of the event types, as JSON in Event.Data:
//
//	fix               a stored fix (store.StoredFix)
//	incident.opened   an incident change (store.IncidentChange)
//	incident.updated  an incident change (store.IncidentChange)
//	vehicle.status    a vehicle's online state (store.VehicleStatus)
//	agent.status      an agent's connection state: agent_id, region, connected, since
package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The event types the hub publishes.
const (
	TypeFix             = "fix"
	TypeIncidentOpened  = "incident.opened"
	TypeIncidentUpdated = "incident.updated"
	TypeVehicleStatus   = "vehicle.status"
	TypeAgentStatus     = "agent.status"
)

// Defaults of Config.
const (
	// DefaultHistory is how many recent events a bus keeps for resume.
	DefaultHistory = 10000
	// DefaultBuffer is how many live events a subscription may have queued
	// before it is closed as a slow consumer.
	DefaultBuffer = 1024
)

// maxTypeLength bounds an event type name, in bytes.
const maxTypeLength = 64

// Errors returned by the bus and its subscriptions.
var (
	// ErrGap means a resume point is outside the kept history, so the
	// subscriber must reload its state. Subscribe returns it as a *GapError.
	ErrGap = errors.New("resume point is outside the kept event history")
	// ErrSlowConsumer means a subscription fell a full buffer behind and was closed.
	ErrSlowConsumer = errors.New("subscriber fell behind the event stream")
	// ErrClosed means the bus is closed.
	ErrClosed = errors.New("event bus closed")
	// ErrInvalidType means an event type is empty, too long or has characters
	// other than lower-case letters, digits, '.' and '_'.
	ErrInvalidType = errors.New("invalid event type")
)

// Event is one published event. Seq is assigned by the bus: strictly
// increasing from 1 in publish order. Time is the bus clock at publish, in UTC.
type Event struct {
	Type string          `json:"type"`
	Seq  uint64          `json:"seq"`
	Time time.Time       `json:"time"`
	Data json.RawMessage `json:"data"`
}

// GapError is the ErrGap returned by Subscribe. Events Oldest through
// Latest are kept, so a resume point from Oldest-1 to Latest works.
type GapError struct {
	// After is the requested resume point.
	After uint64
	// Oldest is the oldest kept sequence number, Latest+1 when none is kept.
	Oldest uint64
	// Latest is the sequence number of the newest event published.
	Latest uint64
}

func (e *GapError) Error() string {
	if e.After > e.Latest {
		return fmt.Sprintf("resume after seq %d: newest event is seq %d (the bus restarted): %v", e.After, e.Latest, ErrGap)
	}
	return fmt.Sprintf("resume after seq %d: oldest kept event is seq %d: %v", e.After, e.Oldest, ErrGap)
}

// Unwrap returns ErrGap.
func (e *GapError) Unwrap() error { return ErrGap }

// Config configures a Bus.
type Config struct {
	// History is how many recent events are kept for Subscribe to replay.
	// Zero or negative means DefaultHistory.
	History int
	// Buffer is how many live events a subscription may hold unreceived
	// before it is closed with ErrSlowConsumer. Replayed events come on top:
	// a subscription's channel has room for its replay plus Buffer. Zero or
	// negative means DefaultBuffer.
	Buffer int
	// Logger receives slow-consumer and close messages. Nil discards them.
	Logger *slog.Logger
	// Registerer registers the bus metrics. Nil means a private registry.
	Registerer prometheus.Registerer
	// Now is the clock that stamps events. Nil means time.Now.
	Now func() time.Time
	// FirstSeq is the sequence number of the first event. Zero means 1.
	// A hub passes its start time in microseconds, so sequence numbers keep
	// growing across restarts. A client that resumes against a restarted hub
	// then gets a gap and reloads its state, instead of a silent resume that
	// skips the events published before it reconnected.
	FirstSeq uint64
}

// Bus is an in-process event fan-out with a bounded history. It is safe for
// concurrent use. Publish never blocks on a subscriber: one that falls
// Buffer events behind is closed with ErrSlowConsumer and resumes with
// Subscribe from the last sequence number it received.
type Bus struct {
	history int
	buffer  int
	log     *slog.Logger
	now     func() time.Time
	metrics *metrics

	mu     sync.Mutex
	seq    uint64
	ring   ring
	subs   []*Subscription
	closed bool
}

// NewBus returns a bus configured by cfg, with defaults filled in. It
// registers the bus metrics and starts no goroutines.
func NewBus(cfg Config) *Bus {
	if cfg.History <= 0 {
		cfg.History = DefaultHistory
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = DefaultBuffer
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.FirstSeq == 0 {
		cfg.FirstSeq = 1
	}
	return &Bus{
		seq:     cfg.FirstSeq - 1,
		history: cfg.History,
		buffer:  cfg.Buffer,
		log:     cfg.Logger.With("component", "events"),
		now:     cfg.Now,
		metrics: newMetrics(cfg.Registerer),
		ring:    ring{buf: make([]Event, 0, cfg.History)},
	}
}

// Publish encodes data as JSON, gives it the next sequence number and
// delivers it to every subscription. It does not wait for subscribers.
// A rejected event uses up no sequence number. Publish returns
// ErrInvalidType for a bad type name, an encoding error for data that has
// no JSON form, and ErrClosed after Close.
func (b *Bus) Publish(typ string, data any) (Event, error) {
	if err := checkType(typ); err != nil {
		return Event{}, err
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return Event{}, fmt.Errorf("encode %s event: %w", typ, err)
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return Event{}, ErrClosed
	}
	b.seq++
	ev := Event{Type: typ, Seq: b.seq, Time: b.now().UTC(), Data: raw}
	b.ring.push(ev, b.history)

	// Iterate backwards because dropLocked moves the last subscription into
	// the dropped one's slot.
	for i := len(b.subs) - 1; i >= 0; i-- {
		s := b.subs[i]
		select {
		case s.ch <- ev:
		default:
			b.dropLocked(s, ErrSlowConsumer)
			b.metrics.slowConsumers.Inc()
			b.log.Warn("subscriber fell behind, closing it",
				"seq", ev.Seq, "last_delivered", ev.Seq-1, "buffer", cap(s.ch))
		}
	}
	b.metrics.published.WithLabelValues(typeLabel(typ)).Inc()
	return ev, nil
}

// Subscribe returns a subscription that first receives every kept event
// with Seq > after, then every event published later, in sequence order.
// Subscribe(b.Latest()) receives only new events. It returns a *GapError
// (ErrGap) when events after `after` are no longer kept, or when after is
// ahead of the newest event, which happens when a client resumes against
// a restarted bus. It returns ErrClosed after Close.
func (b *Bus) Subscribe(after uint64) (*Subscription, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}

	oldest := b.seq - uint64(b.ring.len()) + 1
	if after > b.seq || after+1 < oldest {
		b.metrics.gaps.Inc()
		return nil, &GapError{After: after, Oldest: oldest, Latest: b.seq}
	}

	replay := int(b.seq - after)
	s := &Subscription{bus: b, ch: make(chan Event, replay+b.buffer)}
	b.ring.each(replay, func(ev Event) { s.ch <- ev })
	s.index = len(b.subs)
	b.subs = append(b.subs, s)
	b.metrics.subscribers.Set(float64(len(b.subs)))
	return s, nil
}

// Latest returns the sequence number of the newest event, or 0 before the first.
func (b *Bus) Latest() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seq
}

// Close closes every subscription with ErrClosed and makes later Publish
// and Subscribe calls fail with ErrClosed. It is safe to call more than
// once and always returns nil.
func (b *Bus) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	for len(b.subs) > 0 {
		b.dropLocked(b.subs[len(b.subs)-1], ErrClosed)
	}
	b.log.Info("event bus closed", "seq", b.seq)
	return nil
}

// dropLocked removes s from the bus and closes its channel with reason
// err (nil for a subscriber's own Close). The caller holds b.mu.
func (b *Bus) dropLocked(s *Subscription, err error) {
	if s.index < 0 {
		return
	}
	last := len(b.subs) - 1
	b.subs[s.index] = b.subs[last]
	b.subs[s.index].index = s.index
	b.subs[last] = nil
	b.subs = b.subs[:last]

	s.index = -1
	s.err = err
	close(s.ch)
	b.metrics.subscribers.Set(float64(len(b.subs)))
}

// Subscription is one subscriber's view of the bus.
type Subscription struct {
	bus *Bus
	ch  chan Event
	// index is the position in bus.subs, -1 once closed. Guarded by bus.mu.
	index int
	// err is the reason the subscription was closed. Guarded by bus.mu.
	err error
}

// C returns the channel of events. It is closed when the subscription
// ends. Events already in it can still be received, and Err then returns
// the reason it ended.
func (s *Subscription) C() <-chan Event { return s.ch }

// Close ends the subscription and closes C. It is safe to call more than
// once and concurrently with Publish.
func (s *Subscription) Close() {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	s.bus.dropLocked(s, nil)
}

// Err returns why C was closed: ErrSlowConsumer, ErrClosed when the bus
// closed, or nil after Close or while the subscription is open.
func (s *Subscription) Err() error {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	return s.err
}

// ring keeps the newest events, oldest first, in a fixed-capacity buffer.
type ring struct {
	buf   []Event
	start int
}

func (r *ring) len() int { return len(r.buf) }

// push appends ev, overwriting the oldest event once size events are kept.
func (r *ring) push(ev Event, size int) {
	if len(r.buf) < size {
		r.buf = append(r.buf, ev)
		return
	}
	r.buf[r.start] = ev
	r.start = (r.start + 1) % len(r.buf)
}

// each calls fn on the newest n events, oldest first.
func (r *ring) each(n int, fn func(Event)) {
	for i := len(r.buf) - n; i < len(r.buf); i++ {
		fn(r.buf[(r.start+i)%len(r.buf)])
	}
}

func checkType(typ string) error {
	if typ == "" || len(typ) > maxTypeLength {
		return fmt.Errorf("%w: %q must be 1 to %d bytes", ErrInvalidType, typ, maxTypeLength)
	}
	for _, c := range typ {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '.' && c != '_' {
			return fmt.Errorf("%w: %q may contain only a-z, 0-9, '.' and '_'", ErrInvalidType, typ)
		}
	}
	return nil
}

// typeLabel bounds the metric label: known types by name, others as "other".
func typeLabel(typ string) string {
	switch typ {
	case TypeFix, TypeIncidentOpened, TypeIncidentUpdated, TypeVehicleStatus, TypeAgentStatus:
		return typ
	}
	return "other"
}
