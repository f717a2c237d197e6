// Package vehicleauth checks the credentials vehicles present to the
// agent's broker against the copy of the hub's vehicle credentials the
// agent keeps in a bbolt file of its own (File, next to the spool).
//
// The hub publishes each vehicle's credential as a retained message (see
// protocol.VehicleCredential and package credsync), and the uplink hands
// each one to HubMessage. A message is applied only when its version is
// newer than the vehicle's current one, so credentials never move
// backwards. Each applied batch is written to the file, so the agent
// keeps authenticating vehicles with its copy across restarts and while
// the hub is unreachable.
//
// Tokens are checked with argon2id (package passhash), which takes a few
// milliseconds of CPU per check. At most MaxConcurrent checks run at
// once, so a reconnecting fleet cannot starve the broker, and successful
// checks are remembered in memory, keyed by vehicle and the SHA-256 of
// the token, until that vehicle's credential changes.
//
// NOTE: the version guard trusts the hub's counter to only grow. A hub
// store restored from an older backup sends lower versions, which agents
// ignore for vehicles they already hold until a change passes the old
// version; delete File on the agents after such a restore.
package vehicleauth

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/agent/broker"
	"github.com/xpress-ops/tower/internal/passhash"
	"github.com/xpress-ops/tower/protocol"
)

// File is the credential file's name inside the agent's data directory.
const File = "vehicle-credentials.db"

// Defaults of Config.
const (
	// DefaultTimeout is how long Open waits for the file lock.
	DefaultTimeout = time.Second
	// queueSize is how many hub messages wait to be applied. The uplink
	// blocks when more arrive, which only slows the hub link.
	queueSize = 4096
	// maxApplyBatch is the most messages written in one transaction.
	maxApplyBatch = 512
	// maxRemembered is the maximum number of tokens remembered per
	// vehicle. A vehicle has at most two valid tokens at once.
	maxRemembered = 4
)

// credentialsBucket holds one JSON protocol.VehicleCredential per vehicle id.
var credentialsBucket = []byte("vehicle_credentials")

// ErrNotOpen means the store is not open.
var ErrNotOpen = errors.New("vehicle credential store is not open")

// Config configures a Store.
type Config struct {
	// Path is the bbolt file. Required.
	Path string
	// MaxConcurrent is the most password hash checks that run at once.
	// Zero means GOMAXPROCS.
	MaxConcurrent int
	// Logger receives the store's logs. Nil discards them.
	Logger *slog.Logger
	// Registerer receives the store's metrics on Open. Nil means a private registry.
	Registerer prometheus.Registerer
	// Now is the agent clock that ends the grace of a replaced token. Nil
	// means time.Now.
	Now func() time.Time
	// OnRevoke, if set, is called with the id of each vehicle whose
	// revocation Apply applied, so its open connections can be closed.
	OnRevoke func(vehicleID string)
}

// Store is the agent's copy of the vehicle credentials and the broker's
// broker.VehicleAuthenticator. It is safe for concurrent use.
type Store struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	sem     chan struct{}

	db    *bolt.DB
	queue chan protocol.VehicleCredential
	done  chan struct{}
	// queueMu orders HubMessage's sends with Close's closing of queue.
	queueMu     sync.RWMutex
	queueClosed bool

	mu    sync.RWMutex
	creds map[string]protocol.VehicleCredential
	// remembered holds, per vehicle, the SHA-256 of the tokens a check
	// accepted under the vehicle's current credential, and whether each
	// was the previous token (which expires).
	remembered map[string]map[[sha256.Size]byte]bool

	closeOnce sync.Once
}

var (
	_ broker.VehicleAuthenticator     = (*Store)(nil)
	_ broker.RememberingAuthenticator = (*Store)(nil)
)

