// Package events fans hub events out to in-process subscribers. The bus
// numbers every event and keeps the most recent ones, so a subscriber that
// reconnects resumes after the last sequence number it saw and misses
// nothing, or learns that it must reload its state.
//
// Publish encodes each event once, into its frame: the JSON object
// {"type","seq","time","data"} that Event.Frame returns. Every subscriber
// gets the same bytes, so sending an event to many WebSocket clients costs
// no further encoding. PublishIn also tags the event with the region whose
// data it carries (Event.Region, not part of the frame), so a subscriber
// that serves several regions' clients chooses events without decoding them.
//
// A subscription is read in one of two ways. C returns a channel that
// Publish fills, with room for Config.Buffer events; it suits the few
// in-process consumers. Next and Ready read the kept history at the
// subscription's own position and hold no buffer, so that thousands of
// WebSocket clients cost little memory. Either way a subscriber gets every
// event in sequence order, none coalesced or dropped, for as long as it
// keeps up. One that falls more than Config.Buffer events behind first gets
// the events up to that point and then ErrSlowConsumer. It resumes with
// Subscribe from the last sequence number it received, or gets ErrGap when
// those events are no longer kept.
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
	"sync/atomic"
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
	// DefaultBuffer is how many live events a subscription may have
	// unreceived before it is ended as a slow consumer.
	DefaultBuffer = 1024
)

// maxTypeLength bounds an event type name, in bytes.
const maxTypeLength = 64

// Errors returned by the bus and its subscriptions.
var (
	// ErrGap means a resume point is outside the kept history, so the
	// subscriber must reload its state. Subscribe returns it as a *GapError.
	ErrGap = errors.New("resume point is outside the kept event history")
	// ErrSlowConsumer means a subscription fell more than Config.Buffer
	// events behind, or behind the kept history, and was ended.
	ErrSlowConsumer = errors.New("subscriber fell behind the event stream")
	// ErrClosed means the bus is closed.
	ErrClosed = errors.New("event bus closed")
	// ErrUnsubscribed is the error Next returns after the subscription's Close.
	ErrUnsubscribed = errors.New("subscription closed")
	// ErrInvalidType means an event type is empty, too long or has characters
	// other than lower-case letters, digits, '.' and '_'.
	ErrInvalidType = errors.New("invalid event type")
)

// Event is one published event. Seq is assigned by the bus: strictly
// increasing from 1 in publish order. Time is the bus clock at publish, in UTC.
// The bus shares Data and the frame among all subscribers, so callers must
// not modify them.
type Event struct {
	Type string          `json:"type"`
	Seq  uint64          `json:"seq"`
	Time time.Time       `json:"time"`
	Data json.RawMessage `json:"data"`
	// Region is the region whose data the event carries, as given to
	// PublishIn, so that a subscriber can pass on only the events of the
	// regions its client may see without decoding Data. It is empty for an
	// event of no region. It is not part of the frame.
	Region string `json:"-"`

	// frame is the event's JSON encoding. Data is a part of it.
	frame []byte
}

// Frame returns the event's JSON encoding, the same bytes as
// json.Marshal(e), which the bus made once when the event was published.
// Every subscriber gets the same slice, so the caller must not modify it.
// It is nil for an Event that no Bus published.
func (e Event) Frame() []byte { return e.frame }

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
	// History is how many recent events are kept for Subscribe to replay
	// and for Next to read. Zero or negative means DefaultHistory.
	History int
	// Buffer is how many live events a subscription may have unreceived
	// before it is ended with ErrSlowConsumer. Replayed events come on top.
	// A subscription read through C has a channel with room for its replay
	// plus Buffer. One read through Next has no buffer of its own and reads
	// the history, so it also ends once the history no longer holds its next
	// event. Zero or negative means DefaultBuffer.
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
// Buffer events behind is ended with ErrSlowConsumer and resumes with
// Subscribe from the last sequence number it received.
type Bus struct {
	history  uint64
	buffer   uint64
	firstSeq uint64
	log      *slog.Logger
	now      func() time.Time
	metrics  *metrics

	// slots holds the kept events: event seq is in slots[seq%history] until
	// event seq+history overwrites it. Publish stores a slot before it moves
	// latest past it, so a reader that loads latest may read every slot up
	// to it without the lock.
	slots []atomic.Pointer[Event]
	// latest is the newest sequence number, firstSeq-1 before the first event.
	latest atomic.Uint64
	// closed is set by Close, under mu, before it wakes the readers.
	closed atomic.Bool
	// wake is the channel that Ready hands to waiting readers. Publish
	// closes and replaces it when a reader has taken it (wakeTaken) since
	// the last replacement; Close always does.
	wake      atomic.Pointer[chan struct{}]
	wakeTaken atomic.Bool

	// mu serializes Publish, Subscribe and Close and guards the lists.
	mu sync.Mutex
	// subs are the open subscriptions; chans those of them read through
	// C, which Publish feeds.
	subs  []*Subscription
	chans []*Subscription
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
	b := &Bus{
		history:  uint64(cfg.History),
		buffer:   uint64(cfg.Buffer),
		firstSeq: cfg.FirstSeq,
		log:      cfg.Logger.With("component", "events"),
		now:      cfg.Now,
		metrics:  newMetrics(cfg.Registerer),
		slots:    make([]atomic.Pointer[Event], cfg.History),
	}
	b.latest.Store(cfg.FirstSeq - 1)
	wake := make(chan struct{})
	b.wake.Store(&wake)
	return b
}

// Publish publishes an event of no region: PublishIn with an empty region.
// The WebSocket stream sends such events only to clients that see every
// region.
func (b *Bus) Publish(typ string, data any) (Event, error) {
	return b.PublishIn("", typ, data)
}

