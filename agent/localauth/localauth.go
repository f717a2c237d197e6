// Package localauth signs operators in on the agent's regional page with
// their hub accounts, also while the hub is unreachable.
//
// The hub sends each agent the operators who may act in its region as one
// retained message (protocol.OperatorList, see package opsync), and the
// uplink hands it to HubMessage. A valid list replaces the previous one
// and is written to a bbolt file of its own (File, in the agent's data
// directory) before HubMessage returns, so it survives restarts and
// outages. An invalid list, bad JSON or a hash that is not an argon2id
// PHC string, is counted and logged, and the previous list stays.
//
// Login checks a password against the argon2id hash of the list. It
// limits attempts per remote address (a token bucket) and locks a pair
// of user name and remote address for LockoutDuration after MaxFailures
// failures in a row, so guesses from one address cannot lock a
// supervisor out at the others. A user name is locked from every address only
// after MaxAccountFailures failures in a row across addresses, which
// stops guessing spread over many addresses. Unknown user names and
// wrong passwords get the same error after the same work and lock the
// same way: an unknown name is checked against a dummy hash. Sessions,
// failure counts and lockouts are kept in memory only: a restart signs
// everyone out and clears the lockouts. A new list ends the sessions of operators
// it no longer holds, or whose password or role changed.
package localauth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/time/rate"

	"github.com/xpress-ops/tower/internal/httpsec"
	"github.com/xpress-ops/tower/internal/passhash"
	"github.com/xpress-ops/tower/protocol"
)

// File is the operator list's file name inside the agent's data directory.
const File = "operators.db"

// Defaults of Config.
const (
	// DefaultIdleTimeout ends a session that sent no request for this long.
	DefaultIdleTimeout = 12 * time.Hour
	// DefaultMaxFailures is the number of failed sign-ins in a row from
	// one remote address that locks the user name for that address.
	DefaultMaxFailures = 5
	// DefaultMaxAccountFailures is the number of failed sign-ins in a row
	// from any addresses that locks the user name for every address.
	DefaultMaxAccountFailures = 50
	// DefaultLockoutDuration is how long a locked user name stays locked.
	DefaultLockoutDuration = 15 * time.Minute
	// DefaultLoginBurst and DefaultLoginInterval limit the sign-in
	// attempts of one remote address: a burst of 10, then one every 6 s.
	DefaultLoginBurst    = 10
	DefaultLoginInterval = 6 * time.Second
	// DefaultMaxConcurrent is the most password checks that run at once;
	// each takes 19 MiB of memory (passhash.Password).
	DefaultMaxConcurrent = 2
	// MaxPasswordBytes is the longest password checked; a longer one fails
	// like a wrong one.
	MaxPasswordBytes = 1024
	// sessionIDBytes is the random bytes of a session id and a CSRF token.
	sessionIDBytes = 32
	// maxTracked bounds the remote addresses and user names whose attempts
	// are remembered; past it, the idle ones are forgotten.
	maxTracked = 4096
	// openTimeout is how long Open waits for the file lock.
	openTimeout = time.Second
)

// listBucket holds the current list under listKey, as the hub sent it.
var (
	listBucket = []byte("operator_list")
	listKey    = []byte("list")
)

// Errors of Login.
var (
	// ErrBadCredentials means the user name is unknown or the password
	// wrong. Callers get the same error for both.
	ErrBadCredentials = errors.New("wrong user name or password")
	// ErrNoOperators means the agent has not received an operator list
	// from the hub yet.
	ErrNoOperators = errors.New("no operator accounts received from the hub yet: the agent needs to reach the hub once")
	// ErrNotOpen means the store is not open.
	ErrNotOpen = errors.New("operator list store is not open")
)

// LockedError is returned by Login for a user name locked after too many
// failed sign-ins.
type LockedError struct {
	Until time.Time
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("too many failed sign-ins: this user name is locked until %s", e.Until.UTC().Format(time.RFC3339))
}

// ThrottledError is returned by Login when the remote address tried too
// often; RetryAfter is the wait before the next attempt.
type ThrottledError struct {
	RetryAfter time.Duration
}

func (e *ThrottledError) Error() string {
	return "too many sign-in attempts from your address; wait and try again"
}

