package embedded

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/hub/store"
)

// SaveContact inserts or replaces a contact (see store.Store).
func (s *Store) SaveContact(ctx context.Context, c store.Contact) (store.Contact, error) {
	err := store.ValidateContact(c)
	if err == nil {
		c = store.NormalizeContact(c)
		err = s.update(ctx, func(tx *bolt.Tx) error {
			bk, err := bucketsOf(tx)
			if err != nil {
				return err
			}
			now := s.now()
			if c.ID == 0 {
				seq, err := bk.contacts.NextSequence()
				if err != nil {
					return fmt.Errorf("number contact: %w", err)
				}
				c.ID, c.CreatedAt = int64(seq), now
			} else {
				old, err := getContact(bk, c.ID)
				if err != nil {
					return err
				}
				c.CreatedAt = old.CreatedAt
			}
			c.UpdatedAt = now
			data, err := encodeContact(c)
			if err != nil {
				return err
			}
			return bk.contacts.Put(u64(uint64(c.ID)), data)
		})
	}
	s.countDispatch("save_contact", err)
	if err != nil {
		return store.Contact{}, fmt.Errorf("save contact %d: %w", c.ID, err)
	}
	s.log.Info("contact saved", "contact", c.ID, "role", c.Role, "region", c.Region, "vehicle", c.VehicleID)
	return c, nil
}

// DeleteContact removes a contact (see store.Store).
func (s *Store) DeleteContact(ctx context.Context, id int64) error {
	err := s.update(ctx, func(tx *bolt.Tx) error {
		bk, err := bucketsOf(tx)
		if err != nil {
			return err
		}
		if _, err := getContact(bk, id); err != nil {
			return err
		}
		return bk.contacts.Delete(u64(uint64(id)))
	})
	s.countDispatch("delete_contact", err)
	if err != nil {
		return fmt.Errorf("delete contact %d: %w", id, err)
	}
	s.log.Info("contact deleted", "contact", id)
	return nil
}

