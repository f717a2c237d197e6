package outage

import "github.com/prometheus/client_golang/prometheus"

// Outcomes of the agent's SMS attempts, as metric labels.
const (
	// outcomeSent is an SMS the provider accepted.
	outcomeSent = "sent"
	// outcomeFound is an SMS of an earlier attempt found at the provider.
	outcomeFound = "found"
	// outcomeTransient is a failed attempt that is retried.
	outcomeTransient = "transient_error"
	// outcomePermanent is a failure that ends the notification.
	outcomePermanent = "permanent_error"
	// outcomeAbandoned is a notification given up because the hub or
	// regional staff took over before an attempt succeeded.
	outcomeAbandoned = "abandoned"
	// outcomeSummary is a summary SMS sent once a number reached the cap,
	// and outcomeSummaryFailed one that failed.
	outcomeSummary       = "summary"
	outcomeSummaryFailed = "summary_failed"
)

// Stages at which the notifier can fail besides sending, as metric labels.
const (
	stageStore  = "store"
	stageReport = "report"
)

// metrics are the notifier's Prometheus collectors.
type metrics struct {
	sms      *prometheus.CounterVec
	failures *prometheus.CounterVec
	capped   prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		sms: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_outage_sms_total",
			Help: "SMS attempts of the agent's own SOS alerts during hub outages, by outcome: sent, found (an earlier attempt's SMS found at the provider), transient_error, permanent_error, abandoned, summary (one SMS in place of those past the cap) or summary_failed.",
		}, []string{"outcome"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_agent_outage_sms_failures_total",
			Help: "Failures of the outage notifier besides sending, by stage: store (local SOS store) or report (appending the outcome to the spool).",
		}, []string{"stage"}),
		capped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_agent_outage_sms_capped_total",
			Help: "SOS alerts held back from a number that reached the cap of SMS per window, counted when the summary SMS about them goes (at most once per number and window).",
		}),
	}
	for _, o := range []string{outcomeSent, outcomeFound, outcomeTransient, outcomePermanent, outcomeAbandoned, outcomeSummary, outcomeSummaryFailed} {
		m.sms.WithLabelValues(o)
	}
	for _, s := range []string{stageStore, stageReport} {
		m.failures.WithLabelValues(s)
	}
	return m
}

// register registers both collectors, or neither.
func (m *metrics) register(reg prometheus.Registerer) error {
	if err := reg.Register(m.sms); err != nil {
		return err
	}
	if err := reg.Register(m.failures); err != nil {
		reg.Unregister(m.sms)
		return err
	}
	if err := reg.Register(m.capped); err != nil {
		reg.Unregister(m.sms)
		reg.Unregister(m.failures)
		return err
	}
	return nil
}

func (m *metrics) unregister(reg prometheus.Registerer) {
	reg.Unregister(m.sms)
	reg.Unregister(m.failures)
	reg.Unregister(m.capped)
}
