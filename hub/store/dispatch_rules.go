package store

import (
	"fmt"
	"strings"
	"time"

	"github.com/xpress-ops/tower/protocol"
)

// The functions below are the dispatch rules every store applies the same
// way inside its transactions, as ApplyAction is for operator actions.

// ReasonAgent is the Reason of a notification that the hub learnt of only
// from an agent's report that it sent it.
const ReasonAgent = "sent-by-agent"

// ValidateEscalation checks an escalation before its transaction: an
// incident id, a level of 1 or more, and notifications that pass
// ValidateNotification. Errors wrap ErrInvalid and name the notification.
func ValidateEscalation(e Escalation) error {
	if e.Level < 1 {
		return fmt.Errorf("%w: escalation level %d of incident %d must be 1 or more", ErrInvalid, e.Level, e.IncidentID)
	}
	for i, n := range e.Notifications {
		if err := ValidateNotification(n); err != nil {
			return fmt.Errorf("escalation of incident %d, notification %d (%s): %w", e.IncidentID, i, n.Channel, err)
		}
	}
	return nil
}

// ApplyEscalation raises inc to e.Level at now and returns the escalated
// event to add, without its ID. It returns a *StateError and leaves inc
// unchanged when inc is not active, when e.OnlyIfOpen is set and inc is
// no longer open, or when inc is already at e.Level or above.
func ApplyEscalation(inc *Incident, e Escalation, now time.Time) (IncidentEvent, error) {
	switch {
	case !inc.State.Active():
		return IncidentEvent{}, &StateError{IncidentID: inc.ID, State: inc.State, Action: ActionEscalate}
	case e.OnlyIfOpen && inc.State != StateOpen:
		return IncidentEvent{}, &StateError{IncidentID: inc.ID, State: inc.State, Action: ActionEscalate,
			Reason: fmt.Sprintf("it is %s and this escalation applies only while it is open", inc.State)}
	case inc.EscalationLevel >= e.Level:
		return IncidentEvent{}, &StateError{IncidentID: inc.ID, State: inc.State, Action: ActionEscalate,
			Reason: fmt.Sprintf("it is already at escalation level %d, requested %d", inc.EscalationLevel, e.Level)}
	}
	inc.EscalationLevel, inc.UpdatedAt = e.Level, now
	detail := fmt.Sprintf("level %d", e.Level)
	if d := CleanLine(e.Detail, MaxActionText); d != "" {
		detail += ": " + d
	}
	return IncidentEvent{IncidentID: inc.ID, Type: EventEscalated, Actor: ActorDispatcher, Detail: detail, At: now}, nil
}

// QueuedNotification returns n as EscalateIncident inserts it for incident
// incidentID at now: pending, no attempts, English when no language is
// given, and due at now when n.NextAttemptAt is zero.
func QueuedNotification(n Notification, incidentID int64, now time.Time) Notification {
	q := Notification{
		IncidentID:    incidentID,
		Channel:       n.Channel,
		Address:       n.Address,
		ContactID:     n.ContactID,
		Language:      n.Language,
		Reason:        n.Reason,
		State:         NotificationPending,
		NextAttemptAt: Time(n.NextAttemptAt),
		CreatedAt:     now,
		UpdatedAt:     now,
	}
	if q.Language == "" {
		q.Language = LangEnglish
	}
	if n.NextAttemptAt.IsZero() {
		q.NextAttemptAt = now
	}
	return q
}

// QueuedDetail returns the detail of the event that records a queued
// notification.
func QueuedDetail(n Notification) string {
	detail := fmt.Sprintf("queued %s, reason %s", describeNotification(n), n.Reason)
	if n.NextAttemptAt.After(n.CreatedAt) {
		detail += ", first attempt at " + formatTime(n.NextAttemptAt)
	}
	return detail
}

// RequeueAgentFailure queues existing again with q's reason, language,
// contact and due time when existing failed on an agent's attempt during
// a hub outage, so the hub's outbox still sends what the agent could not.
// It returns the event detail, or false and leaves existing unchanged for
// any other notification: EscalateIncident skips those.
func RequeueAgentFailure(existing *Notification, q Notification, now time.Time) (string, bool) {
	if existing.State != NotificationFailed || existing.SentBy == "" || existing.SentBy == SentByHub {
		return "", false
	}
	agent := existing.SentBy
	existing.State = NotificationPending
	existing.NextAttemptAt = q.NextAttemptAt
	existing.Reason, existing.Language = q.Reason, q.Language
	if q.ContactID != 0 {
		existing.ContactID = q.ContactID
	}
	existing.SentBy, existing.UpdatedAt = "", now
	detail := fmt.Sprintf("queued %s again, reason %s: agent %s could not send it", describeNotification(*existing), q.Reason, agent)
	if existing.LastError != "" {
		detail += ": " + existing.LastError
	}
	return detail, true
}

