package downlink

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/protocol"
)

// Causes of a resync, as metric labels.
const (
	causeStart = "start"
	causeGap   = "gap"
)

// metrics are the downlink's Prometheus collectors.
type metrics struct {
	published       *prometheus.CounterVec
	publishFailures prometheus.Counter
	cleared         prometheus.Counter
	resyncs         *prometheus.CounterVec
	resyncFailures  prometheus.Counter
	invalidEvents   prometheus.Counter
	paced           prometheus.Counter
}

// newMetrics registers the downlink's collectors with reg, all or none.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_downlink_states_published_total",
			Help: "SOS states published to agents for their vehicles, by vehicle state.",
		}, []string{"state"}),
		publishFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_downlink_publish_failures_total",
			Help: "SOS states and clears that could not be published to agents.",
		}),
		paced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_downlink_paced_total",
			Help: "SOS state publishes that waited because the agent had too many unacknowledged messages.",
		}),
		cleared: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_downlink_states_cleared_total",
			Help: "Retained final SOS states cleared after their retention.",
		}),
		resyncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_downlink_resyncs_total",
			Help: "Resyncs of SOS states from the store, by cause: start, or gap after missed bus events.",
		}, []string{"cause"}),
		resyncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_downlink_resync_failures_total",
			Help: "Resyncs that failed to read the store and were retried.",
		}),
		invalidEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_downlink_invalid_events_total",
			Help: "Incident events whose incident could not be read or mapped to a vehicle state.",
		}),
	}
	for _, s := range []string{protocol.SOSStateReceived, protocol.SOSStateAcknowledged, protocol.SOSStateDispatched,
		protocol.SOSStateResolved, protocol.SOSStateCancelled} {
		m.published.WithLabelValues(s)
	}
	for _, c := range []string{causeStart, causeGap} {
		m.resyncs.WithLabelValues(c)
	}

	collectors := []prometheus.Collector{m.published, m.publishFailures, m.cleared, m.resyncs, m.resyncFailures, m.invalidEvents, m.paced}
	var done []prometheus.Collector
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			for _, d := range done {
				reg.Unregister(d)
			}
			return nil, err
		}
		done = append(done, c)
	}
	return m, nil
}
