// Package store defines what the hub keeps and the interface every store
// implements: PostgreSQL in production (package postgres) and an embedded
// store for single-node installs.
package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/xpress-ops/tower/protocol"
)

// Errors every store returns, so callers test with errors.Is.
var (
	// ErrNotFound means the requested row does not exist.
	ErrNotFound = errors.New("not found")
	// ErrUnavailable means the store cannot be reached; retrying later may succeed.
	ErrUnavailable = errors.New("store unavailable")
	// ErrPrevMissing means a batch's Prev is past the cursor: the batch
	// before it was not committed, so this one must wait for its resend.
	ErrPrevMissing = errors.New("previous batch not committed")
	// ErrConflict means the request conflicts with the row's current state,
	// such as resolving an incident that is already closed. Lifecycle
	// methods return it as a *StateError that names the state.
	ErrConflict = errors.New("conflict with the current state")
	// ErrInvalid means an argument breaks a documented rule, such as an
	// empty note. The message names the argument and the rule.
	ErrInvalid = errors.New("invalid argument")
)

// Store is the hub's durable state. Implementations are safe for
// concurrent use.
type Store interface {
	// CommitBatch stores every record of b whose sequence number is past the
	// agent's cursor for (agent, spool, lane), and advances the cursor, in
	// one transaction. A record at or below the cursor is skipped, so a
	// resent batch writes nothing twice. A batch whose Prev is past the
	// cursor stores nothing and returns ErrPrevMissing. It returns what changed.
	CommitBatch(ctx context.Context, b *protocol.Batch) (CommitResult, error)

	// Cursor returns the last committed sequence number for an agent's lane,
	// or 0 when nothing was committed from that spool.
	Cursor(ctx context.Context, agentID, spoolID string, lane protocol.Lane) (uint64, error)

	// LatestPositions returns each vehicle's fix with the newest fix time,
	// ordered by vehicle id.
	LatestPositions(ctx context.Context) ([]Position, error)

	// Fixes returns a vehicle's fixes with fix time in [from, to), oldest first,
	// at most limit of them.
	Fixes(ctx context.Context, vehicleID string, from, to time.Time, limit int) ([]StoredFix, error)

	// Incidents returns incidents matching f, newest opened first.
	Incidents(ctx context.Context, f IncidentFilter) ([]Incident, error)

	// Incident returns one incident with its events, or ErrNotFound.
	Incident(ctx context.Context, id int64) (Incident, []IncidentEvent, error)

	// The lifecycle methods below apply one operator action to an incident
	// in one transaction: check the incident's state (see
	// IncidentState.Allows), change the incident, set UpdatedAt and add one
	// event by actor to the audit trail. Each returns the incident as
	// changed and the event, with Opened false. Each fails with an error
	// wrapping ErrNotFound for a missing incident, a *StateError (wrapping
	// ErrConflict) when the state does not allow the action, and
	// ErrInvalid when ValidateAction rejects actor or text. Text
	// arguments are stored trimmed of surrounding white space.

	// AcknowledgeIncident moves an open incident to acknowledged and sets
	// AcknowledgedAt.
	AcknowledgeIncident(ctx context.Context, id int64, actor string) (IncidentChange, error)
	// AssignIncident sets AssignedTo of an active incident to assignee, an
	// operator name (see ValidateOperatorName). The state stays.
	AssignIncident(ctx context.Context, id int64, actor, assignee string) (IncidentChange, error)
	// DispatchIncident moves an open or acknowledged incident to
	// dispatched and sets DispatchedAt. detail names who was sent.
	DispatchIncident(ctx context.Context, id int64, actor, detail string) (IncidentChange, error)
	// AddIncidentNote adds a note event to an incident in any state. The
	// state stays.
	AddIncidentNote(ctx context.Context, id int64, actor, text string) (IncidentChange, error)
	// ResolveIncident moves an active incident to resolved and sets
	// ResolvedAt.
	ResolveIncident(ctx context.Context, id int64, actor, resolution string) (IncidentChange, error)
	// CancelIncident moves an active incident to cancelled, a false alarm,
	// and sets CancelledAt. A driver's cancel request only sets
	// CancelRequested, so this method is how an operator confirms it.
	CancelIncident(ctx context.Context, id int64, actor, reason string) (IncidentChange, error)

	// The contact and dispatch methods below each run in one transaction.
	// Those that add incident events (EscalateIncident, RecordAttempt,
	// UpdateDeliveryStatus) also set the incident's UpdatedAt and return
	// the incident with the last event they added.

	// SaveContact checks c with ValidateContact and inserts it when c.ID
	// is 0, or replaces the contact with that id, keeping its CreatedAt.
	// Name and Language are stored as NormalizeContact returns them. It
	// returns the contact as stored, and ErrNotFound when c.ID names no
	// contact.
	SaveContact(ctx context.Context, c Contact) (Contact, error)
	// DeleteContact removes a contact, or returns ErrNotFound. Its
	// notifications stay.
	DeleteContact(ctx context.Context, id int64) error
	// Contacts returns the contacts matching f, ordered by id.
	Contacts(ctx context.Context, f ContactFilter) ([]Contact, error)

	// EscalateIncident applies one escalation step atomically, so the
	// dispatcher stays idempotent across hub restarts and replicas. It
	// needs the incident active (and open, with OnlyIfOpen) and its
	// EscalationLevel below e.Level. It then sets the level, adds one
	// escalated event and inserts e.Notifications as pending (see
	// QueuedNotification), each with one notification event. A
	// notification whose (incident, channel, address) already exists is
	// skipped, unless an agent's attempt failed it (see
	// RequeueAgentFailure). It returns the change, whose event is the
	// escalated one, and the notifications inserted or queued again.
	// Otherwise it returns a *StateError wrapping ErrConflict and changes
	// nothing; ErrNotFound for a missing incident; ErrInvalid when
	// ValidateEscalation rejects e.
	EscalateIncident(ctx context.Context, e Escalation) (IncidentChange, []Notification, error)
	// DueNotifications returns up to limit notifications that are pending
	// with NextAttemptAt at or before now, or sending with an expired
	// lease (an attempt interrupted by a crash, to reconcile), oldest
	// NextAttemptAt first, then by id. A limit of zero or less means
	// DefaultNotificationLimit.
	DueNotifications(ctx context.Context, now time.Time, limit int) ([]Notification, error)
	// ClaimNotification starts an attempt (see ApplyClaim): a pending or
	// sending notification with NextAttemptAt at or before now becomes
	// sending with one more attempt and the lease leaseUntil. It returns
	// the notification as changed and unknownOutcome true when it was
	// already sending: the previous attempt's outcome was never recorded,
	// so the caller must ask the provider before it sends again. Another
	// state or a lease not yet expired gives a *StateError wrapping
	// ErrConflict; a missing notification ErrNotFound.
	ClaimNotification(ctx context.Context, id int64, now, leaseUntil time.Time) (n Notification, unknownOutcome bool, err error)
	// RecordAttempt records the outcome of a sending notification's
	// attempt (see ApplyAttempt) and adds one notification event. Another
	// state gives a *StateError wrapping ErrConflict; an invalid outcome
	// ErrInvalid; a missing notification ErrNotFound.
	RecordAttempt(ctx context.Context, id int64, o AttemptOutcome) (Notification, IncidentChange, error)
	// UpdateDeliveryStatus applies a provider's status callback (Twilio
	// MessageStatus or CallStatus) to the notification with that provider
	// id, newest first when several have it, and adds one notification
	// event (see ApplyDeliveryStatus). It returns ErrNotFound when no
	// notification has that provider id, for example when the callback
	// arrives before RecordAttempt stored the id, and ErrInvalid when
	// ValidateDeliveryStatus rejects the arguments.
	UpdateDeliveryStatus(ctx context.Context, providerID, status, errText string) (Notification, IncidentChange, error)
	// RetryNotification makes incident incidentID's notification id due
	// now at an operator's request (see ApplyOperatorRetry) and adds one
	// notification event with actor. It returns ErrNotFound when the
	// incident has no such notification, and a *StateError wrapping
	// ErrConflict when the notification is neither pending nor failed.
	RetryNotification(ctx context.Context, incidentID, id int64, actor string) (Notification, IncidentChange, error)
	// NotificationByProvider returns the notification with providerID,
	// newest first when several have it, or ErrNotFound.
	NotificationByProvider(ctx context.Context, providerID string) (Notification, error)
	// Notifications returns an incident's notifications in id order, none
	// for an unknown incident.
	Notifications(ctx context.Context, incidentID int64) ([]Notification, error)

	// DeleteFixesBefore removes the fixes whose fix time is before before,
	// for retention. It returns how many fixes it removed, or
	// CountUnknown when it removed some in bulk without counting them
	// (PostgreSQL dropping a daily partition that held fixes). Latest
	// positions, vehicle statuses, incidents and cursors stay, so a
	// vehicle's last known position remains visible however old it is.
	// A resent batch of removed fixes is still skipped by the cursor.
	DeleteFixesBefore(ctx context.Context, before time.Time) (int64, error)

	// AgentCredentialStore keeps the credentials of the agent listener.
	AgentCredentialStore
	// VehicleCredentialStore keeps the credentials of the agents' vehicle listeners.
	VehicleCredentialStore

	// OperatorStore keeps operator accounts, sessions, API tokens and the
	// audit log.
	OperatorStore

	// Ping checks that the store can serve requests.
	Ping(ctx context.Context) error

	// Close releases the store's resources.
	Close() error
}