// New returns a store for cfg with defaults filled in. It does no I/O.
func New(cfg Config) *Store {
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = runtime.GOMAXPROCS(0)
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
		cfg:        cfg,
		log:        cfg.Logger.With("component", "vehicleauth"),
		metrics:    newMetrics(),
		sem:        make(chan struct{}, cfg.MaxConcurrent),
		queue:      make(chan protocol.VehicleCredential, queueSize),
		done:       make(chan struct{}),
		creds:      make(map[string]protocol.VehicleCredential),
		remembered: make(map[string]map[[sha256.Size]byte]bool),
	}
}

// Open opens or creates the file with mode 0600, loads every credential
// and starts applying hub messages. A record that cannot be read is
// skipped and logged: the hub's next copy replaces it.
func (s *Store) Open() error {
	db, err := bolt.Open(s.cfg.Path, 0o600, &bolt.Options{Timeout: DefaultTimeout})
	if err != nil {
		return fmt.Errorf("open vehicle credential store %s: %w", s.cfg.Path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(credentialsBucket)
		if err != nil {
			return err
		}
		return bk.ForEach(func(k, v []byte) error {
			var c protocol.VehicleCredential
			if err := json.Unmarshal(v, &c); err != nil || c.Validate() != nil || c.VehicleID != string(k) {
				s.metrics.updates.WithLabelValues(resultInvalid).Inc()
				s.log.Error("stored vehicle credential is unreadable; skipped until the hub sends it again", "vehicle", string(k), "error", err)
				return nil
			}
			s.creds[c.VehicleID] = c
			return nil
		})
	})
	if err == nil {
		err = s.metrics.register(s.cfg.Registerer, s.count)
	}
	if err != nil {
		return errors.Join(fmt.Errorf("load vehicle credentials from %s: %w", s.cfg.Path, err), db.Close())
	}
	s.db = db
	go s.applyLoop()
	live, revoked := s.count()
	s.log.Info("vehicle credentials loaded", "path", s.cfg.Path, "live", live, "revoked", revoked)
	return nil
}

// Close stops applying hub messages, writes the ones already queued and
// closes the file. It is safe to call more than once.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if s.db == nil {
			return
		}
		s.queueMu.Lock()
		s.queueClosed = true
		close(s.queue)
		s.queueMu.Unlock()
		<-s.done
		s.metrics.unregister(s.cfg.Registerer)
		if cerr := s.db.Close(); cerr != nil {
			err = fmt.Errorf("close vehicle credential store: %w", cerr)
		}
	})
	return err
}

// HubMessage takes a message the hub published on a
// protocol.VehicleCredentialTopic. It checks the message and queues it
// for the apply goroutine, so it returns at once unless the queue is
// full. An invalid message is counted, logged and dropped, and so is a
// message that arrives after Close.
func (s *Store) HubMessage(topic string, payload []byte) {
	vehicle, err := protocol.ParseVehicleCredentialTopic(topic)
	if err != nil {
		s.metrics.updates.WithLabelValues(resultInvalid).Inc()
		s.log.Warn("vehicle credential from the hub ignored: bad topic", "topic", topic, "error", err)
		return
	}
	if len(payload) == 0 {
		// The hub never clears a credential, because tombstones carry revocations.
		s.metrics.updates.WithLabelValues(resultInvalid).Inc()
		s.log.Warn("empty vehicle credential from the hub ignored", "vehicle", vehicle)
		return
	}
	c, err := protocol.DecodeVehicleCredential(payload)
	if err == nil && c.VehicleID != vehicle {
		err = fmt.Errorf("message names vehicle %s", c.VehicleID)
	}
	if err != nil {
		s.metrics.updates.WithLabelValues(resultInvalid).Inc()
		s.log.Warn("vehicle credential from the hub ignored: invalid message", "vehicle", vehicle, "error", err)
		return
	}
	s.queueMu.RLock()
	defer s.queueMu.RUnlock()
	if s.queueClosed || s.db == nil {
		s.log.Debug("vehicle credential from the hub dropped: the store is closed", "vehicle", vehicle, "version", c.Version)
		return
	}
	s.queue <- *c
}

