package embedded

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the store's Prometheus collectors. The names are those of
// package postgres where the meaning is the same.
type metrics struct {
	commitSeconds    prometheus.Histogram
	commitErrors     *prometheus.CounterVec
	recordsCommitted *prometheus.CounterVec
	duplicates       prometheus.Counter
	incidentsOpened  prometheus.Counter
	cancelsUnmatched prometheus.Counter
	incidentActions  *prometheus.CounterVec
	// dispatchOps counts the contact and dispatch methods by operation and result.
	dispatchOps *prometheus.CounterVec
	// agentRecordsSkipped counts local acknowledgement and agent
	// notification records that CommitBatch skipped, by kind and reason.
	agentRecordsSkipped *prometheus.CounterVec
	// redelivered counts SOS records recognised as redeliveries of a press.
	redelivered      prometheus.Counter
	retentionDeleted prometheus.Counter
	retentionErrors  prometheus.Counter
}

// newMetrics registers the store's collectors with reg, or with a private
// registry when reg is nil. The file size gauge reads the size of the
// file at path when scraped.
func newMetrics(reg prometheus.Registerer, path string) *metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &metrics{
		commitSeconds: register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xpress_store_commit_seconds",
			Help:    "Time to commit one agent batch, fsync included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		})),
		commitErrors: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_store_commit_errors_total",
			Help: "Agent batches that failed to commit, by reason (unavailable, invalid, other).",
		}, []string{"reason"})),
		recordsCommitted: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_store_records_committed_total",
			Help: "Agent records stored, by record kind.",
		}, []string{"kind"})),
		duplicates: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_store_duplicates_skipped_total",
			Help: "Agent records skipped because their sequence number was at or below the agent's cursor.",
		})),
		incidentsOpened: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_store_incidents_opened_total",
			Help: "Incidents opened by an SOS.",
		})),
		cancelsUnmatched: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_store_sos_cancels_unmatched_total",
			Help: "SOS cancel requests whose SOS id matched no incident of the vehicle.",
		})),
		incidentActions: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_store_incident_actions_total",
			Help: "Operator actions on incidents, by action and result (ok, conflict, invalid, not_found, error).",
		}, []string{"action", "result"})),
		dispatchOps: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_store_dispatch_operations_total",
			Help: "Contact and notification operations, by operation and result (ok, conflict, invalid, not_found, error).",
		}, []string{"operation", "result"})),
		agentRecordsSkipped: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_store_agent_records_skipped_total",
			Help: "Local acknowledgement and agent notification records skipped, by kind and reason (unmatched: no incident has the SOS id; invalid: content the hub cannot store).",
		}, []string{"kind", "reason"})),
		redelivered: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_store_sos_redelivered_total",
			Help: "SOS records with the SOS id and press time of a press already counted, recorded without counting a new press.",
		})),
		retentionDeleted: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_store_retention_fixes_deleted_total",
			Help: "Fixes deleted because they were older than the retention window.",
		})),
		retentionErrors: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_store_retention_errors_total",
			Help: "Failed runs of the background fixes retention.",
		})),
	}
	register(reg, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "xpress_store_file_size_bytes",
		Help: "Size of the embedded store's bbolt file. It does not shrink when fixes are deleted; bbolt reuses the freed pages.",
	}, func() float64 { return float64(fileSize(path)) }))
	return m
}

// register registers c, or returns the collector already registered under
// the same name, so two stores may share one registry.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var already prometheus.AlreadyRegisteredError
		if errors.As(err, &already) {
			if existing, ok := already.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err)
	}
	return c
}