// CountUnknown is the DeleteFixesBefore result for fixes removed without
// counting them.
const CountUnknown int64 = -1

// CommitResult is the set of changes one committed batch made. Skipped
// records are not in it.
type CommitResult struct {
	// Through is the agent's cursor after the commit.
	Through uint64
	// Duplicates counts records skipped because they were at or below the cursor.
	Duplicates int
	// Fixes are the fixes stored by this commit.
	Fixes []StoredFix
	// Statuses are the vehicle status changes stored by this commit.
	Statuses []VehicleStatus
	// Incidents are incidents opened or changed by this commit, in record order.
	Incidents []IncidentChange
	// Unmatched counts SOS cancel, local acknowledgement and agent
	// notification records skipped because their SOS id matches no
	// incident of the vehicle.
	Unmatched int
	// Invalid counts agent notification records skipped because the hub
	// cannot store them, such as one with an unknown channel. Each is
	// logged with its ids.
	Invalid int
}

// Position is a vehicle's latest known position.
type Position struct {
	VehicleID string       `json:"vehicle_id"`
	AgentID   string       `json:"agent_id"`
	Region    string       `json:"region"`
	Fix       protocol.Fix `json:"fix"`
	// ReceivedAt is when the agent received the fix.
	ReceivedAt time.Time `json:"received_at"`
	// Online is the vehicle's last reported status, nil if it never sent one.
	Online *bool `json:"online,omitempty"`
}

