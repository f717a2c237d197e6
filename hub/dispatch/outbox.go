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
		if !d.markInFlight(n.ID) {
			continue
		}
		select {
		case d.slots <- struct{}{}:
		case <-ctx.Done():
			d.unmarkInFlight(n.ID)
			return started, ctx.Err()
		}
		started++
		sends.Add(1)
		go func(n store.Notification) {
			defer sends.Done()
			defer func() { <-d.slots }()
			defer d.unmarkInFlight(n.ID)
			d.attempt(context.WithoutCancel(ctx), n)
		}(n)
	}
	return started, nil
}

func (d *Dispatcher) markInFlight(id int64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.inFlight[id] {
		return false
	}
	d.inFlight[id] = true
	return true
}

func (d *Dispatcher) unmarkInFlight(id int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.inFlight, id)
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
			res, found, err := d.find(ctx, msg, since)
			switch {
			case err != nil && notify.IsPermanent(err):
				a.fail(outcomeFailed, fmt.Sprintf("checking Twilio for the attempt started at %s failed: %v", formatTime(since), err), "")
				return
			case err != nil:
				a.retry(err, markUnknown(since, fmt.Sprintf("checking Twilio for the earlier attempt failed: %v", err)), "")
				return
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

	sendCtx, cancel := context.WithTimeout(ctx, d.cfg.SendTimeout)
	started := d.cfg.Clock.Now()
	res, err := d.cfg.Senders[ch].Send(sendCtx, msg)
	cancel()
	switch {
	case err == nil:
		a.sent(outcomeSent, res, detail)
	case notify.IsPermanent(err):
		a.fail(outcomeFailed, err.Error(), detail)
	case notify.IsUnknownOutcome(err) && (ch == notify.ChannelSMS || ch == notify.ChannelVoice) && d.cfg.Finder != nil:
		found, ok, ferr := d.find(ctx, msg, started)
		if ferr == nil && ok {
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

// find looks msg up with the Finder, within SendTimeout.
func (d *Dispatcher) find(ctx context.Context, msg notify.Message, since time.Time) (notify.Result, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.SendTimeout)
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

// retry records a transient failure: the next attempt comes after the
// provider's Retry-After or notify.Backoff.
func (a *attemptRun) retry(err error, errText, detail string) {
	wait := notify.RetryDelay(err, a.n.Attempts, nil)
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

// noteOutcome keeps the channel's last success or failure for Health.
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
		st.lastFailure, st.lastError = now, store.CleanLine(errText, 300)
	}
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
