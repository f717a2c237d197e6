// Package localsos keeps every SOS an agent received, with the latest
// state known for it, in a bbolt file of its own (File, next to the
// spool), and publishes each state change to the vehicle (see Relay).
//
// The agent records an SOS as received as soon as the spool stored it,
// so a driver gets "received" even while the hub is unreachable. The
// states the hub sends later only move an SOS forward: received <
// acknowledged < dispatched < resolved or cancelled. Entries survive
// restarts; closed ones are pruned after Config.KeepClosed. The agent's
// local outage page reads the store too: ListActive, Get and
// MarkLocalAck. The agent's outage notifier keeps in each entry the
// notifications it sent about the SOS itself (UpdateNotification).
package localsos

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/protocol"
)

// File is the store's file name inside the agent's data directory.
const File = "sos.db"

// Defaults of Config.
const (
	// DefaultKeepClosed is how long a resolved or cancelled SOS stays.
	DefaultKeepClosed = 7 * 24 * time.Hour
	// DefaultTimeout is how long Open waits for the file lock.
	DefaultTimeout = time.Second
	// DefaultLanguage is the language of the agent's own messages.
	DefaultLanguage = "en"
)

// MaxActor is the longest actor of MarkLocalAck, in bytes: room for a
// name of protocol.MaxOperatorName characters of up to 4 bytes each.
const MaxActor = protocol.MaxOperatorName * utf8.UTFMax

// entriesBucket holds one JSON Entry per key vehicle id + "/" + SOS id.
var entriesBucket = []byte("sos")

// trackedBucket holds, with empty values, the keys of the entries that
// still need work (see tracked), so the readers that run every second do
// not read the closed entries kept for KeepClosed.
var trackedBucket = []byte("tracked")

// metaBucket holds the store's own values, such as metaHubContact.
var metaBucket = []byte("meta")

// Keys of metaBucket; the values are times in RFC 3339 with nanoseconds.
var (
	metaHubContact = []byte("hub_contact")
	metaFirstStart = []byte("first_start")
)

// Errors of the store.
var (
	// ErrNotFound means the store has no SOS with that vehicle and SOS id.
	ErrNotFound = errors.New("SOS not found")
	// ErrSOSClosed means the SOS is already resolved or cancelled.
	ErrSOSClosed = errors.New("SOS is already closed")
	// ErrInvalid means an argument breaks a documented rule.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotOpen means the store is not open.
	ErrNotOpen = errors.New("local SOS store is not open")
)

// Config configures a Store.
type Config struct {
	// Path is the bbolt file, usually <data dir>/File. Required.
	Path string
	// KeepClosed is how long a closed SOS stays after its last change, by
	// the agent clock. Zero means DefaultKeepClosed (7 days).
	KeepClosed time.Duration
	// Language is the language of the texts the agent writes itself, for
	// received and for a local acknowledgement. Empty means DefaultLanguage.
	Language string
	// Message returns the driver's text of a state in a language. Nil
	// means the built-in English texts (protocol.DefaultSOSStateMessage).
	Message func(lang, state string) string
	// Timeout is how long Open waits for the file lock. Zero means DefaultTimeout (1 s).
	Timeout time.Duration
	// Now is the agent clock. Nil means time.Now.
	Now func() time.Time
}

