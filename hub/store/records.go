package store

import (
	"strings"
	"time"

	"github.com/xpress-ops/tower/protocol"
)

// Time returns t as every store keeps it: UTC, truncated to microseconds,
// the resolution of a PostgreSQL timestamptz.
func Time(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// CleanText drops NUL characters and invalid UTF-8 from s. PostgreSQL text
// rejects both, and every store applies the same rule so they return the
// same text.
func CleanText(s string) string {
	s = strings.ToValidUTF8(s, "")
	return strings.ReplaceAll(s, "\x00", "")
}

// SplitRecords sorts the records a batch commits by what a store does with
// them: fixes to store (with times as Time keeps them), statuses, and SOS,
// SOS cancel, local acknowledgement and agent notification records to
// apply in order.
func SplitRecords(agentID, region string, records []protocol.Record) (fixes []StoredFix, statuses, sos []*protocol.Record) {
	for i := range records {
		r := &records[i]
		switch r.Kind {
		case protocol.KindFix:
			fix := *r.Fix
			fix.Time = Time(fix.Time)
			fixes = append(fixes, StoredFix{
				VehicleID:  r.VehicleID,
				AgentID:    agentID,
				Region:     region,
				Fix:        fix,
				ReceivedAt: Time(r.ReceivedAt),
				Historical: r.Historical,
			})
		case protocol.KindStatus:
			statuses = append(statuses, r)
		case protocol.KindSOS, protocol.KindSOSCancel, protocol.KindSOSAck, protocol.KindSOSNotified:
			sos = append(sos, r)
		}
	}
	return fixes, statuses, sos
}

// PressTime returns the press time of an SOS record as stores keep it:
// the device's time, or the agent's receive time when the SOS has none.
func PressTime(r *protocol.Record) time.Time {
	if r.SOS.Time.IsZero() {
		return Time(r.ReceivedAt)
	}
	return Time(r.SOS.Time)
}

// VehicleRecord reports whether r is a message from its vehicle, which
// updates when the vehicle was last seen. Local acknowledgements and
// agent notifications are the agent's own records about an SOS.
func VehicleRecord(r *protocol.Record) bool {
	return r.Kind != protocol.KindSOSAck && r.Kind != protocol.KindSOSNotified
}

// AgentRecordSOSID returns the SOS id a local acknowledgement or agent
// notification record names, or "" for other records.
func AgentRecordSOSID(r *protocol.Record) string {
	switch {
	case r.Ack != nil:
		return r.Ack.SOSID
	case r.Notified != nil:
		return r.Notified.SOSID
	}
	return ""
}
