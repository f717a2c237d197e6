package ingest

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"sync"
	"time"

	mochipackets "github.com/mochi-mqtt/server/v2/packets"

	"github.com/xpress-ops/tower/hub/store"
)

// ErrNoToken means an agent connected without a password.
var ErrNoToken = errors.New("agent sent no token")

// Defaults of StoreAuthenticator.
const (
	// DefaultAuthCacheTTL is how long a verified token is accepted without
	// asking the store again. A revoked or rotated-out token therefore
	// keeps working for new connections for at most this long.
	DefaultAuthCacheTTL = 10 * time.Second
	// DefaultAuthTimeout bounds one store lookup at CONNECT.
	DefaultAuthTimeout = 2 * time.Second
)

// Reasons a connection is refused at CONNECT, as metric labels.
const (
	reasonInvalidAgentID = "invalid_agent_id"
	reasonNoToken        = "no_token"
	reasonUnknownAgent   = "unknown_agent"
	reasonBadToken       = "bad_token"
	reasonBadCredentials = "bad_credentials"
	reasonAuthStore      = "store_unavailable"
	// reasonClientCertificate: mutual TLS is on and the connection has no
	// verified client certificate naming the agent.
	reasonClientCertificate = "client_certificate"
	// reasonClientID: the client id is neither the agent id nor its SOS
	// link's id.
	reasonClientID = "client_id"
	// reasonWillMessage: the CONNECT carried a will message, which agents
	// may not set.
	reasonWillMessage = "will_message"
)

// authFailureReason returns the metric label for an Authenticate error.
func authFailureReason(err error) string {
	switch {
	case errors.Is(err, ErrNoToken):
		return reasonNoToken
	case errors.Is(err, store.ErrNotFound):
		return reasonUnknownAgent
	case errors.Is(err, store.ErrBadToken):
		return reasonBadToken
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return reasonAuthStore
	}
	return reasonBadCredentials
}

// StoreAuthenticator checks agent tokens against the credentials in a
// store (see store.AgentCredentialStore). It remembers a verified
// (agent, token) pair for TTL, so agents reconnecting in a storm do not
// each cost a store query; refusals are not remembered, so a credential
// created a moment ago works at once. It keeps only a hash of each token.
type StoreAuthenticator struct {
	store   store.AgentCredentialStore
	ttl     time.Duration
	timeout time.Duration
	now     func() time.Time

	mu    sync.Mutex
	cache map[string]cachedToken
}

type cachedToken struct {
	hash    [sha256.Size]byte
	expires time.Time
}

// NewStoreAuthenticator returns an authenticator backed by s that
// remembers verified tokens for ttl (zero means DefaultAuthCacheTTL,
// negative disables the cache).
func NewStoreAuthenticator(s store.AgentCredentialStore, ttl time.Duration) *StoreAuthenticator {
	if ttl == 0 {
		ttl = DefaultAuthCacheTTL
	}
	return &StoreAuthenticator{store: s, ttl: ttl, timeout: DefaultAuthTimeout, now: time.Now, cache: map[string]cachedToken{}}
}

// Authenticate returns nil when password is the agent's token, ErrNoToken
// for an empty password, and otherwise the store's error: one wrapping
// store.ErrNotFound for an unknown agent, store.ErrBadToken for a wrong
// token or store.ErrUnavailable.
func (a *StoreAuthenticator) Authenticate(agentID string, password []byte) error {
	if len(password) == 0 {
		return fmt.Errorf("agent %s: %w", agentID, ErrNoToken)
	}
	hash := sha256.Sum256(password)
	now := a.now()
	if a.ttl > 0 {
		a.mu.Lock()
		c, ok := a.cache[agentID]
		a.mu.Unlock()
		if ok && now.Before(c.expires) && subtle.ConstantTimeCompare(c.hash[:], hash[:]) == 1 {
			return nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	if _, err := a.store.VerifyAgentToken(ctx, agentID, string(password)); err != nil {
		a.Forget(agentID)
		return err
	}
	if a.ttl > 0 {
		a.mu.Lock()
		a.cache[agentID] = cachedToken{hash: hash, expires: now.Add(a.ttl)}
		a.mu.Unlock()
	}
	return nil
}

// Forget drops what the authenticator remembers of agentID, so the next
// connection is checked against the store. Call it after revoking or
// rotating the agent's credential.
func (a *StoreAuthenticator) Forget(agentID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.cache, agentID)
}

// mochi-mqtt v2.7.9 responds to a rejected MQTT 3.1.1 CONNECT with return code
// 0x05 "not authorized" (packets.V5CodesToV3), but MQTT 3.1.1 defines 0x04
// "bad user name or password" for credentials it does not accept, the
// code paho reports as such. The map is read only while a CONNACK is
// sent, so changing it at package initialisation, before any broker
// runs, is safe; it affects every mochi broker in the process.
func init() {
	mochipackets.V5CodesToV3[mochipackets.ErrBadUsernameOrPassword] = mochipackets.ErrMalformedUsernameOrPassword
}
