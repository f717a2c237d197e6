package protocol

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// operatorsSuffix ends the topic of an agent's operator list.
const operatorsSuffix = "/operators"

// AgentOperatorsTopic returns the topic on which the hub keeps the list
// of operators who may sign in on an agent's regional page, as one
// retained message: xpress/v1/agents/{agent_id}/operators. Only that
// agent may subscribe to it.
func AgentOperatorsTopic(agentID string) string { return AgentPrefix + agentID + operatorsSuffix }

// ParseAgentOperatorsTopic returns the agent id of an AgentOperatorsTopic
// topic.
func ParseAgentOperatorsTopic(topic string) (string, error) {
	rest, ok := strings.CutPrefix(topic, AgentPrefix)
	id, ok2 := strings.CutSuffix(rest, operatorsSuffix)
	if !ok || !ok2 {
		return "", fmt.Errorf("%w: %q is not an agent's operator list topic", ErrUnknownTopic, topic)
	}
	if err := ValidateAgentID(id); err != nil {
		return "", err
	}
	return id, nil
}

// Limits of an OperatorList.
const (
	// MaxOperatorListBytes bounds an encoded OperatorList.
	MaxOperatorListBytes = 1 << 20
	// MaxListedOperators bounds the operators of one OperatorList.
	MaxListedOperators = 2000
	// maxOperatorUsername and maxOperatorDisplayName are the hub's limits
	// on user names (bytes) and display names (characters).
	maxOperatorUsername    = 64
	maxOperatorDisplayName = 100
	// maxOperatorHash bounds an operator's password hash.
	maxOperatorHash = 512
)

// Operator roles, as the hub's accounts spell them.
const (
	OperatorRoleOperator   = "operator"
	OperatorRoleSupervisor = "supervisor"
	OperatorRoleAdmin      = "admin"
)

// OperatorList is the hub's message to one agent: every operator account
// that may act in the agent's region (admins, operators of all regions
// and operators of that region), not disabled. Each message holds the
// whole list and replaces the previous one, so an account removed or
// disabled at the hub drops out of the agent's list with the next
// message.
type OperatorList struct {
	// Agent is the agent the list is for.
	Agent string `json:"agent"`
	// Region is the agent's region at the hub.
	Region string `json:"region"`
	// IssuedAt is the hub clock when the list was built.
	IssuedAt time.Time `json:"issued_at"`
	// Operators are ordered by user name.
	Operators []OperatorCredential `json:"operators"`
}

// OperatorCredential is one operator account in an OperatorList. The
// hash is the argon2id PHC string of the password (see package
// passhash); passwords never travel.
type OperatorCredential struct {
	Username    string `json:"username"`
	DisplayName string `json:"display_name"`
	Role        string `json:"role"`
	Hash        string `json:"hash"`
}

// Validate checks the fields a receiver relies on: the agent id, unique
// user names in the hub's form, display names, roles, and hashes that
// are present and bounded. Whether a hash can be checked is up to the
// receiver.
func (l *OperatorList) Validate() error {
	if err := ValidateAgentID(l.Agent); err != nil {
		return err
	}
	if len(l.Operators) > MaxListedOperators {
		return fmt.Errorf("%w: operator list of agent %s has %d operators, at most %d", ErrMalformed, l.Agent, len(l.Operators), MaxListedOperators)
	}
	seen := make(map[string]bool, len(l.Operators))
	for i, o := range l.Operators {
		if err := validateOperatorUsername(o.Username); err != nil {
			return fmt.Errorf("%w: operator %d of agent %s: %v", ErrMalformed, i, l.Agent, err)
		}
		if seen[o.Username] {
			return fmt.Errorf("%w: operator %s appears twice in the list of agent %s", ErrMalformed, o.Username, l.Agent)
		}
		seen[o.Username] = true
		if !utf8.ValidString(o.DisplayName) || utf8.RuneCountInString(o.DisplayName) > maxOperatorDisplayName ||
			strings.IndexFunc(o.DisplayName, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
			return fmt.Errorf("%w: display name of operator %s must be at most %d printable characters of UTF-8",
				ErrMalformed, o.Username, maxOperatorDisplayName)
		}
		switch o.Role {
		case OperatorRoleOperator, OperatorRoleSupervisor, OperatorRoleAdmin:
		default:
			return fmt.Errorf("%w: operator %s has unknown role %q", ErrMalformed, o.Username, o.Role)
		}
		if o.Hash == "" || len(o.Hash) > maxOperatorHash {
			return fmt.Errorf("%w: operator %s has a password hash of %d bytes, want 1 to %d", ErrMalformed, o.Username, len(o.Hash), maxOperatorHash)
		}
	}
	return nil
}

// validateOperatorUsername checks a user name as the hub's accounts do:
// 1 to 64 bytes of lower-case ASCII letters, digits, '.', '_' and '-',
// starting with a letter or digit.
func validateOperatorUsername(username string) error {
	if username == "" || len(username) > maxOperatorUsername {
		return fmt.Errorf("user name must be 1 to %d characters, got %d", maxOperatorUsername, len(username))
	}
	for i, r := range username {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
		case i > 0 && (r == '.' || r == '_' || r == '-'):
		default:
			return fmt.Errorf("user name %q has %q at byte %d", username, r, i)
		}
	}
	return nil
}

// EncodeOperatorList returns the JSON of l after checking it.
func EncodeOperatorList(l *OperatorList) ([]byte, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	data, err := json.Marshal(l)
	if err != nil {
		return nil, fmt.Errorf("encode operator list of agent %s: %w", l.Agent, err)
	}
	if len(data) > MaxOperatorListBytes {
		return nil, fmt.Errorf("%w: operator list of agent %s is %d bytes, at most %d", ErrTooLarge, l.Agent, len(data), MaxOperatorListBytes)
	}
	return data, nil
}

// DecodeOperatorList reads and checks an OperatorList.
func DecodeOperatorList(data []byte) (*OperatorList, error) {
	if len(data) > MaxOperatorListBytes {
		return nil, fmt.Errorf("%w: operator list of %d bytes, at most %d", ErrTooLarge, len(data), MaxOperatorListBytes)
	}
	var l OperatorList
	if err := json.Unmarshal(data, &l); err != nil {
		return nil, fmt.Errorf("%w: operator list: %v", ErrMalformed, err)
	}
	if err := l.Validate(); err != nil {
		return nil, err
	}
	return &l, nil
}
