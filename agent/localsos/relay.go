package localsos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/protocol"
)

// Defaults of RelayConfig.
const (
	// DefaultPruneInterval is how often the relay prunes closed entries.
	DefaultPruneInterval = time.Hour
	// DefaultQueueSize is how many stored SOS records may wait for the
	// relay to record them.
	DefaultQueueSize = 1024
	// DefaultHubQueueSize is how many states from the hub may wait for
	// the relay to apply them.
	DefaultHubQueueSize = 4096
	// DefaultAppendTimeout bounds the append of a local acknowledgement
	// record to the spool.
	DefaultAppendTimeout = 10 * time.Second
	// DefaultReportRetryInterval is how often the relay tries again to
	// append the local acknowledgements the spool did not take.
	DefaultReportRetryInterval = 10 * time.Second
	// DefaultScanInterval is how often the relay reads the records newly
	// added to the spool's SOS lane, for the vehicles' cancels.
	DefaultScanInterval = 2 * time.Second
)

// backfillPageRecords and backfillPageBytes bound one spool read of a backfill.
const (
	backfillPageRecords = 500
	backfillPageBytes   = 4 << 20
)

// ErrNotReported means a local acknowledgement is recorded and the
// vehicle informed, but its record for the hub is not in the spool yet.
// The relay retries on its own, and acknowledging again retries at once.
var ErrNotReported = errors.New("local acknowledgement not yet queued for the hub")