// Entry is one SOS the agent has a record of, with its latest state.
type Entry struct {
	VehicleID string `json:"vehicle"`
	SOSID     string `json:"sos"`
	// Kind, the position and Note are as the vehicle sent them. They are
	// empty for an SOS the agent learned about only from the hub.
	Kind        protocol.SOSKind `json:"kind,omitempty"`
	HasLocation bool             `json:"has_location,omitempty"`
	Lat         float64          `json:"lat,omitempty"`
	Lon         float64          `json:"lon,omitempty"`
	Note        string           `json:"note,omitempty"`
	// ReceivedAt is the agent clock when the SOS arrived, zero for an SOS
	// the agent learned about only from the hub.
	ReceivedAt time.Time `json:"received_at,omitzero"`
	// IncidentID is the hub's incident, 0 until the hub sent a state.
	IncidentID int64 `json:"incident,omitempty"`
	// State is one of the protocol.SOSState* constants.
	State string `json:"state"`
	// StateAt is when the SOS entered State: the agent clock for received
	// and a local acknowledgement, the hub clock for states from the hub.
	StateAt time.Time `json:"state_at"`
	// Message is the driver's text for State.
	Message string `json:"message,omitempty"`
	// LocalAckBy is who acknowledged the SOS on the agent's local page,
	// and LocalAckAt when, by the agent clock. Empty and zero without one.
	LocalAckBy string    `json:"local_ack_by,omitempty"`
	LocalAckAt time.Time `json:"local_ack_at,omitzero"`
	// LocalAckReported is set once the local acknowledgement is in the
	// spool as a protocol.KindSOSAck record, on its way to the hub.
	LocalAckReported bool `json:"local_ack_reported,omitempty"`
	// SpoolID and SpoolSeq locate the vehicle's first copy of the SOS in
	// the agent's spool: the spool file's id and the record's sequence
	// number in the SOS lane. The hub has the SOS once the spool no longer
	// holds that record. Empty and zero for an SOS the agent learned about
	// only from the hub.
	SpoolID  string `json:"spool_id,omitempty"`
	SpoolSeq uint64 `json:"spool_seq,omitempty"`
	// CancelRequestedAt is when the vehicle's cancel of the SOS reached
	// the agent, by the agent clock, and CancelReason the reason it gave.
	// A driver may be forced to cancel, so the SOS stays open until the
	// hub closes it. Zero and empty without a cancel.
	CancelRequestedAt time.Time `json:"cancel_requested_at,omitzero"`
	CancelReason      string    `json:"cancel_reason,omitempty"`
	// Notifications are the notifications the agent sent about the SOS
	// itself while the hub was unreachable, one per channel and address.
	Notifications []Notification `json:"notifications,omitempty"`
	// UpdatedAt is the agent clock at the entry's last change.
	UpdatedAt time.Time `json:"updated_at"`
}

// States of a Notification.
const (
	// NotificationSending means an attempt began and its outcome is not
	// recorded: it may be in progress, it failed in a way a retry can fix,
	// or the agent stopped during it. The provider may hold the message, so
	// it must be looked up there (notify.Twilio.Find) before a resend.
	NotificationSending = "sending"
	// NotificationSent means the provider accepted the message.
	NotificationSent = "sent"
	// NotificationFailed means the agent gave up on the notification.
	NotificationFailed = "failed"
)

// Notification is a notification about an SOS that the agent sent itself
// while the hub was unreachable.
type Notification struct {
	// Channel is the notify channel, such as "sms".
	Channel string `json:"channel"`
	// Address is the recipient: an E.164 phone number for SMS.
	Address string `json:"address"`
	// State is NotificationSending, NotificationSent or NotificationFailed.
	State string `json:"state"`
	// Attempts counts the sends begun.
	Attempts int `json:"attempts"`
	// FirstAttemptAt and LastAttemptAt are when the first and the latest
	// attempt began, by the agent clock.
	FirstAttemptAt time.Time `json:"first_attempt_at"`
	LastAttemptAt  time.Time `json:"last_attempt_at"`
	// ProviderID is the provider's id of the sent message, such as a
	// Twilio message SID.
	ProviderID string `json:"provider_id,omitempty"`
	// Error is the latest failure: why a sending notification is retried,
	// or why a failed one was given up.
	Error string `json:"error,omitempty"`
	// DoneAt is when the notification became sent or failed.
	DoneAt time.Time `json:"done_at,omitzero"`
	// Reported is set once the outcome is in the spool as a
	// protocol.KindSOSNotified record, on its way to the hub.
	Reported bool `json:"reported,omitempty"`
}

