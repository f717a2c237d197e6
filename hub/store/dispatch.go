package store

import (
	"fmt"
	"net/mail"
	"net/url"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/xpress-ops/tower/protocol"
)

// Channel is the way a notification reaches its recipient.
type Channel string

// Notification channels.
const (
	ChannelSMS     Channel = "sms"
	ChannelVoice   Channel = "voice"
	ChannelEmail   Channel = "email"
	ChannelWebhook Channel = "webhook"
)

// Valid reports whether c is a known channel.
func (c Channel) Valid() bool {
	return c == ChannelSMS || c == ChannelVoice || c == ChannelEmail || c == ChannelWebhook
}

// ContactRole is the part a contact plays in dispatch, which decides when it is notified.
type ContactRole string

// Contact roles. Responders and supervisors serve a region; emergency
// contacts and drivers belong to a vehicle.
const (
	// RoleResponder is sent to a region's incidents first.
	RoleResponder ContactRole = "responder"
	// RoleSupervisor is notified when an incident stays unacknowledged.
	RoleSupervisor ContactRole = "supervisor"
	// RoleEmergency is a vehicle's emergency contact, such as a relative.
	RoleEmergency ContactRole = "emergency"
	// RoleDriver is the vehicle's driver. The driver's Language picks the
	// language of messages sent back to the vehicle, and a driver needs
	// neither phone nor email.
	RoleDriver ContactRole = "driver"
)

// Valid reports whether r is a known role.
func (r ContactRole) Valid() bool {
	return r == RoleResponder || r == RoleSupervisor || r == RoleEmergency || r == RoleDriver
}

// VehicleRole reports whether contacts of role r belong to a vehicle
// rather than a region.
func (r ContactRole) VehicleRole() bool { return r == RoleEmergency || r == RoleDriver }

// Language is the language of a contact's messages.
type Language string

// Message languages.
const (
	LangEnglish  Language = "en"
	LangFilipino Language = "fil"
)

// Valid reports whether l is a known language. The empty language is not
// valid; stores save it as LangEnglish.
func (l Language) Valid() bool { return l == LangEnglish || l == LangFilipino }

// Limits of contact and notification fields.
const (
	// MaxContactName is the longest contact name, in bytes.
	MaxContactName = 200
	// MaxRegion is the longest region of a contact, in characters.
	MaxRegion = 64
	// MaxEmail is the longest email address, in bytes (RFC 5321 path limit).
	MaxEmail = 254
	// MaxWebhookURL is the longest webhook URL, in bytes.
	MaxWebhookURL = 2048
	// MaxReason is the longest notification reason, in bytes.
	MaxReason = 100
	// MaxProviderID is the longest provider message id kept, in bytes.
	MaxProviderID = 128
	// MaxNotificationError is the longest error text kept on a
	// notification or in its event, in bytes.
	MaxNotificationError = 1000
	// MaxDeliveryStatus is the longest provider status kept, in bytes.
	MaxDeliveryStatus = 32
)

// DefaultNotificationLimit is the most notifications DueNotifications
// returns when its limit is zero or less.
const DefaultNotificationLimit = 100

// phonePattern is an E.164 number: a plus sign, a country code that does
// not start with 0, and 7 to 15 digits in all.
var phonePattern = regexp.MustCompile(`^\+[1-9][0-9]{6,14}$`)

