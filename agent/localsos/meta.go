package localsos

import (
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/protocol"
)

// SetHubContact stores at as the last time the hub was reachable: the
// last connect or the last acknowledgement the agent got from it. An
// earlier time than the stored one is ignored, so the time never moves
// back. The outage notifier counts an outage from it, so an agent that
// restarts keeps counting instead of starting over.
func (s *Store) SetHubContact(at time.Time) error {
	return s.putMetaTime(metaHubContact, at, func(old time.Time) bool { return at.After(old) })
}

// HubContact returns the last time SetHubContact stored, zero when the
// agent never reached the hub.
func (s *Store) HubContact() (time.Time, error) {
	return s.metaTime(metaHubContact)
}

// MarkFirstStart stores at as the agent's first start unless a first
// start is stored already, and returns the stored one. An agent that has
// never reached the hub counts its outage from it.
func (s *Store) MarkFirstStart(at time.Time) (time.Time, error) {
	if err := s.putMetaTime(metaFirstStart, at, func(old time.Time) bool { return old.IsZero() }); err != nil {
		return time.Time{}, err
	}
	return s.metaTime(metaFirstStart)
}

// putMetaTime stores at under key when replace returns true for the
// stored time (zero when there is none).
func (s *Store) putMetaTime(key []byte, at time.Time, replace func(old time.Time) bool) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return ErrNotOpen
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(metaBucket)
		old, err := decodeMetaTime(b.Get(key))
		if err != nil {
			return err
		}
		if !replace(old) {
			return nil
		}
		return b.Put(key, []byte(at.UTC().Format(time.RFC3339Nano)))
	})
	if err != nil {
		return fmt.Errorf("store %s in local SOS store: %w", key, err)
	}
	return nil
}

func (s *Store) metaTime(key []byte) (time.Time, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return time.Time{}, ErrNotOpen
	}
	var t time.Time
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		t, err = decodeMetaTime(tx.Bucket(metaBucket).Get(key))
		return err
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("read %s from local SOS store: %w", key, err)
	}
	return t, nil
}

func decodeMetaTime(v []byte) (time.Time, error) {
	if v == nil {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, string(v))
	if err != nil {
		return time.Time{}, fmt.Errorf("decode stored time %q: %w", v, err)
	}
	return t, nil
}

// RecordCancel stores a vehicle's cancel of an SOS, a protocol.KindSOSCancel
// record of the spool, and reports whether the entry changed. The SOS
// stays open: a driver may be forced to cancel, so only the hub closes
// it. The first cancel is kept. A cancel of an unknown or closed SOS, or
// one received before the SOS, changes nothing.
func (s *Store) RecordCancel(rec protocol.Record) (Entry, bool, error) {
	if rec.Kind != protocol.KindSOSCancel || rec.Cancel == nil {
		return Entry{}, false, fmt.Errorf("%w: record %d of vehicle %s is not an SOS cancel", ErrInvalid, rec.Seq, rec.VehicleID)
	}
	var out Entry
	var changed bool
	err := s.update(rec.VehicleID, rec.Cancel.ID, func(e *Entry, found bool) (bool, error) {
		out = *e
		if !found || !e.Active() || e.CancelRequested() || rec.ReceivedAt.Before(e.ReceivedAt) {
			return false, nil
		}
		reason := strings.ToValidUTF8(rec.Cancel.Reason, "")
		if len(reason) > maxCancelReason {
			reason = strings.ToValidUTF8(reason[:maxCancelReason], "")
		}
		e.CancelRequestedAt, e.CancelReason = rec.ReceivedAt.UTC(), reason
		e.UpdatedAt = s.cfg.Now().UTC()
		out, changed = *e, true
		return true, nil
	})
	return out, changed, err
}

// maxCancelReason bounds the cancel reason kept, in bytes.
const maxCancelReason = 500

// GroupRepeats splits active entries into the emergencies they belong
// to, as the hub does: an SOS of a vehicle received within
// protocol.SOSRepeatWindow of the first SOS of the vehicle's open group
// is a repeat press of it. Entries without a receive time (known only
// from the hub) form groups of their own. Each group is oldest first;
// the groups are in the order of their first entry, oldest first.
func GroupRepeats(entries []Entry) [][]Entry {
	sorted := make([]Entry, len(entries))
	copy(sorted, entries)
	sortEntries(sorted)
	var groups [][]Entry
	open := map[string]int{} // vehicle id -> index in groups
	for _, e := range sorted {
		if e.ReceivedAt.IsZero() {
			groups = append(groups, []Entry{e})
			continue
		}
		if i, ok := open[e.VehicleID]; ok && e.ReceivedAt.Sub(groups[i][0].ReceivedAt) <= protocol.SOSRepeatWindow {
			groups[i] = append(groups[i], e)
			continue
		}
		open[e.VehicleID] = len(groups)
		groups = append(groups, []Entry{e})
	}
	return groups
}
