package localsos

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/protocol"
)

// Stages at which handling an SOS state can fail, as metric labels.
const (
	stageRecord  = "record"
	stageApply   = "apply"
	stagePublish = "publish"
	stagePrune   = "prune"
	// stageRepublish is the republishing of active states at start.
	stageRepublish = "republish"
	// stageBackfill is recording the SOS alerts of the spool.
	stageBackfill = "backfill"
	// stageReport is appending a local acknowledgement record to the spool.
	stageReport = "report"
	// stageScan is reading the spool's SOS lane for the vehicles' cancels.
	stageScan = "scan"
)

// relayMetrics are the relay's Prometheus collectors.
type relayMetrics struct {
	delivered  *prometheus.CounterVec
	hubRejects *prometheus.CounterVec
	failures   *prometheus.CounterVec
	queueFull  prometheus.Counter
	// hubQueueWaits counts the hub states that waited for room in the
	// relay's queue.
	hubQueueWaits prometheus.Counter
	backfilled    prometheus.Counter
	localAcks     prometheus.Counter
	cancels       prometheus.Counter
}

func newRelayMetrics() *relayMetrics {
	m := &relayMetrics{
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_sos_states_delivered_total",
			Help: "SOS states published to vehicles on the agent's broker, by state, including the republishing at start.",
		}, []string{"state"}),
		hubRejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_sos_state_rejects_total",
			Help: "SOS state messages from the hub rejected as invalid, by reason.",
		}, []string{"reason"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_sos_state_failures_total",
			Help: "Failures handling SOS states, by stage: record, apply, publish, prune, republish, backfill, report or scan.",
		}, []string{"stage"}),
		queueFull: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_sos_state_queue_full_total",
			Help: "Stored SOS alerts the local SOS relay's queue had no room for; they are recorded from the spool later.",
		}),
		hubQueueWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_sos_hub_state_queue_waits_total",
			Help: "SOS states from the hub that waited for room in the local SOS relay's queue, holding back the acknowledgement to the hub.",
		}),
		backfilled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_sos_backfilled_total",
			Help: "SOS alerts recorded in the local SOS store from the spool, at start or after a full queue.",
		}),
		localAcks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_sos_local_acks_total",
			Help: "SOS alerts acknowledged by regional staff on the agent's local page.",
		}),
		cancels: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_sos_cancel_requests_total",
			Help: "Drivers' cancels of open SOS alerts recorded in the local SOS store.",
		}),
	}
	for _, s := range []string{protocol.SOSStateReceived, protocol.SOSStateAcknowledged, protocol.SOSStateDispatched,
		protocol.SOSStateResolved, protocol.SOSStateCancelled} {
		m.delivered.WithLabelValues(s)
	}
	for _, s := range []string{stageRecord, stageApply, stagePublish, stagePrune, stageRepublish, stageBackfill, stageReport, stageScan} {
		m.failures.WithLabelValues(s)
	}
	return m
}

func (m *relayMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.delivered, m.hubRejects, m.failures, m.queueFull, m.hubQueueWaits, m.backfilled, m.localAcks, m.cancels}
}

// register registers every collector, or none.
func (m *relayMetrics) register(reg prometheus.Registerer) error {
	var done []prometheus.Collector
	for _, c := range m.collectors() {
		if err := reg.Register(c); err != nil {
			for _, d := range done {
				reg.Unregister(d)
			}
			return err
		}
		done = append(done, c)
	}
	return nil
}

func (m *relayMetrics) unregister(reg prometheus.Registerer) {
	for _, c := range m.collectors() {
		reg.Unregister(c)
	}
}
