package dispatch

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/notify"
)

// WebhookEventType is the "type" of every webhook body.
const WebhookEventType = "incident.sos"

// WebhookPayload is the JSON body posted to each webhook URL.
type WebhookPayload struct {
	// Type is WebhookEventType.
	Type string `json:"type"`
	// Key is the notification's idempotency key, also sent in the
	// X-Xpress-Idempotency-Key header, so a receiver that gets it twice
	// can drop the copy.
	Key string `json:"idempotency_key"`
	// Reason is the notification's reason, ReasonWebhook.
	Reason string `json:"reason"`
	// SentAt is the hub's time of this attempt.
	SentAt time.Time `json:"sent_at"`
	// DashboardURL is the operators' dashboard, when the hub has a
	// PublicURL.
	DashboardURL string `json:"dashboard_url,omitempty"`
	// Incident is the incident as it is at send time.
	Incident store.Incident `json:"incident"`
}

// NotificationKey returns the idempotency key of notification n of
// incident inc, such as "incident-12-3f9c2a1b7d4e6f08/sms/+639171234567".
// The hex part is a hash of the incident's vehicle id, SOS id and opening
// time in microseconds. So the key stays the same for every attempt of
// the notification, but differs between incidents that share a store id
// on different hubs or stores (after a store switch or a database reset).
// A deduplicating receiver then never drops a new SOS as a copy.
// For a webhook the key holds a hash of the URL instead of the URL, whose
// path is often a secret.
func NotificationKey(n store.Notification, inc store.Incident) string {
	address := n.Address
	if n.Channel == store.ChannelWebhook {
		sum := sha256.Sum256([]byte(n.Address))
		address = hex.EncodeToString(sum[:8])
	}
	return fmt.Sprintf("incident-%d-%s/%s/%s", n.IncidentID, incidentToken(inc), n.Channel, address)
}

// incidentToken returns 16 hex digits of a hash of what makes inc unique
// beyond its store id. Stores keep times to the microsecond, so the
// opening time is truncated to that before it is hashed.
func incidentToken(inc store.Incident) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%d", inc.VehicleID, inc.SOSID, inc.OpenedAt.Truncate(time.Microsecond).UnixMicro())
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// isEscalation reports whether a reason belongs to levels 2 and 3, which
// are sent only while the incident is open.
func isEscalation(reason string) bool {
	return reason == ReasonSupervisor || reason == ReasonVoice
}

// alertData returns the template data of inc.
func alertData(inc store.Incident, key string) notify.AlertData {
	pressed := inc.PressedAt
	if pressed.IsZero() {
		pressed = inc.ReceivedAt
	}
	return notify.AlertData{
		IncidentID:  strconv.FormatInt(inc.ID, 10),
		SOSID:       inc.SOSID,
		VehicleID:   inc.VehicleID,
		Kind:        string(inc.Kind),
		Region:      inc.Region,
		HasLocation: inc.HasLocation,
		Lat:         inc.Lat,
		Lon:         inc.Lon,
		Time:        pressed,
		Note:        inc.Note,
		Ref:         notify.Reference(key),
	}
}

// message renders notification n of incident inc at now, in the
// contact's language and from the incident as it is now.
func (d *Dispatcher) message(n store.Notification, inc store.Incident, now time.Time) (notify.Message, error) {
	key := NotificationKey(n, inc)
	lang := notify.ParseLanguage(string(n.Language))
	msg := notify.Message{Channel: notify.Channel(n.Channel), To: n.Address, Language: lang, Key: key}

	data := alertData(inc, key)
	if n.Reason == ReasonEmergencyContact {
		data.Audience = notify.AudienceContacts
	}
	if isEscalation(n.Reason) {
		if waited := now.Sub(escalationBase(inc)); waited > 0 {
			data.Unacknowledged = waited
		}
	}

	switch msg.Channel {
	case notify.ChannelSMS:
		if n.Reason == ReasonSupervisor {
			msg.Subject, msg.Text = notify.RenderEscalation(lang, data)
		} else {
			msg.Subject, msg.Text = notify.RenderAlert(lang, data)
		}
	case notify.ChannelEmail:
		if n.Reason == ReasonSupervisor {
			msg.Subject, msg.Text = notify.RenderEscalationEmail(lang, data)
		} else {
			msg.Subject, msg.Text = notify.RenderAlertEmail(lang, data)
		}
		if d.cfg.PublicURL != "" && n.Reason != ReasonEmergencyContact {
			msg.Text = strings.TrimRight(msg.Text, "\n") + "\n\nDashboard: " + d.cfg.PublicURL + "/\n"
		}
	case notify.ChannelVoice:
		msg.Text = notify.RenderVoice(lang, data)
	case notify.ChannelWebhook:
		msg.Subject, msg.Text = notify.RenderAlert(notify.English, data)
		payload := WebhookPayload{
			Type:     WebhookEventType,
			Key:      key,
			Reason:   n.Reason,
			SentAt:   now.UTC(),
			Incident: inc,
		}
		if d.cfg.PublicURL != "" {
			payload.DashboardURL = d.cfg.PublicURL + "/"
		}
		body, err := json.Marshal(payload)
		if err != nil {
			return msg, fmt.Errorf("encode webhook payload of incident %d: %w", inc.ID, err)
		}
		msg.Payload = body
	default:
		return msg, fmt.Errorf("notification %d has unknown channel %q", n.ID, n.Channel)
	}
	return msg, nil
}