// Config configures a Store.
type Config struct {
	// Path is the bbolt file. Required.
	Path string
	// AgentID is the agent whose list the hub sends. Required.
	AgentID string
	// IdleTimeout ends a session that sent no request for this long. Zero
	// means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxFailures and LockoutDuration lock a user name for one remote
	// address after that many failed sign-ins in a row from it.
	// MaxAccountFailures locks it for every address after that many in a
	// row from any. Zero means DefaultMaxFailures,
	// DefaultMaxAccountFailures and DefaultLockoutDuration.
	MaxFailures        int
	MaxAccountFailures int
	LockoutDuration    time.Duration
	// LoginBurst and LoginInterval limit each remote address's attempts.
	// Zero means DefaultLoginBurst and DefaultLoginInterval.
	LoginBurst    int
	LoginInterval time.Duration
	// MaxConcurrent is the most password checks that run at once. Zero
	// means DefaultMaxConcurrent.
	MaxConcurrent int
	// Logger receives the store's logs. Nil discards them.
	Logger *slog.Logger
	// Registerer receives the store's metrics on Open. Nil means a private registry.
	Registerer prometheus.Registerer
	// Now is the agent clock. Nil means time.Now.
	Now func() time.Time
}

// Session is an operator's sign-in session on the agent's page.
type Session struct {
	// ID is the session id the cookie carries. Only Login returns it;
	// the store keeps its SHA-256 hash.
	ID          string
	Username    string
	DisplayName string
	Role        string
	// CSRFToken is the token state-changing requests must send in the
	// X-CSRF-Token header.
	CSRFToken  string
	Remote     string
	CreatedAt  time.Time
	LastSeenAt time.Time
	// hash is the password hash the session was opened with, so a new
	// password ends it.
	hash string
}

// Store holds the agent's operator list, sessions and sign-in limits. It
// is safe for concurrent use.
type Store struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	sem     chan struct{}

	dummyOnce sync.Once
	dummy     string

	mu        sync.Mutex
	db        *bolt.DB
	list      *protocol.OperatorList
	operators map[string]protocol.OperatorCredential
	sessions  map[[sha256.Size]byte]*Session
	addresses map[string]*rate.Limiter
	failures  map[string]*failure
	pairs     *httpsec.LoginLocks
}

// failure counts the failed sign-ins in a row of one user name from
// every address.
type failure struct {
	count       int
	last        time.Time
	lockedUntil time.Time
}

// New returns a store for cfg with defaults filled in. It does no I/O.
func New(cfg Config) *Store {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxFailures <= 0 {
		cfg.MaxFailures = DefaultMaxFailures
	}
	if cfg.MaxAccountFailures <= 0 {
		cfg.MaxAccountFailures = DefaultMaxAccountFailures
	}
	if cfg.LockoutDuration <= 0 {
		cfg.LockoutDuration = DefaultLockoutDuration
	}
	if cfg.LoginBurst <= 0 {
		cfg.LoginBurst = DefaultLoginBurst
	}
	if cfg.LoginInterval <= 0 {
		cfg.LoginInterval = DefaultLoginInterval
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = DefaultMaxConcurrent
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Store{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "localauth"),
		metrics:   newMetrics(),
		sem:       make(chan struct{}, cfg.MaxConcurrent),
		operators: map[string]protocol.OperatorCredential{},
		sessions:  map[[sha256.Size]byte]*Session{},
		addresses: map[string]*rate.Limiter{},
		failures:  map[string]*failure{},
		pairs:     httpsec.NewLoginLocks(cfg.MaxFailures, cfg.LockoutDuration, maxTracked),
	}
}

