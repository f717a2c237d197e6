package embedded

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// applySOS applies one SOS or SOS cancel record and returns the incident
// it changed. An SOS is, in order of precedence:
//
//   - a redelivery: the SOS id and press time of a press already counted,
//     such as a QoS 1 redelivery the agent stored twice. Presses stays
//     and a redelivered event is added to that press's incident;
//   - a repeat of an SOS id already attached to an incident of the
//     vehicle (a re-press that kept its id): presses goes up and a
//     repeat_press event is added;
//   - a new SOS id from a vehicle with an open, acknowledged or dispatched
//     incident whose first SOS the agent received within
//     store.RepeatWindow of this one: the id attaches to the incident
//     received last among those as a repeat press;
//   - otherwise a new incident, with an opened event.
//
// A cancel sets cancel_requested and adds a cancel_requested event; the
// state stays, because an operator must confirm a cancel. A cancel for an
// SOS id the vehicle never sent is skipped (ok false) and left in fx to be
// counted and logged after the commit. Local acknowledgements and agent
// notifications go to applyAgentRecord. bbolt's single writer keeps two
// batches from opening two incidents for one emergency.
func (s *Store) applySOS(bk *buckets, b *protocol.Batch, region string, r *protocol.Record, now time.Time, fx *commitEffects) (change store.IncidentChange, ok bool, err error) {
	actor := "vehicle:" + r.VehicleID

	if r.Kind == protocol.KindSOSAck || r.Kind == protocol.KindSOSNotified {
		return applyAgentRecord(bk, b.AgentID, r, now, fx)
	}

	if r.Kind == protocol.KindSOSCancel {
		id, found, err := incidentForSOS(bk, r.VehicleID, r.Cancel.ID)
		if err != nil || !found {
			if err == nil {
				fx.unmatched = append(fx.unmatched, r)
			}
			return change, false, err
		}
		inc, err := getIncident(bk, id)
		if err != nil {
			return change, false, err
		}
		inc.CancelRequested, inc.UpdatedAt = true, now
		if err := saveIncident(bk, inc); err != nil {
			return change, false, fmt.Errorf("request cancel of incident %d: %w", id, err)
		}
		detail := "driver cancelled SOS " + r.Cancel.ID
		if reason := store.CleanText(r.Cancel.Reason); reason != "" {
			detail += ": " + reason
		}
		change.Incident = inc
		change.Event, err = addEvent(bk, id, store.EventCancelRequested, actor, detail, now)
		return change, err == nil, err
	}

	sos := r.SOS
	pressed := store.PressTime(r)
	if id, found, err := pressedIncident(bk, r.VehicleID, sos.ID, pressed); err != nil || found {
		if err != nil {
			return change, false, err
		}
		fx.redelivered = append(fx.redelivered, r)
		change, err = incidentEvent(bk, id, store.EventRedelivered, actor, store.RedeliveredDetail(sos, pressed), now)
		return change, err == nil, err
	}

	id, found, err := incidentForSOS(bk, r.VehicleID, sos.ID)
	if err != nil {
		return change, false, err
	}
	if found {
		inc, err := getIncident(bk, id)
		if err != nil {
			return change, false, err
		}
		// The id's mapping is overwritten below, by the active incident it
		// attaches to or by a new one.
		found = !store.NewEmergencyAfterClose(&inc, r.ReceivedAt)
	}
	detail := "SOS " + sos.ID + " received again"
	if !found {
		id, found, err = activeIncidentNear(bk, r.VehicleID, store.Time(r.ReceivedAt))
		switch {
		case err != nil:
			return change, false, err
		case !found:
			return s.openIncident(bk, b, region, r, now, fx)
		}
		if err := bk.incidentSOS.Put(sosKey(r.VehicleID, sos.ID), u64(uint64(id))); err != nil {
			return change, false, fmt.Errorf("attach SOS %s to incident %d: %w", sos.ID, id, err)
		}
		detail = fmt.Sprintf("SOS %s pressed within %s of the incident's first SOS", sos.ID, store.RepeatWindow)
	}

	inc, err := getIncident(bk, id)
	if err != nil {
		return change, false, err
	}
	detail = store.ApplyRepeatPress(&inc, r.SOS, detail)
	inc.UpdatedAt = now
	if err := saveIncident(bk, inc); err != nil {
		return change, false, fmt.Errorf("count press on incident %d: %w", id, err)
	}
	if err := bk.incidentPresses.Put(pressKey(r.VehicleID, sos.ID, pressed), u64(uint64(id))); err != nil {
		return change, false, fmt.Errorf("record press of SOS %s on incident %d: %w", sos.ID, id, err)
	}
	change.Incident = inc
	change.Event, err = addEvent(bk, id, store.EventRepeatPress, actor, detail, now)
	return change, err == nil, err
}