// Done reports whether the notification is sent or failed.
func (n *Notification) Done() bool {
	return n.State == NotificationSent || n.State == NotificationFailed
}

// Notification returns the entry's notification on channel to address.
func (e *Entry) Notification(channel, address string) (Notification, bool) {
	for _, n := range e.Notifications {
		if n.Channel == channel && n.Address == address {
			return n, true
		}
	}
	return Notification{}, false
}

// Active reports whether the SOS is not yet resolved or cancelled.
func (e *Entry) Active() bool { return !protocol.SOSStateFinal(e.State) }

// CancelRequested reports whether the driver asked to cancel the SOS.
func (e *Entry) CancelRequested() bool { return !e.CancelRequestedAt.IsZero() }

// tracked reports whether the entry still needs work: it is active, or
// its local acknowledgement or one of its notifications is not yet
// finished and reported to the hub.
func (e *Entry) tracked() bool {
	if e.Active() || (e.LocalAckBy != "" && !e.LocalAckReported) {
		return true
	}
	for _, n := range e.Notifications {
		if !n.Done() || !n.Reported {
			return true
		}
	}
	return false
}

// SOSState returns the vehicle payload of the entry's state.
func (e *Entry) SOSState() protocol.SOSState {
	return protocol.SOSState{State: e.State, TS: e.StateAt, Message: e.Message}
}

// Store is the agent's record of SOS alerts. It is safe for concurrent use.
type Store struct {
	cfg Config

	mu sync.RWMutex
	db *bolt.DB
}

// New returns a store for cfg with defaults filled in. It does no I/O.
func New(cfg Config) *Store {
	if cfg.KeepClosed <= 0 {
		cfg.KeepClosed = DefaultKeepClosed
	}
	if cfg.Language == "" {
		cfg.Language = DefaultLanguage
	}
	if cfg.Message == nil {
		cfg.Message = func(_, state string) string { return protocol.DefaultSOSStateMessage(state) }
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Store{cfg: cfg}
}

// Open opens or creates the file (mode 0600) and its bucket. A damaged
// file makes bbolt panic on some pages; Open returns that as an error.
func (s *Store) Open() (err error) {
	if s.cfg.Path == "" {
		return errors.New("open local SOS store: Path is empty")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db != nil {
		return fmt.Errorf("open local SOS store %s: already open", s.cfg.Path)
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("open local SOS store %s: the file is damaged: %v", s.cfg.Path, p)
		}
	}()
	db, err := bolt.Open(s.cfg.Path, 0o600, &bolt.Options{Timeout: s.cfg.Timeout, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return fmt.Errorf("open local SOS store %s: %w", s.cfg.Path, err)
	}
	if err := db.Update(initBuckets); err != nil {
		return errors.Join(fmt.Errorf("initialise local SOS store %s: %w", s.cfg.Path, err), db.Close())
	}
	s.db = db
	return nil
}

// initBuckets creates the buckets, and the index of tracked entries from
// the entries when a store written by an older agent has none.
func initBuckets(tx *bolt.Tx) error {
	entries, err := tx.CreateBucketIfNotExists(entriesBucket)
	if err != nil {
		return err
	}
	if _, err := tx.CreateBucketIfNotExists(metaBucket); err != nil {
		return err
	}
	if tx.Bucket(trackedBucket) != nil {
		return nil
	}
	index, err := tx.CreateBucket(trackedBucket)
	if err != nil {
		return err
	}
	return entries.ForEach(func(k, v []byte) error {
		var e Entry
		if err := decodeEntry(v, &e); err != nil {
			return fmt.Errorf("entry %q: %w", k, err)
		}
		if !e.tracked() {
			return nil
		}
		return index.Put(bytes.Clone(k), nil)
	})
}

// Close closes the file. It is safe to call more than once.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil
	}
	err := s.db.Close()
	s.db = nil
	if err != nil {
		return fmt.Errorf("close local SOS store %s: %w", s.cfg.Path, err)
	}
	return nil
}

