package localauth

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of hub messages, as metric labels.
const (
	resultApplied   = "applied"
	resultUnchanged = "unchanged"
	resultInvalid   = "invalid"
)

// Results of sign-ins, as metric labels.
const (
	loginSuccess        = "success"
	loginBadCredentials = "bad_credentials"
	loginLocked         = "locked"
	loginThrottled      = "throttled"
	loginNoOperators    = "no_operators"
)

// metrics are the store's Prometheus collectors.
type metrics struct {
	updates       *prometheus.CounterVec
	writeFailures prometheus.Counter
	logins        *prometheus.CounterVec
	collectors    []prometheus.Collector
}

func newMetrics() *metrics {
	m := &metrics{
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_operator_list_updates_total",
			Help: "Operator lists from the hub, by result: applied, unchanged or invalid (kept the previous list).",
		}, []string{"result"}),
		writeFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_operator_list_write_failures_total",
			Help: "Operator lists applied in memory that could not be written to the agent's file.",
		}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_local_logins_total",
			Help: "Sign-ins on the agent's page, by result: success, bad_credentials, locked, throttled or no_operators.",
		}, []string{"result"}),
	}
	for _, r := range []string{resultApplied, resultUnchanged, resultInvalid} {
		m.updates.WithLabelValues(r)
	}
	for _, r := range []string{loginSuccess, loginBadCredentials, loginLocked, loginThrottled, loginNoOperators} {
		m.logins.WithLabelValues(r)
	}
	return m
}

// register registers the collectors with reg, all or none, with gauges
// of the operators held and the live sessions read from counts.
func (m *metrics) register(reg prometheus.Registerer, counts func() (operators, sessions int)) error {
	operators := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "xpress_agent_operator_list_operators",
		Help: "Operators in the list the agent holds from the hub, who may sign in on its page.",
	}, func() float64 { n, _ := counts(); return float64(n) })
	sessions := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "xpress_agent_local_sessions",
		Help: "Sign-in sessions on the agent's page, idle ones included until they are pruned.",
	}, func() float64 { _, n := counts(); return float64(n) })
	all := []prometheus.Collector{m.updates, m.writeFailures, m.logins, operators, sessions}
	for i, c := range all {
		if err := reg.Register(c); err != nil {
			for _, d := range all[:i] {
				reg.Unregister(d)
			}
			return fmt.Errorf("register operator list metrics: %w", err)
		}
	}
	m.collectors = all
	return nil
}

// unregister removes the collectors from reg.
func (m *metrics) unregister(reg prometheus.Registerer) {
	for _, c := range m.collectors {
		reg.Unregister(c)
	}
	m.collectors = nil
}