// StoredFix is a fix with where and when it was received.
type StoredFix struct {
	VehicleID  string       `json:"vehicle_id"`
	AgentID    string       `json:"agent_id"`
	Region     string       `json:"region"`
	Fix        protocol.Fix `json:"fix"`
	ReceivedAt time.Time    `json:"received_at"`
	Historical bool         `json:"historical,omitempty"`
}

// VehicleStatus is a vehicle's reported online state.
type VehicleStatus struct {
	VehicleID  string    `json:"vehicle_id"`
	AgentID    string    `json:"agent_id"`
	Online     bool      `json:"online"`
	ReceivedAt time.Time `json:"received_at"`
}

// IncidentState is an incident's stage in its lifecycle.
type IncidentState string

// Incident states.
const (
	StateOpen         IncidentState = "open"
	StateAcknowledged IncidentState = "acknowledged"
	StateDispatched   IncidentState = "dispatched"
	StateResolved     IncidentState = "resolved"
	StateCancelled    IncidentState = "cancelled"
)

// Active reports whether an incident in state st still needs operators:
// open, acknowledged or dispatched. Only active incidents take repeat
// presses of new SOS ids.
func (st IncidentState) Active() bool {
	return st == StateOpen || st == StateAcknowledged || st == StateDispatched
}

