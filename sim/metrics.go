package sim

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Message kinds, used as the "kind" label.
const (
	kindFix    = "fix"
	kindSOS    = "sos"
	kindStatus = "status"
)

// Failure reasons, used as the "reason" label.
const (
	reasonTimeout = "timeout"
	reasonError   = "error"
)

// metrics are the simulator's Prometheus metrics. Labels are bounded: no
// vehicle ids.
type metrics struct {
	published       *prometheus.CounterVec
	fixesPublished  prometheus.Counter
	acked           *prometheus.CounterVec
	failed          *prometheus.CounterVec
	connectFailures prometheus.Counter
	connectionsLost prometheus.Counter
	connected       prometheus.Gauge
	latency         *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	return &metrics{
		published: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_sim_messages_published_total",
			Help: "MQTT messages published by simulated vehicles, by kind (fix, sos, status). A batch of fixes is one message.",
		}, []string{"kind"})),
		fixesPublished: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_sim_fixes_published_total",
			Help: "GPS fixes published by simulated vehicles, counting each fix of a batch.",
		})),
		acked: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_sim_messages_acked_total",
			Help: "Published QoS 1 messages whose PUBACK arrived, by kind.",
		}, []string{"kind"})),
		failed: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_sim_messages_failed_total",
			Help: "Published messages that got no PUBACK, by kind and reason (timeout, error).",
		}, []string{"kind", "reason"})),
		connectFailures: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_sim_connect_failures_total",
			Help: "Failed connection attempts of simulated vehicles, first connections and reconnections.",
		})),
		connectionsLost: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_sim_connections_lost_total",
			Help: "Connections of simulated vehicles that dropped without the vehicle asking.",
		})),
		connected: register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_sim_vehicles_connected",
			Help: "Simulated vehicles connected to the broker now.",
		})),
		latency: register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "xpress_sim_publish_latency_seconds",
			Help:    "Time from a message's scheduled send time to its PUBACK, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"kind"})),
	}
}

// register registers c, or returns the collector already registered under
// the same description so that two runs can share one registry.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err)
	}
	return c
}