// Contacts returns the contacts matching f, ordered by id.
func (s *Store) Contacts(ctx context.Context, f store.ContactFilter) ([]store.Contact, error) {
	var out []store.Contact
	err := s.view(ctx, func(tx *bolt.Tx) error {
		bk, err := bucketsOf(tx)
		if err != nil {
			return err
		}
		return bk.contacts.ForEach(func(_, v []byte) error {
			c, err := decodeContact(v)
			if err != nil {
				return err
			}
			if f.Matches(c) {
				out = append(out, c)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list contacts: %w", err)
	}
	return out, nil
}

func getContact(bk *buckets, id int64) (store.Contact, error) {
	if id <= 0 {
		return store.Contact{}, fmt.Errorf("contact %d: %w", id, store.ErrNotFound)
	}
	v := bk.contacts.Get(u64(uint64(id)))
	if v == nil {
		return store.Contact{}, fmt.Errorf("contact %d: %w", id, store.ErrNotFound)
	}
	return decodeContact(v)
}

// EscalateIncident applies one escalation step in one bbolt transaction
// (see store.Store). bbolt's single writer orders it with CommitBatch and
// the operator actions, so two dispatchers cannot both raise one level.
func (s *Store) EscalateIncident(ctx context.Context, e store.Escalation) (store.IncidentChange, []store.Notification, error) {
	var (
		change store.IncidentChange
		queued []store.Notification
	)
	err := store.ValidateEscalation(e)
	if err == nil {
		err = s.update(ctx, func(tx *bolt.Tx) error {
			change, queued = store.IncidentChange{}, nil
			bk, err := bucketsOf(tx)
			if err != nil {
				return err
			}
			if e.IncidentID <= 0 {
				return fmt.Errorf("incident %d: %w", e.IncidentID, store.ErrNotFound)
			}
			inc, err := getIncident(bk, e.IncidentID)
			if err != nil {
				return err
			}
			now := s.now()
			ev, err := store.ApplyEscalation(&inc, e, now)
			if err != nil {
				return err
			}
			if err := saveIncident(bk, inc); err != nil {
				return fmt.Errorf("save incident %d: %w", inc.ID, err)
			}
			change.Incident = inc
			if change.Event, err = addEvent(bk, inc.ID, ev.Type, ev.Actor, ev.Detail, ev.At); err != nil {
				return err
			}
			queued, err = queueNotifications(bk, inc.ID, e.Notifications, now)
			return err
		})
	}
	s.countDispatch("escalate", err)
	if err != nil {
		return store.IncidentChange{}, nil, fmt.Errorf("escalate incident %d to level %d: %w", e.IncidentID, e.Level, err)
	}
	s.log.Info("incident escalated", "incident", e.IncidentID, "level", e.Level, "queued", len(queued), "event", change.Event.ID)
	return change, queued, nil
}

// queueNotifications inserts the notifications of an escalation as
// pending, skipping a key already stored or repeated in the list, except
// one an agent's attempt failed, which is queued again.
func queueNotifications(bk *buckets, incidentID int64, list []store.Notification, now time.Time) ([]store.Notification, error) {
	var queued []store.Notification
	seen := make(map[store.NotificationKey]bool, len(list))
	for _, n := range list {
		q := store.QueuedNotification(n, incidentID, now)
		if seen[q.Key()] {
			continue
		}
		seen[q.Key()] = true

		existing, found, err := notificationByKey(bk, q.Key())
		if err != nil {
			return nil, err
		}
		detail := ""
		if found {
			changed := existing
			var ok bool
			if detail, ok = store.RequeueAgentFailure(&changed, q, now); !ok {
				continue
			}
			if err := putNotification(bk, &existing, changed); err != nil {
				return nil, err
			}
			q = changed
		} else {
			if q, err = insertNotification(bk, q); err != nil {
				return nil, err
			}
			detail = store.QueuedDetail(q)
		}
		if _, err := addEvent(bk, incidentID, store.EventNotification, store.ActorDispatcher, detail, now); err != nil {
			return nil, err
		}
		queued = append(queued, q)
	}
	return queued, nil
}

// DueNotifications returns the notifications due at now (see
// store.Store), walking the notifications_due index in time order.
func (s *Store) DueNotifications(ctx context.Context, now time.Time, limit int) ([]store.Notification, error) {
	if limit <= 0 {
		limit = store.DefaultNotificationLimit
	}
	now = store.Time(now)
	var out []store.Notification
	err := s.view(ctx, func(tx *bolt.Tx) error {
		bk, err := bucketsOf(tx)
		if err != nil {
			return err
		}
		c := bk.notificationsDue.Cursor()
		for k, _ := c.First(); k != nil && len(out) < limit; k, _ = c.Next() {
			if len(k) != 16 {
				return fmt.Errorf("%w: notifications_due key of %d bytes", ErrCorrupt, len(k))
			}
			if readTime(k).After(now) {
				break
			}
			n, err := getNotification(bk, int64(binary.BigEndian.Uint64(k[8:])))
			if err != nil {
				return fmt.Errorf("due index: %w", err)
			}
			out = append(out, n)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list due notifications: %w", err)
	}
	return out, nil
}

// ClaimNotification starts an attempt of a notification (see store.Store).
func (s *Store) ClaimNotification(ctx context.Context, id int64, now, leaseUntil time.Time) (store.Notification, bool, error) {
	var (
		n       store.Notification
		unknown bool
	)
	err := s.update(ctx, func(tx *bolt.Tx) error {
		bk, err := bucketsOf(tx)
		if err != nil {
			return err
		}
		old, err := getNotification(bk, id)
		if err != nil {
			return err
		}
		n = old
		if unknown, err = store.ApplyClaim(&n, now, leaseUntil, s.now()); err != nil {
			return err
		}
		return putNotification(bk, &old, n)
	})
	s.countDispatch("claim", err)
	if err != nil {
		return store.Notification{}, false, fmt.Errorf("claim notification %d: %w", id, err)
	}
	if unknown {
		s.log.Warn("notification claimed after an attempt whose outcome was never recorded", "notification", id,
			"incident", n.IncidentID, "channel", n.Channel, "attempt", n.Attempts)
	}
	return n, unknown, nil
}

// RecordAttempt records the outcome of a notification's attempt (see
// store.Store).
func (s *Store) RecordAttempt(ctx context.Context, id int64, o store.AttemptOutcome) (store.Notification, store.IncidentChange, error) {
	var (
		n      store.Notification
		change store.IncidentChange
	)
	err := store.ValidateOutcome(o)
	if err == nil {
		err = s.update(ctx, func(tx *bolt.Tx) error {
			bk, err := bucketsOf(tx)
			if err != nil {
				return err
			}
			old, err := getNotification(bk, id)
			if err != nil {
				return err
			}
			n = old
			now := s.now()
			detail, err := store.ApplyAttempt(&n, o, now)
			if err != nil {
				return err
			}
			if err := putNotification(bk, &old, n); err != nil {
				return err
			}
			change, err = incidentEvent(bk, n.IncidentID, store.EventNotification, store.ActorDispatcher, detail, now)
			return err
		})
	}
	s.countDispatch("record_attempt", err)
	if err != nil {
		return store.Notification{}, store.IncidentChange{}, fmt.Errorf("record attempt of notification %d: %w", id, err)
	}
	s.log.Info("notification attempt recorded", "notification", id, "incident", n.IncidentID, "channel", n.Channel,
		"attempt", n.Attempts, "state", n.State, "provider_id", n.ProviderID, "error", n.LastError)
	return n, change, nil
}

// UpdateDeliveryStatus applies a provider's status callback (see
// store.Store).
func (s *Store) UpdateDeliveryStatus(ctx context.Context, providerID, status, errText string) (store.Notification, store.IncidentChange, error) {
	var (
		n      store.Notification
		change store.IncidentChange
	)
	providerID = store.CleanLine(providerID, store.MaxProviderID)
	err := store.ValidateDeliveryStatus(providerID, status)
	if err == nil {
		err = s.update(ctx, func(tx *bolt.Tx) error {
			bk, err := bucketsOf(tx)
			if err != nil {
				return err
			}
			v := bk.notificationsByProvider.Get([]byte(providerID))
			if v == nil {
				return fmt.Errorf("notification with provider id %s: %w", providerID, store.ErrNotFound)
			}
			if len(v) != 8 {
				return fmt.Errorf("%w: provider id %s maps to a value of %d bytes", ErrCorrupt, providerID, len(v))
			}
			old, err := getNotification(bk, int64(binary.BigEndian.Uint64(v)))
			if err != nil {
				return err
			}
			n = old
			now := s.now()
			detail := store.ApplyDeliveryStatus(&n, status, errText, now)
			if err := putNotification(bk, &old, n); err != nil {
				return err
			}
			change, err = incidentEvent(bk, n.IncidentID, store.EventNotification, store.ActorDispatcher, detail, now)
			return err
		})
	}
	s.countDispatch("delivery_status", err)
	if err != nil {
		return store.Notification{}, store.IncidentChange{}, fmt.Errorf("delivery status %q of provider id %s: %w",
			store.CleanLine(status, store.MaxDeliveryStatus), providerID, err)
	}
	s.log.Info("notification delivery status", "notification", n.ID, "incident", n.IncidentID, "provider_id", providerID,
		"status", status, "state", n.State)
	return n, change, nil
}

// Notifications returns an incident's notifications in id order.
func (s *Store) Notifications(ctx context.Context, incidentID int64) ([]store.Notification, error) {
	var out []store.Notification
	err := s.view(ctx, func(tx *bolt.Tx) error {
		bk, err := bucketsOf(tx)
		if err != nil {
			return err
		}
		prefix := u64(uint64(incidentID))
		c := bk.notificationKeys.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if len(v) != 8 {
				return fmt.Errorf("%w: notification key maps to a value of %d bytes", ErrCorrupt, len(v))
			}
			n, err := getNotification(bk, int64(binary.BigEndian.Uint64(v)))
			if err != nil {
				return err
			}
			out = append(out, n)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list notifications of incident %d: %w", incidentID, err)
	}
	slices.SortFunc(out, func(a, b store.Notification) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

func getNotification(bk *buckets, id int64) (store.Notification, error) {
	if id <= 0 {
		return store.Notification{}, fmt.Errorf("notification %d: %w", id, store.ErrNotFound)
	}
	v := bk.notifications.Get(u64(uint64(id)))
	if v == nil {
		return store.Notification{}, fmt.Errorf("notification %d: %w", id, store.ErrNotFound)
	}
	n, err := decodeNotification(v)
	if err != nil {
		return store.Notification{}, fmt.Errorf("notification %d: %w", id, err)
	}
	return n, nil
}

// notificationByKey returns the notification with key k, if any.
func notificationByKey(bk *buckets, k store.NotificationKey) (store.Notification, bool, error) {
	v := bk.notificationKeys.Get(notificationKey(k))
	if v == nil {
		return store.Notification{}, false, nil
	}
	if len(v) != 8 {
		return store.Notification{}, false, fmt.Errorf("%w: notification key maps to a value of %d bytes", ErrCorrupt, len(v))
	}
	n, err := getNotification(bk, int64(binary.BigEndian.Uint64(v)))
	return n, err == nil, err
}

// insertNotification numbers n and stores it with its index entries.
func insertNotification(bk *buckets, n store.Notification) (store.Notification, error) {
	seq, err := bk.notifications.NextSequence()
	if err != nil {
		return n, fmt.Errorf("number notification of incident %d: %w", n.IncidentID, err)
	}
	n.ID = int64(seq)
	if err := bk.notificationKeys.Put(notificationKey(n.Key()), u64(seq)); err != nil {
		return n, fmt.Errorf("index notification %d: %w", n.ID, err)
	}
	return n, putNotification(bk, nil, n)
}

// putNotification writes n and moves its due and provider index entries
// from those of old, the stored version, nil for a new notification. The
// key index entry never changes, since the key does not.
func putNotification(bk *buckets, old *store.Notification, n store.Notification) error {
	data, err := encodeNotification(n)
	if err != nil {
		return err
	}
	if err := bk.notifications.Put(u64(uint64(n.ID)), data); err != nil {
		return fmt.Errorf("store notification %d: %w", n.ID, err)
	}
	if old != nil && old.State.Due() {
		if err := bk.notificationsDue.Delete(dueKey(old.NextAttemptAt, old.ID)); err != nil {
			return fmt.Errorf("unindex due notification %d: %w", n.ID, err)
		}
	}
	if n.State.Due() {
		if err := bk.notificationsDue.Put(dueKey(n.NextAttemptAt, n.ID), nil); err != nil {
			return fmt.Errorf("index due notification %d: %w", n.ID, err)
		}
	}
	if old != nil && old.ProviderID != "" && old.ProviderID != n.ProviderID {
		// Only the current provider id finds the notification, as in package postgres.
		key := []byte(old.ProviderID)
		if v := bk.notificationsByProvider.Get(key); len(v) == 8 && int64(binary.BigEndian.Uint64(v)) == n.ID {
			if err := bk.notificationsByProvider.Delete(key); err != nil {
				return fmt.Errorf("unindex provider id of notification %d: %w", n.ID, err)
			}
		}
	}
	if n.ProviderID != "" && (old == nil || old.ProviderID != n.ProviderID) {
		// Of several notifications with one provider id, the newest wins.
		key := []byte(n.ProviderID)
		if v := bk.notificationsByProvider.Get(key); len(v) == 8 && int64(binary.BigEndian.Uint64(v)) > n.ID {
			return nil
		}
		if err := bk.notificationsByProvider.Put(key, u64(uint64(n.ID))); err != nil {
			return fmt.Errorf("index provider id of notification %d: %w", n.ID, err)
		}
	}
	return nil
}

// countDispatch counts a contact or dispatch operation by its result.
func (s *Store) countDispatch(op string, err error) {
	s.metrics.dispatchOps.WithLabelValues(op, actionResult(err)).Inc()
}

// RetryNotification makes a pending or failed notification due now at an
// operator's request (see store.Store).
func (s *Store) RetryNotification(ctx context.Context, incidentID, id int64, actor string) (store.Notification, store.IncidentChange, error) {
	var (
		n      store.Notification
		change store.IncidentChange
	)
	err := s.update(ctx, func(tx *bolt.Tx) error {
		bk, err := bucketsOf(tx)
		if err != nil {
			return err
		}
		old, err := getNotification(bk, id)
		if err != nil {
			return err
		}
		if old.IncidentID != incidentID {
			return fmt.Errorf("notification %d of incident %d: %w", id, incidentID, store.ErrNotFound)
		}
		n = old
		now := s.now()
		detail, err := store.ApplyOperatorRetry(&n, actor, now)
		if err != nil {
			return err
		}
		if err := putNotification(bk, &old, n); err != nil {
			return err
		}
		change, err = incidentEvent(bk, n.IncidentID, store.EventNotification, actor, detail, now)
		return err
	})
	s.countDispatch("retry", err)
	if err != nil {
		return store.Notification{}, store.IncidentChange{}, fmt.Errorf("retry notification %d: %w", id, err)
	}
	s.log.Info("notification retry requested", "notification", id, "incident", n.IncidentID, "actor", actor, "state", n.State)
	return n, change, nil
}

// NotificationByProvider returns the notification with a provider id
// (see store.Store).
func (s *Store) NotificationByProvider(ctx context.Context, providerID string) (store.Notification, error) {
	var n store.Notification
	providerID = store.CleanLine(providerID, store.MaxProviderID)
	err := s.view(ctx, func(tx *bolt.Tx) error {
		bk, err := bucketsOf(tx)
		if err != nil {
			return err
		}
		v := bk.notificationsByProvider.Get([]byte(providerID))
		if v == nil {
			return fmt.Errorf("notification with provider id %s: %w", providerID, store.ErrNotFound)
		}
		if len(v) != 8 {
			return fmt.Errorf("%w: provider id %s maps to a value of %d bytes", ErrCorrupt, providerID, len(v))
		}
		n, err = getNotification(bk, int64(binary.BigEndian.Uint64(v)))
		return err
	})
	if err != nil {
		return store.Notification{}, fmt.Errorf("find notification by provider id: %w", err)
	}
	return n, nil
}
