package opsync

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the syncer's Prometheus collectors.
type metrics struct {
	published prometheus.Counter
	failures  prometheus.Counter
	agents    prometheus.Gauge
}

// newMetrics registers the syncer's collectors with reg, all or none.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_opsync_published_total",
			Help: "Operator lists published to the agents: one per agent whose list changed, and one per agent after the hub starts.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_opsync_failures_total",
			Help: "Operator list syncs that failed (store read or publish) and agent lists not sent because an account was invalid.",
		}),
		agents: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_opsync_agents",
			Help: "Agents whose operator list the hub keeps on its agent broker.",
		}),
	}
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
	return []prometheus.Collector{m.published, m.failures, m.agents}
}

// unregister removes the collectors from reg.
func (m *metrics) unregister(reg prometheus.Registerer) {
	for _, c := range m.collectors() {
		reg.Unregister(c)
	}
}
