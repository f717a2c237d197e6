package outage

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/xpress-ops/tower/agent/localsos"
	"github.com/xpress-ops/tower/notify"
	"github.com/xpress-ops/tower/protocol"
)

// maxErrorText bounds the error text kept in the store and sent to the hub.
const maxErrorText = 500

// work brings one notification to an end: it looks up at the provider an
// SMS that an earlier attempt may have created, sends while the
// notification is due, retries transient errors, and records and reports
// the outcome. It returns when the notification is sent or failed, when it
// is not needed (then it records nothing unless an attempt was made), or
// at Close, which leaves it "sending".
func (n *Notifier) work(k workKey) {
	log := n.log.With("vehicle", k.vehicleID, "sos", k.sosID, "to", k.to)
	e, rec, found, ok := n.load(k, log)
	if !ok {
		return
	}
	// An attempt that began and has no recorded outcome may have created
	// the SMS: look it up before anything is sent again.
	needFind := found
	for retry := 1; ; retry++ {
		if needFind {
			res, exists, err := n.find(n.message(&e, k.to), rec.FirstAttemptAt)
			switch {
			case err == nil && exists:
				n.metrics.sms.WithLabelValues(outcomeFound).Inc()
				log.Info("outage SMS of an earlier attempt found at the provider", "provider_id", res.ProviderID, "attempts", rec.Attempts)
				n.finish(e, k, localsos.NotificationSent, res.ProviderID, "")
				return
			case err == nil:
				needFind = false
			case n.ctx.Err() != nil:
				return
			case notify.IsPermanent(err):
				n.metrics.sms.WithLabelValues(outcomePermanent).Inc()
				log.Error("outage SMS given up: looking up the earlier attempt failed permanently", "error", err)
				n.finish(e, k, localsos.NotificationFailed, "", "lookup of the earlier attempt failed: "+err.Error())
				return
			default:
				log.Warn("looking up an earlier outage SMS attempt failed; retrying", "error", err, "retry", retry)
				n.noteError(k, err)
				if !n.wait(n.cfg.RetryDelay(err, retry)) {
					return
				}
				continue
			}
		}

		// Staff or the hub may have acknowledged the SOS meanwhile.
		if e, rec, found, ok = n.load(k, log); !ok {
			return
		}
		since, down := n.cfg.HubDownSince()
		switch {
		case !n.due(&e) || !down:
			if found {
				reason := "not sent: " + n.notDueReason(&e, down)
				if rec.Error != "" {
					reason += "; last error: " + rec.Error
				}
				n.metrics.sms.WithLabelValues(outcomeAbandoned).Inc()
				log.Info("outage SMS given up: no longer needed", "reason", reason, "attempts", rec.Attempts)
				n.finish(e, k, localsos.NotificationFailed, "", reason)
			}
			return
		case n.cfg.Now().Sub(since) < n.cfg.After:
			// The agent restarted, or the link came back for a moment:
			// the outage counts anew.
			if !n.wait(n.cfg.PollInterval) {
				return
			}
			continue
		}

		attempt, err := n.begin(k)
		if err != nil {
			n.metrics.failures.WithLabelValues(stageStore).Inc()
			log.Error("outage SMS not sent: its attempt could not be recorded", "error", err)
			return
		}
		res, err := n.send(n.message(&e, k.to))
		switch {
		case err == nil:
			n.metrics.sms.WithLabelValues(outcomeSent).Inc()
			log.Info("outage SMS sent", "provider_id", res.ProviderID, "status", res.Status, "attempt", attempt.Attempts)
			n.finish(e, k, localsos.NotificationSent, res.ProviderID, "")
			return
		case n.ctx.Err() != nil:
			// Closing: the notification stays "sending" for the next start.
			return
		case notify.IsPermanent(err):
			n.metrics.sms.WithLabelValues(outcomePermanent).Inc()
			log.Error("outage SMS failed permanently", "error", err, "attempt", attempt.Attempts)
			n.finish(e, k, localsos.NotificationFailed, "", err.Error())
			return
		}
		n.metrics.sms.WithLabelValues(outcomeTransient).Inc()
		delay := n.cfg.RetryDelay(err, retry)
		needFind = notify.IsUnknownOutcome(err)
		log.Warn("outage SMS failed; retrying", "error", err, "attempt", attempt.Attempts,
			"outcome_unknown", needFind, "retry_in", delay)
		n.noteError(k, err)
		rec = attempt
		if !n.wait(delay) {
			return
		}
	}
}