// Apply stores credentials that are newer than the ones held for their
// vehicles, writing them to the file before it returns, and reports how
// many it applied. Messages are checked with Validate first, and an
// invalid one is skipped.
func (s *Store) Apply(creds ...protocol.VehicleCredential) (int, error) {
	if s.db == nil {
		return 0, ErrNotOpen
	}
	// Newest per vehicle first, so a batch holding two versions of one
	// vehicle applies the newer.
	newest := make(map[string]protocol.VehicleCredential, len(creds))
	var order []string
	for _, c := range creds {
		if err := c.Validate(); err != nil {
			s.metrics.updates.WithLabelValues(resultInvalid).Inc()
			s.log.Warn("vehicle credential ignored: invalid", "vehicle", c.VehicleID, "error", err)
			continue
		}
		old, seen := newest[c.VehicleID]
		if !seen {
			order = append(order, c.VehicleID)
		}
		if !seen || c.Version > old.Version {
			newest[c.VehicleID] = c
		}
	}
	var changed []protocol.VehicleCredential
	s.mu.RLock()
	for _, id := range order {
		c := newest[id]
		if current, ok := s.creds[id]; ok && current.Version >= c.Version {
			s.metrics.updates.WithLabelValues(resultStale).Inc()
			continue
		}
		changed = append(changed, c)
	}
	s.mu.RUnlock()
	if len(changed) == 0 {
		return 0, nil
	}

	writeErr := s.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(credentialsBucket)
		for _, c := range changed {
			data, err := json.Marshal(c)
			if err != nil {
				return fmt.Errorf("encode credential of vehicle %s: %w", c.VehicleID, err)
			}
			if err := bk.Put([]byte(c.VehicleID), data); err != nil {
				return err
			}
		}
		return nil
	})
	// The change applies in memory even when the write failed: a
	// revocation must take effect now. The hub sends every credential
	// again when the uplink reconnects.
	s.mu.Lock()
	applied := 0
	var revoked []string
	for _, c := range changed {
		if current, ok := s.creds[c.VehicleID]; ok && current.Version >= c.Version {
			continue // a concurrent Apply was newer
		}
		s.creds[c.VehicleID] = c
		delete(s.remembered, c.VehicleID)
		applied++
		if c.Revoked {
			revoked = append(revoked, c.VehicleID)
		}
	}
	s.mu.Unlock()
	if s.cfg.OnRevoke != nil {
		for _, id := range revoked {
			s.cfg.OnRevoke(id)
		}
	}
	s.metrics.updates.WithLabelValues(resultApplied).Add(float64(applied))
	if writeErr != nil {
		s.metrics.writeFailures.Inc()
		return applied, fmt.Errorf("write vehicle credentials to %s: %w", s.cfg.Path, writeErr)
	}
	return applied, nil
}

// applyLoop applies queued hub messages in batches until Close.
func (s *Store) applyLoop() {
	defer close(s.done)
	for c := range s.queue {
		batch := []protocol.VehicleCredential{c}
	fill:
		for len(batch) < maxApplyBatch {
			select {
			case next, ok := <-s.queue:
				if !ok {
					break fill
				}
				batch = append(batch, next)
			default:
				break fill
			}
		}
		n, err := s.Apply(batch...)
		if err != nil {
			s.log.Error("vehicle credentials applied in memory but not written to disk; they are lost at restart unless the hub sends them again",
				"vehicles", len(batch), "error", err)
		}
		if n > 0 {
			s.log.Debug("vehicle credentials applied", "received", len(batch), "applied", n)
		}
	}
}

// Credential returns the credential held for a vehicle.
func (s *Store) Credential(vehicleID string) (protocol.VehicleCredential, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.creds[vehicleID]
	return c, ok
}

// count returns the number of live and revoked credentials held.
func (s *Store) count() (live, revoked int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, c := range s.creds {
		if c.Revoked {
			revoked++
		} else {
			live++
		}
	}
	return live, revoked
}

