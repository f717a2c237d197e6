package dispatch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/notify"
)

// Outcomes of an attempt, as metric labels.
const (
	outcomeSent       = "sent"
	outcomeReconciled = "reconciled"
	outcomeRetry      = "retry"
	outcomeFailed     = "failed"
	outcomeSkipped    = "skipped"
)

// unknownPrefix starts the LastError of an SMS or call whose attempt may
// have reached Twilio, followed by the attempt's start time. The next
// attempt reads it back and looks the message up before it sends again,
// even after a restart.
const unknownPrefix = "outcome unknown since "

// markUnknown returns the LastError of an attempt started at since whose
// outcome is unknown.
func markUnknown(since time.Time, err string) string {
	return unknownPrefix + since.UTC().Format(time.RFC3339Nano) + ": " + err
}

// unknownSince reads the start time written by markUnknown.
func unknownSince(lastError string) (time.Time, bool) {
	rest, ok := strings.CutPrefix(lastError, unknownPrefix)
	if !ok {
		return time.Time{}, false
	}
	stamp, _, _ := strings.Cut(rest, ": ")
	t, err := time.Parse(time.RFC3339Nano, stamp)
	return t, err == nil
}

// SendDue sends the notifications due now, as the outbox worker does on
// each tick, and waits for those sends. It returns how many sends it
// started; notifications another caller is already sending are left to
// it.
func (d *Dispatcher) SendDue(ctx context.Context) (int, error) {
	var sends sync.WaitGroup
	n, err := d.startDue(ctx, &sends)
	sends.Wait()
	return n, err
}

// startDue reads the due notifications and starts a send for each one
// this process is not already sending, waiting for a free slot when
// Concurrency sends run. The sends outlive ctx: Close waits for them.
func (d *Dispatcher) startDue(ctx context.Context, sends *sync.WaitGroup) (int, error) {
	qctx, cancel := d.queryContext(ctx)
	due, err := d.cfg.Store.DueNotifications(qctx, d.cfg.Clock.Now(), outboxBatch)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("read due notifications: %w", err)
	}
	started := 0
	for _, n := range due {
		if !d.enabled(notify.Channel(n.Channel)) {
			d.noteIdle(n)
			continue
		}
		if !d.markInFlight(n) {
			continue
		}
		select {
		case d.slots <- struct{}{}:
		case <-ctx.Done():
			d.unmarkInFlight(n)
			return started, ctx.Err()
		}
		started++
		sends.Add(1)
		go func(n store.Notification) {
			defer sends.Done()
			defer func() { <-d.slots }()
			defer d.unmarkInFlight(n)
			d.attempt(context.WithoutCancel(ctx), n)
		}(n)
	}
	return started, nil
}

// markInFlight notes that this process sends n, and returns false when
// it already sends n or another notification of n's channel to n's
// address. Sends to one address run one at a time, so that a call found
// at Twilio after a crash belongs to one notification only. Twilio keeps
// no text of a call, so two calls to one number placed at once look the
// same. The skipped notification is sent on a later pass.
func (d *Dispatcher) markInFlight(n store.Notification) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.inFlight[n.ID] {
		return false
	}
	key := store.NotificationKey{Channel: n.Channel, Address: n.Address}
	if d.addressBusy[key] {
		d.addressWaiting = true
		return false
	}
	d.inFlight[n.ID] = true
	d.addressBusy[key] = true
	return true
}

// unmarkInFlight ends what markInFlight started, and wakes the outbox
// worker when a notification waited for the address.
func (d *Dispatcher) unmarkInFlight(n store.Notification) {
	d.mu.Lock()
	delete(d.inFlight, n.ID)
	delete(d.addressBusy, store.NotificationKey{Channel: n.Channel, Address: n.Address})
	waiting := d.addressWaiting
	d.addressWaiting = false
	d.mu.Unlock()
	if waiting {
		wake(d.sendWake)
	}
}

// noteIdle logs once per notification that it waits for a sender.
func (d *Dispatcher) noteIdle(n store.Notification) {
	d.mu.Lock()
	logged := d.idleSender[n.ID]
	d.idleSender[n.ID] = true
	d.mu.Unlock()
	if !logged {
		d.log.Warn("notification waits in the outbox: this hub has no sender for its channel",
			"notification", n.ID, "incident", n.IncidentID, "channel", n.Channel)
	}
}

