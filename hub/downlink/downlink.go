// Package downlink sends every incident's state down to the vehicle that
// raised the SOS. It follows the hub's event bus (incident.opened and
// incident.updated) and publishes a protocol.SOSStateUpdate for each SOS
// id of the incident to the incident's agent on
// protocol.SOSStateUpdateTopic, through the hub's agent broker. The agent
// forwards it to the vehicle on protocol.SOSStateTopic.
//
// Messages are retained on the hub's broker, so an agent that reconnects
// gets the current state of each SOS. The broker keeps retained messages
// in memory only. So on start, and after the bus dropped events the
// downlink missed, the downlink resyncs from the store. It publishes the
// state of every active incident and the final state of incidents closed
// within Config.FinalRetention. A periodic sweep clears final states
// older than that with an empty retained publish.
//
// Incident states map to vehicle states as open → received, acknowledged,
// dispatched, resolved and cancelled. A state never moves backwards for
// one incident: an event older than what a resync already published is
// skipped.
package downlink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// Defaults of Config.
const (
	// DefaultLanguage is the driver's language when Config.Language is nil.
	DefaultLanguage = "en"
	// DefaultFinalRetention is how long a final state stays retained.
	DefaultFinalRetention = 24 * time.Hour
	// DefaultSweepInterval is how often expired final states are cleared.
	DefaultSweepInterval = 10 * time.Minute
	// DefaultResyncLookback bounds the resync's search for recently closed
	// incidents by the time they were opened.
	DefaultResyncLookback = 7 * 24 * time.Hour
	// DefaultRetryInterval is the wait before a failed resync is retried.
	DefaultRetryInterval = 2 * time.Second
	// DefaultQueryTimeout bounds each store read and Language call.
	DefaultQueryTimeout = 10 * time.Second
)

// resyncPageSize is how many incidents one store read of a resync returns.
const resyncPageSize = 500

// Publisher sends a message to the agents with QoS 1; *ingest.Server
// implements it. An empty retained payload clears the topic's retained
// message.
type Publisher interface {
	Publish(topic string, payload []byte, retain bool) error
}

// InflightCounter is implemented by a Publisher that can tell how many
// messages an agent has not acknowledged yet (*ingest.Server does). The
// downlink then waits while an agent has MaxInflight or more, so a
// resync of thousands of states does not overflow the broker's
// in-flight quota, past which mochi drops messages, the hub's batch
// acknowledgements included.
type InflightCounter interface {
	Inflight(agentID string) int
}

// DefaultMaxInflight is the default Config.MaxInflight.
const DefaultMaxInflight = 1000

// maxPaceWait bounds how long one publish waits for an agent that stops
// acknowledging; the state is then published anyway, and a drop by the
// broker is repaired by the agent's next resubscribe.
const maxPaceWait = 10 * time.Second

// Config configures a Downlink.
type Config struct {
	// Bus is the hub's event bus. Required.
	Bus *events.Bus
	// Store is read on resync. Required.
	Store store.Store
	// Publisher sends states to agents. Required.
	Publisher Publisher
	// Message returns the text for the driver of a vehicle state
	// (protocol.SOSState*) in language lang. Nil means DefaultMessage,
	// English whatever lang is. A text longer than
	// protocol.MaxSOSStateMessage bytes is cut.
	Message func(lang, state string) string
	// Language returns the language of a vehicle's driver, for Message.
	// It gets a context bounded by QueryTimeout. Nil means DefaultLanguage.
	Language func(ctx context.Context, vehicleID string) string
	// FinalRetention is how long a resolved or cancelled state stays
	// retained for agents that reconnect, counted from the incident's
	// closing time. Zero means DefaultFinalRetention (24 h).
	FinalRetention time.Duration
	// SweepInterval is how often final states older than FinalRetention
	// are cleared. Zero means DefaultSweepInterval (10 min).
	SweepInterval time.Duration
	// ResyncLookback is how far back, by opening time, a resync looks
	// for incidents closed within FinalRetention. Zero means
	// DefaultResyncLookback (7 days).
	ResyncLookback time.Duration
	// RetryInterval is the wait before a failed resync is retried. Zero
	// means DefaultRetryInterval (2 s).
	RetryInterval time.Duration
	// QueryTimeout bounds each store read and each Language call. Zero
	// means DefaultQueryTimeout (10 s).
	QueryTimeout time.Duration
	// Logger receives the downlink's logs. Nil discards them.
	Logger *slog.Logger
	// Registerer receives the downlink's metrics. Nil means a private registry.
	Registerer prometheus.Registerer
	// Now is the hub clock that ages final states. Nil means time.Now.
	Now func() time.Time
	// MaxInflight is how many unacknowledged states an agent may have
	// before the downlink waits, when Publisher is an InflightCounter.
	// Zero means DefaultMaxInflight.
	MaxInflight int
}