// load reads the SOS and its notification to k.to. A finished
// notification is reported if it is not yet, and ok is then false, as it
// is when the store fails.
func (n *Notifier) load(k workKey, log *slog.Logger) (e localsos.Entry, rec localsos.Notification, found, ok bool) {
	e, err := n.cfg.Store.Get(k.vehicleID, k.sosID)
	if err != nil {
		n.metrics.failures.WithLabelValues(stageStore).Inc()
		log.Error("outage SMS not handled: local SOS store failed", "error", err)
		return e, rec, false, false
	}
	rec, found = e.Notification(channelSMS, k.to)
	if found && rec.Done() {
		if !rec.Reported {
			n.report(e, rec)
		}
		return e, rec, found, false
	}
	return e, rec, found, true
}

// notDueReason returns why an SOS no longer needs the agent's SMS. down
// reports whether the hub is unreachable.
func (n *Notifier) notDueReason(e *localsos.Entry, down bool) string {
	switch {
	case !down:
		return "the hub is reachable again"
	case !e.Active():
		return "the SOS is " + e.State
	case e.LocalAckBy != "":
		return "acknowledged at the agent by " + e.LocalAckBy
	case e.IncidentID != 0 || n.cfg.HubReceived(e):
		return "the hub has the SOS and its dispatcher notifies"
	default:
		return "the hub reports the SOS " + e.State
	}
}

// message renders the outage SOS alert SMS of e to to, with the presses
// of its emergency and the driver's cancel. Its key names the agent, the
// SOS with its receive time (an SOS id may be reused after the SOS
// closed) and the recipient, so Find recognises this SMS only.
func (n *Notifier) message(e *localsos.Entry, to string) notify.Message {
	key := fmt.Sprintf("agent/%s/%s/%s/%d/sms/%s", n.cfg.AgentID, e.VehicleID, e.SOSID, e.ReceivedAt.UnixMilli(), to)
	text := notify.RenderOutageAlert(n.cfg.Language, notify.AlertData{
		Audience:    notify.AudienceResponders,
		SOSID:       e.SOSID,
		VehicleID:   e.VehicleID,
		Kind:        string(e.Kind),
		Region:      n.cfg.Region,
		HasLocation: e.HasLocation,
		Lat:         e.Lat,
		Lon:         e.Lon,
		Time:        e.ReceivedAt,
		Note:        e.Note,
		Ref:         notify.Reference(key),
	}, notify.OutageAlertData{
		AgentID: n.cfg.AgentID, PageURL: n.cfg.PageURL, Presses: n.presses(e),
		CancelRequested: e.CancelRequested(), CancelReason: e.CancelReason,
	})
	return notify.Message{Channel: notify.ChannelSMS, To: to, Text: text, Language: n.cfg.Language, Key: key}
}

// presses returns how many SOS ids of e's vehicle form e's emergency
// (see localsos.GroupRepeats), 1 when the store cannot be read.
func (n *Notifier) presses(e *localsos.Entry) int {
	active, err := n.cfg.Store.ListActive()
	if err != nil {
		return 1
	}
	for _, group := range localsos.GroupRepeats(active) {
		for _, g := range group {
			if g.VehicleID == e.VehicleID && g.SOSID == e.SOSID {
				return len(group)
			}
		}
	}
	return 1
}

func (n *Notifier) send(msg notify.Message) (notify.Result, error) {
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.SendTimeout)
	defer cancel()
	return n.cfg.Sender.Send(ctx, msg)
}

func (n *Notifier) find(msg notify.Message, since time.Time) (notify.Result, bool, error) {
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.SendTimeout)
	defer cancel()
	return n.cfg.Sender.Find(ctx, msg, since)
}

// wait sleeps for d and reports false when Close came first.
func (n *Notifier) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-n.stop:
		return false
	}
}

// begin records an attempt as "sending" before the send.
func (n *Notifier) begin(k workKey) (localsos.Notification, error) {
	now := n.cfg.Now().UTC()
	return n.cfg.Store.UpdateNotification(k.vehicleID, k.sosID, channelSMS, k.to, func(rec *localsos.Notification, found bool) (bool, error) {
		if rec.Done() {
			return false, fmt.Errorf("notification is already %s", rec.State)
		}
		if !found {
			rec.FirstAttemptAt = now
		}
		rec.State, rec.Attempts, rec.LastAttemptAt = localsos.NotificationSending, rec.Attempts+1, now
		return true, nil
	})
}

