package store

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Action is an operator action on an incident, one per lifecycle method
// of Store.
type Action string

// Operator actions.
const (
	ActionAcknowledge Action = "acknowledge"
	ActionAssign      Action = "assign"
	ActionDispatch    Action = "dispatch"
	ActionNote        Action = "note"
	ActionResolve     Action = "resolve"
	ActionCancel      Action = "cancel"
)

// Actions lists every operator action.
var Actions = []Action{ActionAcknowledge, ActionAssign, ActionDispatch, ActionNote, ActionResolve, ActionCancel}

// Limits of the arguments of the lifecycle methods.
const (
	// MaxOperatorName is the longest operator name, in characters.
	MaxOperatorName = 64
	// MaxActor is the longest actor, in characters, such as
	// "operator:" followed by an operator name.
	MaxActor = 100
	// MaxActionText is the longest dispatch detail, note, resolution or
	// cancel reason, in bytes.
	MaxActionText = 2000
)

// Allows reports whether an incident in state st accepts action a:
//
//   - acknowledge: open;
//   - dispatch: open or acknowledged;
//   - resolve, cancel and assign: open, acknowledged or dispatched;
//   - note: every state, so a closed incident can still be annotated.
func (st IncidentState) Allows(a Action) bool {
	switch a {
	case ActionAcknowledge:
		return st == StateOpen
	case ActionDispatch:
		return st == StateOpen || st == StateAcknowledged
	case ActionResolve, ActionCancel, ActionAssign:
		return st.Active()
	case ActionNote:
		return true
	}
	return false
}

// StateError is the error of a lifecycle or dispatch method whose action
// the current state of the incident, or of one of its notifications, does
// not allow. It wraps ErrConflict.
type StateError struct {
	IncidentID int64
	// State is the incident's state when the action was rejected. It is
	// empty when NotificationID is set.
	State  IncidentState
	Action Action
	// NotificationID is the notification whose state rejected the
	// action, 0 when the incident's state did.
	NotificationID int64
	// NotificationState is that notification's state.
	NotificationState NotificationState
	// Reason replaces "it is <state>" in the message when the state alone
	// does not explain the conflict.
	Reason string
}

func (e *StateError) Error() string {
	target := fmt.Sprintf("incident %d", e.IncidentID)
	reason := "it is " + string(e.State)
	if e.NotificationID != 0 {
		target = fmt.Sprintf("notification %d of incident %d", e.NotificationID, e.IncidentID)
		reason = "it is " + string(e.NotificationState)
	}
	if e.Reason != "" {
		reason = e.Reason
	}
	return fmt.Sprintf("cannot %s %s: %s", e.Action, target, reason)
}

// Unwrap returns ErrConflict.
func (e *StateError) Unwrap() error { return ErrConflict }

// ValidateOperatorName checks an operator name: 1 to MaxOperatorName
// printable characters of valid UTF-8, without white space at either end.
// Errors wrap ErrInvalid.
func ValidateOperatorName(name string) error {
	return validateLine("operator name", name, MaxOperatorName)
}

// ValidateAction checks the actor and the text argument of action a and
// returns the text as stored, trimmed of surrounding white space. The
// actor must be 1 to MaxActor printable characters. The text is ignored
// for acknowledge; for assign it is the assignee, an operator name; for
// the others it must be 1 to MaxActionText bytes of valid UTF-8 without
// control characters other than tab, line feed and carriage return.
// Errors wrap ErrInvalid.
func ValidateAction(a Action, actor, text string) (string, error) {
	if err := validateLine("actor", actor, MaxActor); err != nil {
		return "", err
	}
	switch a {
	case ActionAcknowledge:
		return "", nil
	case ActionAssign:
		text = strings.TrimSpace(text)
		if err := validateLine("assignee", text, MaxOperatorName); err != nil {
			return "", err
		}
		return text, nil
	case ActionDispatch, ActionNote, ActionResolve, ActionCancel:
		return validateText(textName(a), text)
	}
	return "", fmt.Errorf("%w: unknown action %q", ErrInvalid, a)
}

// textName is the name of an action's text argument in error messages.
func textName(a Action) string {
	switch a {
	case ActionDispatch:
		return "dispatch detail"
	case ActionResolve:
		return "resolution"
	case ActionCancel:
		return "cancel reason"
	}
	return string(a)
}

func validateLine(name, s string, maxChars int) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalid, name)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, name)
	case utf8.RuneCountInString(s) > maxChars:
		return fmt.Errorf("%w: %s is longer than %d characters", ErrInvalid, name, maxChars)
	case strings.TrimSpace(s) != s:
		return fmt.Errorf("%w: %s starts or ends with white space", ErrInvalid, name)
	case strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0:
		return fmt.Errorf("%w: %s contains a character that is not printable", ErrInvalid, name)
	}
	return nil
}

func validateText(name, s string) (string, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return "", fmt.Errorf("%w: %s is empty", ErrInvalid, name)
	case !utf8.ValidString(s):
		return "", fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, name)
	case len(s) > MaxActionText:
		return "", fmt.Errorf("%w: %s is longer than %d bytes", ErrInvalid, name, MaxActionText)
	}
	if i := strings.IndexFunc(s, func(r rune) bool { return unicode.IsControl(r) && r != '\t' && r != '\n' && r != '\r' }); i >= 0 {
		return "", fmt.Errorf("%w: %s contains control character %U", ErrInvalid, name, []rune(s[i:])[0])
	}
	return s, nil
}

// ApplyAction applies action a by actor to inc at now, the same way in
// every store, and returns the audit event to add, without its ID. text
// is the value ValidateAction returned. It returns a *StateError and
// leaves inc unchanged when inc's state does not allow the action.
func ApplyAction(inc *Incident, a Action, actor, text string, now time.Time) (IncidentEvent, error) {
	if !inc.State.Allows(a) {
		return IncidentEvent{}, &StateError{IncidentID: inc.ID, State: inc.State, Action: a}
	}
	ev := IncidentEvent{IncidentID: inc.ID, Actor: actor, Detail: text, At: now}
	switch a {
	case ActionAcknowledge:
		inc.State, inc.AcknowledgedAt = StateAcknowledged, now
		ev.Type = EventAcknowledged
	case ActionAssign:
		ev.Type, ev.Detail = EventAssigned, "assigned to "+text
		if inc.AssignedTo != "" && inc.AssignedTo != text {
			ev.Detail += ", was " + inc.AssignedTo
		}
		inc.AssignedTo = text
	case ActionDispatch:
		inc.State, inc.DispatchedAt = StateDispatched, now
		ev.Type = EventDispatched
	case ActionNote:
		ev.Type = EventNote
	case ActionResolve:
		inc.State, inc.ResolvedAt = StateResolved, now
		ev.Type = EventResolved
	case ActionCancel:
		inc.State, inc.CancelledAt = StateCancelled, now
		ev.Type = EventCancelled
	}
	inc.UpdatedAt = now
	return ev, nil
}
