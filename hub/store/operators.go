package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits and lifetimes of operator accounts.
const (
	// MaxUsernameLength caps an operator's user name, in bytes.
	MaxUsernameLength = 64
	// MaxDisplayName caps an operator's display name, in characters.
	MaxDisplayName = 100
	// MaxOperatorRegions caps the regions of one operator.
	MaxOperatorRegions = 64
	// SessionIDBytes is the number of random bytes of a session id.
	SessionIDBytes = 32
	// SessionIdleTimeout ends a session that sent no request for this long.
	SessionIdleTimeout = 12 * time.Hour
	// SessionMaxAge ends every session this long after sign-in, however
	// active it is.
	SessionMaxAge = 7 * 24 * time.Hour
	// APITokenBytes is the number of random bytes of an API token.
	APITokenBytes = 32
	// APITokenPrefix starts every API token, so a leaked token is easy to
	// recognise in logs and by secret scanners.
	APITokenPrefix = "xpt_"
	// MaxTokenName caps an API token's name, in characters.
	MaxTokenName = 100
	// DefaultAuditLimit is the most audit entries AuditLog returns when the
	// filter's limit is zero or less; MaxAuditLimit the most it ever returns.
	DefaultAuditLimit = 100
	MaxAuditLimit     = 1000
	// MaxAuditField caps each text field of an audit entry, in bytes;
	// longer text is cut.
	MaxAuditField = 1000
)

// The operator roles, from least to most rights. Package api gives them
// their meaning.
const (
	OperatorRoleOperator   = "operator"
	OperatorRoleSupervisor = "supervisor"
	OperatorRoleAdmin      = "admin"
)

// AllRegions is the region list entry that grants every region.
const AllRegions = "*"

// OperatorStore keeps the hub's operator accounts, their sign-in sessions,
// the API tokens of integrations and the audit log. Stores keep only
// hashes of passwords (argon2id, made by the caller), session ids and API
// tokens (SHA-256, as the ids and tokens are 256 random bits), so a copy
// of the database cannot be used to sign in. Sessions, tokens and lockouts
// survive a restart.
type OperatorStore interface {
	// CreateOperator adds an operator with password hash passwordHash. It
	// sets CreatedAt, UpdatedAt and PasswordChangedAt to the store's
	// clock and returns the operator as stored. It returns ErrInvalid when
	// ValidateOperator rejects o or the hash is empty, and ErrConflict
	// when the user name is taken.
	CreateOperator(ctx context.Context, o Operator, passwordHash string) (Operator, error)
	// Operator returns one operator with its password hash, or ErrNotFound.
	Operator(ctx context.Context, username string) (StoredOperator, error)
	// Operators returns every operator, without password hashes, ordered
	// by user name.
	Operators(ctx context.Context) ([]Operator, error)
	// UpdateOperator reads the operator in a transaction, lets change
	// modify it and writes it back with UpdatedAt set, unless change
	// returns an error, which UpdateOperator returns and which leaves the
	// operator as it was. change may run more than once when the
	// transaction is retried, so it must only modify its argument. The
	// user name and CreatedAt cannot change. It returns the operator as
	// stored, ErrNotFound for an unknown user name and ErrInvalid when
	// ValidateOperator rejects the result.
	UpdateOperator(ctx context.Context, username string, change func(o *StoredOperator) error) (StoredOperator, error)
	// DeleteOperator removes an operator with its sessions and API
	// tokens, or returns ErrNotFound. Audit entries stay.
	DeleteOperator(ctx context.Context, username string) error

	// CreateSession stores a session. Its operator must exist
	// (ErrNotFound otherwise). Sessions of the same operator that expired
	// before the new one's CreatedAt may be removed.
	CreateSession(ctx context.Context, s Session) error
	// Session returns the session whose id hashes to idHash (see
	// HashSessionID), expired or not, or ErrNotFound.
	Session(ctx context.Context, idHash []byte) (Session, error)
	// TouchSession sets a session's LastSeenAt and ExpiresAt, or returns
	// ErrNotFound.
	TouchSession(ctx context.Context, idHash []byte, lastSeen, expires time.Time) error
	// DeleteSession removes a session, or returns ErrNotFound.
	DeleteSession(ctx context.Context, idHash []byte) error
	// DeleteOperatorSessions removes every session of an operator and
	// returns the id hashes of those it removed.
	DeleteOperatorSessions(ctx context.Context, username string) ([][]byte, error)

	// CreateAPIToken creates an API token named name for operator, who
	// must exist (ErrNotFound otherwise), and returns the token, which is
	// never stored and cannot be read again. ErrInvalid when
	// ValidateTokenName rejects name.
	CreateAPIToken(ctx context.Context, operator, name string) (token string, t APIToken, err error)
	// APITokens returns every API token, revoked ones included, ordered
	// by id.
	APITokens(ctx context.Context) ([]APIToken, error)
	// RevokeAPIToken sets RevokedAt of a token, so it stops working. It
	// returns ErrNotFound for an unknown id and ErrConflict for a token
	// already revoked.
	RevokeAPIToken(ctx context.Context, id int64) error
	// VerifyAPIToken returns the token whose hash matches token. It sets
	// LastUsedAt to the store's clock when the stored time is older than
	// APITokenTouchInterval. It returns ErrBadToken for an unknown or
	// revoked token.
	VerifyAPIToken(ctx context.Context, token string) (APIToken, error)

	// AppendAudit adds an entry to the audit log, which is append-only,
	// with At set to the store's clock, and returns it with its id. Text
	// fields are cut to MaxAuditField bytes.
	AppendAudit(ctx context.Context, e AuditEntry) (AuditEntry, error)
	// AuditLog returns the audit entries matching f, newest first.
	AuditLog(ctx context.Context, f AuditFilter) ([]AuditEntry, error)
}