// Open opens or creates the file with mode 0600 and loads the list it
// holds. A stored list that cannot be read is logged and dropped: the
// hub sends the list again when the agent reaches it.
func (s *Store) Open() error {
	db, err := bolt.Open(s.cfg.Path, 0o600, &bolt.Options{Timeout: openTimeout})
	if err != nil {
		return fmt.Errorf("open operator list store %s: %w", s.cfg.Path, err)
	}
	var stored []byte
	err = db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(listBucket)
		if err != nil {
			return err
		}
		if v := bk.Get(listKey); v != nil {
			stored = append([]byte(nil), v...)
		}
		return nil
	})
	if err == nil {
		err = s.metrics.register(s.cfg.Registerer, s.counts)
	}
	if err != nil {
		return errors.Join(fmt.Errorf("load operator list from %s: %w", s.cfg.Path, err), db.Close())
	}
	s.mu.Lock()
	s.db = db
	s.mu.Unlock()
	if stored != nil {
		l, err := s.check(stored)
		if err != nil {
			s.metrics.updates.WithLabelValues(resultInvalid).Inc()
			s.log.Error("stored operator list is invalid: sign-in on the page fails until the hub sends the list again",
				"path", s.cfg.Path, "error", err)
		} else {
			s.replace(l)
		}
	}
	s.mu.Lock()
	n, received := len(s.operators), s.list != nil
	s.mu.Unlock()
	s.log.Info("operator list loaded", "path", s.cfg.Path, "received", received, "operators", n)
	return nil
}

// Close ends every session and closes the file. It is safe to call more
// than once.
func (s *Store) Close() error {
	s.mu.Lock()
	db := s.db
	s.db = nil
	s.sessions = map[[sha256.Size]byte]*Session{}
	s.mu.Unlock()
	if db == nil {
		return nil
	}
	s.metrics.unregister(s.cfg.Registerer)
	if err := db.Close(); err != nil {
		return fmt.Errorf("close operator list store: %w", err)
	}
	return nil
}

// HubMessage takes a message the hub published on the agent's
// protocol.AgentOperatorsTopic. A valid list replaces the current one and
// is written to the file before HubMessage returns. An invalid one is
// counted and logged, and the current list stays. It runs on the uplink's
// MQTT goroutine, which is fine because lists are rare and small.
func (s *Store) HubMessage(topic string, payload []byte) {
	agent, err := protocol.ParseAgentOperatorsTopic(topic)
	if err == nil && agent != s.cfg.AgentID {
		err = fmt.Errorf("topic names agent %s, not this agent %s", agent, s.cfg.AgentID)
	}
	if err != nil {
		s.metrics.updates.WithLabelValues(resultInvalid).Inc()
		s.log.Warn("operator list from the hub ignored: bad topic", "topic", topic, "error", err)
		return
	}
	if len(payload) == 0 {
		// The hub clears the list of an agent without a credential. Such an
		// agent cannot connect, so this message is a mistake or a race.
		s.metrics.updates.WithLabelValues(resultInvalid).Inc()
		s.log.Warn("empty operator list message from the hub ignored; the list held stays")
		return
	}
	if err := s.Update(payload); err != nil {
		s.log.Error("operator list from the hub not applied; the list held stays", "bytes", len(payload), "error", err)
	}
}

// Update checks an encoded protocol.OperatorList, writes it to the file
// and makes it the list held. It returns an error, and keeps the list
// held, when the list is invalid or the store is not open. A valid list
// that could not be written still applies in memory, so a removed
// operator loses access at once. The error then reports the failed write.
func (s *Store) Update(payload []byte) error {
	l, err := s.check(payload)
	if err != nil {
		s.metrics.updates.WithLabelValues(resultInvalid).Inc()
		return err
	}
	s.mu.Lock()
	db := s.db
	same := s.list != nil && sameOperators(s.list, l)
	s.mu.Unlock()
	if db == nil {
		return ErrNotOpen
	}
	if same {
		s.metrics.updates.WithLabelValues(resultUnchanged).Inc()
		return nil
	}
	writeErr := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(listBucket).Put(listKey, payload)
	})
	ended := s.replace(l)
	s.metrics.updates.WithLabelValues(resultApplied).Inc()
	s.log.Info("operator list from the hub applied", "operators", len(l.Operators), "issued_at", l.IssuedAt, "sessions_ended", ended)
	if writeErr != nil {
		s.metrics.writeFailures.Inc()
		return fmt.Errorf("operator list applied in memory but not written to %s: %w", s.cfg.Path, writeErr)
	}
	return nil
}

// check decodes a list and checks that it is this agent's and that every
// hash is an argon2id PHC string passhash can check.
func (s *Store) check(payload []byte) (*protocol.OperatorList, error) {
	l, err := protocol.DecodeOperatorList(payload)
	if err != nil {
		return nil, err
	}
	if l.Agent != s.cfg.AgentID {
		return nil, fmt.Errorf("%w: operator list is for agent %s, not this agent %s", protocol.ErrMalformed, l.Agent, s.cfg.AgentID)
	}
	for _, o := range l.Operators {
		if _, err := passhash.ParamsOf(o.Hash); err != nil {
			return nil, fmt.Errorf("password hash of operator %s: %w", o.Username, err)
		}
	}
	return l, nil
}

