package agent

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/agent/localsos"
	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/protocol"
)

// Timings of the hub contact tracker.
const (
	// hubContactInterval is how often the tracker looks at the uplink.
	hubContactInterval = time.Second
	// hubContactPersistEvery is how much a newer contact time must advance
	// before it is written to the local SOS store again, so a restarted
	// agent counts its outage at most this much too short.
	hubContactPersistEvery = 5 * time.Second
)

// hubContact tracks the last time the hub was reachable: the last
// connect, acknowledgement or SOS state the agent got from it. It keeps
// the time in the local SOS store, so an agent that restarts during an
// outage goes on counting the outage instead of starting over. A link
// that looks connected but brought no acknowledgement for longer than the
// uplink's ack timeout, while records wait for one, counts as down: a
// hung hub keeps the TCP connection up until the keepalive gives up.
type hubContact struct {
	a          *Agent
	ackTimeout time.Duration

	mu sync.Mutex
	// last is the last contact, zero before the first one.
	last time.Time
	// persisted is the contact time last written to the store.
	persisted time.Time
	// firstStart is when this agent first started, by the store, or this
	// process's start when the store is unavailable. started is when this
	// process opened the agent.
	firstStart time.Time
	started    time.Time
	// seenConnect and seenAcked are the uplink's connect time and acked
	// sequence numbers already counted as contact.
	seenConnect time.Time
	seenAcked   map[protocol.Lane]uint64

	gauges []prometheus.Collector
	stop   chan struct{}
	done   chan struct{}
}

func newHubContact(a *Agent) *hubContact {
	ackTimeout := a.cfg.AckTimeout
	if ackTimeout <= 0 {
		ackTimeout = uplink.DefaultAckTimeout
	}
	return &hubContact{a: a, ackTimeout: ackTimeout, seenAcked: map[protocol.Lane]uint64{}}
}

// load reads the stored contact and first start. The agent calls it
// after opening the local SOS store, before the notifier starts.
func (h *hubContact) load() {
	now := h.a.cfg.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.firstStart, h.started = now, now
	if !h.a.sosOpen.Load() {
		return
	}
	if first, err := h.a.sos.MarkFirstStart(now); err != nil {
		h.a.log.Error("agent's first start not read from the local SOS store; counting an outage from this start", "error", err)
	} else {
		h.firstStart = first
	}
	last, err := h.a.sos.HubContact()
	if err != nil {
		h.a.log.Error("last hub contact not read from the local SOS store; counting an outage from the agent's first start", "error", err)
		return
	}
	h.last, h.persisted = last, last
	if !last.IsZero() {
		h.a.log.Info("last contact with the hub", "at", last.UTC(), "ago", now.Sub(last).Round(time.Second))
	}
}

// start registers the gauges and starts the goroutine that observes the
// uplink and writes the contact time to the store.
func (h *hubContact) start() error {
	h.gauges = []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "xpress_agent_hub_last_contact_age_seconds",
			Help: "Seconds since the agent last reached the hub (connect, acknowledgement or SOS state), counted from the agent's first start when it never did.",
		}, func() float64 {
			since := h.lastOrFirst()
			return max(h.a.cfg.Now().Sub(since), 0).Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "xpress_agent_local_sos_open",
			Help: "SOS alerts of the agent's vehicles that are not yet resolved or cancelled, by the local SOS store; -1 when the store cannot be read.",
		}, func() float64 { return h.countActive(func(*localsos.Entry) bool { return true }) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "xpress_agent_local_sos_unacknowledged",
			Help: "Open SOS alerts that neither the hub nor regional staff on the agent's page acknowledged; -1 when the local SOS store cannot be read.",
		}, func() float64 {
			return h.countActive(func(e *localsos.Entry) bool {
				return e.State == protocol.SOSStateReceived && e.LocalAckBy == ""
			})
		}),
	}
	for i, c := range h.gauges {
		if err := h.a.cfg.Registerer.Register(c); err != nil {
			for _, done := range h.gauges[:i] {
				h.a.cfg.Registerer.Unregister(done)
			}
			h.gauges = nil
			return err
		}
	}
	h.stop, h.done = make(chan struct{}), make(chan struct{})
	go h.run()
	return nil
}

