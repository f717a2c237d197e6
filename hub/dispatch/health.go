package dispatch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/notify"
)

// maxOutboxCount is the most unfinished notifications Health and the
// outbox gauges read; a larger outbox is reported as at least this many.
const maxOutboxCount = 10000

// outboxGaugeInterval is how often a scan refreshes the outbox gauges.
const outboxGaugeInterval = 10 * time.Second

// recentFailureWindow is how long a failed attempt keeps its channel
// degraded in Health, even after a later attempt succeeds.
const recentFailureWindow = 5 * time.Minute

// outboxHorizon is added to now to read every unfinished notification,
// due or not, with DueNotifications.
const outboxHorizon = 100 * 365 * 24 * time.Hour

// Health is the dispatcher's state for /api/emergency/health.
type Health struct {
	// Channels lists every channel, enabled or not.
	Channels []ChannelHealth `json:"channels"`
	// Pending counts notifications pending or being sent.
	Pending int `json:"pending"`
	// PendingCapped is true when the outbox holds more than Pending.
	PendingCapped bool `json:"pending_capped,omitempty"`
	// OldestPendingSeconds is the age of the oldest unfinished
	// notification, 0 when there is none.
	OldestPendingSeconds float64 `json:"oldest_pending_seconds"`
	// Webhooks is the number of configured webhook URLs.
	Webhooks int `json:"webhooks"`
	// EscalateAfterSeconds and VoiceAfterSeconds are the escalation
	// timers.
	EscalateAfterSeconds float64 `json:"escalate_after_seconds"`
	VoiceAfterSeconds    float64 `json:"voice_after_seconds"`
}

// ChannelHealth is one channel's state.
type ChannelHealth struct {
	Channel string `json:"channel"`
	// Enabled is true when the hub has a sender for the channel.
	Enabled bool `json:"enabled"`
	// LastSuccess and LastFailure are the hub times of the channel's last
	// sent and last failed attempt since the hub started.
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastFailure time.Time `json:"last_failure,omitzero"`
	// LastError is the error of the last failed attempt, with URLs cut to
	// scheme and host.
	LastError string `json:"last_error,omitempty"`
	// RecentFailures counts the failed attempts in the last 5 minutes.
	RecentFailures int `json:"recent_failures"`
	// Degraded is true when an attempt failed in the last 5 minutes,
	// whether or not a later one succeeded.
	Degraded bool `json:"degraded"`
	// Problem names a failure of the whole channel, such as the provider
	// rejecting the credentials in the last 5 minutes.
	Problem string `json:"problem,omitempty"`
	// Pending counts the channel's unfinished notifications.
	Pending int `json:"pending"`
}

// outboxSummary counts the unfinished notifications.
type outboxSummary struct {
	total     int
	capped    bool
	oldestAge time.Duration
	byChannel map[store.Channel]int
}

func (d *Dispatcher) readOutbox(ctx context.Context, now time.Time) (outboxSummary, error) {
	qctx, cancel := d.queryContext(ctx)
	defer cancel()
	list, err := d.cfg.Store.DueNotifications(qctx, now.Add(outboxHorizon), maxOutboxCount)
	if err != nil {
		return outboxSummary{}, fmt.Errorf("read the outbox: %w", err)
	}
	sum := outboxSummary{total: len(list), capped: len(list) >= maxOutboxCount, byChannel: map[store.Channel]int{}}
	for _, n := range list {
		sum.byChannel[n.Channel]++
		if age := now.Sub(n.CreatedAt); age > sum.oldestAge {
			sum.oldestAge = age
		}
	}
	return sum, nil
}

// refreshOutboxGauges updates the outbox gauges at most every
// outboxGaugeInterval.
func (d *Dispatcher) refreshOutboxGauges(ctx context.Context) {
	now := d.cfg.Clock.Now()
	d.mu.Lock()
	due := d.gaugesAt.IsZero() || !now.Before(d.gaugesAt.Add(outboxGaugeInterval))
	if due {
		d.gaugesAt = now
	}
	d.mu.Unlock()
	if !due {
		return
	}
	sum, err := d.readOutbox(ctx, now)
	if err != nil {
		d.log.Warn("outbox gauges not updated", "error", err)
		return
	}
	d.setOutboxGauges(sum)
}

func (d *Dispatcher) setOutboxGauges(sum outboxSummary) {
	d.metrics.outboxPending.Set(float64(sum.total))
	d.metrics.outboxOldestAge.Set(sum.oldestAge.Seconds())
}