// attempt claims notification due, sends it and records the outcome.
func (d *Dispatcher) attempt(ctx context.Context, due store.Notification) {
	now := d.cfg.Clock.Now()
	// The lookup at Twilio and the send share one SendTimeout, measured on
	// the wall clock, so that the outcome is recorded before the claim's
	// lease (SendTimeout plus leaseMargin) lets another claim take over.
	sendDeadline := time.Now().Add(d.cfg.SendTimeout)
	qctx, cancel := d.queryContext(ctx)
	n, unknown, err := d.cfg.Store.ClaimNotification(qctx, due.ID, now, now.Add(d.cfg.SendTimeout+leaseMargin))
	cancel()
	if err != nil {
		if errors.Is(err, store.ErrConflict) {
			d.log.Debug("notification not claimed: another sender has it or it is done", "notification", due.ID, "reason", err)
		} else {
			d.log.Error("claiming notification failed; retrying on the next tick", "notification", due.ID, "incident", due.IncidentID, "error", err)
		}
		return
	}
	ch := notify.Channel(n.Channel)
	d.metrics.attempts.WithLabelValues(string(ch)).Inc()
	a := &attemptRun{d: d, ctx: ctx, n: n, ch: ch, now: now}

	qctx, cancel = d.queryContext(ctx)
	inc, _, err := d.cfg.Store.Incident(qctx, n.IncidentID)
	cancel()
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			a.fail(outcomeFailed, fmt.Sprintf("incident %d not found", n.IncidentID), "")
			return
		}
		a.retry(err, fmt.Sprintf("reading incident %d failed: %v", n.IncidentID, err), "")
		return
	}
	msg, err := d.message(n, inc, now)
	if err != nil {
		a.fail(outcomeFailed, err.Error(), "")
		return
	}

	// An attempt whose outcome was never recorded (the lease expired) or
	// that ended with an unknown outcome may have reached Twilio.
	since, marked := unknownSince(n.LastError)
	if unknown {
		since = due.UpdatedAt
	}
	detail := ""
	if (unknown || marked) && (ch == notify.ChannelSMS || ch == notify.ChannelVoice) {
		if d.cfg.Finder == nil {
			d.log.Warn("sending again after an attempt with an unknown outcome, without a Twilio finder to check it: the recipient may get two copies",
				"notification", n.ID, "incident", n.IncidentID, "channel", ch)
			detail = "sent again after an attempt with an unknown outcome, unchecked"
		} else {
			res, found, err := d.find(ctx, msg, since, sendDeadline)
			switch {
			case err != nil && notify.IsPermanent(err):
				a.fail(outcomeFailed, fmt.Sprintf("checking Twilio for the attempt started at %s failed: %v", formatTime(since), err), "")
				return
			case err != nil:
				if notify.IsAuthError(err) {
					d.noteAuthFailure(n, err)
				}
				a.retry(err, markUnknown(since, fmt.Sprintf("checking Twilio for the earlier attempt failed: %v", err)), "")
				return
			case found && !d.ownsProviderID(ctx, n, res.ProviderID):
				// Another notification recorded this message, so this one's
				// earlier attempt did not create it: send again.
			case found:
				a.sent(outcomeReconciled, res, fmt.Sprintf("reconciled: Twilio already has this message from the attempt started at %s, so it was not sent again", formatTime(since)))
				return
			}
			detail = fmt.Sprintf("Twilio has no message from the attempt started at %s, so it was sent again", formatTime(since))
		}
	} else if unknown {
		detail = "sent again after an attempt with an unknown outcome; the receiver can drop a copy by its Message-ID or idempotency key"
	}

	if reason := staleReason(n, inc); reason != "" {
		a.fail(outcomeSkipped, reason, "")
		return
	}

	sendCtx, cancel := context.WithDeadline(ctx, sendDeadline)
	started := d.cfg.Clock.Now()
	res, err := d.cfg.Senders[ch].Send(sendCtx, msg)
	cancel()
	switch {
	case err == nil:
		a.sent(outcomeSent, res, detail)
	case notify.IsAuthError(err):
		d.noteAuthFailure(n, err)
		a.retry(err, err.Error(), detail)
	case notify.IsPermanent(err):
		a.fail(outcomeFailed, err.Error(), detail)
	case notify.IsUnknownOutcome(err) && (ch == notify.ChannelSMS || ch == notify.ChannelVoice) && d.cfg.Finder != nil:
		// The lookup may use half the lease's margin beyond the send's
		// deadline, leaving the rest to record the outcome.
		found, ok, ferr := d.find(ctx, msg, started, sendDeadline.Add(leaseMargin/2))
		if ferr == nil && ok && d.ownsProviderID(ctx, n, found.ProviderID) {
			a.sent(outcomeReconciled, found, fmt.Sprintf("reconciled: the reply was lost (%v) but Twilio has the message", err))
			return
		}
		// Twilio may still be creating the message, so the next attempt
		// looks for it again before it sends.
		a.retry(err, markUnknown(started, err.Error()), detail)
	default:
		a.retry(err, err.Error(), detail)
	}
}

