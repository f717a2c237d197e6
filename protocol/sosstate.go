package protocol

import (
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"
)

// The states of an SOS that a vehicle hears on SOSStateTopic, in
// lifecycle order. Resolved and cancelled are final and rank alike.
const (
	// SOSStateReceived means the agent stored the SOS, or the hub opened
	// an incident for it.
	SOSStateReceived = "received"
	// SOSStateAcknowledged means an operator took the incident.
	SOSStateAcknowledged = "acknowledged"
	// SOSStateDispatched means responders are on their way.
	SOSStateDispatched = "dispatched"
	// SOSStateResolved means the emergency is over.
	SOSStateResolved = "resolved"
	// SOSStateCancelled means an operator closed the incident as a false alarm.
	SOSStateCancelled = "cancelled"
)

// Limits of the SOS state payloads.
const (
	// MaxSOSStateMessage is the longest SOSState.Message, in bytes.
	MaxSOSStateMessage = 500
	// MaxSOSStateUpdateBytes is the largest encoded SOSStateUpdate accepted.
	MaxSOSStateUpdateBytes = 4 << 10
)

// SOSStateRank returns the position of state in the lifecycle: 1 for
// received up to 4 for resolved and cancelled, or 0 for an unknown state.
func SOSStateRank(state string) int {
	switch state {
	case SOSStateReceived:
		return 1
	case SOSStateAcknowledged:
		return 2
	case SOSStateDispatched:
		return 3
	case SOSStateResolved, SOSStateCancelled:
		return 4
	}
	return 0
}

// SOSStateFinal reports whether state is resolved or cancelled.
func SOSStateFinal(state string) bool {
	return state == SOSStateResolved || state == SOSStateCancelled
}

// SOSStateAdvances reports whether moving from state from to state to goes
// forward in the lifecycle. A final state never changes, so resolved does
// not advance to cancelled or back.
func SOSStateAdvances(from, to string) bool {
	return SOSStateRank(to) > SOSStateRank(from)
}

// SOSState is the payload a vehicle receives on SOSStateTopic, retained
// until the SOS is closed:
//
//	{"state":"acknowledged","ts":"2026-12-04T02:01:10Z","message":"An operator is handling your SOS."}
//
// After a final state (resolved or cancelled) the agent clears the
// retained message with an empty payload, which subscribed devices
// receive too and must ignore.
type SOSState struct {
	// State is one of the SOSState* constants.
	State string `json:"state"`
	// TS is when the SOS entered the state, RFC 3339 in UTC on the wire.
	TS time.Time `json:"ts"`
	// Message is a short text for the driver, in the driver's language. It may be empty.
	Message string `json:"message"`
}

// Validate checks the state name, the time and the message.
func (s *SOSState) Validate() error {
	if s.State == "" {
		return fmt.Errorf("%w: state", ErrMissingField)
	}
	if SOSStateRank(s.State) == 0 {
		return fmt.Errorf("%w: unknown SOS state %q; expected received, acknowledged, dispatched, resolved or cancelled",
			ErrMalformed, truncate(s.State, 40))
	}
	if s.TS.IsZero() {
		return fmt.Errorf("%w: ts", ErrMissingField)
	}
	// encoding/json cannot write a time outside years 0 to 9999.
	if y := s.TS.UTC().Year(); y < 1970 || y > 9999 {
		return fmt.Errorf("%w: ts year %d not in [1970, 9999]", ErrOutOfRange, y)
	}
	if len(s.Message) > MaxSOSStateMessage {
		return fmt.Errorf("%w: message is %d bytes, limit %d", ErrTooLarge, len(s.Message), MaxSOSStateMessage)
	}
	if !utf8.ValidString(s.Message) {
		return fmt.Errorf("%w: message", ErrInvalidUTF8)
	}
	return nil
}

// EncodeSOSState validates s and returns the vehicle payload, with TS in UTC.
func EncodeSOSState(s SOSState) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	s.TS = s.TS.UTC()
	data, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode SOS state: %w", err)
	}
	return data, nil
}

