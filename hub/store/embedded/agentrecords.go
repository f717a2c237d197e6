package embedded

import (
	"slices"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// applyAgentRecord applies a local acknowledgement (see
// store.ApplyLocalAck) or an agent notification (see
// store.ApplyAgentNotified) to the incident of the record's SOS id and
// returns the change. A record is skipped (ok false) when its SOS id
// matches no incident of the vehicle or the hub cannot store its
// notification. It is left in fx to be counted and logged after the
// commit, so a bad agent record never blocks the SOS lane.
func applyAgentRecord(bk *buckets, agentID string, r *protocol.Record, now time.Time, fx *commitEffects) (change store.IncidentChange, ok bool, err error) {
	id, found, err := incidentForSOS(bk, r.VehicleID, store.AgentRecordSOSID(r))
	if err != nil || !found {
		if err == nil {
			fx.unmatched = append(fx.unmatched, r)
		}
		return change, false, err
	}

	if r.Kind == protocol.KindSOSAck {
		inc, err := getIncident(bk, id)
		if err != nil {
			return change, false, err
		}
		ev := store.ApplyLocalAck(&inc, agentID, r.Ack, now)
		if err := saveIncident(bk, inc); err != nil {
			return change, false, err
		}
		change.Incident = inc
		change.Event, err = addEvent(bk, id, ev.Type, ev.Actor, ev.Detail, ev.At)
		return change, err == nil, err
	}

	an := r.Notified
	ch := store.Channel(an.Channel)
	if err := store.ValidateAddress(ch, an.Address); err != nil {
		fx.invalid = append(fx.invalid, invalidRecord{record: r, err: err})
		return change, false, nil
	}
	var existing *store.Notification
	old, found, err := notificationByKey(bk, store.NotificationKey{IncidentID: id, Channel: ch, Address: an.Address})
	if err != nil {
		return change, false, err
	}
	if found {
		existing = &old
	}
	n, write, detail, err := store.ApplyAgentNotified(existing, id, agentID, an, now)
	if err != nil {
		fx.invalid = append(fx.invalid, invalidRecord{record: r, err: err})
		return change, false, nil
	}
	switch {
	case write && existing == nil:
		_, err = insertNotification(bk, n)
	case write:
		err = putNotification(bk, existing, n)
	}
	if err != nil {
		return change, false, err
	}
	change, err = incidentEvent(bk, id, store.EventNotification, "agent:"+agentID, detail, now)
	return change, err == nil, err
}

// vehicleRecords returns the records that are messages from vehicles
// (see store.VehicleRecord).
func vehicleRecords(records []protocol.Record) []protocol.Record {
	if !slices.ContainsFunc(records, func(r protocol.Record) bool { return !store.VehicleRecord(&r) }) {
		return records
	}
	out := make([]protocol.Record, 0, len(records))
	for i := range records {
		if store.VehicleRecord(&records[i]) {
			out = append(out, records[i])
		}
	}
	return out
}