// Contact is a person the dispatcher notifies.
type Contact struct {
	ID   int64       `json:"id"`
	Name string      `json:"name"`
	Role ContactRole `json:"role"`
	// Region is the region a responder or supervisor serves, as agents
	// name it in their batches. Empty for vehicle roles.
	Region string `json:"region,omitempty"`
	// VehicleID is the vehicle of an emergency contact or driver. Empty
	// for region roles.
	VehicleID string `json:"vehicle_id,omitempty"`
	// Phone is an E.164 number. Callers normalise it before saving, and
	// stores only check it.
	Phone    string   `json:"phone,omitempty"`
	Email    string   `json:"email,omitempty"`
	Language Language `json:"language"`
	// CreatedAt and UpdatedAt are hub times set by SaveContact.
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// ContactFilter selects contacts. Zero fields do not filter.
type ContactFilter struct {
	Role      ContactRole
	Region    string
	VehicleID string
}

// Matches reports whether c passes the filter.
func (f ContactFilter) Matches(c Contact) bool {
	return (f.Role == "" || c.Role == f.Role) &&
		(f.Region == "" || c.Region == f.Region) &&
		(f.VehicleID == "" || c.VehicleID == f.VehicleID)
}

// ValidateContact checks a contact before it is saved:
//
//   - Name: 1 to MaxContactName bytes of valid UTF-8 without control
//     characters, not only white space;
//   - Role: a known role;
//   - responders and supervisors: a Region (see MaxRegion) and no VehicleID;
//   - emergency contacts and drivers: a valid VehicleID and no Region;
//   - Phone: empty or E.164 (ValidatePhone);
//   - Email: empty or a plain address without display name (ValidateEmail);
//   - a Phone or an Email, except for a driver;
//   - Language: empty, which stores save as LangEnglish, or a known language.
//
// Errors wrap ErrInvalid.
func ValidateContact(c Contact) error {
	if err := validateName(c.Name); err != nil {
		return err
	}
	if !c.Role.Valid() {
		return fmt.Errorf("%w: contact role %q is unknown; use responder, supervisor, emergency or driver", ErrInvalid, c.Role)
	}
	if c.Role.VehicleRole() {
		if err := protocol.ValidateVehicleID(c.VehicleID); err != nil {
			return fmt.Errorf("%w: %s contact needs the vehicle it belongs to: %v", ErrInvalid, c.Role, err)
		}
		if c.Region != "" {
			return fmt.Errorf("%w: %s contact has region %q; a vehicle's contact has no region", ErrInvalid, c.Role, c.Region)
		}
	} else {
		if c.Region == "" {
			return fmt.Errorf("%w: %s contact needs the region it serves", ErrInvalid, c.Role)
		}
		if err := validateLine("region", c.Region, MaxRegion); err != nil {
			return err
		}
		if c.VehicleID != "" {
			return fmt.Errorf("%w: %s contact has vehicle %q; only emergency contacts and drivers belong to a vehicle", ErrInvalid, c.Role, c.VehicleID)
		}
	}
	if c.Phone != "" {
		if err := ValidatePhone(c.Phone); err != nil {
			return err
		}
	}
	if c.Email != "" {
		if err := ValidateEmail(c.Email); err != nil {
			return err
		}
	}
	if c.Phone == "" && c.Email == "" && c.Role != RoleDriver {
		return fmt.Errorf("%w: %s contact has neither phone nor email", ErrInvalid, c.Role)
	}
	if c.Language != "" && !c.Language.Valid() {
		return fmt.Errorf("%w: contact language %q is unknown; use en or fil", ErrInvalid, c.Language)
	}
	return nil
}

// NormalizeContact returns c as SaveContact stores it: Name trimmed of
// surrounding white space and an empty Language set to LangEnglish.
func NormalizeContact(c Contact) Contact {
	c.Name = strings.TrimSpace(c.Name)
	if c.Language == "" {
		c.Language = LangEnglish
	}
	return c
}

func validateName(name string) error {
	switch {
	case strings.TrimSpace(name) == "":
		return fmt.Errorf("%w: contact name is empty", ErrInvalid)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: contact name is not valid UTF-8", ErrInvalid)
	case len(name) > MaxContactName:
		return fmt.Errorf("%w: contact name is %d bytes, longer than %d", ErrInvalid, len(name), MaxContactName)
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return fmt.Errorf("%w: contact name contains a control character", ErrInvalid)
	}
	return nil
}

// ValidatePhone checks that phone is an E.164 number such as
// +639171234567. Errors wrap ErrInvalid.
func ValidatePhone(phone string) error {
	if !phonePattern.MatchString(phone) {
		return fmt.Errorf("%w: phone %q is not an E.164 number such as +639171234567", ErrInvalid, clip(phone, 40))
	}
	return nil
}

// ValidateEmail checks that email is a plain address such as
// juan@example.ph, at most MaxEmail bytes, without display name or angle
// brackets. Errors wrap ErrInvalid.
func ValidateEmail(email string) error {
	if len(email) > MaxEmail {
		return fmt.Errorf("%w: email address is %d bytes, longer than %d", ErrInvalid, len(email), MaxEmail)
	}
	addr, err := mail.ParseAddress(email)
	if err != nil {
		return fmt.Errorf("%w: email address %q: %v", ErrInvalid, clip(email, 80), err)
	}
	if addr.Name != "" || addr.Address != email {
		return fmt.Errorf("%w: email address %q must be a plain address such as juan@example.ph, without a name or angle brackets", ErrInvalid, clip(email, 80))
	}
	return nil
}

// ValidateWebhookURL checks that u is an absolute http or https URL with
// a host, at most MaxWebhookURL bytes. Errors wrap ErrInvalid and name
// only the URL's host, since the path of a webhook URL is often a secret.
func ValidateWebhookURL(u string) error {
	if len(u) > MaxWebhookURL {
		return fmt.Errorf("%w: webhook URL is %d bytes, longer than %d", ErrInvalid, len(u), MaxWebhookURL)
	}
	parsed, err := url.Parse(u)
	if err != nil {
		return fmt.Errorf("%w: webhook URL does not parse", ErrInvalid)
	}
	if parsed.Scheme != "http" && parsed.Scheme != "https" || parsed.Host == "" {
		return fmt.Errorf("%w: webhook URL must be an absolute http or https URL, got scheme %q host %q", ErrInvalid, clip(parsed.Scheme, 20), clip(parsed.Host, 80))
	}
	return nil
}

// ValidateAddress checks a notification address for its channel: an
// E.164 phone number for sms and voice, an email address for email, a
// URL for webhook. Errors wrap ErrInvalid.
func ValidateAddress(ch Channel, address string) error {
	switch ch {
	case ChannelSMS, ChannelVoice:
		return ValidatePhone(address)
	case ChannelEmail:
		return ValidateEmail(address)
	case ChannelWebhook:
		return ValidateWebhookURL(address)
	}
	return fmt.Errorf("%w: notification channel %q is unknown; use sms, voice, email or webhook", ErrInvalid, clip(string(ch), 32))
}

// DescribeAddress returns an address as event details and logs show it:
// as is, except a webhook URL, which is cut to its scheme and host
// because its path or query often holds a secret token.
func DescribeAddress(ch Channel, address string) string {
	if ch != ChannelWebhook {
		return address
	}
	u, err := url.Parse(address)
	if err != nil || u.Host == "" {
		return "(invalid webhook URL)"
	}
	return u.Scheme + "://" + u.Host
}

// NotificationState is a notification's stage in the outbox.
type NotificationState string

// Notification states.
const (
	// NotificationPending waits for its next attempt at NextAttemptAt.
	NotificationPending NotificationState = "pending"
	// NotificationSending has an attempt started whose outcome is not yet
	// recorded. A crash leaves it here until its lease, NextAttemptAt,
	// expires.
	NotificationSending NotificationState = "sending"
	// NotificationSent was accepted by the provider.
	NotificationSent NotificationState = "sent"
	// NotificationDelivered was confirmed delivered by the provider.
	NotificationDelivered NotificationState = "delivered"
	// NotificationFailed failed permanently: no more attempts.
	NotificationFailed NotificationState = "failed"
)

// Valid reports whether st is a known state.
func (st NotificationState) Valid() bool {
	switch st {
	case NotificationPending, NotificationSending, NotificationSent, NotificationDelivered, NotificationFailed:
		return true
	}
	return false
}

// Due reports whether a notification in state st takes attempts: pending,
// or sending with an attempt whose lease may expire.
func (st NotificationState) Due() bool { return st == NotificationPending || st == NotificationSending }

// Final reports whether st is delivered or failed, states that no status
// callback changes.
func (st NotificationState) Final() bool {
	return st == NotificationDelivered || st == NotificationFailed
}

// SentByHub is Notification.SentBy for a notification the hub sent.
const SentByHub = "hub"

// ActorDispatcher is the actor of the incident events that the dispatch
// methods add.
const ActorDispatcher = "dispatcher"

// Notification is one message about an incident to one recipient over one
// channel. A store keeps at most one per (IncidentID, Channel, Address).
type Notification struct {
	ID         int64   `json:"id"`
	IncidentID int64   `json:"incident_id"`
	Channel    Channel `json:"channel"`
	// Address is an E.164 phone number (sms, voice), an email address or
	// a webhook URL.
	Address string `json:"address"`
	// ContactID is the contact the address came from, 0 when none. A
	// deleted contact leaves its notifications in place.
	ContactID int64    `json:"contact_id,omitempty"`
	Language  Language `json:"language"`
	// Reason is the dispatch step that queued the notification, such as
	// "opened", "escalation:supervisors" or "escalation:voice".
	Reason   string            `json:"reason"`
	State    NotificationState `json:"state"`
	Attempts int               `json:"attempts"`
	// NextAttemptAt is when a pending notification is due, or when the
	// lease of a sending one expires. Zero in the other states.
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	// ProviderID is the provider's id of the last accepted message, such
	// as a Twilio SID; status callbacks find the notification by it.
	ProviderID string `json:"provider_id,omitempty"`
	LastError  string `json:"last_error,omitempty"`
	// SentBy is SentByHub, or the id of the agent that sent the
	// notification during a hub outage. Empty until it was sent.
	SentBy    string    `json:"sent_by,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// ValidateNotification checks a notification that EscalateIncident would
// queue: a known channel, an address valid for it (ValidateAddress), a
// reason of 1 to MaxReason bytes of printable characters, a known or
// empty language, and a ContactID of 0 or more. Errors wrap ErrInvalid.
// The dispatcher can call it to drop a bad address before it escalates.
func ValidateNotification(n Notification) error {
	if err := ValidateAddress(n.Channel, n.Address); err != nil {
		return err
	}
	if err := validateLine("notification reason", n.Reason, MaxReason); err != nil {
		return err
	}
	if len(n.Reason) > MaxReason {
		return fmt.Errorf("%w: notification reason is longer than %d bytes", ErrInvalid, MaxReason)
	}
	if n.Language != "" && !n.Language.Valid() {
		return fmt.Errorf("%w: notification language %q is unknown; use en or fil", ErrInvalid, clip(string(n.Language), 16))
	}
	if n.ContactID < 0 {
		return fmt.Errorf("%w: notification contact id %d is negative", ErrInvalid, n.ContactID)
	}
	return nil
}

// NotificationKey is the unique key of a notification.
type NotificationKey struct {
	IncidentID int64
	Channel    Channel
	Address    string
}

// Key returns the notification's unique key.
func (n Notification) Key() NotificationKey {
	return NotificationKey{IncidentID: n.IncidentID, Channel: n.Channel, Address: n.Address}
}

// AttemptOutcome is the result of one attempt to send a notification.
type AttemptOutcome struct {
	// State is NotificationSent, NotificationPending (retry at
	// NextAttemptAt) or NotificationFailed (no more attempts).
	State NotificationState
	// NextAttemptAt is when to retry; required for NotificationPending.
	NextAttemptAt time.Time
	// ProviderID is the provider's id of the message, kept when not empty.
	ProviderID string
	// Error is the attempt's failure message, stored as LastError.
	Error string
	// Detail is added to the attempt's event, such as how the outcome of
	// an attempt interrupted by a crash was reconciled.
	Detail string
	// Attempt, when not zero, is the Attempts value ClaimNotification
	// returned. RecordAttempt then rejects the outcome with a *StateError
	// when another claim took the notification over after the lease
	// expired.
	Attempt int
}

// Escalation is a step of the dispatcher's escalation of an incident.
type Escalation struct {
	IncidentID int64
	// Level is the escalation level to set. It must be above the
	// incident's current EscalationLevel.
	Level int
	// OnlyIfOpen rejects the escalation once the incident left state open.
	OnlyIfOpen bool
	// Detail is the escalated event's detail, such as who is notified.
	Detail string
	// Notifications are queued as pending. IncidentID, State, Attempts,
	// ProviderID, LastError, SentBy and the times other than NextAttemptAt
	// are set by the store. A zero NextAttemptAt means now.
	Notifications []Notification
}

// Incident event types written by the dispatch methods and by CommitBatch
// for agent records.
const (
	// EventEscalated records a raised escalation level.
	EventEscalated = "escalated"
	// EventNotification records a notification queued, an attempt and its
	// outcome, a provider's delivery status, or a notification an agent
	// sent. The detail names which.
	EventNotification = "notification"
)

// Actions that the dispatch methods name in a *StateError. They are not
// operator actions, so Actions does not list them.
const (
	ActionEscalate      Action = "escalate"
	ActionClaim         Action = "claim"
	ActionRecordAttempt Action = "record an attempt of"
	ActionRetry         Action = "retry"
)

// CleanLine returns s as a one-line field to store: CleanText, control
// characters replaced by spaces, surrounding white space trimmed, and cut
// to at most maxBytes bytes at a character boundary.
func CleanLine(s string, maxBytes int) string {
	s = CleanText(s)
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	return clip(strings.TrimSpace(s), maxBytes)
}

// clip cuts s to at most maxBytes bytes without splitting a character.
func clip(s string, maxBytes int) string {
	if len(s) <= maxBytes {
		return s
	}
	return strings.ToValidUTF8(s[:maxBytes], "")
}

// ApplyOperatorRetry makes n due at now at an operator's request: a
// pending notification keeps its state and attempts, a failed one becomes
// pending again. It returns the event detail, naming actor (such as
// "operator:Ana"). A notification in any other state (being sent, sent,
// delivered, or undeliverable) gives a *StateError wrapping ErrConflict
// and is left unchanged.
func ApplyOperatorRetry(n *Notification, actor string, now time.Time) (string, error) {
	now = Time(now)
	var detail string
	switch n.State {
	case NotificationPending:
		detail = fmt.Sprintf("%s: %s asked to retry now instead of at %s", describeNotification(*n), actor, formatTime(n.NextAttemptAt))
	case NotificationFailed:
		detail = fmt.Sprintf("%s: %s asked to retry after %d failed attempts; pending again", describeNotification(*n), actor, n.Attempts)
		n.State = NotificationPending
	default:
		return "", n.stateError(ActionRetry, fmt.Sprintf("it is %s; only a pending or failed notification can be retried", n.State))
	}
	n.NextAttemptAt, n.UpdatedAt = now, now
	return detail, nil
}