// ApplyClaim starts an attempt of n: it must be pending or sending with
// NextAttemptAt at or before now. n becomes sending with one more attempt
// and the lease leaseUntil, and UpdatedAt stamp. unknownOutcome is true
// when n was already sending, so the outcome of the attempt before is
// unknown. It returns a *StateError and leaves n unchanged when n cannot
// be claimed, and an error wrapping ErrInvalid when leaseUntil is not
// after now.
func ApplyClaim(n *Notification, now, leaseUntil, stamp time.Time) (unknownOutcome bool, err error) {
	now, leaseUntil = Time(now), Time(leaseUntil)
	if !leaseUntil.After(now) {
		return false, fmt.Errorf("%w: lease of notification %d ends at %s, not after now %s", ErrInvalid, n.ID, formatTime(leaseUntil), formatTime(now))
	}
	if !n.State.Due() {
		return false, n.stateError(ActionClaim, "")
	}
	if n.NextAttemptAt.After(now) {
		return false, n.stateError(ActionClaim, fmt.Sprintf("it is %s until %s", n.State, formatTime(n.NextAttemptAt)))
	}
	unknownOutcome = n.State == NotificationSending
	n.State, n.Attempts, n.NextAttemptAt, n.UpdatedAt = NotificationSending, n.Attempts+1, leaseUntil, stamp
	return unknownOutcome, nil
}

// ValidateOutcome checks an attempt outcome: state sent, pending with a
// NextAttemptAt, or failed. Errors wrap ErrInvalid.
func ValidateOutcome(o AttemptOutcome) error {
	switch o.State {
	case NotificationSent, NotificationFailed:
		return nil
	case NotificationPending:
		if o.NextAttemptAt.IsZero() {
			return fmt.Errorf("%w: a pending outcome needs the time of the next attempt", ErrInvalid)
		}
		return nil
	}
	return fmt.Errorf("%w: attempt outcome state %q; use sent, pending or failed", ErrInvalid, clip(string(o.State), 32))
}

// ApplyAttempt records outcome o of n's current attempt and returns the
// event detail. n must be sending, and when o.Attempt is set, on that
// attempt; otherwise it returns a *StateError and leaves n unchanged. o
// must pass ValidateOutcome.
func ApplyAttempt(n *Notification, o AttemptOutcome, stamp time.Time) (string, error) {
	if n.State != NotificationSending {
		return "", n.stateError(ActionRecordAttempt, "")
	}
	if o.Attempt != 0 && o.Attempt != n.Attempts {
		return "", n.stateError(ActionRecordAttempt,
			fmt.Sprintf("attempt %d was taken over by attempt %d after its lease expired", o.Attempt, n.Attempts))
	}
	if id := CleanLine(o.ProviderID, MaxProviderID); id != "" {
		n.ProviderID = id
	}
	n.LastError = CleanLine(o.Error, MaxNotificationError)
	n.State, n.NextAttemptAt, n.UpdatedAt = o.State, time.Time{}, stamp

	detail := fmt.Sprintf("%s attempt %d: ", describeNotification(*n), n.Attempts)
	switch o.State {
	case NotificationSent:
		n.SentBy = SentByHub
		detail += "sent"
		if o.ProviderID != "" {
			detail += ", provider id " + n.ProviderID
		}
	case NotificationPending:
		n.NextAttemptAt = Time(o.NextAttemptAt)
		detail += "not sent, retry at " + formatTime(n.NextAttemptAt)
	case NotificationFailed:
		detail += "failed, no more attempts"
	}
	if n.LastError != "" {
		detail += ": " + n.LastError
	}
	if d := CleanLine(o.Detail, MaxActionText); d != "" {
		detail += "; " + d
	}
	return detail, nil
}

