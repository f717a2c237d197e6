package vehicleauth

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Results of hub messages, as metric labels.
const (
	resultApplied = "applied"
	resultStale   = "stale"
	resultInvalid = "invalid"
)

// Results of password checks, as metric labels.
const (
	checkRemembered  = "remembered"
	checkVerified    = "verified"
	checkBadPassword = "bad_password"
	checkUnknown     = "unknown_vehicle"
	checkRevoked     = "revoked"
)

// metrics are the store's Prometheus collectors.
type metrics struct {
	updates       *prometheus.CounterVec
	writeFailures prometheus.Counter
	checks        *prometheus.CounterVec
	verifySeconds prometheus.Histogram
	collectors    []prometheus.Collector
}

func newMetrics() *metrics {
	m := &metrics{
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_vehicle_credential_updates_total",
			Help: "Vehicle credential messages from the hub, by result: applied, stale (not newer than the one held) or invalid.",
		}, []string{"result"}),
		writeFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_vehicle_credential_write_failures_total",
			Help: "Batches of vehicle credentials applied in memory that could not be written to the agent's file.",
		}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_vehicle_auth_checks_total",
			Help: "Vehicle password checks, by result: remembered, verified, bad_password, unknown_vehicle or revoked.",
		}, []string{"result"}),
		verifySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "xpress_agent_vehicle_auth_verify_seconds",
			Help:    "Time of one argon2id password check, waiting for a free check slot excluded.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 10),
		}),
	}
	for _, r := range []string{resultApplied, resultStale, resultInvalid} {
		m.updates.WithLabelValues(r)
	}
	for _, r := range []string{checkRemembered, checkVerified, checkBadPassword, checkUnknown, checkRevoked} {
		m.checks.WithLabelValues(r)
	}
	return m
}

// register registers every collector, or none, with a gauge of the
// credentials held read from count at scrape time.
func (m *metrics) register(reg prometheus.Registerer, count func() (live, revoked int)) error {
	live := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "xpress_agent_vehicle_credentials",
		Help: "Live vehicle credentials the agent holds.",
	}, func() float64 { live, _ := count(); return float64(live) })
	revoked := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "xpress_agent_vehicle_credentials_revoked",
		Help: "Revoked vehicle credentials (tombstones) the agent holds.",
	}, func() float64 { _, r := count(); return float64(r) })
	all := []prometheus.Collector{m.updates, m.writeFailures, m.checks, m.verifySeconds, live, revoked}
	for i, c := range all {
		if err := reg.Register(c); err != nil {
			for _, d := range all[:i] {
				reg.Unregister(d)
			}
			return err
		}
	}
	m.collectors = all
	return nil
}

func (m *metrics) unregister(reg prometheus.Registerer) {
	for _, c := range m.collectors {
		reg.Unregister(c)
	}
}