// DecodeSOSState parses and validates a vehicle payload. An empty payload,
// the clearing of a retained state, returns ErrMissingField.
func DecodeSOSState(payload []byte) (SOSState, error) {
	if len(payload) == 0 {
		return SOSState{}, fmt.Errorf("%w: empty payload (a cleared retained state)", ErrMissingField)
	}
	if err := checkPayload(payload); err != nil {
		return SOSState{}, err
	}
	var s SOSState
	if err := json.Unmarshal(payload, &s); err != nil {
		return SOSState{}, fmt.Errorf("%w: SOS state: %v", ErrMalformed, err)
	}
	if err := s.Validate(); err != nil {
		return SOSState{}, err
	}
	s.TS = s.TS.UTC()
	return s, nil
}

// SOSStateUpdate is the message the hub publishes to an agent on
// SOSStateUpdateTopic: the state of one SOS for the agent to forward to
// the vehicle. The hub retains it until a while after the SOS is closed,
// so an agent that reconnects gets the current state.
type SOSStateUpdate struct {
	VehicleID string `json:"vehicle"`
	SOSID     string `json:"sos"`
	// IncidentID is the hub's incident the SOS belongs to. An SOS id that a
	// vehicle reuses after its incident closed opens a new incident, so a
	// higher id supersedes a lower one.
	IncidentID int64    `json:"incident"`
	State      SOSState `json:"state"`
}

// Validate checks the ids and the state.
func (u *SOSStateUpdate) Validate() error {
	if err := ValidateVehicleID(u.VehicleID); err != nil {
		return err
	}
	if err := ValidateSOSID(u.SOSID); err != nil {
		return err
	}
	if u.IncidentID <= 0 {
		return fmt.Errorf("%w: incident id %d, must be positive", ErrOutOfRange, u.IncidentID)
	}
	return u.State.Validate()
}

// EncodeSOSStateUpdate validates u and returns its wire form.
func EncodeSOSStateUpdate(u *SOSStateUpdate) ([]byte, error) {
	if err := u.Validate(); err != nil {
		return nil, err
	}
	out := *u
	out.State.TS = out.State.TS.UTC()
	data, err := json.Marshal(&out)
	if err != nil {
		return nil, fmt.Errorf("encode SOS state update: %w", err)
	}
	return data, nil
}

// DecodeSOSStateUpdate parses and validates a hub-to-agent SOS state.
// Every error wraps one of the package's sentinel errors.
func DecodeSOSStateUpdate(data []byte) (SOSStateUpdate, error) {
	if len(data) > MaxSOSStateUpdateBytes {
		return SOSStateUpdate{}, fmt.Errorf("%w: SOS state update is %d bytes, limit %d", ErrTooLarge, len(data), MaxSOSStateUpdateBytes)
	}
	if !utf8.Valid(data) {
		return SOSStateUpdate{}, ErrInvalidUTF8
	}
	var u SOSStateUpdate
	if err := json.Unmarshal(data, &u); err != nil {
		return SOSStateUpdate{}, fmt.Errorf("%w: SOS state update: %v", ErrMalformed, err)
	}
	if err := u.Validate(); err != nil {
		return SOSStateUpdate{}, err
	}
	u.State.TS = u.State.TS.UTC()
	return u, nil
}

// DefaultSOSStateMessage returns the built-in English text for a state,
// used when no message in the driver's language is configured, or "" for
// an unknown state. It is the one source of the English texts: the
// agent's local SOS state, the hub's downlink and notify.DriverStateMessage
// all use it, so a driver reads the same words whichever sends the state.
func DefaultSOSStateMessage(state string) string {
	switch state {
	case SOSStateReceived:
		return "Your SOS was received. We are getting help to you."
	case SOSStateAcknowledged:
		return "An operator is now handling your SOS. Stay somewhere safe if you can."
	case SOSStateDispatched:
		return "Help is on the way to your location. Keep your phone on."
	case SOSStateResolved:
		return "Your SOS is resolved. Thank you, and stay safe."
	case SOSStateCancelled:
		return "Your SOS was cancelled. If you still need help, send a new SOS."
	}
	return ""
}