// ValidateDeliveryStatus checks the arguments of a provider status
// callback: a provider id and a status. Errors wrap ErrInvalid.
func ValidateDeliveryStatus(providerID, status string) error {
	if CleanLine(providerID, MaxProviderID) == "" {
		return fmt.Errorf("%w: delivery status without a provider id", ErrInvalid)
	}
	if CleanLine(status, MaxDeliveryStatus) == "" {
		return fmt.Errorf("%w: delivery status of provider id %s is empty", ErrInvalid, CleanLine(providerID, MaxProviderID))
	}
	return nil
}

// DeliveryStatusState maps a provider status, such as Twilio's
// MessageStatus or CallStatus, to the state it sets. Delivered, read and
// completed map to delivered. Undelivered, failed, busy, no-answer and
// canceled map to failed. The others (queued, sending, sent, ringing,
// in-progress...) set no state and return false.
func DeliveryStatusState(status string) (NotificationState, bool) {
	switch strings.ToLower(status) {
	case "delivered", "read", "completed":
		return NotificationDelivered, true
	case "undelivered", "failed", "busy", "no-answer", "canceled", "cancelled":
		return NotificationFailed, true
	}
	return "", false
}

// ApplyDeliveryStatus applies a provider's status callback to n and
// returns the event detail. A delivered status moves a pending, sending or
// sent notification to delivered. A failed status moves a sent one to
// failed with errText as LastError. A pending or sending one keeps its
// state, because the hub is already retrying it. A delivered or failed
// notification never changes.
func ApplyDeliveryStatus(n *Notification, status, errText string, stamp time.Time) string {
	status = strings.ToLower(CleanLine(status, MaxDeliveryStatus))
	errText = CleanLine(errText, MaxNotificationError)
	detail := fmt.Sprintf("%s status %s", describeNotification(*n), status)
	if errText != "" {
		detail += ": " + errText
	}
	n.UpdatedAt = stamp
	target, ok := DeliveryStatusState(status)
	switch {
	case !ok:
	case n.State.Final():
		detail += fmt.Sprintf("; it stays %s", n.State)
	case target == NotificationDelivered:
		n.State, n.NextAttemptAt = NotificationDelivered, time.Time{}
	case n.State == NotificationSent:
		n.State = NotificationFailed
		n.LastError = errText
		if n.LastError == "" {
			n.LastError = "provider status " + status
		}
	default:
		detail += fmt.Sprintf("; it stays %s, the hub retries it", n.State)
	}
	return detail
}

// LocalAckActor returns the actor of the event a local acknowledgement
// adds: the cleaned staff name followed by "(at agent <agent id>)".
func LocalAckActor(agentID, name string) string {
	return localAckName(name) + " (at agent " + agentID + ")"
}

// localAckName returns the staff name of a local acknowledgement, cleaned
// and capped at MaxActor bytes.
func localAckName(name string) string {
	if name = CleanLine(name, MaxActor); name == "" {
		return "unnamed staff"
	}
	return name
}

// ApplyLocalAck applies an acknowledgement that staff gave on agent
// agentID's local page during a hub outage, and returns the event to add,
// without its ID. An open incident moves to acknowledged, with
// AcknowledgedAt the agent's time clamped to between the agent's receipt
// of the SOS (ReceivedAt) and now, so time-to-acknowledge figures count
// from the press even though the hub opened the incident only once the
// outage ended. Any other
// incident gets a note that it was also acknowledged at the agent.
func ApplyLocalAck(inc *Incident, agentID string, ack *protocol.LocalAck, now time.Time) IncidentEvent {
	actor := LocalAckActor(agentID, ack.Actor)
	at := Time(ack.At)
	ev := IncidentEvent{IncidentID: inc.ID, Actor: actor, At: now}
	inc.UpdatedAt = now
	if inc.State != StateOpen {
		ev.Type = EventNote
		ev.Detail = fmt.Sprintf("also acknowledged at agent %s by %s at %s, while the hub was unreachable",
			agentID, localAckName(ack.Actor), formatTime(at))
		return ev
	}
	acknowledged := at
	if acknowledged.Before(inc.ReceivedAt) {
		acknowledged = inc.ReceivedAt
	}
	if acknowledged.After(now) {
		acknowledged = now
	}
	inc.State, inc.AcknowledgedAt = StateAcknowledged, acknowledged
	ev.Type = EventAcknowledged
	ev.Detail = fmt.Sprintf("acknowledged at agent %s at %s, while the hub was unreachable", agentID, formatTime(at))
	return ev
}

