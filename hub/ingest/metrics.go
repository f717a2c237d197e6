package ingest

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the ingest server's Prometheus collectors.
type metrics struct {
	batchesReceived     prometheus.Counter
	batchesCommitted    prometheus.Counter
	batchesMerged       prometheus.Counter
	batchesRejected     *prometheus.CounterVec
	batchBytes          prometheus.Histogram
	recordsCommitted    *prometheus.CounterVec
	recordsDuplicate    prometheus.Counter
	commitSeconds       prometheus.Histogram
	agentsConnected     prometheus.Gauge
	connectionsRejected *prometheus.CounterVec
	aclDenied           *prometheus.CounterVec
	sessionTakeovers    prometheus.Counter
	acksFailed          prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &metrics{
		batchesReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_ingest_batches_received_total",
			Help: "Batches published by agents.",
		}),
		batchesCommitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_ingest_batches_committed_total",
			Help: "Agent batches committed to the store and acknowledged, each counted, also when several were merged into one store transaction.",
		}),
		batchesMerged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_ingest_batches_merged_total",
			Help: "Agent batches committed in the same store transaction as the batch queued before them on the connection (group commit); store transactions are xpress_ingest_batches_committed_total minus this.",
		}),
		batchesRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_ingest_batches_rejected_total",
			Help: "Batches not committed, by reason: a protocol validation reason, agent_mismatch, retained, prev_missing, store_unavailable or store_error.",
		}, []string{"reason"}),
		batchBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xpress_ingest_batch_bytes",
			Help:    "Size of batch payloads published by agents.",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 9),
		}),
		recordsCommitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_ingest_records_committed_total",
			Help: "Records newly stored from committed batches, by spool lane.",
		}, []string{"lane"}),
		recordsDuplicate: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_ingest_records_duplicate_total",
			Help: "Records in committed batches skipped because they were already stored.",
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xpress_ingest_commit_seconds",
			Help:    "Time the store took for one batch transaction, which may hold several merged agent batches, failed commits included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		agentsConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_ingest_agents_connected",
			Help: "Agents with at least one open connection.",
		}),
		connectionsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_ingest_connections_rejected_total",
			Help: "Agent connections refused at CONNECT, by reason: invalid_agent_id, no_token, unknown_agent, bad_token, bad_credentials, client_certificate, client_id, will_message or store_unavailable.",
		}, []string{"reason"}),
		aclDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_ingest_acl_denied_total",
			Help: "Publishes and subscriptions denied because the topic is not the agent's own, by action.",
		}, []string{"action"}),
		sessionTakeovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_ingest_session_takeovers_total",
			Help: "Agent connections that took over the session of a live connection with the same client id.",
		}),
		acksFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_ingest_acks_failed_total",
			Help: "Acks that could not be published to an agent.",
		}),
	}
	reg.MustRegister(
		m.batchesReceived, m.batchesCommitted, m.batchesMerged, m.batchesRejected, m.batchBytes,
		m.recordsCommitted, m.recordsDuplicate, m.commitSeconds, m.agentsConnected,
		m.connectionsRejected, m.aclDenied, m.sessionTakeovers, m.acksFailed,
	)
	return m
}
