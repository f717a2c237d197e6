package protocol

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxOperatorName is the longest name of a person who acts on an SOS, in
// characters: an operator at the hub or regional staff at an agent.
const MaxOperatorName = 64

// ErrInvalidOperatorName means a person's name breaks the rules of
// ValidateOperatorName.
var ErrInvalidOperatorName = errors.New("invalid operator name")

// ValidateOperatorName checks the name of a person who acts on an SOS: 1
// to MaxOperatorName printable characters of valid UTF-8, without white
// space at either end. It is the rule of the hub's store.ValidateOperatorName,
// so a name the agent accepts on its local page is one the hub accepts
// from its dashboard. Errors wrap ErrInvalidOperatorName.
func ValidateOperatorName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: name is empty", ErrInvalidOperatorName)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: name is not valid UTF-8", ErrInvalidOperatorName)
	case utf8.RuneCountInString(name) > MaxOperatorName:
		return fmt.Errorf("%w: name is longer than %d characters", ErrInvalidOperatorName, MaxOperatorName)
	case strings.TrimSpace(name) != name:
		return fmt.Errorf("%w: name starts or ends with white space", ErrInvalidOperatorName)
	case strings.IndexFunc(name, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0:
		return fmt.Errorf("%w: name contains a character that is not printable", ErrInvalidOperatorName)
	}
	return nil
}