// Record stores an SOS the spool accepted, as received at receivedAt, and
// reports whether the vehicle's state changed. A copy of an SOS already
// known changes nothing; it only fills in the details of an entry the
// hub announced first. An SOS whose id the vehicle reuses after the
// entry closed, received after the closing, is a new emergency and starts
// over as received, as the hub opens a new incident for it.
func (s *Store) Record(vehicleID string, sos *protocol.SOS, receivedAt time.Time) (Entry, bool, error) {
	return s.RecordSpooled(protocol.Record{Kind: protocol.KindSOS, VehicleID: vehicleID, ReceivedAt: receivedAt, SOS: sos}, "")
}

// RecordSpooled is Record for an SOS record the spool with id spoolID
// stored: it also keeps where the record sits in the spool (see
// Entry.SpoolSeq). A record without an SOS is invalid.
func (s *Store) RecordSpooled(rec protocol.Record, spoolID string) (Entry, bool, error) {
	if rec.SOS == nil {
		return Entry{}, false, fmt.Errorf("%w: record %d of vehicle %s carries no SOS", ErrInvalid, rec.Seq, rec.VehicleID)
	}
	var out Entry
	var changed bool
	err := s.update(rec.VehicleID, rec.SOS.ID, func(e *Entry, found bool) (bool, error) {
		var write bool
		write, changed = s.recordEntry(e, found, &rec, spoolID)
		out = *e
		return write, nil
	})
	return out, changed, err
}

