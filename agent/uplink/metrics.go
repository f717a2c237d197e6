package uplink

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/protocol"
)

// metrics are the uplink's Prometheus metrics.
type metrics struct {
	connected       prometheus.Gauge
	connectAttempts prometheus.Counter
	connectFailures prometheus.Counter
	ackedSeq        *prometheus.GaugeVec
	batchesSent     *prometheus.CounterVec
	recordsSent     *prometheus.CounterVec
	roundTrip       *prometheus.HistogramVec
	ackTimeouts     prometheus.Counter
	acksIgnored     *prometheus.CounterVec
	batchErrors     *prometheus.CounterVec
	rejectedRecords *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_agent_uplink_connected",
			Help: "1 while the uplink has an MQTT connection to the hub, else 0.",
		}),
		connectAttempts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_connect_attempts_total",
			Help: "Connection attempts to the hub.",
		}),
		connectFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_connect_failures_total",
			Help: "Connection attempts to the hub that failed.",
		}),
		ackedSeq: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "xpress_agent_uplink_acked_seq",
			Help: "Highest spool sequence number the hub acknowledged since the agent started, by lane.",
		}, []string{"lane"}),
		batchesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_batches_sent_total",
			Help: "Batches published to the hub, resends included, by lane.",
		}, []string{"lane"}),
		recordsSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_records_sent_total",
			Help: "Records published to the hub, resends included, by lane.",
		}, []string{"lane"}),
		roundTrip: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "xpress_agent_uplink_batch_round_trip_seconds",
			Help:    "Time from publishing a batch to the hub's Ack of it, by lane.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"lane"}),
		ackTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_ack_timeouts_total",
			Help: "Batches the hub did not acknowledge in time; each one restarts the connection.",
		}),
		acksIgnored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_acks_ignored_total",
			Help: "Acks from the hub that changed nothing, by reason (invalid, other_spool, stale, overflow).",
		}, []string{"reason"}),
		batchErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_batch_errors_total",
			Help: "Batches the hub rejected, by kind (transient: retried; permanent: moved to rejected).",
		}, []string{"kind"}),
		rejectedRecords: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_rejected_records_total",
			Help: "Records moved to the spool's rejected bucket after the hub rejected them permanently, by lane.",
		}, []string{"lane"}),
	}
	for _, lane := range protocol.Lanes {
		l := string(lane)
		m.ackedSeq.WithLabelValues(l)
		m.batchesSent.WithLabelValues(l)
		m.recordsSent.WithLabelValues(l)
		m.rejectedRecords.WithLabelValues(l)
		m.roundTrip.WithLabelValues(l)
	}
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.connected, m.connectAttempts, m.connectFailures, m.ackedSeq, m.batchesSent,
		m.recordsSent, m.roundTrip, m.ackTimeouts, m.acksIgnored, m.batchErrors, m.rejectedRecords}
}

// register registers every collector, or none.
func (m *metrics) register(reg prometheus.Registerer) error {
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

func (m *metrics) unregister(reg prometheus.Registerer) {
	for _, c := range m.collectors() {
		reg.Unregister(c)
	}
}