// openIncident stores a new incident for an SOS record, maps its SOS id
// and adds the opened event.
func (s *Store) openIncident(bk *buckets, b *protocol.Batch, region string, r *protocol.Record, now time.Time, fx *commitEffects) (change store.IncidentChange, ok bool, err error) {
	sos := r.SOS
	pressed := store.PressTime(r)
	kind := sos.Kind
	if kind == "" {
		kind = protocol.SOSPanic
	}
	seq, err := bk.incidents.NextSequence()
	if err != nil {
		return change, false, fmt.Errorf("number incident for SOS %s: %w", sos.ID, err)
	}
	inc := store.Incident{
		ID:          int64(seq),
		SOSID:       sos.ID,
		VehicleID:   r.VehicleID,
		AgentID:     b.AgentID,
		Region:      region,
		Kind:        protocol.SOSKind(store.CleanText(string(kind))),
		State:       store.StateOpen,
		Note:        store.CleanText(sos.Note),
		HasLocation: sos.HasLocation,
		PressedAt:   pressed,
		ReceivedAt:  store.Time(r.ReceivedAt),
		OpenedAt:    now,
		UpdatedAt:   now,
		Presses:     1,
		Historical:  r.Historical,
	}
	if sos.HasLocation {
		inc.Lat, inc.Lon = sos.Lat, sos.Lon
	}
	if err := saveIncident(bk, inc); err != nil {
		return change, false, fmt.Errorf("open incident for SOS %s: %w", sos.ID, err)
	}
	if err := bk.incidentsByOpened.Put(openedKey(inc.OpenedAt, inc.ID), nil); err != nil {
		return change, false, fmt.Errorf("index incident %d: %w", inc.ID, err)
	}
	if err := bk.incidentSOS.Put(sosKey(r.VehicleID, sos.ID), u64(seq)); err != nil {
		return change, false, fmt.Errorf("map SOS %s to incident %d: %w", sos.ID, inc.ID, err)
	}
	if err := bk.incidentPresses.Put(pressKey(r.VehicleID, sos.ID, pressed), u64(seq)); err != nil {
		return change, false, fmt.Errorf("record press of SOS %s on incident %d: %w", sos.ID, inc.ID, err)
	}

	detail := []string{fmt.Sprintf("SOS %s (%s)", sos.ID, kind)}
	if sos.IDAssigned {
		detail = append(detail, "id assigned by the agent")
	}
	if sos.LocationError != "" {
		detail = append(detail, "no location: "+store.CleanText(sos.LocationError))
	}
	if sos.TimeError != "" {
		detail = append(detail, "device time replaced by receive time: "+store.CleanText(sos.TimeError))
	}
	change.Incident = inc
	change.Event, err = addEvent(bk, inc.ID, store.EventOpened, "vehicle:"+r.VehicleID, strings.Join(detail, "; "), now)
	if err != nil {
		return change, false, err
	}
	change.Opened = true
	fx.opened = append(fx.opened, change)
	return change, true, nil
}