// Spool is the part of the agent's spool the relay uses; *spool.Spool
// implements it.
type Spool interface {
	// Read returns the lane's records after afterSeq, oldest first.
	Read(lane protocol.Lane, afterSeq uint64, max, maxBytes int) ([]protocol.Record, error)
	// Append stores records durably.
	Append(ctx context.Context, recs []protocol.Record) error
	// SpoolID returns the id of the open spool file.
	SpoolID() string
}

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
	// Spool is the agent's spool, open before Start. The relay reads its
	// SOS lane to record the SOS alerts the store lacks (see Start), and
	// appends the local acknowledgements to it for the hub. Required.
	Spool Spool
	// QueueSize bounds the SOS records SOSStored hands over that wait to
	// be recorded. Zero means DefaultQueueSize (1024).
	QueueSize int
	// HubQueueSize bounds the hub's states QueueHubState hands over that
	// wait to be applied. Zero means DefaultHubQueueSize (4096).
	HubQueueSize int
	// AppendTimeout bounds the append of a local acknowledgement record.
	// Zero means DefaultAppendTimeout (10 s).
	AppendTimeout time.Duration
	// ReportRetryInterval is how often local acknowledgements the spool
	// did not take are appended again. Zero means
	// DefaultReportRetryInterval (10 s).
	ReportRetryInterval time.Duration
	// Logger receives the relay's logs. Nil discards them.
	Logger *slog.Logger
	// Registerer receives the relay's metrics on Start. Nil means a private registry.
	Registerer prometheus.Registerer
	// ScanInterval is how often the relay reads the records added to the
	// spool's SOS lane since its last read, to record the vehicles'
	// cancels (the broker hands over only SOS records). Zero means
	// DefaultScanInterval (2 s).
	ScanInterval time.Duration
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
// SOSStored runs before the vehicle's PUBACK, so it only queues the
// record; the relay's goroutine records it and publishes "received". The
// spool keeps every SOS until the hub acknowledges it, so an SOS lost
// from the queue (a full queue, or a crash before it was recorded) is
// recorded from the spool: at start, and once a full queue drains.
//
// QueueHubState hands the hub's states to the relay's goroutine too,
// which applies those queued together in one store transaction. When its
// queue is full it waits: paho acknowledges the hub's message only once
// it returns, and the hub paces its states by the agent's unacknowledged
// messages. HubState applies a state at once instead.
//
// The methods are safe for concurrent use. One lock orders each store
// change with its publish, so a vehicle receives the states of one SOS
// in the order the store took them.
type Relay struct {
	cfg     RelayConfig
	log     *slog.Logger
	metrics *relayMetrics

	mu sync.Mutex
	// reportMu serialises the appends of local acknowledgement records,
	// so each is appended once.
	reportMu sync.Mutex

	// queue holds the records SOSStored handed over.
	queue chan protocol.Record
	// hubStates holds the hub's states QueueHubState handed over.
	hubStates chan protocol.SOSStateUpdate
	// hubSendMu is held shared by each QueueHubState while it hands over
	// a state, and exclusively by the goroutine when Close stops it, to
	// set hubClosed: no state enters hubStates after the goroutine applied
	// the last ones.
	hubSendMu sync.RWMutex
	hubClosed bool
	// missed is set when SOSStored found the queue full. A send on wake
	// then makes the goroutine backfill from the spool.
	missed atomic.Bool
	wake   chan struct{}
	// unreported is set when a local acknowledgement record could not be
	// appended to the spool.
	unreported atomic.Bool
	// scannedSeq is the last SOS-lane sequence number the relay read;
	// only the relay's goroutine uses it.
	scannedSeq uint64

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
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.HubQueueSize <= 0 {
		cfg.HubQueueSize = DefaultHubQueueSize
	}
	if cfg.AppendTimeout <= 0 {
		cfg.AppendTimeout = DefaultAppendTimeout
	}
	if cfg.ReportRetryInterval <= 0 {
		cfg.ReportRetryInterval = DefaultReportRetryInterval
	}
	if cfg.ScanInterval <= 0 {
		cfg.ScanInterval = DefaultScanInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Relay{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "localsos"),
		metrics:   newRelayMetrics(),
		queue:     make(chan protocol.Record, cfg.QueueSize),
		hubStates: make(chan protocol.SOSStateUpdate, cfg.HubQueueSize),
		wake:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
}

// Start registers the metrics, publishes the retained state of every
// active entry and starts the relay's goroutine. The goroutine first
// backfills: it records every SOS of the spool's SOS lane that the store
// lacks, publishing "received" for each, and appends the local
// acknowledgements not yet in the spool. Then it records the SOS records
// SOSStored queues, applies the hub's states QueueHubState queues, and
// prunes closed entries every PruneInterval. A store it cannot read is
// logged and counted, because vehicles still get new states without it.
// Start fails on an invalid config, a metrics conflict, or a second call.
func (r *Relay) Start() error {
	err := errors.New("local SOS relay already started")
	r.startOnce.Do(func() { err = r.start() })
	return err
}

func (r *Relay) start() error {
	if err := protocol.ValidateAgentID(r.cfg.AgentID); err != nil {
		return fmt.Errorf("start local SOS relay: AgentID: %w", err)
	}
	if r.cfg.Store == nil || r.cfg.Publisher == nil || r.cfg.Spool == nil {
		return errors.New("start local SOS relay: Store, Publisher and Spool are required")
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
	go r.run()
	r.log.Info("local SOS relay started", "active", len(active))
	return nil
}

// Close records the SOS records and applies the hub's states still
// queued, stops the goroutine and unregisters the metrics. A
// QueueHubState waiting for room returns. It does not close the store. It
// is safe to call more than once.
func (r *Relay) Close() error {
	r.closeOnce.Do(func() {
		r.startOnce.Do(func() {}) // a later Start does nothing
		close(r.stop)
		if r.started {
			<-r.done
			r.metrics.unregister(r.cfg.Registerer)
			return
		}
		r.hubSendMu.Lock()
		r.hubClosed = true
		r.hubSendMu.Unlock()
		if n := len(r.hubStates); n > 0 {
			r.log.Warn("SOS states from the hub not applied: the relay closed before it started; the hub sends its retained states again on the next connection",
				"states", n)
		}
	})
	return nil
}

// SOSStored queues an SOS the spool stored, for the relay's goroutine
// to record and to publish "received" to the vehicle. The broker calls it
// after the spool commit, before the PUBACK, so it never blocks: when the
// queue is full the record is counted, logged and left to a backfill from
// the spool. Other record kinds are ignored.
func (r *Relay) SOSStored(rec protocol.Record) {
	if rec.Kind != protocol.KindSOS || rec.SOS == nil {
		return
	}
	select {
	case r.queue <- rec:
		return
	default:
	}
	r.metrics.queueFull.Inc()
	r.missed.Store(true)
	select {
	case r.wake <- struct{}{}:
	default:
	}
	r.log.Error("SOS not queued for the local SOS store: queue full; it is recorded from the spool once the queue drains",
		"vehicle", rec.VehicleID, "sos", rec.SOS.ID, "seq", rec.Seq, "queue_size", cap(r.queue))
}

// maxRecordGroup bounds the queued SOS records that recordQueued
// records in one transaction.
const maxRecordGroup = 1000

// takeQueued returns first and the items already waiting in queue behind
// it, at most limit in all. It does not wait for more to arrive.
func takeQueued[T any](first T, queue <-chan T, limit int) []T {
	items := []T{first}
	for len(items) < limit {
		select {
		case item := <-queue:
			items = append(items, item)
		default:
			return items
		}
	}
	return items
}

// recordQueued records first and the SOS records queued behind it in one
// transaction of the store, then publishes "received" for each new SOS.
// One transaction per SOS (about 0.4 ms of fsync each on an idle disk)
// keeps the disk busy for seconds in a burst and slows the spool commits
// that the vehicles' PUBACKs wait for. A record with an invalid id, or a
// group whose transaction fails, goes through record one at a time, which
// logs the failure and still publishes "received".
func (r *Relay) recordQueued(first protocol.Record) {
	recs := takeQueued(first, r.queue, maxRecordGroup)
	group := recs[:0:0]
	for _, rec := range recs {
		if rec.SOS == nil || protocol.ValidateVehicleID(rec.VehicleID) != nil || protocol.ValidateSOSID(rec.SOS.ID) != nil {
			r.record(rec)
			continue
		}
		group = append(group, rec)
	}
	if len(group) == 0 {
		return
	}
	if len(group) == 1 {
		r.record(group[0])
		return
	}
	r.mu.Lock()
	entries, err := r.cfg.Store.Backfill(group, r.cfg.Spool.SpoolID())
	if err == nil {
		for _, e := range entries {
			r.deliver(e)
		}
	}
	r.mu.Unlock()
	if err != nil {
		r.log.Warn("SOS alerts not recorded together in the local SOS store; recording them one by one",
			"sos_alerts", len(group), "error", err)
		for _, rec := range group {
			r.record(rec)
		}
	}
}

// record records a queued SOS and publishes "received" to the vehicle. A
// store failure is logged and counted, and the vehicle still gets
// "received", because the spool contains the SOS.
func (r *Relay) record(rec protocol.Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, changed, err := r.cfg.Store.RecordSpooled(rec, r.cfg.Spool.SpoolID())
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
// state moved forward, before it returns. An empty payload, the hub
// clearing an old retained state, is ignored. An invalid message, or one
// for another agent or with a topic that does not match its payload, is
// logged and counted. QueueHubState does the same on the relay's
// goroutine, and applies states that arrive together in one transaction.
func (r *Relay) HubState(topic string, payload []byte) {
	u, ok := r.checkHubMessage(topic, payload)
	if !ok {
		return
	}
	r.applyHubState(u)
}

// QueueHubState handles one message from the hub on the agent's SOS
// state topics as HubState does, but only checks it before it returns.
// An invalid message is logged and counted at once. A valid state is
// queued for the relay's goroutine, which stores the states queued
// together in one transaction, then publishes to each vehicle, in order,
// the states that moved forward. One transaction per state (two fsyncs)
// would keep the disk busy for seconds in a burst of SOS alerts, while
// the spool commits the same burst.
//
// The uplink calls it on paho's goroutine, which acknowledges the message
// once it returns. When the queue is full it waits for room: the hub
// paces its states by the agent's unacknowledged messages, so the wait
// slows the hub down instead of losing a state. After Close it returns
// without queuing, and logs the state: the hub sends its retained states
// again when the agent connects next.
func (r *Relay) QueueHubState(topic string, payload []byte) {
	u, ok := r.checkHubMessage(topic, payload)
	if !ok {
		return
	}
	r.hubSendMu.RLock()
	defer r.hubSendMu.RUnlock()
	if r.hubClosed {
		r.notQueued(u)
		return
	}
	select {
	case r.hubStates <- u:
		return
	default:
	}
	r.metrics.hubQueueWaits.Inc()
	r.log.Debug("SOS state from the hub waits for room in the relay's queue", "vehicle", u.VehicleID, "sos", u.SOSID,
		"incident", u.IncidentID, "state", u.State.State, "queue_size", cap(r.hubStates))
	select {
	case r.hubStates <- u:
	case <-r.stop:
		r.notQueued(u)
	}
}

// notQueued logs a hub state QueueHubState did not queue because the
// relay is closed.
func (r *Relay) notQueued(u protocol.SOSStateUpdate) {
	r.log.Warn("SOS state from the hub not applied: the local SOS relay is closed; the hub sends it again on the next connection",
		"vehicle", u.VehicleID, "sos", u.SOSID, "incident", u.IncidentID, "state", u.State.State)
}

// checkHubMessage decodes a hub message on the SOS state topics. It
// returns false for an empty payload, the hub clearing an old retained
// state, and for an invalid message, which it logs and counts.
func (r *Relay) checkHubMessage(topic string, payload []byte) (protocol.SOSStateUpdate, bool) {
	if len(payload) == 0 {
		r.log.Debug("hub cleared an SOS state", "topic", topic)
		return protocol.SOSStateUpdate{}, false
	}
	u, err := r.decodeHubState(topic, payload)
	if err != nil {
		reason := protocol.Reason(err)
		r.metrics.hubRejects.WithLabelValues(reason).Inc()
		r.log.Warn("SOS state from the hub rejected", "topic", topic, "bytes", len(payload), "reason", reason, "error", err)
		return protocol.SOSStateUpdate{}, false
	}
	return u, true
}

// applyHubState stores one state from the hub and publishes it to the
// vehicle when the state moved forward.
func (r *Relay) applyHubState(u protocol.SOSStateUpdate) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, changed, err := r.cfg.Store.Apply(u)
	r.applied(u, e, changed, err)
}

// applied publishes the entry e of the hub state u to the vehicle when the
// store reports its state changed. A store failure err is logged and
// counted, and the vehicle still gets the state: the hub has it, and the
// vehicle must not wait for the agent's disk. The caller holds r.mu.
func (r *Relay) applied(u protocol.SOSStateUpdate, e Entry, changed bool, err error) {
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

// maxStateGroup bounds the queued hub states that applyQueued applies in
// one transaction.
const maxStateGroup = 1000

// applyQueued applies first and the hub states queued behind it in one
// transaction of the store, then publishes to the vehicles, in order,
// each state that moved forward. A group whose transaction fails goes
// through applyHubState one state at a time, which logs the failure and
// still publishes the state.
func (r *Relay) applyQueued(first protocol.SOSStateUpdate) {
	us := takeQueued(first, r.hubStates, maxStateGroup)
	if len(us) == 1 {
		r.applyHubState(us[0])
		return
	}
	r.mu.Lock()
	results, err := r.cfg.Store.ApplyBatch(us)
	if err == nil {
		for i, u := range us {
			res := results[i]
			r.applied(u, res.Entry, res.Changed, res.Err)
		}
	}
	r.mu.Unlock()
	if err != nil {
		r.log.Warn("SOS states from the hub not stored together in the local SOS store; storing them one by one",
			"states", len(us), "error", err)
		for _, u := range us {
			r.applyHubState(u)
		}
	}
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
// local page by actor, publishes acknowledged to the vehicle when its SOS
// moves to that state, and appends a protocol.KindSOSAck record to the
// spool for the hub. Only the first acknowledgement of an SOS is kept
// and appended; a later one returns the entry unchanged. Errors are those
// of Store.MarkLocalAck, or ErrNotReported when the spool did not take
// the record. The acknowledgement is then kept, and the relay appends the
// record later.
func (r *Relay) AcknowledgeLocally(vehicleID, sosID, actor string) (Entry, error) {
	e, _, err := r.AcknowledgeLocal(vehicleID, sosID, actor)
	return e, err
}

// AcknowledgeLocal is AcknowledgeLocally that also reports whether this
// call recorded the acknowledgement. It is false when another one came
// first, also when both ran at once: the entry then names who
// acknowledged first (Entry.LocalAckBy) and when.
func (r *Relay) AcknowledgeLocal(vehicleID, sosID, actor string) (Entry, bool, error) {
	r.mu.Lock()
	before, err := r.cfg.Store.Get(vehicleID, sosID)
	var (
		e       Entry
		changed bool
	)
	if err == nil {
		e, changed, err = r.cfg.Store.MarkLocalAck(vehicleID, sosID, actor, r.cfg.Now())
	}
	if err == nil && changed {
		r.deliver(e)
	}
	r.mu.Unlock()
	if err != nil {
		return e, false, err
	}
	recorded := before.LocalAckBy == "" && e.LocalAckBy != ""
	if changed {
		r.metrics.localAcks.Inc()
		r.log.Info("SOS acknowledged on the agent's local page", "vehicle", vehicleID, "sos", sosID,
			"actor", e.LocalAckBy, "incident", e.IncidentID)
	}
	reported, err := r.reportLocalAck(vehicleID, sosID)
	return reported, recorded, err
}

// reportLocalAck appends the local acknowledgement of an SOS to the spool
// unless it is there already, and returns the entry.
func (r *Relay) reportLocalAck(vehicleID, sosID string) (Entry, error) {
	r.reportMu.Lock()
	defer r.reportMu.Unlock()
	e, err := r.cfg.Store.Get(vehicleID, sosID)
	if err != nil || e.LocalAckBy == "" || e.LocalAckReported {
		return e, err
	}
	rec := protocol.Record{
		Kind:       protocol.KindSOSAck,
		VehicleID:  vehicleID,
		ReceivedAt: e.LocalAckAt,
		Ack:        &protocol.LocalAck{SOSID: sosID, Actor: e.LocalAckBy, At: e.LocalAckAt},
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.AppendTimeout)
	defer cancel()
	// Append sets the sequence number in the slice it gets.
	recs := []protocol.Record{rec}
	err = r.cfg.Spool.Append(ctx, recs)
	rec = recs[0]
	if err != nil {
		r.unreported.Store(true)
		r.metrics.failures.WithLabelValues(stageReport).Inc()
		r.log.Error("local acknowledgement not appended to the spool; retrying later",
			"vehicle", vehicleID, "sos", sosID, "actor", e.LocalAckBy, "error", err)
		return e, fmt.Errorf("%w: %w", ErrNotReported, err)
	}
	marked, err := r.cfg.Store.MarkLocalAckReported(vehicleID, sosID)
	if err != nil {
		// The record is in the spool; the next backfill finds it there.
		r.metrics.failures.WithLabelValues(stageReport).Inc()
		r.log.Error("local acknowledgement appended to the spool but not marked in the local SOS store",
			"vehicle", vehicleID, "sos", sosID, "seq", rec.Seq, "error", err)
		return e, nil
	}
	r.log.Info("local acknowledgement queued for the hub", "vehicle", vehicleID, "sos", sosID, "seq", rec.Seq)
	return marked, nil
}

// reportPending appends every local acknowledgement not yet in the spool.
// acked names the SOS alerts (entryKey) whose acknowledgement record the
// spool holds already; those are only marked.
func (r *Relay) reportPending(acked map[string]bool) {
	entries, err := r.cfg.Store.ListTracked()
	if err != nil {
		r.metrics.failures.WithLabelValues(stageReport).Inc()
		r.log.Error("local acknowledgements not checked: local SOS store unreadable", "error", err)
		return
	}
	r.unreported.Store(false)
	for _, e := range entries {
		if e.LocalAckBy == "" || e.LocalAckReported {
			continue
		}
		if acked[string(entryKey(e.VehicleID, e.SOSID))] {
			if _, err := r.cfg.Store.MarkLocalAckReported(e.VehicleID, e.SOSID); err != nil {
				r.metrics.failures.WithLabelValues(stageReport).Inc()
				r.log.Error("local acknowledgement found in the spool but not marked", "vehicle", e.VehicleID, "sos", e.SOSID, "error", err)
			}
			continue
		}
		_, _ = r.reportLocalAck(e.VehicleID, e.SOSID)
	}
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

// run is the relay's goroutine: it backfills, then records queued SOS
// records, applies queued hub states, backfills again after SOSStored
// found the queue full, retries unreported local acknowledgements, and
// prunes closed entries now and every PruneInterval, until Close. On
// Close it records and applies what is still queued.
func (r *Relay) run() {
	defer close(r.done)
	r.backfill("start")
	r.prune()
	prune := time.NewTicker(r.cfg.PruneInterval)
	defer prune.Stop()
	retry := time.NewTicker(r.cfg.ReportRetryInterval)
	defer retry.Stop()
	scan := time.NewTicker(r.cfg.ScanInterval)
	defer scan.Stop()
	for {
		// Close comes first: a select picks among ready cases at random,
		// and queued work would otherwise go on after Close asked to stop.
		select {
		case <-r.stop:
			r.shutdown()
			return
		default:
		}
		select {
		case rec := <-r.queue:
			r.recordQueued(rec)
		case u := <-r.hubStates:
			r.applyQueued(u)
		case <-r.wake:
			if r.missed.Swap(false) {
				r.drainQueue()
				r.backfill("queue_full")
			}
		case <-retry.C:
			if r.unreported.Load() {
				r.reportPending(nil)
			}
		case <-scan.C:
			r.scan()
		case <-prune.C:
			r.prune()
		case <-r.stop:
			r.shutdown()
			return
		}
	}
}

// shutdown records and applies what is queued when Close stopped the
// goroutine. The QueueHubState calls in progress return first, as stop
// is closed, and the later ones queue nothing.
func (r *Relay) shutdown() {
	r.hubSendMu.Lock()
	r.hubClosed = true
	r.hubSendMu.Unlock()
	r.drainQueue()
	r.drainHubStates()
}

// drainQueue records every queued SOS record, in groups.
func (r *Relay) drainQueue() {
	for {
		select {
		case rec := <-r.queue:
			r.recordQueued(rec)
		default:
			return
		}
	}
}

// drainHubStates applies every queued hub state, in groups.
func (r *Relay) drainHubStates() {
	for {
		select {
		case u := <-r.hubStates:
			r.applyQueued(u)
		default:
			return
		}
	}
}

// backfill records the SOS alerts of the spool's SOS lane that the store
// lacks and publishes "received" for each, then appends the local
// acknowledgements the spool does not hold. trigger names why, for the
// logs: "start" or "queue_full".
func (r *Relay) backfill(trigger string) {
	var (
		recs    []protocol.Record
		cancels []protocol.Record
		after   uint64
	)
	acked := map[string]bool{}
	for {
		page, err := r.cfg.Spool.Read(protocol.LaneSOS, after, backfillPageRecords, backfillPageBytes)
		if err != nil {
			r.metrics.failures.WithLabelValues(stageBackfill).Inc()
			r.log.Error("SOS alerts not backfilled from the spool: read failed", "trigger", trigger, "after_seq", after, "error", err)
			return
		}
		if len(page) == 0 {
			break
		}
		for _, rec := range page {
			switch {
			case rec.Kind == protocol.KindSOS:
				recs = append(recs, rec)
			case rec.Kind == protocol.KindSOSAck && rec.Ack != nil:
				acked[string(entryKey(rec.VehicleID, rec.Ack.SOSID))] = true
			case rec.Kind == protocol.KindSOSCancel && rec.Cancel != nil:
				cancels = append(cancels, rec)
			}
		}
		after = page[len(page)-1].Seq
	}
	r.scannedSeq = max(r.scannedSeq, after)

	r.mu.Lock()
	changed, err := r.cfg.Store.Backfill(recs, r.cfg.Spool.SpoolID())
	if err == nil {
		for _, e := range changed {
			r.deliver(e)
		}
	}
	r.mu.Unlock()
	if err != nil {
		r.metrics.failures.WithLabelValues(stageBackfill).Inc()
		r.log.Error("SOS alerts not backfilled from the spool: local SOS store failed", "trigger", trigger,
			"spool_sos_records", len(recs), "error", err)
		return
	}
	r.metrics.backfilled.Add(float64(len(changed)))
	level := slog.LevelDebug
	if len(changed) > 0 {
		level = slog.LevelWarn
	}
	r.log.Log(context.Background(), level, "SOS alerts backfilled from the spool", "trigger", trigger,
		"spool_sos_records", len(recs), "recorded", len(changed))
	r.recordCancels(cancels)
	r.reportPending(acked)
}

// scan reads the records added to the spool's SOS lane since the last
// read, records the SOS alerts the store lacks and the vehicles' cancels.
func (r *Relay) scan() {
	var sos, cancels []protocol.Record
	after := r.scannedSeq
	for {
		page, err := r.cfg.Spool.Read(protocol.LaneSOS, after, backfillPageRecords, backfillPageBytes)
		if err != nil {
			r.metrics.failures.WithLabelValues(stageScan).Inc()
			r.log.Error("spool SOS lane not scanned for cancels: read failed", "after_seq", after, "error", err)
			return
		}
		if len(page) == 0 {
			break
		}
		for _, rec := range page {
			switch {
			case rec.Kind == protocol.KindSOS && rec.SOS != nil:
				sos = append(sos, rec)
			case rec.Kind == protocol.KindSOSCancel && rec.Cancel != nil:
				cancels = append(cancels, rec)
			}
		}
		after = page[len(page)-1].Seq
	}
	if len(sos) > 0 {
		// A cancel may be read before the relay's queue recorded its SOS.
		r.mu.Lock()
		changed, err := r.cfg.Store.Backfill(sos, r.cfg.Spool.SpoolID())
		for _, e := range changed {
			r.deliver(e)
		}
		r.mu.Unlock()
		if err != nil {
			r.metrics.failures.WithLabelValues(stageScan).Inc()
			r.log.Error("spool SOS lane scan: SOS alerts not recorded; retrying at the next scan", "after_seq", r.scannedSeq, "error", err)
			return
		}
		if len(changed) > 0 {
			r.metrics.backfilled.Add(float64(len(changed)))
			r.log.Warn("SOS alerts recorded from the spool before the relay's queue", "trigger", "scan", "recorded", len(changed))
		}
	}
	r.recordCancels(cancels)
	r.scannedSeq = after
}

// recordCancels stores the vehicles' cancels of SOS alerts in the store.
func (r *Relay) recordCancels(cancels []protocol.Record) {
	for _, rec := range cancels {
		e, changed, err := r.cfg.Store.RecordCancel(rec)
		switch {
		case err != nil:
			r.metrics.failures.WithLabelValues(stageScan).Inc()
			r.log.Error("driver's cancel not recorded in the local SOS store", "vehicle", rec.VehicleID,
				"sos", rec.Cancel.ID, "seq", rec.Seq, "error", err)
		case changed:
			r.metrics.cancels.Inc()
			r.log.Warn("driver asked to cancel an SOS; it stays open until the hub closes it", "vehicle", e.VehicleID,
				"sos", e.SOSID, "seq", rec.Seq, "reason", e.CancelReason, "incident", e.IncidentID)
		}
	}
}

// prune deletes closed entries older than the store's KeepClosed.
func (r *Relay) prune() {
	n, err := r.cfg.Store.Prune(r.cfg.Now())
	switch {
	case err != nil:
		r.metrics.failures.WithLabelValues(stagePrune).Inc()
		r.log.Error("pruning closed SOS entries failed", "error", err)
	case n > 0:
		r.log.Info("closed SOS entries pruned", "entries", n)
	}
}

// Store returns the relay's store.
func (r *Relay) Store() *Store { return r.cfg.Store }