// APITokenTouchInterval is the age of an API token's LastUsedAt past
// which VerifyAPIToken writes it again, so a busy integration does not
// cost a write per request.
const APITokenTouchInterval = time.Minute

// Operator is an operator account as the admin API shows it: never a
// password hash.
type Operator struct {
	Username    string `json:"username"`
	DisplayName string `json:"display_name"`
	// Role is OperatorRoleOperator, OperatorRoleSupervisor or OperatorRoleAdmin.
	Role string `json:"role"`
	// Regions are the regions whose data the operator may read and act
	// on; AllRegions grants all.
	Regions  []string `json:"regions"`
	Disabled bool     `json:"disabled"`
	// FailedLogins counts the failed sign-ins since the last success or
	// lockout.
	FailedLogins int `json:"failed_logins"`
	// LockedUntil is when a lockout after too many failed sign-ins ends;
	// zero when the account was never locked.
	LockedUntil       time.Time `json:"locked_until,omitzero"`
	CreatedAt         time.Time `json:"created_at"`
	UpdatedAt         time.Time `json:"updated_at"`
	PasswordChangedAt time.Time `json:"password_changed_at"`
}

// StoredOperator is an operator with its password hash, as stores keep it.
type StoredOperator struct {
	Operator
	// PasswordHash is the argon2id PHC string of the password.
	PasswordHash string `json:"password_hash"`
}

// Session is an operator's sign-in session.
type Session struct {
	// IDHash is the SHA-256 hash of the session id the cookie carries.
	IDHash     []byte    `json:"id_hash"`
	Operator   string    `json:"operator"`
	CreatedAt  time.Time `json:"created_at"`
	LastSeenAt time.Time `json:"last_seen_at"`
	// ExpiresAt is the earlier of LastSeenAt + SessionIdleTimeout and
	// CreatedAt + SessionMaxAge (see SessionExpiry).
	ExpiresAt time.Time `json:"expires_at"`
	// CSRFToken is the token state-changing requests of this session must
	// send in the X-CSRF-Token header.
	CSRFToken  string `json:"csrf_token"`
	RemoteAddr string `json:"remote_addr"`
	UserAgent  string `json:"user_agent"`
}

// APIToken is an integration's token as the admin API shows it: never the
// token or its hash. It acts with the role and regions of its operator.
type APIToken struct {
	ID         int64     `json:"id"`
	Name       string    `json:"name"`
	Operator   string    `json:"operator"`
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
}

