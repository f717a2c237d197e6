package dispatch

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the dispatcher's Prometheus collectors.
type metrics struct {
	notifications      *prometheus.CounterVec
	attempts           *prometheus.CounterVec
	escalations        *prometheus.CounterVec
	escalationFailures prometheus.Counter
	noContacts         *prometheus.CounterVec
	outboxPending      prometheus.Gauge
	outboxOldestAge    prometheus.Gauge
	channelEnabled     *prometheus.GaugeVec
	callbacks          *prometheus.CounterVec
	authFailures       *prometheus.CounterVec
}

// Results of a status callback, as metric labels.
const (
	callbackApplied      = "applied"
	callbackUnknownSID   = "unknown_sid"
	callbackBadSignature = "bad_signature"
	callbackInvalid      = "invalid"
	callbackFailed       = "failed"
	callbackWrongAccount = "wrong_account"
)

// newMetrics registers the dispatcher's collectors with reg, all or none.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_dispatch_notifications_total",
			Help: "Recorded notification attempts, by channel and outcome: sent, reconciled (found at the provider after an unknown outcome), retry, failed (permanent) or skipped (escalation no longer needed).",
		}, []string{"channel", "outcome"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_dispatch_attempts_total",
			Help: "Notification attempts started (claimed from the outbox), by channel.",
		}, []string{"channel"}),
		escalations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_dispatch_escalations_total",
			Help: "Escalation levels raised by this hub: 1 responders, 2 supervisors, 3 supervisor calls.",
		}, []string{"level"}),
		escalationFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "xpress_dispatch_escalation_failures_total",
			Help: "Escalations that failed in the store and are retried on the next scan.",
		}),
		noContacts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_dispatch_regions_without_contacts_total",
			Help: "Escalations whose region had no contacts of the role to notify, by role (responder or supervisor).",
		}, []string{"role"}),
		outboxPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_dispatch_outbox_pending",
			Help: "Notifications pending or being sent, as of the last scan.",
		}),
		outboxOldestAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "xpress_dispatch_outbox_oldest_pending_age_seconds",
			Help: "Age of the oldest notification pending or being sent, as of the last scan; 0 when none.",
		}),
		channelEnabled: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "xpress_dispatch_channel_enabled",
			Help: "1 when the channel has a sender on this hub, else 0.",
		}, []string{"channel"}),
		callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_dispatch_status_callbacks_total",
			Help: "Twilio status callbacks, by result: applied, unknown_sid, bad_signature, wrong_account (signed, for another Twilio account), invalid or failed.",
		}, []string{"result"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "xpress_dispatch_provider_auth_failures_total",
			Help: "Attempts the provider rejected for the hub's credentials (HTTP 401 or 403: wrong auth token, suspended account), by channel. The notifications are retried; fix the account.",
		}, []string{"channel"}),
	}
	for _, ch := range allChannels {
		m.authFailures.WithLabelValues(string(ch))
		m.channelEnabled.WithLabelValues(string(ch))
		m.attempts.WithLabelValues(string(ch))
	}
	for _, r := range []string{callbackApplied, callbackUnknownSID, callbackBadSignature, callbackInvalid, callbackFailed, callbackWrongAccount} {
		m.callbacks.WithLabelValues(r)
	}
	collectors := []prometheus.Collector{
		m.notifications, m.attempts, m.escalations, m.escalationFailures, m.noContacts,
		m.outboxPending, m.outboxOldestAge, m.channelEnabled, m.callbacks, m.authFailures,
	}
	for i, c := range collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range collectors[:i] {
				reg.Unregister(done)
			}
			var already prometheus.AlreadyRegisteredError
			if errors.As(err, &already) {
				return nil, errors.New("dispatch metrics are already registered: use one Dispatcher per registry")
			}
			return nil, err
		}
	}
	return m, nil
}