// DefaultMessage returns the built-in English text of a vehicle state,
// whatever lang is.
func DefaultMessage(_, state string) string { return protocol.DefaultSOSStateMessage(state) }

// Downlink publishes incident states to agents. Start it once and Close it
// once; the zero value is not usable.
type Downlink struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	startOnce sync.Once
	closeOnce sync.Once
	started   bool

	// The fields below belong to the run goroutine.

	// published is the state last published per hub-to-agent topic.
	published map[string]publishedState
	// extraSOSIDs lists, per incident, the SOS ids of repeat presses other
	// than the incident's first SOS id.
	extraSOSIDs map[int64][]string
	// lastSeq is the sequence number of the last bus event handled.
	lastSeq uint64
}

// publishedState is the state the downlink last published on one topic.
type publishedState struct {
	incidentID int64
	state      string
	// at is when the incident entered the state, on the hub clock.
	at time.Time
}

// New checks cfg, fills defaults and registers the metrics. It starts nothing.
func New(cfg Config) (*Downlink, error) {
	var errs []error
	if cfg.Bus == nil {
		errs = append(errs, errors.New("Bus is nil"))
	}
	if cfg.Store == nil {
		errs = append(errs, errors.New("Store is nil"))
	}
	if cfg.Publisher == nil {
		errs = append(errs, errors.New("Publisher is nil"))
	}
	for name, d := range map[string]time.Duration{
		"FinalRetention": cfg.FinalRetention, "SweepInterval": cfg.SweepInterval, "ResyncLookback": cfg.ResyncLookback,
		"RetryInterval": cfg.RetryInterval, "QueryTimeout": cfg.QueryTimeout,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s %s is negative", name, d))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("invalid downlink config: %w", err)
	}

	if cfg.Message == nil {
		cfg.Message = DefaultMessage
	}
	if cfg.FinalRetention == 0 {
		cfg.FinalRetention = DefaultFinalRetention
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.ResyncLookback == 0 {
		cfg.ResyncLookback = DefaultResyncLookback
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = DefaultRetryInterval
	}
	if cfg.QueryTimeout == 0 {
		cfg.QueryTimeout = DefaultQueryTimeout
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
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("register downlink metrics: %w", err)
	}
	d := &Downlink{
		cfg:         cfg,
		log:         cfg.Logger.With("component", "downlink"),
		metrics:     m,
		done:        make(chan struct{}),
		published:   make(map[string]publishedState),
		extraSOSIDs: make(map[int64][]string),
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d, nil
}

// Start starts the goroutine that resyncs from the store and then follows
// the bus. It returns at once; a store that cannot be read is retried
// every RetryInterval until Close.
func (d *Downlink) Start() {
	d.startOnce.Do(func() {
		d.started = true
		go d.run()
	})
}

// Close stops the downlink and waits for its goroutine. Retained states
// stay on the broker. It is safe to call more than once.
func (d *Downlink) Close() error {
	d.closeOnce.Do(func() {
		d.startOnce.Do(func() {}) // a later Start does nothing
		d.cancel()
		if d.started {
			<-d.done
		}
		d.log.Info("downlink stopped")
	})
	return nil
}

// run resyncs, then handles bus events and sweeps until Close or until
// the bus closes. A subscription dropped as a slow consumer resumes after
// the last handled event, or resyncs when those events are gone.
func (d *Downlink) run() {
	defer close(d.done)
	sweep := time.NewTicker(d.cfg.SweepInterval)
	defer sweep.Stop()

	var sub *events.Subscription
	cause := causeStart
	defer func() {
		if sub != nil {
			sub.Close()
		}
	}()
	for {
		if sub == nil {
			after := d.cfg.Bus.Latest()
			s, err := d.cfg.Bus.Subscribe(after)
			if errors.Is(err, events.ErrGap) {
				// More than the bus history was published since Latest.
				continue
			}
			if err != nil {
				d.log.Info("downlink stops: event bus unavailable", "error", err)
				return
			}
			sub, d.lastSeq = s, after
			if !d.resyncUntilDone(cause) {
				return
			}
		}

		select {
		case <-d.ctx.Done():
			return
		case <-sweep.C:
			d.sweep()
		case ev, ok := <-sub.C():
			if ok {
				d.lastSeq = ev.Seq
				d.handleEvent(ev)
				continue
			}
			err := sub.Err()
			sub = nil
			if !errors.Is(err, events.ErrSlowConsumer) {
				d.log.Info("downlink stops: event bus closed", "error", err)
				return
			}
			resumed, err := d.cfg.Bus.Subscribe(d.lastSeq)
			if err == nil {
				d.log.Warn("downlink fell behind the event bus; resumed from the kept history", "after_seq", d.lastSeq)
				sub = resumed
				continue
			}
			if !errors.Is(err, events.ErrGap) {
				d.log.Info("downlink stops: event bus unavailable", "error", err)
				return
			}
			d.log.Warn("downlink missed events; resyncing from the store", "after_seq", d.lastSeq, "error", err)
			cause = causeGap
		}
	}
}

// resyncUntilDone runs resync until it succeeds and reports true, or
// until Close and reports false.
func (d *Downlink) resyncUntilDone(cause string) bool {
	for {
		d.metrics.resyncs.WithLabelValues(cause).Inc()
		published, err := d.resync()
		if err == nil {
			d.log.Info("downlink resynced from the store", "cause", cause, "published", published, "after_seq", d.lastSeq)
			return true
		}
		if d.ctx.Err() != nil {
			return false
		}
		d.metrics.resyncFailures.Inc()
		d.log.Error("downlink resync failed; retrying", "cause", cause, "retry_in", d.cfg.RetryInterval.String(), "error", err)
		t := time.NewTimer(d.cfg.RetryInterval)
		select {
		case <-d.ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
}

// resync publishes the state of every active incident and the final
// state of incidents closed within FinalRetention, and returns how many
// states it published. A state already published is not sent again.
func (d *Downlink) resync() (int, error) {
	now := d.cfg.Now()
	closed, err := d.listIncidents(store.IncidentFilter{
		States: []store.IncidentState{store.StateResolved, store.StateCancelled},
		Since:  now.Add(-d.cfg.ResyncLookback),
	})
	if err != nil {
		return 0, err
	}
	active, err := d.listIncidents(store.IncidentFilter{
		States: []store.IncidentState{store.StateOpen, store.StateAcknowledged, store.StateDispatched},
	})
	if err != nil {
		return 0, err
	}

	cutoff := now.Add(-d.cfg.FinalRetention)
	incidents := make([]store.Incident, 0, len(closed)+len(active))
	for _, inc := range closed {
		if _, at := vehicleState(inc); !at.Before(cutoff) {
			incidents = append(incidents, inc)
		}
	}
	incidents = append(incidents, active...)
	// Oldest incident first, so that for an SOS id reused after its
	// incident closed the newer incident's state is published last.
	sort.Slice(incidents, func(i, j int) bool { return incidents[i].ID < incidents[j].ID })

	published := 0
	for _, inc := range incidents {
		ids, err := d.readSOSIDs(inc.ID)
		if err != nil {
			return published, err
		}
		for _, id := range ids {
			d.noteSOSID(inc, id)
		}
		published += d.publishIncident(inc)
	}
	return published, nil
}

// listIncidents reads every incident matching f, page by page.
func (d *Downlink) listIncidents(f store.IncidentFilter) ([]store.Incident, error) {
	var out []store.Incident
	f.Limit = resyncPageSize
	for {
		ctx, cancel := context.WithTimeout(d.ctx, d.cfg.QueryTimeout)
		page, err := d.cfg.Store.Incidents(ctx, f)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("list %v incidents: %w", f.States, err)
		}
		out = append(out, page...)
		if len(page) < resyncPageSize {
			return out, nil
		}
		f.Offset += len(page)
	}
}

// readSOSIDs returns the SOS ids of an incident's repeat presses, from its
// audit trail.
func (d *Downlink) readSOSIDs(incidentID int64) ([]string, error) {
	ctx, cancel := context.WithTimeout(d.ctx, d.cfg.QueryTimeout)
	defer cancel()
	_, trail, err := d.cfg.Store.Incident(ctx, incidentID)
	if err != nil {
		return nil, fmt.Errorf("read incident %d: %w", incidentID, err)
	}
	var ids []string
	for _, ev := range trail {
		if id, ok := repeatPressSOSID(ev); ok {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// repeatPressSOSID returns the SOS id of a repeat_press event. Both stores
// write its detail as "SOS <id> received again…" or "SOS <id> pressed
// within…", and an SOS id has no spaces.
//
// TODO: read the SOS ids of an incident from the store once it offers
// them, instead of from the audit trail's wording.
func repeatPressSOSID(ev store.IncidentEvent) (string, bool) {
	if ev.Type != store.EventRepeatPress {
		return "", false
	}
	rest, ok := strings.CutPrefix(ev.Detail, "SOS ")
	if !ok {
		return "", false
	}
	id, _, _ := strings.Cut(rest, " ")
	if protocol.ValidateSOSID(id) != nil {
		return "", false
	}
	return id, true
}

// handleEvent publishes the state of the incident an incident event carries.
func (d *Downlink) handleEvent(ev events.Event) {
	if ev.Type != events.TypeIncidentOpened && ev.Type != events.TypeIncidentUpdated {
		return
	}
	var change store.IncidentChange
	if err := json.Unmarshal(ev.Data, &change); err != nil || change.Incident.ID <= 0 {
		d.metrics.invalidEvents.Inc()
		d.log.Error("incident event not understood; its state is not sent to the vehicle",
			"seq", ev.Seq, "type", ev.Type, "error", err)
		return
	}
	if id, ok := repeatPressSOSID(change.Event); ok {
		d.noteSOSID(change.Incident, id)
	}
	d.publishIncident(change.Incident)
}

// noteSOSID remembers that SOS id belongs to inc, besides its first SOS id.
func (d *Downlink) noteSOSID(inc store.Incident, id string) {
	if id == inc.SOSID {
		return
	}
	for _, known := range d.extraSOSIDs[inc.ID] {
		if known == id {
			return
		}
	}
	d.extraSOSIDs[inc.ID] = append(d.extraSOSIDs[inc.ID], id)
}

// publishIncident publishes inc's state on the topic of each of its SOS
// ids whose published state it advances, and returns how many it published.
func (d *Downlink) publishIncident(inc store.Incident) int {
	state, at := vehicleState(inc)
	if state == "" {
		d.metrics.invalidEvents.Inc()
		d.log.Error("incident has an unknown state; not sent to the vehicle", "incident", inc.ID, "state", inc.State)
		return 0
	}

	var message string
	haveMessage := false
	published := 0
	for _, sosID := range append([]string{inc.SOSID}, d.extraSOSIDs[inc.ID]...) {
		topic := protocol.SOSStateUpdateTopic(inc.AgentID, inc.VehicleID, sosID)
		if prev, ok := d.published[topic]; ok {
			if inc.ID < prev.incidentID || inc.ID == prev.incidentID && !protocol.SOSStateAdvances(prev.state, state) {
				continue
			}
		}
		if !haveMessage {
			message, haveMessage = d.message(inc.VehicleID, state), true
		}
		if d.publish(inc, sosID, topic, protocol.SOSState{State: state, TS: at, Message: message}) {
			d.published[topic] = publishedState{incidentID: inc.ID, state: state, at: at}
			published++
		}
	}
	return published
}

// publish encodes and sends one state, and reports whether it was sent.
func (d *Downlink) publish(inc store.Incident, sosID, topic string, st protocol.SOSState) bool {
	log := d.log.With("incident", inc.ID, "agent", inc.AgentID, "vehicle", inc.VehicleID, "sos", sosID, "state", st.State)
	err := protocol.ValidateAgentID(inc.AgentID)
	var payload []byte
	if err == nil {
		payload, err = protocol.EncodeSOSStateUpdate(&protocol.SOSStateUpdate{
			VehicleID: inc.VehicleID, SOSID: sosID, IncidentID: inc.ID, State: st,
		})
	}
	if err != nil {
		d.metrics.publishFailures.Inc()
		log.Error("SOS state not sent to the vehicle: invalid", "error", err)
		return false
	}
	d.pace(inc.AgentID)
	if err := d.cfg.Publisher.Publish(topic, payload, true); err != nil {
		d.metrics.publishFailures.Inc()
		log.Error("SOS state not sent to the vehicle: publish failed", "error", err)
		return false
	}
	d.metrics.published.WithLabelValues(st.State).Inc()
	log.Info("SOS state sent to the agent")
	return true
}

// pace waits while agentID has MaxInflight or more unacknowledged
// messages, at most maxPaceWait, or until the downlink closes.
func (d *Downlink) pace(agentID string) {
	counter, ok := d.cfg.Publisher.(InflightCounter)
	if !ok {
		return
	}
	limit := d.cfg.MaxInflight
	if limit <= 0 {
		limit = DefaultMaxInflight
	}
	if counter.Inflight(agentID) < limit {
		return
	}
	d.metrics.paced.Inc()
	deadline := time.Now().Add(maxPaceWait)
	for counter.Inflight(agentID) >= limit {
		if time.Now().After(deadline) {
			d.log.Warn("agent is not acknowledging SOS states; publishing anyway", "agent", agentID,
				"inflight", counter.Inflight(agentID), "waited", maxPaceWait)
			return
		}
		select {
		case <-d.ctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// message returns the driver's text for state, at most
// protocol.MaxSOSStateMessage bytes.
func (d *Downlink) message(vehicleID, state string) string {
	lang := DefaultLanguage
	if d.cfg.Language != nil {
		ctx, cancel := context.WithTimeout(d.ctx, d.cfg.QueryTimeout)
		if l := d.cfg.Language(ctx, vehicleID); l != "" {
			lang = l
		}
		cancel()
	}
	text := strings.ToValidUTF8(d.cfg.Message(lang, state), "")
	if len(text) > protocol.MaxSOSStateMessage {
		text = strings.ToValidUTF8(text[:protocol.MaxSOSStateMessage], "")
	}
	return text
}

// sweep clears the retained final states older than FinalRetention and
// removes them from the published set. A clear that fails is retried on
// the next sweep.
func (d *Downlink) sweep() {
	cutoff := d.cfg.Now().Add(-d.cfg.FinalRetention)
	for topic, p := range d.published {
		if !protocol.SOSStateFinal(p.state) || !p.at.Before(cutoff) {
			continue
		}
		if err := d.cfg.Publisher.Publish(topic, nil, true); err != nil {
			d.metrics.publishFailures.Inc()
			d.log.Error("clearing an expired SOS state failed; retrying on the next sweep", "topic", topic, "incident", p.incidentID, "error", err)
			continue
		}
		delete(d.published, topic)
		d.metrics.cleared.Inc()
		d.log.Debug("expired SOS state cleared", "topic", topic, "incident", p.incidentID, "state", p.state)
	}

	live := make(map[int64]bool, len(d.published))
	for _, p := range d.published {
		live[p.incidentID] = true
	}
	for id := range d.extraSOSIDs {
		if !live[id] {
			delete(d.extraSOSIDs, id)
		}
	}
}

// vehicleState returns the vehicle state of an incident and when the
// incident entered it, or "" for an unknown incident state.
func vehicleState(inc store.Incident) (string, time.Time) {
	var state string
	var at time.Time
	switch inc.State {
	case store.StateOpen:
		state, at = protocol.SOSStateReceived, inc.ReceivedAt
	case store.StateAcknowledged:
		state, at = protocol.SOSStateAcknowledged, inc.AcknowledgedAt
	case store.StateDispatched:
		state, at = protocol.SOSStateDispatched, inc.DispatchedAt
	case store.StateResolved:
		state, at = protocol.SOSStateResolved, inc.ResolvedAt
	case store.StateCancelled:
		state, at = protocol.SOSStateCancelled, inc.CancelledAt
	default:
		return "", time.Time{}
	}
	if at.IsZero() {
		at = inc.UpdatedAt
	}
	if at.IsZero() {
		at = inc.OpenedAt
	}
	return state, at
}
