package localsos

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/protocol"
)

// DefaultPruneInterval is how often the relay prunes closed entries.
const DefaultPruneInterval = time.Hour

// Publisher publishes to the vehicles on the agent's broker with QoS 1;
// *broker.Broker implements it. An empty retained payload clears the
// topic's retained message.
type Publisher interface {
	Publish(topic string, payload []byte, retain bool) error
}

// RelayConfig configures a Relay.
type RelayConfig struct {
	// AgentID is the agent's id; the relay accepts hub states only on its
	// own topics. Required.
	AgentID string
	// Store keeps the entries. It must be open before Start. Required.
	Store *Store
	// Publisher reaches the vehicles. Required.
	Publisher Publisher
	// Logger receives the relay's logs. Nil discards them.
	Logger *slog.Logger
	// Registerer receives the relay's metrics on Start. Nil means a private registry.
	Registerer prometheus.Registerer
	// PruneInterval is how often closed entries older than the store's
	// KeepClosed are deleted. Zero means DefaultPruneInterval (1 h).
	PruneInterval time.Duration
	// Now is the agent clock. Nil means time.Now.
	Now func() time.Time
}

// Relay publishes the state of each SOS alert to its vehicle on
// protocol.SOSStateTopic. An active state is retained on the agent's
// broker, so a vehicle that subscribes later still gets it. A final state
// (resolved or cancelled) is published with QoS 1 without retain, so a
// vehicle with a persistent session gets it when it reconnects, and the
// retained state is then cleared with an empty retained publish. Devices
// must ignore an empty payload: subscribed vehicles receive it too, and
// mochi v2.7.9 may resend the final state and the clear to a reconnecting
// session in either order. The broker keeps retained messages in memory
// only, so Start publishes the state of every active entry again.
//
// The methods are safe for concurrent use. One lock orders each store
// change with its publish, so a vehicle receives the states of one SOS
// in the order the store took them.
type Relay struct {
	cfg     RelayConfig
	log     *slog.Logger
	metrics *relayMetrics

	mu sync.Mutex

	stop      chan struct{}
	done      chan struct{}
	startOnce sync.Once
	started   bool
	closeOnce sync.Once
}