// staleReason returns why notification n need not be sent any more, or
// "": an escalation once its incident is no longer open, and any alert to
// a person once the incident is resolved or cancelled. Webhooks always go
// out, since the systems behind them track incidents to their end.
func staleReason(n store.Notification, inc store.Incident) string {
	switch {
	case n.Channel == store.ChannelWebhook:
		return ""
	case isEscalation(n.Reason) && inc.State != store.StateOpen:
		return fmt.Sprintf("not sent: incident %d is %s, so this escalation is no longer needed", inc.ID, inc.State)
	case !inc.State.Active():
		return fmt.Sprintf("not sent: incident %d is %s, so this alert is no longer needed", inc.ID, inc.State)
	}
	return ""
}

// ownsProviderID reports whether a message that Find returned for n may
// be recorded on n: false when the store has providerID on another
// notification (a call to the same number for another incident), which
// is logged. A store failure also gives false, so that n is sent again
// rather than matched to another notification's message.
func (d *Dispatcher) ownsProviderID(ctx context.Context, n store.Notification, providerID string) bool {
	qctx, cancel := d.queryContext(ctx)
	other, err := d.cfg.Store.NotificationByProvider(qctx, providerID)
	cancel()
	switch {
	case errors.Is(err, store.ErrNotFound):
		return true
	case err != nil:
		d.log.Warn("cannot check whether the message found at Twilio belongs to another notification; not claiming it",
			"notification", n.ID, "incident", n.IncidentID, "channel", n.Channel, "provider_id", providerID, "error", err)
		return false
	case other.ID == n.ID:
		return true
	}
	d.log.Warn("message found at Twilio is already recorded for another notification; not claiming it",
		"notification", n.ID, "incident", n.IncidentID, "channel", n.Channel, "provider_id", providerID,
		"other_notification", other.ID, "other_incident", other.IncidentID)
	return false
}

// find looks msg up with the Finder, until deadline on the wall clock.
func (d *Dispatcher) find(ctx context.Context, msg notify.Message, since, deadline time.Time) (notify.Result, bool, error) {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	return d.cfg.Finder.Find(ctx, msg, since)
}

// attemptRun records the outcome of one claimed attempt.
type attemptRun struct {
	d   *Dispatcher
	ctx context.Context
	n   store.Notification
	ch  notify.Channel
	now time.Time
}

func (a *attemptRun) sent(outcome string, res notify.Result, detail string) {
	a.record(outcome, store.AttemptOutcome{State: store.NotificationSent, ProviderID: res.ProviderID, Detail: detail})
}

func (a *attemptRun) fail(outcome, errText, detail string) {
	a.record(outcome, store.AttemptOutcome{State: store.NotificationFailed, Error: errText, Detail: detail})
}

// PersonRetryCap is the longest wait before the next attempt of an SMS,
// call or email: notify.BackoffCap and notify.MaxRetryAfter are minutes,
// too long to hold a person's SOS alert. Webhooks keep those caps.
const PersonRetryCap = 60 * time.Second

// retry records a transient failure: the next attempt comes after the
// provider's Retry-After or notify.Backoff, at most PersonRetryCap for a
// notification to a person.
func (a *attemptRun) retry(err error, errText, detail string) {
	wait := notify.RetryDelay(err, a.n.Attempts, nil)
	if a.ch != notify.ChannelWebhook && wait > PersonRetryCap {
		var ne *notify.Error
		if errors.As(err, &ne) && ne.RetryAfter > PersonRetryCap {
			a.d.log.Warn("provider's Retry-After shortened for an SOS notification to a person",
				"notification", a.n.ID, "incident", a.n.IncidentID, "channel", a.ch,
				"retry_after", ne.RetryAfter.String(), "retry_in", PersonRetryCap.String())
		}
		wait = PersonRetryCap
	}
	a.record(outcomeRetry, store.AttemptOutcome{
		State: store.NotificationPending, NextAttemptAt: a.d.cfg.Clock.Now().Add(wait), Error: errText, Detail: detail,
	})
}