// ApplyAgentNotified applies an agent's report that it sent a
// notification about incident incidentID during a hub outage. existing is
// the stored notification with the same key, nil when there is none. It
// returns the notification to write (insert when existing is nil), whether
// to write it, and the event detail:
//
//   - no notification yet: a new one, sent by the agent, or failed with
//     the agent's error;
//   - a pending, sending or failed one and the agent sent it: it becomes
//     sent by the agent, so the hub's outbox does not send it again;
//   - otherwise: no change, only the event. A failed attempt of the agent
//     leaves a hub notification that is still due to the hub.
//
// It returns an error wrapping ErrInvalid for an unknown channel or an
// address that is invalid for it.
func ApplyAgentNotified(existing *Notification, incidentID int64, agentID string, an *protocol.AgentNotified, now time.Time) (n Notification, write bool, detail string, err error) {
	ch := Channel(an.Channel)
	if err := ValidateAddress(ch, an.Address); err != nil {
		return n, false, "", err
	}
	providerID := CleanLine(an.ProviderID, MaxProviderID)
	errText := CleanLine(an.Error, MaxNotificationError)
	at := formatTime(Time(an.At))

	if existing == nil {
		n = Notification{
			IncidentID: incidentID, Channel: ch, Address: an.Address, Language: LangEnglish, Reason: ReasonAgent,
			State: NotificationSent, Attempts: 1, ProviderID: providerID, LastError: errText, SentBy: agentID,
			CreatedAt: now, UpdatedAt: now,
		}
		if errText != "" {
			n.State = NotificationFailed
			return n, true, fmt.Sprintf("agent %s could not send %s at %s: %s", agentID, describeNotification(n), at, errText), nil
		}
		return n, true, sentByAgentDetail(n, agentID, at, providerID, ""), nil
	}

	n = *existing
	if errText != "" {
		suffix := ""
		if n.State.Due() {
			suffix = "; the hub still sends it"
		}
		return n, false, fmt.Sprintf("agent %s could not send %s at %s: %s%s", agentID, describeNotification(n), at, errText, suffix), nil
	}
	switch n.State {
	case NotificationPending, NotificationSending, NotificationFailed:
		suffix := "; the hub will not send it"
		if n.State == NotificationFailed {
			suffix = "; the hub's attempts had failed"
		}
		n.State, n.NextAttemptAt, n.Attempts = NotificationSent, time.Time{}, n.Attempts+1
		n.SentBy, n.LastError, n.UpdatedAt = agentID, "", now
		if providerID != "" {
			n.ProviderID = providerID
		}
		return n, true, sentByAgentDetail(n, agentID, at, providerID, suffix), nil
	}
	return n, false, fmt.Sprintf("%s also sent by agent %s at %s%s", describeNotification(n), agentID, at, providerSuffix(providerID)), nil
}

func sentByAgentDetail(n Notification, agentID, at, providerID, suffix string) string {
	return fmt.Sprintf("%s sent by agent %s at %s%s%s", describeNotification(n), agentID, at, providerSuffix(providerID), suffix)
}

func providerSuffix(providerID string) string {
	if providerID == "" {
		return ""
	}
	return ", provider id " + providerID
}

// RedeliveredDetail returns the detail of the event that records an SOS
// received again with the SOS id and press time of a press already
// counted, such as a QoS 1 redelivery that the agent stored twice.
func RedeliveredDetail(s *protocol.SOS, pressed time.Time) string {
	return fmt.Sprintf("SOS %s received again with the press time %s of a press already counted; not counted as a new press",
		s.ID, formatTime(pressed))
}

// describeNotification returns "<channel> to <address>" for event
// details, with a webhook URL cut to its host (see DescribeAddress).
func describeNotification(n Notification) string {
	return string(n.Channel) + " to " + DescribeAddress(n.Channel, n.Address)
}

// formatTime formats t for event details, in UTC with the fraction of a
// second when there is one.
func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// stateError returns the *StateError of action a on n; reason replaces
// the default "it is <state>".
func (n *Notification) stateError(a Action, reason string) *StateError {
	return &StateError{IncidentID: n.IncidentID, NotificationID: n.ID, NotificationState: n.State, Action: a, Reason: reason}
}