// Incident is one emergency, opened by the first SOS with a given SOS id.
type Incident struct {
	ID        int64            `json:"id"`
	SOSID     string           `json:"sos_id"`
	VehicleID string           `json:"vehicle_id"`
	AgentID   string           `json:"agent_id"`
	Region    string           `json:"region"`
	Kind      protocol.SOSKind `json:"kind"`
	State     IncidentState    `json:"state"`
	Note      string           `json:"note,omitempty"`
	// HasLocation is false when the SOS carried no usable position.
	HasLocation bool    `json:"has_location"`
	Lat         float64 `json:"lat,omitempty"`
	Lon         float64 `json:"lon,omitempty"`
	// PressedAt is the device's time of the first press; ReceivedAt the agent's.
	PressedAt  time.Time `json:"pressed_at"`
	ReceivedAt time.Time `json:"received_at"`
	OpenedAt   time.Time `json:"opened_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	// Presses counts SOS messages attached to this incident, the first included.
	Presses int `json:"presses"`
	// CancelRequested is true once the driver asked to cancel; an operator must confirm.
	CancelRequested bool `json:"cancel_requested"`
	// Historical is true when the first SOS arrived as catch-up data after an outage.
	Historical bool `json:"historical,omitempty"`
	// AssignedTo is the operator name the incident is assigned to, empty
	// when unassigned.
	AssignedTo string `json:"assigned_to,omitempty"`
	// AcknowledgedAt, DispatchedAt, ResolvedAt and CancelledAt are the hub
	// times at which the incident entered each state, zero when it never
	// did. An incident dispatched straight from open has no
	// AcknowledgedAt.
	AcknowledgedAt time.Time `json:"acknowledged_at,omitzero"`
	DispatchedAt   time.Time `json:"dispatched_at,omitzero"`
	ResolvedAt     time.Time `json:"resolved_at,omitzero"`
	CancelledAt    time.Time `json:"cancelled_at,omitzero"`
	// EscalationLevel is the dispatcher's last escalation step, set by
	// EscalateIncident: 0 while nothing is queued. The dispatcher uses 1
	// for the first notifications queued, 2 once supervisors are notified
	// and 3 once they are called.
	EscalationLevel int `json:"escalation_level"`
}

// IncidentEvent is one entry of an incident's audit trail.
type IncidentEvent struct {
	ID         int64     `json:"id"`
	IncidentID int64     `json:"incident_id"`
	Type       string    `json:"type"`
	Actor      string    `json:"actor"`
	Detail     string    `json:"detail,omitempty"`
	At         time.Time `json:"at"`
}

// Incident event types written by CommitBatch.
const (
	EventOpened          = "opened"
	EventRepeatPress     = "repeat_press"
	EventCancelRequested = "cancel_requested"
	// EventRedelivered records an SOS received again with the SOS id and
	// press time of a press already counted, which leaves Presses as it
	// is.
	EventRedelivered = "redelivered"
)

// Incident event types written by the lifecycle methods.
const (
	EventAcknowledged = "acknowledged"
	EventAssigned     = "assigned"
	EventDispatched   = "dispatched"
	EventNote         = "note"
	EventResolved     = "resolved"
	EventCancelled    = "cancelled"
)

// IncidentChange is an incident as it is after one record or one operator
// action changed it.
type IncidentChange struct {
	Incident Incident `json:"incident"`
	// Opened is true when the record opened the incident.
	Opened bool          `json:"opened"`
	Event  IncidentEvent `json:"event"`
}

// IncidentFilter selects incidents. Zero fields do not filter.
type IncidentFilter struct {
	States    []IncidentState
	Region    string
	VehicleID string
	// AssignedTo selects the incidents assigned to this operator name.
	AssignedTo string
	// Since and Until select incidents opened (OpenedAt, the hub's time)
	// in [Since, Until). A zero time leaves that end open.
	Since, Until time.Time
	// Offset skips that many matching incidents, newest first, to page
	// through a long list. Zero or negative skips none.
	Offset int
	// Limit caps the result; zero means 100.
	Limit int
}

// RepeatWindow is how long after an incident opens a new SOS from the same
// vehicle, with another SOS id, attaches to it as a repeat press.
const RepeatWindow = 2 * time.Minute

// MaxIncidentNote caps an incident's note, which repeat presses extend.
const MaxIncidentNote = 4000

// ApplyRepeatPress folds a repeat press into an incident, the same way in
// every store: presses goes up, a position fills in a missing one, and a
// new note is appended. It returns the event detail that describes the
// press, so its kind, position and note stay on the audit trail.
func ApplyRepeatPress(inc *Incident, s *protocol.SOS, detail string) string {
	inc.Presses++
	if !inc.HasLocation && s.HasLocation {
		inc.HasLocation, inc.Lat, inc.Lon = true, s.Lat, s.Lon
	}
	inc.Note = AppendNote(inc.Note, s.Note)
	return detail + ": " + DescribeSOS(s)
}

// AppendNote adds note to an incident note unless it is empty or already
// there, keeping the result within MaxIncidentNote bytes.
func AppendNote(current, note string) string {
	note = strings.TrimSpace(note)
	if note == "" || strings.Contains(current, note) {
		return current
	}
	if current != "" {
		note = current + "\n" + note
	}
	if len(note) > MaxIncidentNote {
		note = strings.ToValidUTF8(note[:MaxIncidentNote], "")
	}
	return note
}

// DescribeSOS returns a one-line description of an SOS press for an
// incident event: kind, position or why there is none, and note.
func DescribeSOS(s *protocol.SOS) string {
	kind := s.Kind
	if kind == "" {
		kind = protocol.SOSPanic
	}
	out := "kind " + string(kind)
	if s.HasLocation {
		out += fmt.Sprintf(" at %.5f, %.5f", s.Lat, s.Lon)
	} else if s.LocationError != "" {
		out += " without position (" + s.LocationError + ")"
	}
	if note := strings.TrimSpace(s.Note); note != "" {
		out += ": " + note
	}
	return out
}

// NewEmergencyAfterClose reports whether an SOS whose id maps to inc is a
// new emergency rather than a late copy of the old one: inc is resolved or
// cancelled, and the agent received the SOS after that. Such an SOS opens
// a new incident and its id moves to it, so a device that reuses an id
// still alerts operators.
func NewEmergencyAfterClose(inc *Incident, receivedAt time.Time) bool {
	if inc.State.Active() {
		return false
	}
	closed := inc.ResolvedAt
	if inc.State == StateCancelled {
		closed = inc.CancelledAt
	}
	return !closed.IsZero() && receivedAt.After(closed)
}
