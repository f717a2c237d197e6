package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xpress-ops/tower/hub/store"
)

const contactColumns = `id, name, role, region, vehicle_id, phone, email, language, created_at, updated_at`

const notificationColumns = `id, incident_id, channel, address, contact_id, language, reason, state, attempts,
	next_attempt_at, provider_id, last_error, sent_by, created_at, updated_at`

// SaveContact inserts or replaces a contact (see store.Store).
func (s *Store) SaveContact(ctx context.Context, c store.Contact) (store.Contact, error) {
	err := store.ValidateContact(c)
	if err == nil {
		c = store.NormalizeContact(c)
		err = s.inTx(ctx, func(tx pgx.Tx) error {
			now := s.now()
			var row pgx.Row
			if c.ID == 0 {
				row = tx.QueryRow(ctx, `
					INSERT INTO contacts (name, role, region, vehicle_id, phone, email, language, created_at, updated_at)
					VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
					RETURNING `+contactColumns,
					c.Name, string(c.Role), c.Region, c.VehicleID, c.Phone, c.Email, string(c.Language), now)
			} else {
				row = tx.QueryRow(ctx, `
					UPDATE contacts SET name = $2, role = $3, region = $4, vehicle_id = $5, phone = $6, email = $7,
						language = $8, updated_at = $9
					WHERE id = $1
					RETURNING `+contactColumns,
					c.ID, c.Name, string(c.Role), c.Region, c.VehicleID, c.Phone, c.Email, string(c.Language), now)
			}
			saved, err := scanContact(row)
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("contact %d: %w", c.ID, store.ErrNotFound)
			}
			if err != nil {
				return err
			}
			c = saved
			return nil
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
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM contacts WHERE id = $1`, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("contact %d: %w", id, store.ErrNotFound)
		}
		return nil
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
	pool, err := s.getPool()
	if err != nil {
		return nil, fmt.Errorf("list contacts: %w", err)
	}
	rows, err := pool.Query(ctx, `
		SELECT `+contactColumns+` FROM contacts
		WHERE ($1 = '' OR role = $1) AND ($2 = '' OR region = $2) AND ($3 = '' OR vehicle_id = $3)
		ORDER BY id`, string(f.Role), f.Region, f.VehicleID)
	if err != nil {
		return nil, fmt.Errorf("list contacts: %w", classify(err))
	}
	contacts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Contact, error) { return scanContact(row) })
	if err != nil {
		return nil, fmt.Errorf("list contacts: %w", classify(err))
	}
	return contacts, nil
}

func scanContact(row pgx.Row) (store.Contact, error) {
	var (
		c              store.Contact
		role, language string
	)
	if err := row.Scan(&c.ID, &c.Name, &role, &c.Region, &c.VehicleID, &c.Phone, &c.Email, &language, &c.CreatedAt, &c.UpdatedAt); err != nil {
		return store.Contact{}, err
	}
	c.Role, c.Language = store.ContactRole(role), store.Language(language)
	c.CreatedAt, c.UpdatedAt = c.CreatedAt.UTC(), c.UpdatedAt.UTC()
	return c, nil
}

// EscalateIncident applies one escalation step in one transaction (see
// store.Store). It takes the vehicle's SOS advisory lock and then the
// incident's row lock, in the order CommitBatch and the operator actions
// use, so two dispatchers cannot both raise one level.
func (s *Store) EscalateIncident(ctx context.Context, e store.Escalation) (store.IncidentChange, []store.Notification, error) {
	var (
		change store.IncidentChange
		queued []store.Notification
	)
	err := store.ValidateEscalation(e)
	if err == nil {
		err = s.inTx(ctx, func(tx pgx.Tx) error {
			change, queued = store.IncidentChange{}, nil
			inc, err := lockIncident(ctx, tx, e.IncidentID)
			if err != nil {
				return err
			}
			now := s.now()
			ev, err := store.ApplyEscalation(&inc, e, now)
			if err != nil {
				return err
			}
			change.Incident, err = scanIncident(tx.QueryRow(ctx, `
				UPDATE incidents SET escalation_level = $2, updated_at = $3 WHERE id = $1
				RETURNING `+incidentColumns, inc.ID, inc.EscalationLevel, inc.UpdatedAt))
			if err != nil {
				return fmt.Errorf("update incident %d: %w", inc.ID, err)
			}
			if change.Event, err = addEvent(ctx, tx, inc.ID, ev.Type, ev.Actor, ev.Detail, ev.At); err != nil {
				return err
			}
			queued, err = queueNotifications(ctx, tx, inc.ID, e.Notifications, now)
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
func queueNotifications(ctx context.Context, tx pgx.Tx, incidentID int64, list []store.Notification, now time.Time) ([]store.Notification, error) {
	var queued []store.Notification
	seen := make(map[store.NotificationKey]bool, len(list))
	for _, n := range list {
		q := store.QueuedNotification(n, incidentID, now)
		if seen[q.Key()] {
			continue
		}
		seen[q.Key()] = true

		inserted, ok, err := insertNotification(ctx, tx, q)
		if err != nil {
			return nil, err
		}
		detail := store.QueuedDetail(inserted)
		if !ok {
			existing, err := scanNotification(tx.QueryRow(ctx, `
				SELECT `+notificationColumns+` FROM notifications
				WHERE incident_id = $1 AND channel = $2 AND address = $3 FOR UPDATE`, incidentID, string(q.Channel), q.Address))
			if err != nil {
				return nil, fmt.Errorf("read %s notification of incident %d: %w", q.Channel, incidentID, err)
			}
			if detail, ok = store.RequeueAgentFailure(&existing, q, now); !ok {
				continue
			}
			if inserted, err = updateNotification(ctx, tx, existing); err != nil {
				return nil, err
			}
		}
		if _, err := addEvent(ctx, tx, incidentID, store.EventNotification, store.ActorDispatcher, detail, now); err != nil {
			return nil, err
		}
		queued = append(queued, inserted)
	}
	return queued, nil
}

// DueNotifications returns the notifications due at now (see
// store.Store), using the partial index notifications_due_idx.
func (s *Store) DueNotifications(ctx context.Context, now time.Time, limit int) ([]store.Notification, error) {
	if limit <= 0 {
		limit = store.DefaultNotificationLimit
	}
	pool, err := s.getPool()
	if err != nil {
		return nil, fmt.Errorf("list due notifications: %w", err)
	}
	rows, err := pool.Query(ctx, `
		SELECT `+notificationColumns+` FROM notifications
		WHERE state IN ('pending', 'sending') AND next_attempt_at <= $1
		ORDER BY next_attempt_at, id
		LIMIT $2`, store.Time(now), limit)
	if err != nil {
		return nil, fmt.Errorf("list due notifications: %w", classify(err))
	}
	due, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Notification, error) { return scanNotification(row) })
	if err != nil {
		return nil, fmt.Errorf("list due notifications: %w", classify(err))
	}
	return due, nil
}

// ClaimNotification starts an attempt of a notification (see
// store.Store). It locks only the notification's row.
func (s *Store) ClaimNotification(ctx context.Context, id int64, now, leaseUntil time.Time) (store.Notification, bool, error) {
	var (
		n       store.Notification
		unknown bool
	)
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		n, err = scanNotification(tx.QueryRow(ctx, `SELECT `+notificationColumns+` FROM notifications WHERE id = $1 FOR UPDATE`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("notification %d: %w", id, store.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("lock notification %d: %w", id, err)
		}
		if unknown, err = store.ApplyClaim(&n, now, leaseUntil, s.now()); err != nil {
			return err
		}
		n, err = updateNotification(ctx, tx, n)
		return err
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
		err = s.inTx(ctx, func(tx pgx.Tx) error {
			var err error
			if n, err = lockNotification(ctx, tx, `n.id = $1`, id); err != nil {
				return err
			}
			now := s.now()
			detail, err := store.ApplyAttempt(&n, o, now)
			if err != nil {
				return err
			}
			if n, err = updateNotification(ctx, tx, n); err != nil {
				return err
			}
			change, err = incidentEvent(ctx, tx, n.IncidentID, store.EventNotification, store.ActorDispatcher, detail, now)
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
		err = s.inTx(ctx, func(tx pgx.Tx) error {
			var err error
			n, err = lockNotification(ctx, tx, `n.id = (SELECT id FROM notifications WHERE provider_id = $1 ORDER BY id DESC LIMIT 1)`, providerID)
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("notification with provider id %s: %w", providerID, store.ErrNotFound)
			}
			if err != nil {
				return err
			}
			if n.ProviderID != providerID {
				// Another attempt replaced the provider id after the lookup.
				return fmt.Errorf("notification with provider id %s: %w", providerID, store.ErrNotFound)
			}
			now := s.now()
			detail := store.ApplyDeliveryStatus(&n, status, errText, now)
			if n, err = updateNotification(ctx, tx, n); err != nil {
				return err
			}
			change, err = incidentEvent(ctx, tx, n.IncidentID, store.EventNotification, store.ActorDispatcher, detail, now)
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
	pool, err := s.getPool()
	if err != nil {
		return nil, fmt.Errorf("list notifications of incident %d: %w", incidentID, err)
	}
	rows, err := pool.Query(ctx, `SELECT `+notificationColumns+` FROM notifications WHERE incident_id = $1 ORDER BY id`, incidentID)
	if err != nil {
		return nil, fmt.Errorf("list notifications of incident %d: %w", incidentID, classify(err))
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Notification, error) { return scanNotification(row) })
	if err != nil {
		return nil, fmt.Errorf("list notifications of incident %d: %w", incidentID, classify(err))
	}
	return list, nil
}

// lockIncident takes the SOS advisory lock of an incident's vehicle and
// then the incident's row lock, the order CommitBatch and the operator
// actions use, and returns the incident.
func lockIncident(ctx context.Context, tx pgx.Tx, id int64) (store.Incident, error) {
	var vehicleID string
	if err := tx.QueryRow(ctx, `SELECT vehicle_id FROM incidents WHERE id = $1`, id).Scan(&vehicleID); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return store.Incident{}, fmt.Errorf("incident %d: %w", id, store.ErrNotFound)
		}
		return store.Incident{}, fmt.Errorf("read incident %d: %w", id, err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, lockClassSOS, vehicleID); err != nil {
		return store.Incident{}, fmt.Errorf("lock vehicle %s: %w", vehicleID, err)
	}
	inc, err := scanIncident(tx.QueryRow(ctx, `SELECT `+incidentColumns+` FROM incidents WHERE id = $1 FOR UPDATE`, id))
	if err != nil {
		return store.Incident{}, fmt.Errorf("lock incident %d: %w", id, err)
	}
	return inc, nil
}

// lockNotification finds the notification matching where (on alias n,
// with arg as $1), locks its incident as lockIncident does and then the
// notification's row, and returns the notification as locked.
func lockNotification(ctx context.Context, tx pgx.Tx, where string, arg any) (store.Notification, error) {
	var id, incidentID int64
	err := tx.QueryRow(ctx, `SELECT n.id, n.incident_id FROM notifications n WHERE `+where, arg).Scan(&id, &incidentID)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Notification{}, fmt.Errorf("notification %v: %w", arg, store.ErrNotFound)
	}
	if err != nil {
		return store.Notification{}, fmt.Errorf("find notification %v: %w", arg, err)
	}
	if _, err := lockIncident(ctx, tx, incidentID); err != nil {
		return store.Notification{}, err
	}
	n, err := scanNotification(tx.QueryRow(ctx, `SELECT `+notificationColumns+` FROM notifications WHERE id = $1 FOR UPDATE`, id))
	if err != nil {
		return store.Notification{}, fmt.Errorf("lock notification %d: %w", id, err)
	}
	return n, nil
}

// insertNotification inserts n unless its key exists, and returns the row
// and whether it was inserted.
func insertNotification(ctx context.Context, tx pgx.Tx, n store.Notification) (store.Notification, bool, error) {
	inserted, err := scanNotification(tx.QueryRow(ctx, `
		INSERT INTO notifications (incident_id, channel, address, contact_id, language, reason, state, attempts,
			next_attempt_at, provider_id, last_error, sent_by, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
		ON CONFLICT (incident_id, channel, address) DO NOTHING
		RETURNING `+notificationColumns,
		n.IncidentID, string(n.Channel), n.Address, n.ContactID, string(n.Language), n.Reason, string(n.State), n.Attempts,
		nullTime(n.NextAttemptAt), n.ProviderID, n.LastError, n.SentBy, n.CreatedAt, n.UpdatedAt))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return n, false, nil
	case err != nil:
		return n, false, fmt.Errorf("insert %s notification of incident %d: %w", n.Channel, n.IncidentID, err)
	}
	return inserted, true, nil
}

// updateNotification writes the columns of n that change after insert.
func updateNotification(ctx context.Context, tx pgx.Tx, n store.Notification) (store.Notification, error) {
	updated, err := scanNotification(tx.QueryRow(ctx, `
		UPDATE notifications SET contact_id = $2, language = $3, reason = $4, state = $5, attempts = $6,
			next_attempt_at = $7, provider_id = $8, last_error = $9, sent_by = $10, updated_at = $11
		WHERE id = $1
		RETURNING `+notificationColumns,
		n.ID, n.ContactID, string(n.Language), n.Reason, string(n.State), n.Attempts,
		nullTime(n.NextAttemptAt), n.ProviderID, n.LastError, n.SentBy, n.UpdatedAt))
	if err != nil {
		return n, fmt.Errorf("update notification %d: %w", n.ID, err)
	}
	return updated, nil
}

func scanNotification(row pgx.Row) (store.Notification, error) {
	var (
		n                        store.Notification
		channel, language, state string
		next                     *time.Time
	)
	err := row.Scan(&n.ID, &n.IncidentID, &channel, &n.Address, &n.ContactID, &language, &n.Reason, &state, &n.Attempts,
		&next, &n.ProviderID, &n.LastError, &n.SentBy, &n.CreatedAt, &n.UpdatedAt)
	if err != nil {
		return store.Notification{}, err
	}
	n.Channel, n.Language, n.State = store.Channel(channel), store.Language(language), store.NotificationState(state)
	n.NextAttemptAt = optionalTime(next)
	n.CreatedAt, n.UpdatedAt = n.CreatedAt.UTC(), n.UpdatedAt.UTC()
	return n, nil
}

// inTx runs fn in a transaction and commits it. A transaction that fails
// on a deadlock or serialization failure runs again, up to
// maxCommitAttempts times in all.
func (s *Store) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	pool, err := s.getPool()
	if err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		err = runTx(ctx, pool, fn)
		if err == nil || !retryable(err) || attempt == maxCommitAttempts {
			return classify(err)
		}
	}
}

func runTx(ctx context.Context, pool pgxBeginner, fn func(tx pgx.Tx) error) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit; on failure the first error is returned
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
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
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		if n, err = lockNotification(ctx, tx, `n.id = $1`, id); err != nil {
			return err
		}
		if n.IncidentID != incidentID {
			return fmt.Errorf("notification %d of incident %d: %w", id, incidentID, store.ErrNotFound)
		}
		now := s.now()
		detail, err := store.ApplyOperatorRetry(&n, actor, now)
		if err != nil {
			return err
		}
		if n, err = updateNotification(ctx, tx, n); err != nil {
			return err
		}
		change, err = incidentEvent(ctx, tx, n.IncidentID, store.EventNotification, actor, detail, now)
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
	providerID = store.CleanLine(providerID, store.MaxProviderID)
	pool, err := s.getPool()
	if err != nil {
		return store.Notification{}, fmt.Errorf("find notification by provider id %s: %w", providerID, err)
	}
	n, err := scanNotification(pool.QueryRow(ctx,
		`SELECT `+notificationColumns+` FROM notifications WHERE provider_id = $1 ORDER BY id DESC LIMIT 1`, providerID))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Notification{}, fmt.Errorf("notification with provider id %s: %w", providerID, store.ErrNotFound)
	}
	if err != nil {
		return store.Notification{}, fmt.Errorf("find notification by provider id %s: %w", providerID, classify(err))
	}
	return n, nil
}