// record stores the outcome, publishes the incident change and updates
// the metrics and channel state. When the store fails, the claim's lease
// expires and the next claim looks the message up before sending again.
func (a *attemptRun) record(outcome string, o store.AttemptOutcome) {
	d := a.d
	o.Attempt = a.n.Attempts
	// Provider errors may quote a webhook URL with its secret path or a
	// Twilio URL with the account SID; the audit trail, logs and health
	// page get scheme and host only.
	o.Error, o.Detail = notify.RedactURLs(o.Error), notify.RedactURLs(o.Detail)
	qctx, cancel := d.queryContext(a.ctx)
	saved, change, err := d.cfg.Store.RecordAttempt(qctx, a.n.ID, o)
	cancel()
	attrs := []any{"notification", a.n.ID, "incident", a.n.IncidentID, "channel", a.ch, "address", store.DescribeAddress(a.n.Channel, a.n.Address),
		"attempt", a.n.Attempts, "outcome", outcome}
	if err != nil {
		d.log.Error("recording a notification attempt failed; the attempt is checked again when its lease expires",
			append(attrs, "state", o.State, "error", err)...)
		return
	}
	d.metrics.notifications.WithLabelValues(string(a.ch), outcome).Inc()
	d.noteOutcome(a.ch, outcome, o.Error)
	d.publish(change)
	d.applyEarlyCallbacks(a.ctx, saved.ProviderID)

	switch outcome {
	case outcomeSent, outcomeReconciled:
		d.log.Info("notification sent", append(attrs, "provider_id", saved.ProviderID)...)
	case outcomeRetry:
		d.log.Warn("notification not sent; retrying", append(attrs, "next_attempt_at", saved.NextAttemptAt, "error", o.Error)...)
	case outcomeSkipped:
		d.log.Info("notification skipped", append(attrs, "reason", o.Error)...)
	default:
		d.log.Error("notification failed permanently; no more attempts", append(attrs, "error", o.Error)...)
	}
}

// noteOutcome keeps the channel's last success and its recent failures
// for Health.
func (d *Dispatcher) noteOutcome(ch notify.Channel, outcome, errText string) {
	now := d.cfg.Clock.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.channels[ch]
	if st == nil {
		return
	}
	switch outcome {
	case outcomeSent, outcomeReconciled:
		st.lastSuccess = now
	case outcomeRetry, outcomeFailed:
		st.lastFailure, st.lastError = now, store.CleanLine(notify.RedactURLs(errText), 300)
		st.failures = append(recentFailures(st.failures, now), now)
	}
}

// recentFailures returns the times in list within recentFailureWindow
// before now, reusing list.
func recentFailures(list []time.Time, now time.Time) []time.Time {
	keep := list[:0]
	for _, at := range list {
		if now.Sub(at) < recentFailureWindow {
			keep = append(keep, at)
		}
	}
	return keep
}

// authLogEvery is how often a provider's rejection of the credentials is
// logged while it lasts.
const authLogEvery = time.Minute

// noteAuthFailure counts an attempt the provider rejected for the hub's
// credentials and logs it at most once per authLogEvery, with the number
// of rejections not logged since. Health shows the channel's problem for
// recentFailureWindow after the last rejection.
func (d *Dispatcher) noteAuthFailure(n store.Notification, err error) {
	ch := notify.Channel(n.Channel)
	d.metrics.authFailures.WithLabelValues(string(ch)).Inc()
	now := d.cfg.Clock.Now()
	d.mu.Lock()
	st := d.channels[ch]
	if st == nil {
		d.mu.Unlock()
		return
	}
	st.authFailure = now
	if !st.authLogged.IsZero() && now.Sub(st.authLogged) < authLogEvery {
		st.authSuppressed++
		d.mu.Unlock()
		return
	}
	suppressed := st.authSuppressed
	st.authLogged, st.authSuppressed = now, 0
	d.mu.Unlock()
	d.log.Error("the provider rejects the hub's credentials, so no "+string(ch)+" goes out: check the account and XPRESS_TWILIO_AUTH_TOKEN; notifications are retried",
		"channel", ch, "notification", n.ID, "incident", n.IncidentID, "error", notify.RedactURLs(err.Error()),
		"rejections_not_logged_since_last", suppressed)
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// RetryNotification makes a pending or failed notification of an
// incident due now at an operator's request, records it in the audit
// trail with actor (such as "operator:Ana"), publishes the change and
// wakes the outbox worker. Errors are the store's: ErrNotFound for a
// notification the incident does not have, a *store.StateError wrapping
// ErrConflict for one being sent or already sent.
func (d *Dispatcher) RetryNotification(ctx context.Context, incidentID, id int64, actor string) (store.Notification, error) {
	qctx, cancel := d.queryContext(ctx)
	n, change, err := d.cfg.Store.RetryNotification(qctx, incidentID, id, actor)
	cancel()
	if err != nil {
		return store.Notification{}, err
	}
	d.log.Info("notification retry requested by an operator", "notification", n.ID, "incident", n.IncidentID,
		"channel", n.Channel, "address", store.DescribeAddress(n.Channel, n.Address), "actor", actor, "attempts", n.Attempts)
	d.publish(change)
	wake(d.sendWake)
	return n, nil
}