// sameOperators reports whether two lists hold the same accounts.
func sameOperators(a, b *protocol.OperatorList) bool {
	if len(a.Operators) != len(b.Operators) {
		return false
	}
	for i := range a.Operators {
		if a.Operators[i] != b.Operators[i] {
			return false
		}
	}
	return true
}

// replace makes l the current list. It ends the sessions of operators
// missing from l or whose password hash or role changed, and updates the
// display name of the others. It returns the number of sessions ended.
func (s *Store) replace(l *protocol.OperatorList) int {
	ops := make(map[string]protocol.OperatorCredential, len(l.Operators))
	for _, o := range l.Operators {
		ops[o.Username] = o
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.list, s.operators = l, ops
	ended := 0
	for k, sess := range s.sessions {
		o, ok := ops[sess.Username]
		if !ok || o.Hash != sess.hash || o.Role != sess.Role {
			delete(s.sessions, k)
			ended++
			s.log.Info("local session ended: the operator was removed from the hub's list, or the password or role changed",
				"username", sess.Username, "remote", sess.Remote)
			continue
		}
		sess.DisplayName = o.DisplayName
	}
	return ended
}

// AgentID returns the agent whose list the store takes.
func (s *Store) AgentID() string { return s.cfg.AgentID }

// Received reports whether the agent holds an operator list from the hub.
func (s *Store) Received() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.list != nil
}

// Operator returns the account the list holds for username.
func (s *Store) Operator(username string) (protocol.OperatorCredential, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.operators[username]
	return o, ok
}

// counts returns the operators held and the live sessions, for the metrics.
func (s *Store) counts() (operators, sessions int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.operators), len(s.sessions)
}

// Login checks username and password from remote (an IP address) and
// opens a session. It returns a *ThrottledError when remote tried too
// often, ErrNoOperators without a list, a *LockedError for a locked user
// name and ErrBadCredentials for an unknown user name or a wrong
// password. The password is never logged.
func (s *Store) Login(username, password, remote string) (Session, error) {
	now := s.cfg.Now()
	if wait := s.allowAddress(remote, now); wait > 0 {
		s.metrics.logins.WithLabelValues(loginThrottled).Inc()
		return Session{}, &ThrottledError{RetryAfter: wait}
	}
	s.mu.Lock()
	open, received := s.db != nil, s.list != nil
	o, known := s.operators[username]
	f := s.failures[username]
	var lockedUntil time.Time
	if f != nil && now.Before(f.lockedUntil) {
		lockedUntil = f.lockedUntil
	}
	s.mu.Unlock()
	if until, locked := s.pairs.Locked(username, remote, now); locked && until.After(lockedUntil) {
		lockedUntil = until
	}
	switch {
	case !open:
		return Session{}, ErrNotOpen
	case !received:
		s.metrics.logins.WithLabelValues(loginNoOperators).Inc()
		return Session{}, ErrNoOperators
	}

	hash := o.Hash
	if !known || len(password) > MaxPasswordBytes {
		hash = s.dummyHash()
	}
	s.sem <- struct{}{}
	verr := passhash.Verify(hash, password)
	<-s.sem
	if !lockedUntil.IsZero() {
		s.metrics.logins.WithLabelValues(loginLocked).Inc()
		return Session{}, &LockedError{Until: lockedUntil}
	}
	if verr != nil || !known || len(password) > MaxPasswordBytes {
		if verr != nil && !errors.Is(verr, passhash.ErrMismatch) {
			s.log.Error("password hash from the hub cannot be checked", "username", username, "error", verr)
		}
		s.metrics.logins.WithLabelValues(loginBadCredentials).Inc()
		if until, locked := s.fail(username, remote, now); locked {
			s.log.Warn("local sign-in locked after repeated failures", "username", username, "remote", remote, "until", until)
			return Session{}, &LockedError{Until: until}
		}
		return Session{}, ErrBadCredentials
	}

	id, err := randomToken()
	if err != nil {
		return Session{}, err
	}
	csrf, err := randomToken()
	if err != nil {
		return Session{}, err
	}
	sess := &Session{Username: o.Username, DisplayName: o.DisplayName, Role: o.Role, CSRFToken: csrf, Remote: remote,
		CreatedAt: now, LastSeenAt: now, hash: o.Hash}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The list may have changed during the check.
	if cur, ok := s.operators[username]; !ok || cur.Hash != o.Hash || cur.Role != o.Role {
		s.metrics.logins.WithLabelValues(loginBadCredentials).Inc()
		return Session{}, ErrBadCredentials
	}
	delete(s.failures, username)
	s.pairs.Succeed(username, remote)
	s.pruneSessions(now)
	s.sessions[sha256.Sum256([]byte(id))] = sess
	s.metrics.logins.WithLabelValues(loginSuccess).Inc()
	out := *sess
	out.ID = id
	return out, nil
}