// incidentForSOS returns the incident an SOS id of the vehicle is attached to.
func incidentForSOS(bk *buckets, vehicleID, sosID string) (id int64, found bool, err error) {
	v := bk.incidentSOS.Get(sosKey(vehicleID, sosID))
	if v == nil {
		return 0, false, nil
	}
	if len(v) != 8 {
		return 0, false, fmt.Errorf("%w: SOS %s of vehicle %s maps to a value of %d bytes", ErrCorrupt, sosID, vehicleID, len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), true, nil
}

// pressedIncident returns the incident a press of the vehicle's SOS id at
// pressed was already counted on. Files written before presses were
// recorded know only each incident's first press, so that is checked too.
func pressedIncident(bk *buckets, vehicleID, sosID string, pressed time.Time) (id int64, found bool, err error) {
	if v := bk.incidentPresses.Get(pressKey(vehicleID, sosID, pressed)); v != nil {
		if len(v) != 8 {
			return 0, false, fmt.Errorf("%w: press of SOS %s of vehicle %s maps to a value of %d bytes", ErrCorrupt, sosID, vehicleID, len(v))
		}
		return int64(binary.BigEndian.Uint64(v)), true, nil
	}
	id, found, err = incidentForSOS(bk, vehicleID, sosID)
	if err != nil || !found {
		return 0, false, err
	}
	inc, err := getIncident(bk, id)
	if err != nil {
		return 0, false, err
	}
	return id, inc.SOSID == sosID && inc.PressedAt.Equal(pressed), nil
}

// incidentEvent adds an event to an incident, sets its UpdatedAt and
// returns the change.
func incidentEvent(bk *buckets, id int64, typ, actor, detail string, now time.Time) (store.IncidentChange, error) {
	inc, err := getIncident(bk, id)
	if err != nil {
		return store.IncidentChange{}, err
	}
	inc.UpdatedAt = now
	if err := saveIncident(bk, inc); err != nil {
		return store.IncidentChange{}, fmt.Errorf("save incident %d: %w", id, err)
	}
	ev, err := addEvent(bk, id, typ, actor, detail, now)
	return store.IncidentChange{Incident: inc, Event: ev}, err
}

// activeIncidentNear returns the vehicle's open, acknowledged or
// dispatched incident whose first SOS was received within
// store.RepeatWindow of received, both ends included. Of several, it
// returns the one received last, and of those the one with the highest id.
func activeIncidentNear(bk *buckets, vehicleID string, received time.Time) (id int64, found bool, err error) {
	prefix := vehiclePrefix(vehicleID)
	lowest := appendTime(bytes.Clone(prefix), received.Add(-store.RepeatWindow))
	// The largest key at or below received+window: seek past it, step back.
	upper := binary.BigEndian.AppendUint64(appendTime(bytes.Clone(prefix), received.Add(store.RepeatWindow)), ^uint64(0))
	c := bk.incidentsActive.Cursor()
	k, _ := c.Seek(upper)
	switch {
	case k == nil:
		k, _ = c.Last()
	case !bytes.Equal(k, upper):
		k, _ = c.Prev()
	}
	if k == nil || !bytes.HasPrefix(k, prefix) || bytes.Compare(k, lowest) < 0 {
		return 0, false, nil
	}
	if len(k) != len(prefix)+16 {
		return 0, false, fmt.Errorf("%w: incidents_active key of %d bytes for vehicle %s", ErrCorrupt, len(k), vehicleID)
	}
	return int64(binary.BigEndian.Uint64(k[len(prefix)+8:])), true, nil
}

// getIncident reads one incident inside a transaction.
func getIncident(bk *buckets, id int64) (store.Incident, error) {
	v := bk.incidents.Get(u64(uint64(id)))
	if v == nil {
		return store.Incident{}, fmt.Errorf("incident %d: %w", id, store.ErrNotFound)
	}
	inc, err := decodeIncident(v)
	if err != nil {
		return store.Incident{}, fmt.Errorf("incident %d: %w", id, err)
	}
	return inc, nil
}

// saveIncident writes inc and keeps its incidents_active entry in step
// with its state. The receive time, part of that key, never changes.
func saveIncident(bk *buckets, inc store.Incident) error {
	data, err := encodeIncident(inc)
	if err != nil {
		return err
	}
	if err := bk.incidents.Put(u64(uint64(inc.ID)), data); err != nil {
		return err
	}
	key := activeKey(inc.VehicleID, inc.ReceivedAt, inc.ID)
	if inc.State.Active() {
		return bk.incidentsActive.Put(key, nil)
	}
	return bk.incidentsActive.Delete(key)
}

// addEvent appends an event to an incident's audit trail.
func addEvent(bk *buckets, incidentID int64, typ, actor, detail string, at time.Time) (store.IncidentEvent, error) {
	seq, err := bk.incidentEvents.NextSequence()
	if err != nil {
		return store.IncidentEvent{}, fmt.Errorf("number %s event of incident %d: %w", typ, incidentID, err)
	}
	ev := store.IncidentEvent{ID: int64(seq), IncidentID: incidentID, Type: typ, Actor: actor, Detail: detail, At: at}
	data, err := encodeEvent(ev)
	if err != nil {
		return ev, err
	}
	if err := bk.incidentEvents.Put(eventKey(incidentID, ev.ID), data); err != nil {
		return ev, fmt.Errorf("add %s event to incident %d: %w", typ, incidentID, err)
	}
	return ev, nil
}

// Incidents returns incidents matching f, newest opened first (by opening
// time, then id), after skipping f.Offset of them, at most f.Limit of
// them or DefaultIncidentLimit when that is zero or less. It walks the
// incidents_by_opened index newest first from f.Until down to f.Since,
// readPageSize entries per read transaction. An incident opened during
// the walk may be missed, but it is newer than every one returned.
func (s *Store) Incidents(ctx context.Context, f store.IncidentFilter) ([]store.Incident, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultIncidentLimit
	}
	skip := max(f.Offset, 0)
	var (
		out []store.Incident
		// next is the bound of the walk, which goes on below it: the
		// last key visited, or at the start the first key at f.Until.
		next []byte
		// lowest is the smallest key of f.Since, nil without a lower bound.
		lowest []byte
		done   bool
	)
	if !f.Until.IsZero() {
		next = openedKey(clampTime(store.Time(f.Until)), 0)
	}
	if !f.Since.IsZero() {
		lowest = openedKey(clampTime(store.Time(f.Since)), 0)
	}
	for !done {
		err := s.view(ctx, func(tx *bolt.Tx) error {
			index, incidents := tx.Bucket(bucketIncidentsByOpened), tx.Bucket(bucketIncidents)
			if index == nil || incidents == nil {
				return fmt.Errorf("%w: incident buckets missing", ErrCorrupt)
			}
			c := index.Cursor()
			k := seekBefore(c, next)
			for n := 0; k != nil && bytes.Compare(k, lowest) >= 0; n++ {
				if len(out) == limit {
					break
				}
				if n == readPageSize {
					return nil
				}
				if len(k) != 16 {
					return fmt.Errorf("%w: incidents_by_opened key of %d bytes", ErrCorrupt, len(k))
				}
				v := incidents.Get(k[8:])
				if v == nil {
					return fmt.Errorf("%w: index names missing incident %d", ErrCorrupt, binary.BigEndian.Uint64(k[8:]))
				}
				inc, err := decodeIncident(v)
				if err != nil {
					return err
				}
				switch {
				case !matches(inc, f):
				case skip > 0:
					skip--
				default:
					out = append(out, inc)
				}
				next = bytes.Clone(k)
				k = prev(c)
			}
			done = true
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list incidents: %w", err)
		}
	}
	return out, nil
}

// seekBefore positions c at the last key below bound, or at the last key
// when bound is nil, and returns that key.
func seekBefore(c *bolt.Cursor, bound []byte) []byte {
	if bound == nil {
		k, _ := c.Last()
		return k
	}
	k, _ := c.Seek(bound)
	if k == nil {
		k, _ = c.Last()
	}
	for k != nil && bytes.Compare(k, bound) >= 0 {
		k, _ = c.Prev()
	}
	return k
}

func prev(c *bolt.Cursor) []byte {
	k, _ := c.Prev()
	return k
}

// matches reports whether inc passes the filter.
func matches(inc store.Incident, f store.IncidentFilter) bool {
	if len(f.States) > 0 && !slices.Contains(f.States, inc.State) {
		return false
	}
	if f.Region != "" && inc.Region != f.Region {
		return false
	}
	if f.AssignedTo != "" && inc.AssignedTo != f.AssignedTo {
		return false
	}
	return f.VehicleID == "" || inc.VehicleID == f.VehicleID
}

// Incident returns one incident with its events, oldest event first, or
// an error wrapping store.ErrNotFound.
func (s *Store) Incident(ctx context.Context, id int64) (store.Incident, []store.IncidentEvent, error) {
	var (
		inc    store.Incident
		events []store.IncidentEvent
	)
	err := s.view(ctx, func(tx *bolt.Tx) error {
		bk, err := bucketsOf(tx)
		if err != nil {
			return err
		}
		if id <= 0 {
			return fmt.Errorf("incident %d: %w", id, store.ErrNotFound)
		}
		if inc, err = getIncident(bk, id); err != nil {
			return err
		}
		prefix := u64(uint64(id))
		c := bk.incidentEvents.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			ev, err := decodeEvent(v)
			if err != nil {
				return err
			}
			events = append(events, ev)
		}
		return nil
	})
	if err != nil {
		return store.Incident{}, nil, fmt.Errorf("get incident %d: %w", id, err)
	}
	// Events are in id order; the audit trail is ordered by time, then id.
	slices.SortStableFunc(events, func(a, b store.IncidentEvent) int { return a.At.Compare(b.At) })
	return inc, events, nil
}
