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
	authRefused     prometheus.Counter
	credsRefused    prometheus.Gauge
	subsRefused     *prometheus.CounterVec
	ackedSeq        *prometheus.GaugeVec
	batchesSent     *prometheus.CounterVec
	recordsSent     *prometheus.CounterVec
	roundTrip       *prometheus.HistogramVec
	ackTimeouts     prometheus.Counter
	acksIgnored     *prometheus.CounterVec
	batchErrors     *prometheus.CounterVec
	rejectedRecords *prometheus.CounterVec
	inflight        *prometheus.GaugeVec
	batchRecords    *prometheus.HistogramVec
	batchBytes      prometheus.Histogram
	batchTarget     prometheus.Gauge
	reconnects      prometheus.Counter
	linkDead        *prometheus.CounterVec
	hubSkipped      *prometheus.CounterVec
	ackTimeout      prometheus.Gauge
	gpsInflight     prometheus.Gauge
	gpsLimit        prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_agent_uplink_connected",
			Help: "1 while both of the uplink's MQTT connections to the hub (main link and SOS link) are up, else 0.",
		}),
		connectAttempts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_connect_attempts_total",
			Help: "Connection attempts to the hub, of both links.",
		}),
		connectFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_connect_failures_total",
			Help: "Connection attempts to the hub that failed.",
		}),
		authRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_auth_refused_total",
			Help: "Connection attempts the hub refused for bad credentials (unknown agent id or wrong token).",
		}),
		credsRefused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_agent_uplink_credentials_refused",
			Help: "1 while the hub's answer to the last connection attempt refused the agent's credentials, else 0.",
		}),
		subsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_subscriptions_refused_total",
			Help: "Topic filters the hub refused in a SUBACK, by link; each refusal reconnects the link.",
		}, []string{"link"}),
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
			Help: "Times the oldest batch in flight got no Ack in time; each one restarts the connection.",
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
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "xpress_agent_uplink_inflight_batches",
			Help: "Batches published to the hub and not yet settled by an Ack, by lane.",
		}, []string{"lane"}),
		batchRecords: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "xpress_agent_uplink_batch_records",
			Help:    "Records per batch published to the hub, by lane.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}, []string{"lane"}),
		batchBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xpress_agent_uplink_batch_bytes",
			Help:    "Encoded size of batches published to the hub.",
			Buckets: prometheus.ExponentialBuckets(256, 4, 9),
		}),
		batchTarget: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_agent_uplink_gps_batch_target_records",
			Help: "Record count the uplink currently aims for in a GPS batch; it grows on fast Acks and halves on slow ones.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_reconnects_total",
			Help: "Connections to the hub established after an earlier one of the same link since the agent started.",
		}),
		linkDead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_link_dead_total",
			Help: "Connections to the hub found dead, by cause (ack_timeout, keepalive, tcp_error).",
		}, []string{"cause"}),
		hubSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_uplink_hub_skipped_records_total",
			Help: "Records the hub never stored because it failed their batch and then committed a later batch of the lane, by lane.",
		}, []string{"lane"}),
		ackTimeout: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_agent_uplink_ack_timeout_seconds",
			Help: "Ack timeout in force: the configured one, doubled while even the smallest batches time out.",
		}),
		gpsInflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_agent_uplink_gps_inflight_bytes",
			Help: "Encoded size of the GPS batches published to the hub and not yet settled by an Ack.",
		}),
		gpsLimit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_agent_uplink_gps_inflight_limit_bytes",
			Help: "Most GPS bytes the uplink lets be in flight: what the link drains in a round trip, plus a floor.",
		}),
	}
	for _, link := range []string{linkMain, linkSOS} {
		m.subsRefused.WithLabelValues(link)
	}
	for _, cause := range []string{causeAckTimeout, causeKeepAlive, causeTCPError} {
		m.linkDead.WithLabelValues(cause)
	}
	for _, lane := range protocol.Lanes {
		l := string(lane)
		m.ackedSeq.WithLabelValues(l)
		m.batchesSent.WithLabelValues(l)
		m.recordsSent.WithLabelValues(l)
		m.rejectedRecords.WithLabelValues(l)
		m.roundTrip.WithLabelValues(l)
		m.inflight.WithLabelValues(l)
		m.batchRecords.WithLabelValues(l)
		m.hubSkipped.WithLabelValues(l)
	}
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.connected, m.connectAttempts, m.connectFailures, m.authRefused, m.credsRefused, m.subsRefused, m.ackedSeq, m.batchesSent,
		m.recordsSent, m.roundTrip, m.ackTimeouts, m.acksIgnored, m.batchErrors, m.rejectedRecords, m.inflight,
		m.batchRecords, m.batchBytes, m.batchTarget, m.reconnects, m.linkDead, m.hubSkipped,
		m.ackTimeout, m.gpsInflight, m.gpsLimit}
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