// StoredAPIToken is an API token with its hash, as stores keep it.
type StoredAPIToken struct {
	APIToken
	TokenHash []byte `json:"token_hash"`
}

// AuditEntry is one entry of the audit log. It never holds a password,
// session id or token.
type AuditEntry struct {
	ID int64     `json:"id"`
	At time.Time `json:"at"`
	// Actor is who acted: "operator:<username>", "admin-token", or
	// "login:<user name tried>" for a failed sign-in and a lockout, so a
	// user name typed at sign-in never reads as a signed-in operator.
	Actor string `json:"actor"`
	// Action is the kind of event, such as "login", "lockout" or
	// "incident.acknowledge".
	Action string `json:"action"`
	// Target is the object acted on, such as "operator:maria" or
	// "incident:12".
	Target string `json:"target,omitempty"`
	Remote string `json:"remote,omitempty"`
	// Outcome is "success", "failure" or "denied".
	Outcome string `json:"outcome"`
	Detail  string `json:"detail,omitempty"`
}

// AuditFilter selects audit entries. Zero fields do not filter.
type AuditFilter struct {
	// Since selects entries at or after this time.
	Since  time.Time
	Actor  string
	Action string
	// Limit caps the result: zero or less means DefaultAuditLimit, and
	// more than MaxAuditLimit means MaxAuditLimit.
	Limit int
}

// AuditLimit returns the number of entries f selects at most.
func (f AuditFilter) AuditLimit() int {
	switch {
	case f.Limit <= 0:
		return DefaultAuditLimit
	case f.Limit > MaxAuditLimit:
		return MaxAuditLimit
	}
	return f.Limit
}

// Matches reports whether e passes f's filters other than the limit.
func (f AuditFilter) Matches(e AuditEntry) bool {
	return (f.Since.IsZero() || !e.At.Before(f.Since)) &&
		(f.Actor == "" || e.Actor == f.Actor) &&
		(f.Action == "" || e.Action == f.Action)
}

// ValidRole reports whether role is one of the operator roles.
func ValidRole(role string) bool {
	return role == OperatorRoleOperator || role == OperatorRoleSupervisor || role == OperatorRoleAdmin
}

// ValidateUsername checks a user name: 1 to MaxUsernameLength bytes of
// lower-case ASCII letters, digits, '.', '_' and '-', starting with a
// letter or digit. Errors wrap ErrInvalid.
func ValidateUsername(username string) error {
	if username == "" || len(username) > MaxUsernameLength {
		return fmt.Errorf("%w: user name must be 1 to %d characters, got %d", ErrInvalid, MaxUsernameLength, len(username))
	}
	for i, r := range username {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || i > 0 && (r == '.' || r == '_' || r == '-')
		if !ok {
			return fmt.Errorf("%w: user name %q: use lower-case letters, digits, '.', '_' and '-', starting with a letter or digit", ErrInvalid, username)
		}
	}
	return nil
}

// ValidateOperator checks an operator's user name, display name, role and
// regions. Errors wrap ErrInvalid and name the field.
func ValidateOperator(o Operator) error {
	if err := ValidateUsername(o.Username); err != nil {
		return err
	}
	if err := validateLine("display name", o.DisplayName, MaxDisplayName); err != nil {
		return err
	}
	if !ValidRole(o.Role) {
		return fmt.Errorf("%w: role %q: use %s, %s or %s", ErrInvalid, o.Role, OperatorRoleOperator, OperatorRoleSupervisor, OperatorRoleAdmin)
	}
	if len(o.Regions) == 0 || len(o.Regions) > MaxOperatorRegions {
		return fmt.Errorf("%w: regions: list 1 to %d regions, or %q for all", ErrInvalid, MaxOperatorRegions, AllRegions)
	}
	for _, r := range o.Regions {
		if r == "" || len(r) > MaxRegionLength || CleanText(r) != r || strings.TrimSpace(r) != r {
			return fmt.Errorf("%w: region %q must be 1 to %d bytes of text", ErrInvalid, r, MaxRegionLength)
		}
	}
	if o.FailedLogins < 0 {
		return fmt.Errorf("%w: failed login count is negative", ErrInvalid)
	}
	return nil
}