// tokenKey is the key of a remembered token: the SHA-256 of the vehicle
// id, a NUL and the password, so equal passwords of two vehicles differ.
func tokenKey(vehicleID string, password []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(vehicleID))
	h.Write([]byte{0})
	h.Write(password)
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// Remembers reports whether a check accepted this vehicle and password
// under the vehicle's current credential (see
// broker.RememberingAuthenticator). It does no hashing beyond SHA-256.
func (s *Store) Remembers(vehicleID string, password []byte) bool {
	c, ok := s.Credential(vehicleID)
	if !ok || c.Revoked {
		return false
	}
	return s.remembers(vehicleID, c, tokenKey(vehicleID, password))
}

func (s *Store) remembers(vehicleID string, c protocol.VehicleCredential, key [sha256.Size]byte) bool {
	s.mu.RLock()
	previous, ok := s.remembered[vehicleID][key]
	s.mu.RUnlock()
	return ok && (!previous || s.cfg.Now().Before(c.PreviousValidUntil))
}

// Authenticate checks a vehicle's password (see
// broker.VehicleAuthenticator). It returns an error wrapping
// broker.ErrVehicleNotAuthorized for a vehicle without a credential or
// with a revoked one, and broker.ErrBadPassword for a missing or wrong
// password, or a previous token whose grace ended.
func (s *Store) Authenticate(vehicleID string, password []byte) error {
	c, ok := s.Credential(vehicleID)
	switch {
	case !ok:
		s.metrics.checks.WithLabelValues(checkUnknown).Inc()
		return fmt.Errorf("%w: vehicle %s has no credential on this agent", broker.ErrVehicleNotAuthorized, vehicleID)
	case c.Revoked:
		s.metrics.checks.WithLabelValues(checkRevoked).Inc()
		return fmt.Errorf("%w: the credential of vehicle %s was revoked", broker.ErrVehicleNotAuthorized, vehicleID)
	case len(password) == 0:
		s.metrics.checks.WithLabelValues(checkBadPassword).Inc()
		return fmt.Errorf("%w: no password", broker.ErrBadPassword)
	}
	key := tokenKey(vehicleID, password)
	if s.remembers(vehicleID, c, key) {
		s.metrics.checks.WithLabelValues(checkRemembered).Inc()
		return nil
	}

	s.sem <- struct{}{}
	start := time.Now()
	previous, err := s.verify(c, string(password))
	s.metrics.verifySeconds.Observe(time.Since(start).Seconds())
	<-s.sem
	if err != nil {
		s.metrics.checks.WithLabelValues(checkBadPassword).Inc()
		return err
	}
	s.metrics.checks.WithLabelValues(checkVerified).Inc()

	s.mu.Lock()
	// Remember only under the credential that was checked.
	if current := s.creds[vehicleID]; current.Version == c.Version {
		m := s.remembered[vehicleID]
		if m == nil || len(m) >= maxRemembered {
			m = make(map[[sha256.Size]byte]bool, 2)
			s.remembered[vehicleID] = m
		}
		m[key] = previous
	}
	s.mu.Unlock()
	return nil
}

// verify checks password against c's current hash and, during the grace
// of a rotation, its previous hash. It reports whether the previous one
// matched.
func (s *Store) verify(c protocol.VehicleCredential, password string) (previous bool, err error) {
	err = passhash.Verify(c.Hash, password)
	if errors.Is(err, passhash.ErrMismatch) && c.PreviousHash != "" && s.cfg.Now().Before(c.PreviousValidUntil) {
		if passhash.Verify(c.PreviousHash, password) == nil {
			return true, nil
		}
	}
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, passhash.ErrMismatch):
		return false, fmt.Errorf("%w: the password does not match the credential of vehicle %s (version %d)", broker.ErrBadPassword, c.VehicleID, c.Version)
	default:
		s.log.Error("stored vehicle credential hash is unreadable; the vehicle cannot connect until the hub sends it again",
			"vehicle", c.VehicleID, "version", c.Version, "error", err)
		return false, fmt.Errorf("%w: stored hash of vehicle %s: %v", broker.ErrBadPassword, c.VehicleID, err)
	}
}
