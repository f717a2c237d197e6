package broker

import (
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/protocol"
)

// metrics are the broker's Prometheus metrics.
type metrics struct {
	accepted *prometheus.CounterVec
	rejects  *prometheus.CounterVec
	// sosStoreFailures counts SOS-lane messages the spool did not store.
	sosStoreFailures *prometheus.CounterVec
	storeSeconds     prometheus.Histogram
	connected        prometheus.Collector
}

func newMetrics() *metrics {
	m := &metrics{
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_messages_accepted_total",
			Help: "Vehicle messages stored in the spool, by record kind (a fix array counts once).",
		}, []string{"kind"}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_rejects_total",
			Help: "Vehicle connections, subscriptions and messages rejected, by reason.",
		}, []string{"reason"}),
		sosStoreFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_sos_store_failures_total",
			Help: "SOS and SOS cancel messages the spool did not store (no PUBACK, or an MQTT 5 error code), by reason: spool_full or spool_error.",
		}, []string{"reason"}),
		storeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xpress_agent_publish_store_seconds",
			Help:    "Time from receiving a vehicle message to its spool commit, which the PUBACK waits for.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	for _, kind := range []protocol.RecordKind{protocol.KindFix, protocol.KindSOS, protocol.KindSOSCancel, protocol.KindStatus} {
		m.accepted.WithLabelValues(string(kind))
	}
	for _, reason := range []string{reasonAuth, reasonBadPassword, reasonNotAuthorized, reasonConnectRate, reasonAuthBlocked, reasonACL, reasonSpool, reasonSpoolFull, reasonPacketSize, "malformed", "out_of_range"} {
		m.rejects.WithLabelValues(reason)
	}
	for _, reason := range []string{reasonSpool, reasonSpoolFull} {
		m.sosStoreFailures.WithLabelValues(reason)
	}
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.accepted, m.rejects, m.sosStoreFailures, m.storeSeconds, m.connected}
}

// register registers every collector, or none. The connected-vehicles
// gauge reads server's counters at scrape time.
func (m *metrics) register(reg prometheus.Registerer, server *mqtt.Server) error {
	m.connected = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "xpress_agent_vehicles_connected",
		Help: "Vehicle MQTT connections currently open.",
	}, func() float64 { return float64(atomic.LoadInt64(&server.Info.ClientsConnected)) })

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
		if c != nil {
			reg.Unregister(c)
		}
	}
}