// NewOperator returns the operator a store creates from o: its regions
// normalized and its creation, update and password change times set to
// now(), which is called only when o and passwordHash are valid. Errors
// wrap ErrInvalid.
func NewOperator(o Operator, passwordHash string, now func() time.Time) (Operator, error) {
	o.Regions = NormalizeRegions(o.Regions)
	if err := ValidateOperator(o); err != nil {
		return o, err
	}
	if passwordHash == "" {
		return o, fmt.Errorf("%w: password hash is empty", ErrInvalid)
	}
	t := now()
	o.CreatedAt, o.UpdatedAt, o.PasswordChangedAt = t, t, t
	o.LockedUntil = Time(o.LockedUntil)
	return o, nil
}

// ChangeOperator returns the operator a store keeps after change edits
// a copy of old: the user name and creation time stay old's, the regions
// are normalized, the times cut to the stores' precision and UpdatedAt
// set to now(). It returns change's error as it is, and an error wrapping
// ErrInvalid when the result is not a valid operator.
func ChangeOperator(old StoredOperator, change func(o *StoredOperator) error, now func() time.Time) (StoredOperator, error) {
	o := old
	o.Regions = append([]string(nil), old.Regions...)
	if err := change(&o); err != nil {
		return o, err
	}
	o.Username, o.CreatedAt = old.Username, old.CreatedAt
	o.Regions = NormalizeRegions(o.Regions)
	o.LockedUntil, o.PasswordChangedAt = Time(o.LockedUntil), Time(o.PasswordChangedAt)
	o.UpdatedAt = now()
	if err := ValidateOperator(o.Operator); err != nil {
		return o, err
	}
	if o.PasswordHash == "" {
		return o, fmt.Errorf("%w: password hash is empty", ErrInvalid)
	}
	return o, nil
}

// NormalizeRegions returns regions sorted without duplicates, as stores
// keep them.
func NormalizeRegions(regions []string) []string {
	out := slices.Clone(regions)
	slices.Sort(out)
	return slices.Compact(out)
}

// ValidateTokenName checks an API token's name: 1 to MaxTokenName
// printable characters. Errors wrap ErrInvalid.
func ValidateTokenName(name string) error {
	return validateLine("token name", name, MaxTokenName)
}

// HashSessionID returns the SHA-256 hash a store keeps of a session id or
// an API token.
func HashSessionID(id string) []byte {
	sum := sha256.Sum256([]byte(id))
	return sum[:]
}

// NewSessionID returns a new random session id: SessionIDBytes random
// bytes, base64url without padding.
func NewSessionID() (string, error) {
	return randomString(SessionIDBytes)
}

// NewAPIToken returns a new random API token, APITokenPrefix followed by
// APITokenBytes random bytes in base64url, and its hash.
func NewAPIToken() (token string, hash []byte, err error) {
	s, err := randomString(APITokenBytes)
	if err != nil {
		return "", nil, fmt.Errorf("generate API token: %w", err)
	}
	token = APITokenPrefix + s
	return token, HashSessionID(token), nil
}

func randomString(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("read random bytes: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// SessionExpiry returns when a session created at created and last seen
// at lastSeen expires: after SessionIdleTimeout without requests, and
// SessionMaxAge after sign-in at the latest.
func SessionExpiry(created, lastSeen time.Time) time.Time {
	idle, absolute := lastSeen.Add(SessionIdleTimeout), created.Add(SessionMaxAge)
	if idle.Before(absolute) {
		return Time(idle)
	}
	return Time(absolute)
}

// NormalizeAuditEntry returns e with every text field cleaned (see
// CleanText) and cut to MaxAuditField bytes.
func NormalizeAuditEntry(e AuditEntry) AuditEntry {
	for _, f := range []*string{&e.Actor, &e.Action, &e.Target, &e.Remote, &e.Outcome, &e.Detail} {
		*f = cutText(CleanText(*f), MaxAuditField)
	}
	return e
}

// cutText returns s cut to at most n bytes without splitting a character.
func cutText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