// fail counts a failed sign-in of username from remote. It locks the
// pair at Config.MaxFailures in a row from remote, and the user name at
// Config.MaxAccountFailures in a row from any address.
func (s *Store) fail(username, remote string, now time.Time) (time.Time, bool) {
	pairUntil, pairLocked := s.pairs.Fail(username, remote, now)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failures) >= maxTracked {
		for name, f := range s.failures {
			if now.Sub(f.last) > s.cfg.LockoutDuration && !now.Before(f.lockedUntil) {
				delete(s.failures, name)
			}
		}
	}
	f := s.failures[username]
	if f == nil {
		f = &failure{}
		s.failures[username] = f
	}
	f.count++
	f.last = now
	if f.count >= s.cfg.MaxAccountFailures {
		f.count, f.lockedUntil = 0, now.Add(s.cfg.LockoutDuration)
		return f.lockedUntil, true
	}
	return pairUntil, pairLocked
}

// allowAddress takes a sign-in attempt from remote's budget and returns
// zero, or the wait before it may try again.
func (s *Store) allowAddress(remote string, now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	lim := s.addresses[remote]
	if lim == nil {
		if len(s.addresses) >= maxTracked {
			for addr, l := range s.addresses {
				if l.TokensAt(now) >= float64(s.cfg.LoginBurst) {
					delete(s.addresses, addr)
				}
			}
		}
		lim = rate.NewLimiter(rate.Every(s.cfg.LoginInterval), s.cfg.LoginBurst)
		s.addresses[remote] = lim
	}
	r := lim.ReserveN(now, 1)
	if wait := r.DelayFrom(now); wait > 0 {
		r.CancelAt(now)
		return wait
	}
	return 0
}

// Session returns the live session of id and marks it used now. An
// expired session is removed.
func (s *Store) Session(id string) (Session, bool) {
	if id == "" {
		return Session{}, false
	}
	now := s.cfg.Now()
	k := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.sessions[k]
	if !ok {
		return Session{}, false
	}
	if now.Sub(sess.LastSeenAt) >= s.cfg.IdleTimeout {
		delete(s.sessions, k)
		return Session{}, false
	}
	sess.LastSeenAt = now
	return *sess, true
}

// Logout ends the session of id and reports whether it was live.
func (s *Store) Logout(id string) bool {
	k := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.sessions[k]
	delete(s.sessions, k)
	return ok
}

// CheckCSRF reports whether token is the session's CSRF token, in
// constant time.
func (sess *Session) CheckCSRF(token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(sess.CSRFToken)) == 1
}

// pruneSessions removes idle sessions; s.mu is held.
func (s *Store) pruneSessions(now time.Time) {
	for k, sess := range s.sessions {
		if now.Sub(sess.LastSeenAt) >= s.cfg.IdleTimeout {
			delete(s.sessions, k)
		}
	}
}

// dummyHash returns a password hash made once per store, checked for an
// unknown user name so the response takes as long as for a known one.
func (s *Store) dummyHash() string {
	s.dummyOnce.Do(func() {
		secret, err := randomToken()
		if err == nil {
			s.dummy, err = passhash.Hash(secret, passhash.Password)
		}
		if err != nil {
			s.log.Error("make the dummy password hash", "error", err)
		}
	})
	return s.dummy
}

// randomToken returns sessionIDBytes random bytes in base64url.
func randomToken() (string, error) {
	b := make([]byte, sessionIDBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate session token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}