// PublishIn encodes data as JSON, gives it the next sequence number, encodes
// the event's frame and delivers it to every subscription. region is the
// region whose data the event carries, which subscribers use to choose the
// events they pass on; it is not part of the frame. PublishIn does not wait
// for subscribers. A rejected event uses up no sequence number. It returns
// ErrInvalidType for a bad type name, an encoding error for data that has
// no JSON form or a clock outside the years 0 to 9999, and ErrClosed after
// Close.
func (b *Bus) PublishIn(region, typ string, data any) (Event, error) {
	if err := checkType(typ); err != nil {
		return Event{}, err
	}
	enc := getEncoder()
	defer putEncoder(enc)
	raw, err := enc.encode(data)
	if err != nil {
		return Event{}, fmt.Errorf("encode %s event: %w", typ, err)
	}

	ev, wake, err := b.publish(region, typ, raw)
	if err != nil {
		return Event{}, err
	}
	// Closing the channel after unlocking keeps the wake-ups of the waiting
	// readers out of the critical section.
	if wake != nil {
		close(wake)
	}
	b.metrics.published.WithLabelValues(typeLabel(typ)).Inc()
	return *ev, nil
}

// publish stamps and stores one event and feeds the channels. It returns
// the wake channel that the caller must close, if any.
func (b *Bus) publish(region, typ string, raw []byte) (*Event, chan struct{}, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed.Load() {
		return nil, nil, ErrClosed
	}
	now := b.now().UTC()
	if y := now.Year(); y < 0 || y > 9999 {
		return nil, nil, fmt.Errorf("stamp %s event: the clock reads %s, outside the years 0 to 9999 that the JSON time format allows", typ, now)
	}
	seq := b.latest.Load() + 1
	ev := newEvent(typ, seq, now, raw)
	ev.Region = region
	b.slots[seq%b.history].Store(ev)
	b.latest.Store(seq)

	// Iterate backwards because endLocked moves the last channel
	// subscription into the ended one's slot.
	for i := len(b.chans) - 1; i >= 0; i-- {
		s := b.chans[i]
		select {
		case s.ch <- *ev:
		default:
			b.endLocked(s, ErrSlowConsumer)
			b.metrics.slowConsumers.Inc()
			b.log.Warn("subscriber fell behind, closing it",
				"seq", seq, "last_delivered", seq-1, "buffer", cap(s.ch))
		}
	}
	return ev, b.swapWakeLocked(false), nil
}

// swapWakeLocked replaces the wake channel and returns the old one for the
// caller to close. Unless force is set it does so only when a reader took
// the current channel since the last swap. The caller holds b.mu.
func (b *Bus) swapWakeLocked(force bool) chan struct{} {
	if !b.wakeTaken.Swap(false) && !force {
		return nil
	}
	next := make(chan struct{})
	return *b.wake.Swap(&next)
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
	if b.closed.Load() {
		return nil, ErrClosed
	}

	latest := b.latest.Load()
	oldest := b.oldest(latest)
	if after > latest || after+1 < oldest {
		b.metrics.gaps.Inc()
		return nil, &GapError{After: after, Oldest: oldest, Latest: latest}
	}

	s := &Subscription{bus: b, next: after + 1, start: latest, index: len(b.subs), chanIndex: -1}
	b.subs = append(b.subs, s)
	b.metrics.subscribers.Set(float64(len(b.subs)))
	return s, nil
}

// oldest returns the oldest kept sequence number when latest is the newest,
// latest+1 when none is kept.
func (b *Bus) oldest(latest uint64) uint64 {
	kept := min(latest-(b.firstSeq-1), b.history)
	return latest - kept + 1
}

// Latest returns the sequence number of the newest event, or FirstSeq-1
// before the first.
func (b *Bus) Latest() uint64 {
	return b.latest.Load()
}

// Close ends every subscription with ErrClosed and makes later Publish
// and Subscribe calls fail with ErrClosed. Subscribers still receive the
// events published before Close. It is safe to call more than once and
// always returns nil.
func (b *Bus) Close() error {
	b.mu.Lock()
	if b.closed.Load() {
		b.mu.Unlock()
		return nil
	}
	b.closed.Store(true)
	for len(b.subs) > 0 {
		b.endLocked(b.subs[len(b.subs)-1], ErrClosed)
	}
	wake := b.swapWakeLocked(true)
	seq := b.latest.Load()
	b.mu.Unlock()

	close(wake)
	b.log.Info("event bus closed", "seq", seq)
	return nil
}

// endLocked removes s from the bus with reason err (nil for a subscriber's
// own Close) and closes its channel if it has one. It reports whether s was
// still open. The caller holds b.mu.
func (b *Bus) endLocked(s *Subscription, err error) bool {
	if s.index < 0 {
		return false
	}
	b.subs = removeAt(b.subs, s.index, func(moved *Subscription, i int) { moved.index = i })
	s.index = -1
	if s.chanIndex >= 0 {
		b.chans = removeAt(b.chans, s.chanIndex, func(moved *Subscription, i int) { moved.chanIndex = i })
		s.chanIndex = -1
	}
	s.err = err
	if s.ch != nil {
		close(s.ch)
	}
	b.metrics.subscribers.Set(float64(len(b.subs)))
	return true
}

// removeAt removes list[i] by moving the last element into its place, and
// passes that element and its new index to setIndex.
func removeAt(list []*Subscription, i int, setIndex func(*Subscription, int)) []*Subscription {
	last := len(list) - 1
	list[i] = list[last]
	setIndex(list[i], i)
	list[last] = nil
	return list[:last]
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
