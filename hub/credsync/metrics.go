package credsync

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the syncer's Prometheus collectors.
type metrics struct {
	published *prometheus.CounterVec
	failures  prometheus.Counter
	version   prometheus.Gauge
}

// newMetrics registers the syncer's collectors with reg, all or none.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_credsync_published_total",
			Help: "Vehicle credentials published to the agents, by state: live or revoked.",
		}, []string{"state"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_credsync_failures_total",
			Help: "Vehicle credential syncs that failed (store read or publish) and credentials skipped as invalid.",
		}),
		version: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_credsync_version",
			Help: "Highest vehicle credential version published to the agents.",
		}),
	}
	m.published.WithLabelValues("live")
	m.published.WithLabelValues("revoked")
	var done []prometheus.Collector
	for _, c := range m.collectors() {
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

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.published, m.failures, m.version}
}

// unregister removes the collectors from reg.
func (m *metrics) unregister(reg prometheus.Registerer) {
	for _, c := range m.collectors() {
		reg.Unregister(c)
	}
}