// NewRelay returns a relay for cfg with defaults filled in. It does no I/O.
func NewRelay(cfg RelayConfig) *Relay {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.PruneInterval <= 0 {
		cfg.PruneInterval = DefaultPruneInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Relay{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "localsos"),
		metrics: newRelayMetrics(),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// Start registers the metrics, publishes the retained state of every
// active entry and starts pruning closed entries every PruneInterval. A
// store it cannot read is logged and counted, because vehicles still get
// new states without it. Start fails only on an invalid config or a
// metrics conflict.
func (r *Relay) Start() error {
	err := errors.New("local SOS relay already started")
	r.startOnce.Do(func() { err = r.start() })
	return err
}

func (r *Relay) start() error {
	if err := protocol.ValidateAgentID(r.cfg.AgentID); err != nil {
		return fmt.Errorf("start local SOS relay: AgentID: %w", err)
	}
	if r.cfg.Store == nil || r.cfg.Publisher == nil {
		return errors.New("start local SOS relay: Store and Publisher are required")
	}
	if err := r.metrics.register(r.cfg.Registerer); err != nil {
		return fmt.Errorf("register local SOS metrics: %w", err)
	}
	active, err := r.cfg.Store.ListActive()
	if err != nil {
		r.metrics.failures.WithLabelValues(stageRepublish).Inc()
		r.log.Error("active SOS states not republished: local SOS store unreadable", "error", err)
	}
	r.mu.Lock()
	for _, e := range active {
		r.deliver(e)
	}
	r.mu.Unlock()
	r.started = true
	go r.pruneLoop()
	r.log.Info("local SOS relay started", "active", len(active))
	return nil
}

// Close stops pruning and unregisters the metrics. It does not close the
// store. It is safe to call more than once.
func (r *Relay) Close() error {
	r.closeOnce.Do(func() {
		r.startOnce.Do(func() {}) // a later Start does nothing
		close(r.stop)
		if r.started {
			<-r.done
			r.metrics.unregister(r.cfg.Registerer)
		}
	})
	return nil
}

// SOSStored records an SOS the spool stored and publishes "received" to
// the vehicle. The broker calls it after the spool commit, before the
// PUBACK. Other record kinds are ignored. A store failure is logged and
// counted, and the vehicle still gets "received", because the spool
// contains the SOS.
func (r *Relay) SOSStored(rec protocol.Record) {
	if rec.Kind != protocol.KindSOS || rec.SOS == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e, changed, err := r.cfg.Store.Record(rec.VehicleID, rec.SOS, rec.ReceivedAt)
	if err != nil {
		r.metrics.failures.WithLabelValues(stageRecord).Inc()
		r.log.Error("SOS not recorded in the local SOS store; publishing received to the vehicle anyway",
			"vehicle", rec.VehicleID, "sos", rec.SOS.ID, "error", err)
		e = Entry{
			VehicleID: rec.VehicleID, SOSID: rec.SOS.ID,
			State: protocol.SOSStateReceived, StateAt: rec.ReceivedAt,
			Message: r.cfg.Store.message(protocol.SOSStateReceived),
		}
		changed = true
	}
	if changed {
		r.deliver(e)
	}
}

// HubState handles one message from the hub on the agent's SOS state
// topics: it stores the state and publishes it to the vehicle when the
// state moved forward. An empty payload, the hub clearing an old retained state, is
// ignored. An invalid message, or one for another agent or with a topic
// that does not match its payload, is logged and counted. The uplink
// calls it on paho's goroutine, which acknowledges the message once it
// returns.
func (r *Relay) HubState(topic string, payload []byte) {
	if len(payload) == 0 {
		r.log.Debug("hub cleared an SOS state", "topic", topic)
		return
	}
	u, err := r.decodeHubState(topic, payload)
	if err != nil {
		reason := protocol.Reason(err)
		r.metrics.hubRejects.WithLabelValues(reason).Inc()
		r.log.Warn("SOS state from the hub rejected", "topic", topic, "bytes", len(payload), "reason", reason, "error", err)
		return
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	e, changed, err := r.cfg.Store.Apply(u)
	if err != nil {
		r.metrics.failures.WithLabelValues(stageApply).Inc()
		r.log.Error("SOS state from the hub not stored; publishing it to the vehicle anyway",
			"vehicle", u.VehicleID, "sos", u.SOSID, "incident", u.IncidentID, "state", u.State.State, "error", err)
		e = Entry{VehicleID: u.VehicleID, SOSID: u.SOSID, IncidentID: u.IncidentID,
			State: u.State.State, StateAt: u.State.TS, Message: u.State.Message}
		changed = true
	}
	if !changed {
		r.log.Debug("SOS state from the hub changes nothing", "vehicle", u.VehicleID, "sos", u.SOSID,
			"incident", u.IncidentID, "state", u.State.State, "current", e.State)
		return
	}
	r.deliver(e)
}

// decodeHubState decodes a hub message and checks it against its topic.
func (r *Relay) decodeHubState(topic string, payload []byte) (protocol.SOSStateUpdate, error) {
	agentID, vehicleID, sosID, err := protocol.ParseSOSStateUpdateTopic(topic)
	if err != nil {
		return protocol.SOSStateUpdate{}, err
	}
	if agentID != r.cfg.AgentID {
		return protocol.SOSStateUpdate{}, fmt.Errorf("%w: %q belongs to agent %s, not %s", protocol.ErrUnknownTopic, topic, agentID, r.cfg.AgentID)
	}
	u, err := protocol.DecodeSOSStateUpdate(payload)
	if err != nil {
		return protocol.SOSStateUpdate{}, err
	}
	if u.VehicleID != vehicleID || u.SOSID != sosID {
		return protocol.SOSStateUpdate{}, fmt.Errorf("%w: payload names SOS %s of vehicle %s, topic %q another",
			protocol.ErrInvalidID, u.SOSID, u.VehicleID, topic)
	}
	return u, nil
}

// AcknowledgeLocally records an acknowledgement given on the agent's
// local page by actor and publishes acknowledged to the vehicle when its
// SOS moves to that state. Errors are those of Store.MarkLocalAck.
func (r *Relay) AcknowledgeLocally(vehicleID, sosID, actor string) (Entry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, changed, err := r.cfg.Store.MarkLocalAck(vehicleID, sosID, actor, r.cfg.Now())
	if err != nil {
		return e, err
	}
	if changed {
		r.deliver(e)
	}
	return e, nil
}

// deliver publishes an entry's state to its vehicle. The caller holds r.mu.
func (r *Relay) deliver(e Entry) {
	log := r.log.With("vehicle", e.VehicleID, "sos", e.SOSID, "incident", e.IncidentID, "state", e.State)
	topic := protocol.SOSStateTopic(e.VehicleID, e.SOSID)
	payload, err := protocol.EncodeSOSState(e.SOSState())
	if err != nil {
		r.metrics.failures.WithLabelValues(stagePublish).Inc()
		log.Error("SOS state not sent to the vehicle: invalid", "error", err)
		return
	}
	final := protocol.SOSStateFinal(e.State)
	if err := r.cfg.Publisher.Publish(topic, payload, !final); err != nil {
		r.metrics.failures.WithLabelValues(stagePublish).Inc()
		log.Error("SOS state not sent to the vehicle: publish failed", "error", err)
		return
	}
	r.metrics.delivered.WithLabelValues(e.State).Inc()
	log.Info("SOS state sent to the vehicle")
	if !final {
		return
	}
	if err := r.cfg.Publisher.Publish(topic, nil, true); err != nil {
		r.metrics.failures.WithLabelValues(stagePublish).Inc()
		log.Error("retained SOS state not cleared after its final state", "error", err)
	}
}

// pruneLoop prunes closed entries now and then every PruneInterval until Close.
func (r *Relay) pruneLoop() {
	defer close(r.done)
	t := time.NewTicker(r.cfg.PruneInterval)
	defer t.Stop()
	for {
		n, err := r.cfg.Store.Prune(r.cfg.Now())
		switch {
		case err != nil:
			r.metrics.failures.WithLabelValues(stagePrune).Inc()
			r.log.Error("pruning closed SOS entries failed", "error", err)
		case n > 0:
			r.log.Info("closed SOS entries pruned", "entries", n)
		}
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
	}
}

// Store returns the relay's store.
func (r *Relay) Store() *Store { return r.cfg.Store }