// Health returns the channels' state and the outbox's size.
func (d *Dispatcher) Health(ctx context.Context) (Health, error) {
	now := d.cfg.Clock.Now()
	sum, err := d.readOutbox(ctx, now)
	if err != nil {
		return Health{}, err
	}
	d.setOutboxGauges(sum)
	h := Health{
		Pending:              sum.total,
		PendingCapped:        sum.capped,
		OldestPendingSeconds: sum.oldestAge.Seconds(),
		Webhooks:             len(d.cfg.WebhookURLs),
		EscalateAfterSeconds: d.cfg.EscalateAfter.Seconds(),
		VoiceAfterSeconds:    d.cfg.VoiceAfter.Seconds(),
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ch := range allChannels {
		st := d.channels[ch]
		st.failures = recentFailures(st.failures, now)
		c := ChannelHealth{
			Channel:        string(ch),
			Enabled:        d.enabled(ch),
			LastSuccess:    st.lastSuccess,
			LastFailure:    st.lastFailure,
			LastError:      st.lastError,
			Pending:        sum.byChannel[store.Channel(ch)],
			RecentFailures: len(st.failures),
			Degraded:       len(st.failures) > 0,
		}
		if !st.authFailure.IsZero() && now.Sub(st.authFailure) < recentFailureWindow {
			c.Degraded = true
			// Only the Twilio sender reports credential errors (notify.Error.Auth).
			c.Problem = "twilio rejects the credentials"
		}
		h.Channels = append(h.Channels, c)
	}
	return h, nil
}

// ReadTwilioStatus verifies and parses a Twilio status callback posted
// to PublicURL followed by the request's path and query. A signature that
// does not verify, or a hub without TwilioAuthToken, gives an error
// matching notify.ErrTwilioSignature; it is logged and counted.
func (d *Dispatcher) ReadTwilioStatus(r *http.Request) (notify.TwilioStatus, error) {
	if d.cfg.TwilioAuthToken == "" {
		d.metrics.callbacks.WithLabelValues(callbackBadSignature).Inc()
		d.log.Warn("Twilio status callback rejected: no Twilio auth token is configured", "remote", r.RemoteAddr)
		return notify.TwilioStatus{}, fmt.Errorf("%w: this hub has no Twilio auth token", notify.ErrTwilioSignature)
	}
	fullURL := d.cfg.PublicURL + r.URL.RequestURI()
	st, err := notify.ReadTwilioCallback(r, d.cfg.TwilioAuthToken, fullURL)
	if err == nil && d.cfg.TwilioAccountSID != "" && st.AccountSID != d.cfg.TwilioAccountSID {
		d.metrics.callbacks.WithLabelValues(callbackWrongAccount).Inc()
		d.log.Warn("Twilio status callback rejected: it is for another account", "remote", r.RemoteAddr,
			"account_sid", store.CleanLine(st.AccountSID, 40), "sid", st.ProviderID, "status", st.Status)
		return notify.TwilioStatus{}, fmt.Errorf("%w: AccountSid %q is not this hub's account", ErrWrongAccount, store.CleanLine(st.AccountSID, 40))
	}
	switch {
	case errors.Is(err, notify.ErrTwilioSignature):
		d.metrics.callbacks.WithLabelValues(callbackBadSignature).Inc()
		d.log.Warn("Twilio status callback rejected: invalid signature", "remote", r.RemoteAddr, "url", fullURL,
			"message_sid", r.PostForm.Get("MessageSid"), "call_sid", r.PostForm.Get("CallSid"))
	case err != nil:
		d.metrics.callbacks.WithLabelValues(callbackInvalid).Inc()
		d.log.Warn("Twilio status callback rejected", "remote", r.RemoteAddr, "error", err)
	}
	return st, err
}

// ErrWrongAccount is a signed Twilio status callback whose AccountSid is
// not Config.TwilioAccountSID. Reply 403 to it.
var ErrWrongAccount = errors.New("Twilio status callback for another account")

// Limits of the callbacks kept for a provider id not yet recorded.
const (
	// earlyCallbackTTL is how long such a callback is kept: longer than
	// any send, whose id RecordAttempt stores when the send returns.
	earlyCallbackTTL = 5 * time.Minute
	// maxEarlyCallbacks bounds the callbacks kept, so that callbacks for
	// SIDs this hub never sent cannot fill the memory.
	maxEarlyCallbacks = 1000
)

// earlyCallback is a status callback that arrived before its provider id
// was recorded.
type earlyCallback struct {
	status notify.TwilioStatus
	at     time.Time
}

// keepEarlyCallback keeps st for applyEarlyCallbacks, dropping expired
// ones, and reports whether it was kept.
func (d *Dispatcher) keepEarlyCallback(st notify.TwilioStatus) bool {
	now := d.cfg.Clock.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	total := 0
	for id, list := range d.earlyCallbacks {
		if now.Sub(list[len(list)-1].at) >= earlyCallbackTTL {
			delete(d.earlyCallbacks, id)
			continue
		}
		total += len(list)
	}
	if total >= maxEarlyCallbacks {
		return false
	}
	d.earlyCallbacks[st.ProviderID] = append(d.earlyCallbacks[st.ProviderID], earlyCallback{status: st, at: now})
	return true
}

// applyEarlyCallbacks applies the callbacks kept for providerID, in the
// order they arrived, once RecordAttempt stored that id.
func (d *Dispatcher) applyEarlyCallbacks(ctx context.Context, providerID string) {
	if providerID == "" {
		return
	}
	now := d.cfg.Clock.Now()
	d.mu.Lock()
	list := d.earlyCallbacks[providerID]
	delete(d.earlyCallbacks, providerID)
	d.mu.Unlock()
	for _, cb := range list {
		if now.Sub(cb.at) >= earlyCallbackTTL {
			continue
		}
		d.log.Info("applying a Twilio status callback that arrived before the send was recorded",
			"sid", providerID, "status", cb.status.Status, "received_at", formatTime(cb.at))
		if _, err := d.applyTwilioStatus(ctx, cb.status, false); err != nil {
			d.log.Warn("applying an early Twilio status callback failed", "sid", providerID, "status", cb.status.Status, "error", err)
		}
	}
}

// ApplyTwilioStatus records a verified status callback on its
// notification and publishes the incident change. It returns an error
// wrapping store.ErrNotFound when no notification has the SID, which is
// logged. Such a callback may arrive while the send is in flight, before
// the SID is recorded, so it is kept for 5 minutes and applied once an
// attempt records the SID. Reply 200 to it, so that Twilio does not retry
// it.
func (d *Dispatcher) ApplyTwilioStatus(ctx context.Context, st notify.TwilioStatus) (store.Notification, error) {
	return d.applyTwilioStatus(ctx, st, true)
}

// applyTwilioStatus is ApplyTwilioStatus; keep false does not keep a
// callback for an unknown SID.
func (d *Dispatcher) applyTwilioStatus(ctx context.Context, st notify.TwilioStatus, keep bool) (store.Notification, error) {
	errText := ""
	if st.ErrorCode != 0 {
		errText = fmt.Sprintf("Twilio error %d", st.ErrorCode)
	}
	qctx, cancel := d.queryContext(ctx)
	n, change, err := d.cfg.Store.UpdateDeliveryStatus(qctx, st.ProviderID, st.Status, errText)
	cancel()
	switch {
	case errors.Is(err, store.ErrNotFound):
		d.metrics.callbacks.WithLabelValues(callbackUnknownSID).Inc()
		if keep && d.keepEarlyCallback(st) {
			d.log.Info("Twilio status callback for an unknown SID kept: its send may not be recorded yet",
				"sid", st.ProviderID, "status", st.Status, "channel", st.Channel, "kept_for", earlyCallbackTTL.String())
			return store.Notification{}, err
		}
		d.log.Warn("Twilio status callback for an unknown SID ignored", "sid", st.ProviderID, "status", st.Status, "channel", st.Channel)
		return store.Notification{}, err
	case err != nil:
		d.metrics.callbacks.WithLabelValues(callbackFailed).Inc()
		d.log.Error("applying a Twilio status callback failed", "sid", st.ProviderID, "status", st.Status, "error", err)
		return store.Notification{}, err
	}
	d.metrics.callbacks.WithLabelValues(callbackApplied).Inc()
	if n.State == store.NotificationFailed {
		d.noteOutcome(notify.Channel(n.Channel), outcomeFailed, n.LastError)
	}
	d.log.Info("Twilio status applied", "sid", st.ProviderID, "status", st.Status, "notification", n.ID,
		"incident", n.IncidentID, "state", n.State)
	d.publish(change)
	return n, nil
}