// close stops the goroutine, writes the last contact and unregisters the
// gauges. It is a no-op when start did not run.
func (h *hubContact) close() {
	if h.stop == nil {
		return
	}
	close(h.stop)
	<-h.done
	h.persist(true)
	for _, c := range h.gauges {
		h.a.cfg.Registerer.Unregister(c)
	}
}

func (h *hubContact) run() {
	defer close(h.done)
	t := time.NewTicker(hubContactInterval)
	defer t.Stop()
	for {
		h.observe()
		h.persist(false)
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
	}
}

// observe counts a new connect, a new acknowledgement, or a connected
// link with no record waiting for an acknowledgement as contact.
func (h *hubContact) observe() {
	if h.a.uplink.State() != uplink.StateConnected {
		return
	}
	now := h.a.cfg.Now()
	connectedAt := h.a.uplink.StateSince()
	acked := h.a.uplink.Acked()
	idle := h.a.spoolOpen.Load()
	if idle {
		for _, st := range h.a.spool.Stats() {
			idle = idle && st.Records == 0
		}
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	if !connectedAt.Equal(h.seenConnect) {
		h.seenConnect = connectedAt
		h.bumpLocked(connectedAt)
	}
	for lane, seq := range acked {
		if seq > h.seenAcked[lane] {
			h.seenAcked[lane] = seq
			h.bumpLocked(now)
		}
	}
	if idle {
		h.bumpLocked(now)
	}
}

// noteHubMessage counts a message from the hub, such as an SOS state, as contact.
func (h *hubContact) noteHubMessage() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.bumpLocked(h.a.cfg.Now())
}

func (h *hubContact) bumpLocked(at time.Time) {
	if at.After(h.last) {
		h.last = at
	}
}

// persist writes the last contact to the store when it advanced by
// hubContactPersistEvery, or by any amount when force is set.
func (h *hubContact) persist(force bool) {
	h.mu.Lock()
	last, persisted := h.last, h.persisted
	h.mu.Unlock()
	if !last.After(persisted) || (!force && !persisted.IsZero() && last.Sub(persisted) < hubContactPersistEvery) {
		return
	}
	if !h.a.sosOpen.Load() {
		return
	}
	if err := h.a.sos.SetHubContact(last); err != nil {
		h.a.log.Error("last hub contact not stored; a restart counts the outage from the contact stored before", "at", last.UTC(), "error", err)
		return
	}
	h.mu.Lock()
	if last.After(h.persisted) {
		h.persisted = last
	}
	h.mu.Unlock()
}

// lastOrFirst returns the last contact, or the agent's first start when
// there was none.
func (h *hubContact) lastOrFirst() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.last.IsZero() {
		return h.firstStart
	}
	return h.last
}

// startedAt returns when this process opened the agent.
func (h *hubContact) startedAt() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.started
}

// lastContact returns the last contact, zero when there was none.
func (h *hubContact) lastContact() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

// reachable reports whether the hub responds: the uplink is connected
// and the last contact is at most the ack timeout old.
func (h *hubContact) reachable() bool {
	h.observe()
	last := h.lastContact()
	return h.a.uplink.State() == uplink.StateConnected && !last.IsZero() && h.a.cfg.Now().Sub(last) <= h.ackTimeout
}

// countActive counts the active entries keep selects, -1 when the store
// cannot be read.
func (h *hubContact) countActive(keep func(e *localsos.Entry) bool) float64 {
	if !h.a.sosOpen.Load() {
		return -1
	}
	entries, err := h.a.sos.ListActive()
	if err != nil {
		return -1
	}
	n := 0
	for i := range entries {
		if keep(&entries[i]) {
			n++
		}
	}
	return float64(n)
}
