package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/xpress-ops/tower/protocol"
)

// ErrBadToken means an agent token does not match the agent's credential.
var ErrBadToken = errors.New("agent token does not match")

// Limits of agent credentials.
const (
	// AgentTokenBytes is the number of random bytes in an agent token.
	AgentTokenBytes = 32
	// MaxRotationGrace is the longest a replaced token may stay valid
	// after a rotation.
	MaxRotationGrace = 30 * 24 * time.Hour
	// MaxRegionLength caps a credential's region name.
	MaxRegionLength = 64
)

// AgentCredentialStore keeps the credentials agents present to the hub's
// agent listener: the MQTT user name is the agent id and the password its
// token. A store keeps only a SHA-256 hash of each token. A plain hash is
// enough because tokens are AgentTokenBytes (256 bits) of random data, far
// beyond any guessing or precomputation, so a slow password hash would
// add cost without adding safety. Tokens are compared in constant time.
type AgentCredentialStore interface {
	// CreateAgentCredential creates the credential of agentID in region
	// and returns its token, which is never stored and cannot be read
	// again. It returns ErrConflict when the agent already has one and
	// ErrInvalid when ValidateAgentCredential rejects the arguments.
	CreateAgentCredential(ctx context.Context, agentID, region string) (token string, c AgentCredential, err error)
	// RotateAgentCredential replaces the agent's token with a new one and
	// returns it. The old token stays valid for grace (0 ends it at once,
	// at most MaxRotationGrace), so the agent can be reconfigured without
	// downtime; a token replaced earlier stops working. It returns
	// ErrNotFound for an unknown agent and ErrInvalid for a bad grace.
	RotateAgentCredential(ctx context.Context, agentID string, grace time.Duration) (token string, c AgentCredential, err error)
	// RevokeAgentCredential deletes the agent's credential, so none of its
	// tokens works any more. It returns ErrNotFound for an unknown agent.
	RevokeAgentCredential(ctx context.Context, agentID string) error
	// AgentCredentials returns every credential, without token hashes,
	// ordered by agent id.
	AgentCredentials(ctx context.Context) ([]AgentCredential, error)
	// VerifyAgentToken checks token against the agent's current token and,
	// until its grace ends, the token the last rotation replaced. It
	// returns the credential, ErrNotFound for an unknown agent or
	// ErrBadToken.
	VerifyAgentToken(ctx context.Context, agentID, token string) (AgentCredential, error)
}

// AgentCredential is an agent's credential as the admin API shows it:
// never a token or its hash.
type AgentCredential struct {
	AgentID   string    `json:"id"`
	Region    string    `json:"region"`
	CreatedAt time.Time `json:"created_at"`
	// RotatedAt is the time of the last rotation, zero before the first.
	RotatedAt time.Time `json:"rotated_at,omitzero"`
	// PreviousValidUntil is when the token the last rotation replaced
	// stops working; zero when there is none.
	PreviousValidUntil time.Time `json:"previous_valid_until,omitzero"`
}

// StoredAgentCredential is an agent credential with its token hashes, as
// stores keep it.
type StoredAgentCredential struct {
	AgentCredential
	// TokenHash is the SHA-256 hash of the current token.
	TokenHash []byte `json:"token_hash"`
	// PreviousHash is the hash of the token the last rotation replaced,
	// valid until PreviousValidUntil; nil when there is none.
	PreviousHash []byte `json:"previous_hash,omitempty"`
}

// ValidateAgentCredential checks the arguments of CreateAgentCredential.
func ValidateAgentCredential(agentID, region string) error {
	if err := protocol.ValidateAgentID(agentID); err != nil {
		return fmt.Errorf("%w: agent id: %v", ErrInvalid, err)
	}
	if region == "" || len(region) > MaxRegionLength || CleanText(region) != region {
		return fmt.Errorf("%w: region must be 1 to %d bytes of text, got %q", ErrInvalid, MaxRegionLength, region)
	}
	return nil
}

// ValidateRotationGrace checks the grace of RotateAgentCredential.
func ValidateRotationGrace(grace time.Duration) error {
	if grace < 0 || grace > MaxRotationGrace {
		return fmt.Errorf("%w: grace must be from 0 to %s, got %s", ErrInvalid, MaxRotationGrace, grace)
	}
	return nil
}

// NewAgentToken returns a new random agent token, base64url without
// padding, and its hash.
func NewAgentToken() (token string, hash []byte, err error) {
	b := make([]byte, AgentTokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", nil, fmt.Errorf("generate agent token: %w", err)
	}
	token = base64.RawURLEncoding.EncodeToString(b)
	return token, HashAgentToken(token), nil
}

// HashAgentToken returns the SHA-256 hash a store keeps of token.
func HashAgentToken(token string) []byte {
	sum := sha256.Sum256([]byte(token))
	return sum[:]
}

// NewStoredAgentCredential returns a credential created at now with a new
// token, after checking the arguments.
func NewStoredAgentCredential(agentID, region string, now time.Time) (string, StoredAgentCredential, error) {
	if err := ValidateAgentCredential(agentID, region); err != nil {
		return "", StoredAgentCredential{}, err
	}
	token, hash, err := NewAgentToken()
	if err != nil {
		return "", StoredAgentCredential{}, err
	}
	return token, StoredAgentCredential{
		AgentCredential: AgentCredential{AgentID: agentID, Region: region, CreatedAt: now},
		TokenHash:       hash,
	}, nil
}

// Rotate gives c a new token at now, keeping the current one valid for
// grace, and returns the new token.
func (c *StoredAgentCredential) Rotate(now time.Time, grace time.Duration) (string, error) {
	token, hash, err := NewAgentToken()
	if err != nil {
		return "", err
	}
	c.PreviousHash, c.PreviousValidUntil = nil, time.Time{}
	if grace > 0 {
		c.PreviousHash, c.PreviousValidUntil = c.TokenHash, Time(now.Add(grace))
	}
	c.TokenHash, c.RotatedAt = hash, now
	return token, nil
}

// Verify reports whether token is c's current token or, before
// PreviousValidUntil, its previous one, comparing hashes in constant time.
func (c *StoredAgentCredential) Verify(token string, now time.Time) error {
	h := HashAgentToken(token)
	current := subtle.ConstantTimeCompare(h, c.TokenHash) == 1
	previous := len(c.PreviousHash) > 0 && subtle.ConstantTimeCompare(h, c.PreviousHash) == 1 && now.Before(c.PreviousValidUntil)
	if current || previous {
		return nil
	}
	return ErrBadToken
}