// noteError keeps a failure of a notification that is retried.
func (n *Notifier) noteError(k workKey, cause error) {
	text := truncate(cause.Error())
	_, err := n.cfg.Store.UpdateNotification(k.vehicleID, k.sosID, channelSMS, k.to, func(rec *localsos.Notification, found bool) (bool, error) {
		if !found || rec.Done() || rec.Error == text {
			return false, nil
		}
		rec.Error = text
		return true, nil
	})
	if err != nil {
		n.metrics.failures.WithLabelValues(stageStore).Inc()
		n.log.Error("outage SMS error not recorded", "vehicle", k.vehicleID, "sos", k.sosID, "to", k.to, "error", err)
	}
}

// finish records the outcome of a notification and reports it to the hub.
func (n *Notifier) finish(e localsos.Entry, k workKey, state, providerID, errText string) {
	now := n.cfg.Now().UTC()
	rec, err := n.cfg.Store.UpdateNotification(k.vehicleID, k.sosID, channelSMS, k.to, func(rec *localsos.Notification, found bool) (bool, error) {
		if rec.Done() {
			return false, nil
		}
		if !found {
			rec.FirstAttemptAt, rec.LastAttemptAt = now, now
		}
		rec.State, rec.ProviderID, rec.Error, rec.DoneAt = state, providerID, truncate(errText), now
		return true, nil
	})
	if err != nil {
		n.metrics.failures.WithLabelValues(stageStore).Inc()
		n.log.Error("outage SMS outcome not recorded", "vehicle", k.vehicleID, "sos", k.sosID, "to", k.to,
			"state", state, "provider_id", providerID, "error", err)
		return
	}
	if !rec.Reported {
		n.report(e, rec)
	}
}

// report appends the outcome of a finished notification to the spool's
// SOS lane for the hub, and marks it reported.
func (n *Notifier) report(e localsos.Entry, rec localsos.Notification) {
	at := rec.LastAttemptAt
	if at.IsZero() {
		at = rec.DoneAt
	}
	record := protocol.Record{
		Kind:       protocol.KindSOSNotified,
		VehicleID:  e.VehicleID,
		ReceivedAt: n.cfg.Now().UTC(),
		Notified: &protocol.AgentNotified{
			SOSID: e.SOSID, Channel: rec.Channel, Address: rec.Address,
			ProviderID: rec.ProviderID, At: at, Error: rec.Error,
		},
	}
	if rec.State == localsos.NotificationFailed && record.Notified.Error == "" {
		record.Notified.Error = "failed"
	}
	log := n.log.With("vehicle", e.VehicleID, "sos", e.SOSID, "to", rec.Address, "state", rec.State)
	ctx, cancel := context.WithTimeout(n.ctx, DefaultAppendTimeout)
	defer cancel()
	// Append sets the sequence number in the slice it gets.
	recs := []protocol.Record{record}
	err := n.cfg.Spool.Append(ctx, recs)
	record = recs[0]
	if err != nil {
		n.metrics.failures.WithLabelValues(stageReport).Inc()
		log.Error("outage SMS outcome not appended to the spool; retrying later", "error", err)
		return
	}
	_, err = n.cfg.Store.UpdateNotification(e.VehicleID, e.SOSID, rec.Channel, rec.Address, func(r *localsos.Notification, found bool) (bool, error) {
		if !found || r.Reported {
			return false, nil
		}
		r.Reported = true
		return true, nil
	})
	if err != nil {
		// The record is in the spool; the next check appends it again,
		// which the hub records as a repeated report.
		n.metrics.failures.WithLabelValues(stageStore).Inc()
		log.Error("outage SMS outcome appended to the spool but not marked reported", "seq", record.Seq, "error", err)
		return
	}
	log.Log(context.Background(), slog.LevelInfo, "outage SMS outcome queued for the hub", "seq", record.Seq, "provider_id", rec.ProviderID)
}

func truncate(s string) string {
	if len(s) <= maxErrorText {
		return s
	}
	cut := maxErrorText
	for cut > 0 && s[cut]&0xc0 == 0x80 {
		cut--
	}
	return s[:cut] + "..."
}