// Backfill records, in one transaction, each SOS record of recs as
// RecordSpooled does, and returns the entries whose vehicle state changed:
// SOS the store did not know yet. Records of other kinds are skipped. The
// agent calls it with the SOS lane of its spool at start, so an SOS whose
// record was lost to a crash between the spool commit and Record is
// recorded anyway.
func (s *Store) Backfill(recs []protocol.Record, spoolID string) ([]Entry, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return nil, ErrNotOpen
	}
	var changedEntries []Entry
	err := s.db.Update(func(tx *bolt.Tx) error {
		for i := range recs {
			rec := &recs[i]
			if rec.Kind != protocol.KindSOS || rec.SOS == nil {
				continue
			}
			if protocol.ValidateVehicleID(rec.VehicleID) != nil || protocol.ValidateSOSID(rec.SOS.ID) != nil {
				continue
			}
			var write, changed bool
			e, err := updateInTx(tx, rec.VehicleID, rec.SOS.ID, func(e *Entry, found bool) (bool, error) {
				write, changed = s.recordEntry(e, found, rec, spoolID)
				return write, nil
			})
			if err != nil {
				return err
			}
			if write && changed {
				changedEntries = append(changedEntries, e)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("backfill local SOS store: %w", err)
	}
	return changedEntries, nil
}

// recordEntry applies the SOS record rec to e, the stored entry when
// found, following Record's rules, and reports whether e must be stored
// and whether the vehicle's state changed.
func (s *Store) recordEntry(e *Entry, found bool, rec *protocol.Record, spoolID string) (write, changed bool) {
	sos := rec.SOS
	switch {
	case !found, !e.Active() && rec.ReceivedAt.After(e.StateAt):
		*e = Entry{
			VehicleID: rec.VehicleID, SOSID: sos.ID,
			State: protocol.SOSStateReceived, StateAt: rec.ReceivedAt.UTC(),
			Message: s.message(protocol.SOSStateReceived),
		}
		changed = true
	case e.ReceivedAt.IsZero():
		// The hub announced this SOS before the vehicle's copy arrived.
	case e.SpoolSeq == 0 && rec.Seq != 0:
		// Known, but recorded without its place in the spool.
		e.SpoolID, e.SpoolSeq = spoolID, rec.Seq
		e.UpdatedAt = s.cfg.Now().UTC()
		return true, false
	default:
		return false, false
	}
	e.Kind, e.Note = sos.Kind, sos.Note
	e.HasLocation, e.Lat, e.Lon = sos.HasLocation, sos.Lat, sos.Lon
	e.ReceivedAt, e.UpdatedAt = rec.ReceivedAt.UTC(), s.cfg.Now().UTC()
	if rec.Seq != 0 {
		e.SpoolID, e.SpoolSeq = spoolID, rec.Seq
	}
	return true, changed
}

// Apply stores a state the hub sent and reports whether the vehicle's
// state changed. The state never moves backwards for one incident, and a
// state of an older incident than the entry's is ignored. A final state
// from before the entry was received belongs to an earlier emergency
// with the same SOS id and is ignored too. An SOS the store does not know
// is added from the update.
func (s *Store) Apply(u protocol.SOSStateUpdate) (Entry, bool, error) {
	if err := u.Validate(); err != nil {
		return Entry{}, false, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var out Entry
	var changed bool
	err := s.update(u.VehicleID, u.SOSID, func(e *Entry, found bool) (bool, error) {
		var write bool
		write, changed = s.applyEntry(e, found, &u)
		out = *e
		return write, nil
	})
	return out, changed, err
}

// Applied is the outcome of one update of ApplyBatch, as Apply returns it.
type Applied struct {
	// Entry is the SOS's entry after the update.
	Entry Entry
	// Changed reports whether the vehicle's state changed.
	Changed bool
	// Err is set for an update that breaks a rule of
	// protocol.SOSStateUpdate.Validate. It wraps ErrInvalid, and the
	// update stored nothing.
	Err error
}

// ApplyBatch stores the states of us in one transaction, each as Apply
// does, in order: each update starts from the result of those before it
// on the same SOS. It returns one Applied per update, in the order of
// us. An invalid update is reported in its Applied and does not stop the
// others. An error means the transaction failed and nothing was stored.
// The relay applies the hub's queued states with it, because one
// transaction per state keeps the disk busy for seconds in a burst.
func (s *Store) ApplyBatch(us []protocol.SOSStateUpdate) ([]Applied, error) {
	out := make([]Applied, len(us))
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return nil, ErrNotOpen
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		for i := range us {
			u := &us[i]
			if err := u.Validate(); err != nil {
				out[i] = Applied{Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
				continue
			}
			var changed bool
			e, err := updateInTx(tx, u.VehicleID, u.SOSID, func(e *Entry, found bool) (bool, error) {
				var write bool
				write, changed = s.applyEntry(e, found, u)
				return write, nil
			})
			if err != nil {
				return err
			}
			out[i] = Applied{Entry: e, Changed: changed}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("apply SOS states to the local SOS store: %w", err)
	}
	return out, nil
}

// applyEntry applies the valid hub state u to e, the stored entry when
// found, following Apply's rules, and reports whether e must be stored
// and whether the vehicle's state changed.
func (s *Store) applyEntry(e *Entry, found bool, u *protocol.SOSStateUpdate) (write, changed bool) {
	switch {
	case !found:
		*e = Entry{VehicleID: u.VehicleID, SOSID: u.SOSID}
		changed = true
	case e.IncidentID > u.IncidentID:
		// A state of an older incident with the same SOS id.
	case e.IncidentID < u.IncidentID && e.IncidentID != 0:
		// A newer incident with the same SOS id supersedes the old one.
		changed = true
	case e.IncidentID == 0 && protocol.SOSStateFinal(u.State.State) && u.State.TS.Before(e.ReceivedAt):
		// The final state of an earlier emergency with this SOS id.
	default:
		write = e.IncidentID != u.IncidentID
		changed = protocol.SOSStateAdvances(e.State, u.State.State)
	}
	if !changed && !write {
		return false, false
	}
	e.IncidentID = u.IncidentID
	if changed {
		e.State, e.StateAt, e.Message = u.State.State, u.State.TS.UTC(), u.State.Message
	}
	e.UpdatedAt = s.cfg.Now().UTC()
	return true, changed
}

// MarkLocalAck records that actor acknowledged an SOS on the agent's
// local page at at, and reports whether the vehicle's state changed: a
// received SOS becomes acknowledged, a later state stays. It returns
// ErrNotFound for an unknown SOS, ErrSOSClosed for a closed one and
// ErrInvalid for an actor that is empty, longer than MaxActor bytes, not
// UTF-8 or has control characters.
//
// The SOS ids of different vehicles may be equal, so the SOS is named by
// vehicle and SOS id.
func (s *Store) MarkLocalAck(vehicleID, sosID, actor string, at time.Time) (Entry, bool, error) {
	if err := checkActor(actor); err != nil {
		return Entry{}, false, err
	}
	var out Entry
	var changed bool
	err := s.update(vehicleID, sosID, func(e *Entry, found bool) (bool, error) {
		switch {
		case !found:
			return false, fmt.Errorf("SOS %s of vehicle %s: %w", sosID, vehicleID, ErrNotFound)
		case !e.Active():
			out = *e
			return false, fmt.Errorf("SOS %s of vehicle %s is %s: %w", sosID, vehicleID, e.State, ErrSOSClosed)
		case e.LocalAckBy != "" && !protocol.SOSStateAdvances(e.State, protocol.SOSStateAcknowledged):
			out = *e
			return false, nil
		}
		e.LocalAckBy, e.LocalAckAt = actor, at.UTC()
		if protocol.SOSStateAdvances(e.State, protocol.SOSStateAcknowledged) {
			e.State, e.StateAt = protocol.SOSStateAcknowledged, at.UTC()
			e.Message = s.message(protocol.SOSStateAcknowledged)
			changed = true
		}
		e.UpdatedAt = s.cfg.Now().UTC()
		out = *e
		return true, nil
	})
	return out, changed, err
}

// MarkLocalAckReported records that the local acknowledgement of an SOS
// is in the spool for the hub (see Entry.LocalAckReported).
func (s *Store) MarkLocalAckReported(vehicleID, sosID string) (Entry, error) {
	var out Entry
	err := s.update(vehicleID, sosID, func(e *Entry, found bool) (bool, error) {
		switch {
		case !found:
			return false, fmt.Errorf("SOS %s of vehicle %s: %w", sosID, vehicleID, ErrNotFound)
		case e.LocalAckBy == "":
			out = *e
			return false, fmt.Errorf("%w: SOS %s of vehicle %s has no local acknowledgement", ErrInvalid, sosID, vehicleID)
		case e.LocalAckReported:
			out = *e
			return false, nil
		}
		e.LocalAckReported = true
		e.UpdatedAt = s.cfg.Now().UTC()
		out = *e
		return true, nil
	})
	return out, err
}

// UpdateNotification runs fn on the SOS's notification on channel to
// address in one write transaction and stores it when fn returns true.
// found is false for a notification the entry does not have yet. fn then
// gets one with Channel and Address set, which is added when stored. It
// returns the notification as stored, ErrNotFound for an unknown SOS and
// ErrInvalid for an empty channel or address.
func (s *Store) UpdateNotification(vehicleID, sosID, channel, address string, fn func(n *Notification, found bool) (bool, error)) (Notification, error) {
	if channel == "" || address == "" {
		return Notification{}, fmt.Errorf("%w: notification channel and address must not be empty", ErrInvalid)
	}
	var out Notification
	err := s.update(vehicleID, sosID, func(e *Entry, found bool) (bool, error) {
		if !found {
			return false, fmt.Errorf("SOS %s of vehicle %s: %w", sosID, vehicleID, ErrNotFound)
		}
		i := slices.IndexFunc(e.Notifications, func(n Notification) bool { return n.Channel == channel && n.Address == address })
		n := Notification{Channel: channel, Address: address}
		if i >= 0 {
			n = e.Notifications[i]
		}
		write, err := fn(&n, i >= 0)
		if err != nil || !write {
			out = n
			return false, err
		}
		n.Channel, n.Address = channel, address
		if i >= 0 {
			e.Notifications[i] = n
		} else {
			e.Notifications = append(e.Notifications, n)
		}
		e.UpdatedAt = s.cfg.Now().UTC()
		out = n
		return true, nil
	})
	return out, err
}

// Get returns one SOS, or an error wrapping ErrNotFound.
func (s *Store) Get(vehicleID, sosID string) (Entry, error) {
	var e Entry
	err := s.view(func(b *bolt.Bucket) error {
		v := b.Get(entryKey(vehicleID, sosID))
		if v == nil {
			return fmt.Errorf("SOS %s of vehicle %s: %w", sosID, vehicleID, ErrNotFound)
		}
		return decodeEntry(v, &e)
	})
	return e, err
}

// ListActive returns every SOS not yet resolved or cancelled, oldest
// received first. It reads the tracked entries only.
func (s *Store) ListActive() ([]Entry, error) {
	return s.listTracked(func(e *Entry) bool { return e.Active() })
}

// ListTracked returns the entries that still need work, oldest received
// first: the active ones, and the closed ones whose local acknowledgement
// or notifications are not yet finished and reported. It reads only
// those, not the closed entries kept for KeepClosed.
func (s *Store) ListTracked() ([]Entry, error) {
	return s.listTracked(func(*Entry) bool { return true })
}

// listTracked returns the tracked entries keep selects, oldest received first.
func (s *Store) listTracked(keep func(e *Entry) bool) ([]Entry, error) {
	var out []Entry
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return nil, ErrNotOpen
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		entries := tx.Bucket(entriesBucket)
		return tx.Bucket(trackedBucket).ForEach(func(k, _ []byte) error {
			v := entries.Get(k)
			if v == nil {
				return nil
			}
			var e Entry
			if err := decodeEntry(v, &e); err != nil {
				return fmt.Errorf("entry %q: %w", k, err)
			}
			if keep(&e) {
				out = append(out, e)
			}
			return nil
		})
	})
	sortEntries(out)
	return out, err
}

// List returns every SOS the store keeps, closed ones included, oldest
// received first.
func (s *Store) List() ([]Entry, error) {
	return s.list(func(*Entry) bool { return true })
}

// list returns the entries keep selects, oldest received first.
func (s *Store) list(keep func(e *Entry) bool) ([]Entry, error) {
	var out []Entry
	err := s.view(func(b *bolt.Bucket) error {
		return b.ForEach(func(k, v []byte) error {
			var e Entry
			if err := decodeEntry(v, &e); err != nil {
				return fmt.Errorf("entry %q: %w", k, err)
			}
			if keep(&e) {
				out = append(out, e)
			}
			return nil
		})
	})
	sortEntries(out)
	return out, err
}

// sortEntries sorts entries oldest received first, then by key.
func sortEntries(out []Entry) {
	sort.Slice(out, func(i, j int) bool {
		if !out[i].ReceivedAt.Equal(out[j].ReceivedAt) {
			return out[i].ReceivedAt.Before(out[j].ReceivedAt)
		}
		return string(entryKey(out[i].VehicleID, out[i].SOSID)) < string(entryKey(out[j].VehicleID, out[j].SOSID))
	})
}

// Prune deletes the closed SOS entries last changed more than KeepClosed
// before now and returns how many it deleted.
//
// NOTE: an SOS stays active until the hub sends its final state. The hub
// keeps a final state for agents for 24 hours (downlink.DefaultFinalRetention),
// so an agent cut off from the hub for longer than that when the SOS was
// closed keeps the entry active.
func (s *Store) Prune(now time.Time) (int, error) {
	cutoff := now.Add(-s.cfg.KeepClosed)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return 0, ErrNotOpen
	}
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(entriesBucket)
		var expired [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var e Entry
			if err := decodeEntry(v, &e); err != nil {
				return fmt.Errorf("entry %q: %w", k, err)
			}
			if !e.Active() && e.UpdatedAt.Before(cutoff) {
				expired = append(expired, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		index := tx.Bucket(trackedBucket)
		for _, k := range expired {
			if err := b.Delete(k); err != nil {
				return err
			}
			if err := index.Delete(k); err != nil {
				return err
			}
		}
		n = len(expired)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune local SOS store: %w", err)
	}
	return n, nil
}

// update runs fn on the entry of (vehicleID, sosID) in one write
// transaction and stores the entry when fn returns true.
func (s *Store) update(vehicleID, sosID string, fn func(e *Entry, found bool) (bool, error)) error {
	if err := protocol.ValidateVehicleID(vehicleID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := protocol.ValidateSOSID(sosID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return ErrNotOpen
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		_, err := updateInTx(tx, vehicleID, sosID, fn)
		return err
	})
}

// updateInTx reads the entry of the SOS in tx, passes it to fn with
// whether it was stored, stores it when fn reports true, and returns it
// as fn left it. Within a transaction Get returns what earlier Puts
// stored, so a later update of the same SOS starts from their result.
func updateInTx(tx *bolt.Tx, vehicleID, sosID string, fn func(e *Entry, found bool) (bool, error)) (Entry, error) {
	key := entryKey(vehicleID, sosID)
	var e Entry
	v := tx.Bucket(entriesBucket).Get(key)
	if v != nil {
		if err := decodeEntry(v, &e); err != nil {
			return Entry{}, fmt.Errorf("SOS %s of vehicle %s: %w", sosID, vehicleID, err)
		}
	}
	store, err := fn(&e, v != nil)
	if err != nil || !store {
		return e, err
	}
	return e, putEntry(tx, key, &e)
}

// putEntry stores e under key and keeps the index of tracked entries.
func putEntry(tx *bolt.Tx, key []byte, e *Entry) error {
	data, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode SOS %s of vehicle %s: %w", e.SOSID, e.VehicleID, err)
	}
	if err := tx.Bucket(entriesBucket).Put(key, data); err != nil {
		return err
	}
	if e.tracked() {
		return tx.Bucket(trackedBucket).Put(key, nil)
	}
	return tx.Bucket(trackedBucket).Delete(key)
}

// view runs fn on the bucket in a read transaction.
func (s *Store) view(fn func(b *bolt.Bucket) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return ErrNotOpen
	}
	return s.db.View(func(tx *bolt.Tx) error { return fn(tx.Bucket(entriesBucket)) })
}

// message returns the agent's own text for state, at most
// protocol.MaxSOSStateMessage bytes of valid UTF-8.
func (s *Store) message(state string) string {
	text := strings.ToValidUTF8(s.cfg.Message(s.cfg.Language, state), "")
	if len(text) > protocol.MaxSOSStateMessage {
		text = strings.ToValidUTF8(text[:protocol.MaxSOSStateMessage], "")
	}
	return text
}

// entryKey is the bucket key of an SOS. Vehicle ids cannot contain '/'.
func entryKey(vehicleID, sosID string) []byte {
	return []byte(vehicleID + "/" + sosID)
}

func decodeEntry(v []byte, e *Entry) error {
	if err := json.Unmarshal(v, e); err != nil {
		return fmt.Errorf("decode local SOS entry: %w", err)
	}
	return nil
}

func checkActor(actor string) error {
	switch {
	case actor == "":
		return fmt.Errorf("%w: actor is empty", ErrInvalid)
	case len(actor) > MaxActor:
		return fmt.Errorf("%w: actor is %d bytes, limit %d", ErrInvalid, len(actor), MaxActor)
	case !utf8.ValidString(actor):
		return fmt.Errorf("%w: actor is not valid UTF-8", ErrInvalid)
	case strings.IndexFunc(actor, unicode.IsControl) >= 0:
		return fmt.Errorf("%w: actor contains a control character", ErrInvalid)
	}
	return nil
}
