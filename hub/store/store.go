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
)

// Store is the hub's durable state. Implementations are safe for
// concurrent use.
type Store interface {
	// CommitBatch stores every record of b whose sequence number is past the
	// agent's cursor for (agent, spool, lane), and advances the cursor, in
	// one transaction. A record at or below the cursor is skipped, so a
	// resent batch writes nothing twice. It returns what changed.
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

	// DeleteFixesBefore removes the fixes whose fix time is before before,
	// for retention. It returns how many fixes it removed, or
	// CountUnknown when it removed some in bulk without counting them
	// (PostgreSQL dropping a daily partition that held fixes). Latest
	// positions, vehicle statuses, incidents and cursors stay, so a
	// vehicle's last known position remains visible however old it is.
	// A resent batch of removed fixes is still skipped by the cursor.
	DeleteFixesBefore(ctx context.Context, before time.Time) (int64, error)

	// Ping checks that the store can serve requests.
	Ping(ctx context.Context) error

	// Close releases the store's resources.
	Close() error
}

// CountUnknown is the DeleteFixesBefore result for fixes removed without
// counting them.
const CountUnknown int64 = -1

// CommitResult is what one committed batch changed. Skipped records are
// not in it.
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

// IncidentState is where an incident is in its lifecycle.
type IncidentState string

// Incident states.
const (
	StateOpen         IncidentState = "open"
	StateAcknowledged IncidentState = "acknowledged"
	StateDispatched   IncidentState = "dispatched"
	StateResolved     IncidentState = "resolved"
	StateCancelled    IncidentState = "cancelled"
)

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
)

// IncidentChange is an incident as it is after one record changed it.
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
