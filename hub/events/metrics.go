package events

import "github.com/prometheus/client_golang/prometheus"

// metrics are the bus's Prometheus metrics.
type metrics struct {
	published     *prometheus.CounterVec
	subscribers   prometheus.Gauge
	slowConsumers prometheus.Counter
	gaps          prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_events_published_total",
			Help: "Events published on the bus, by event type (unknown types count as other).",
		}, []string{"type"}),
		subscribers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_events_subscribers",
			Help: "Open subscriptions to the event bus.",
		}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_events_slow_consumers_total",
			Help: "Subscriptions closed because they fell a full buffer behind.",
		}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_events_resume_gaps_total",
			Help: "Subscribe calls rejected because the resume point was outside the kept history.",
		}),
	}
	for _, typ := range []string{TypeFix, TypeIncidentOpened, TypeIncidentUpdated, TypeVehicleStatus, TypeAgentStatus, "other"} {
		m.published.WithLabelValues(typ)
	}
	reg.MustRegister(m.published, m.subscribers, m.slowConsumers, m.gaps)
	return m
}
