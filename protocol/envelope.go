package protocol

import (
	"encoding/json"
	"fmt"
	"time"
)

// Lane is a separate queue in the agent's spool. Each lane has its own
// sequence numbers and its own hub cursor, so the SOS lane drains ahead
// of a GPS backlog.
type Lane string

// The spool lanes, in the order the uplink drains them.
const (
	LaneSOS    Lane = "sos"
	LaneStatus Lane = "status"
	LaneGPS    Lane = "gps"
)

// Lanes lists every lane in drain order: SOS first.
var Lanes = []Lane{LaneSOS, LaneStatus, LaneGPS}

// Valid reports whether l is a known lane.
func (l Lane) Valid() bool {
	return l == LaneSOS || l == LaneStatus || l == LaneGPS
}

// RecordKind names the payload a Record carries.
type RecordKind string

// The record kinds.
const (
	KindFix       RecordKind = "fix"
	KindSOS       RecordKind = "sos"
	KindSOSCancel RecordKind = "sos_cancel"
	KindStatus    RecordKind = "status"
	// KindSOSAck records that regional staff acknowledged an SOS on the
	// agent's local page while the hub was unreachable (payload LocalAck).
	KindSOSAck RecordKind = "sos_ack"
	// KindSOSNotified records a notification about an SOS that the agent
	// sent itself during a long hub outage (payload AgentNotified).
	KindSOSNotified RecordKind = "sos_notified"
)

// Lane returns the lane a record of this kind travels in.
func (k RecordKind) Lane() Lane {
	switch k {
	case KindSOS, KindSOSCancel, KindSOSAck, KindSOSNotified:
		return LaneSOS
	case KindStatus:
		return LaneStatus
	default:
		return LaneGPS
	}
}

// LocalAck is an acknowledgement of an SOS that regional staff gave on the
// agent's local page while the hub was unreachable. The record carries the
// vehicle id of the SOS.
type LocalAck struct {
	SOSID string `json:"sos_id"`
	// Actor is the name the staff member entered on the local page.
	Actor string `json:"actor"`
	// At is the agent's clock when the staff member acknowledged.
	At time.Time `json:"at"`
}

// AgentNotified is a notification about an SOS that the agent sent itself
// during a long hub outage, so the hub does not send it again. The record
// carries the vehicle id of the SOS.
type AgentNotified struct {
	SOSID string `json:"sos_id"`
	// Channel is sms, voice, email or webhook.
	Channel string `json:"channel"`
	// Address is the E.164 phone number, email address or webhook URL.
	Address string `json:"address"`
	// ProviderID is the provider's id of the message, such as a Twilio SID.
	ProviderID string `json:"provider_id"`
	// At is the agent's clock when it sent the notification.
	At time.Time `json:"at"`
	// Error is set when the agent's attempt failed.
	Error string `json:"error,omitempty"`
}

// Record is one vehicle message, or one agent action on an SOS, as the
// agent stored it. Exactly one of Fix, SOS, Cancel, Status, Ack and
// Notified is set, matching Kind.
type Record struct {
	// Seq is the record's position in its lane, from 1, assigned by the agent's spool.
	Seq       uint64     `json:"seq"`
	Kind      RecordKind `json:"kind"`
	VehicleID string     `json:"vehicle"`
	// ReceivedAt is the agent's clock when the vehicle's message arrived, in UTC.
	ReceivedAt time.Time `json:"received_at"`
	// Historical marks a record sent after an outage, as catch-up data.
	Historical bool       `json:"historical,omitempty"`
	Fix        *Fix       `json:"fix,omitempty"`
	SOS        *SOS       `json:"sos,omitempty"`
	Cancel     *SOSCancel `json:"cancel,omitempty"`
	Status     *Status    `json:"status,omitempty"`
	// Ack and Notified are records the agent writes itself, not vehicle
	// messages. Their content beyond the SOS id and time is checked by the
	// hub, which skips and counts a record it cannot apply instead of
	// rejecting its batch, since a rejected SOS batch blocks the SOS lane.
	Ack      *LocalAck      `json:"ack,omitempty"`
	Notified *AgentNotified `json:"notified,omitempty"`
}

// Validate checks that the record's kind, payload and ids agree.
func (r *Record) Validate() error {
	if r.Seq == 0 {
		return fmt.Errorf("%w: record seq 0", ErrInvalidBatch)
	}
	if err := ValidateVehicleID(r.VehicleID); err != nil {
		return fmt.Errorf("record %d: %w", r.Seq, err)
	}
	if r.ReceivedAt.IsZero() {
		return fmt.Errorf("%w: record %d has no received_at", ErrInvalidBatch, r.Seq)
	}
	set := 0
	for _, p := range []bool{r.Fix != nil, r.SOS != nil, r.Cancel != nil, r.Status != nil, r.Ack != nil, r.Notified != nil} {
		if p {
			set++
		}
	}
	ok := set == 1
	switch r.Kind {
	case KindFix:
		ok = ok && r.Fix != nil
		if ok {
			if err := checkPosition(r.Fix.Lat, r.Fix.Lon); err != nil {
				return fmt.Errorf("record %d: %w", r.Seq, err)
			}
		}
	case KindSOS:
		ok = ok && r.SOS != nil
		if ok {
			if err := ValidateSOSID(r.SOS.ID); err != nil {
				return fmt.Errorf("record %d: %w", r.Seq, err)
			}
			if r.SOS.HasLocation {
				if err := checkPosition(r.SOS.Lat, r.SOS.Lon); err != nil {
					return fmt.Errorf("record %d: sos position: %w", r.Seq, err)
				}
			}
		}
	case KindSOSCancel:
		ok = ok && r.Cancel != nil
		if ok {
			if err := ValidateSOSID(r.Cancel.ID); err != nil {
				return fmt.Errorf("record %d: %w", r.Seq, err)
			}
		}
	case KindStatus:
		ok = ok && r.Status != nil
	case KindSOSAck:
		ok = ok && r.Ack != nil
		if ok {
			if err := validateAgentSOSRecord(r.Ack.SOSID, r.Ack.At); err != nil {
				return fmt.Errorf("record %d: %w", r.Seq, err)
			}
		}
	case KindSOSNotified:
		ok = ok && r.Notified != nil
		if ok {
			if err := validateAgentSOSRecord(r.Notified.SOSID, r.Notified.At); err != nil {
				return fmt.Errorf("record %d: %w", r.Seq, err)
			}
		}
	default:
		return fmt.Errorf("%w: record %d has unknown kind %q", ErrInvalidBatch, r.Seq, r.Kind)
	}
	if !ok {
		return fmt.Errorf("%w: record %d of kind %s must carry exactly its own payload", ErrInvalidBatch, r.Seq, r.Kind)
	}
	return nil
}

// validateAgentSOSRecord checks the fields every agent record about an SOS
// needs: the SOS id and the time of the action.
func validateAgentSOSRecord(sosID string, at time.Time) error {
	if err := ValidateSOSID(sosID); err != nil {
		return err
	}
	if at.IsZero() {
		return fmt.Errorf("%w: no time of the action on SOS %s", ErrInvalidBatch, sosID)
	}
	return nil
}

// MaxBatchRecords is the most records one batch may carry.
const MaxBatchRecords = 10000

// MaxBatchBytes is the largest encoded batch the hub accepts.
const MaxBatchBytes = 16 << 20

// Batch is the unit an agent sends to the hub: records of one lane in
// strictly increasing sequence order.
type Batch struct {
	AgentID string `json:"agent"`
	Region  string `json:"region"`
	// SpoolID identifies the agent's spool file. A new spool restarts
	// sequence numbers at 1, so the hub keys its cursor by spool too.
	SpoolID string `json:"spool"`
	Lane    Lane   `json:"lane"`
	// Prev is the last sequence number of the batch the agent sent before
	// this one in the same lane and connection while that batch was still
	// unacknowledged, or 0 when nothing of the lane was outstanding. The
	// hub refuses a batch whose Prev is past its cursor: the batch before
	// it failed, and committing this one would skip that batch's records.
	Prev uint64 `json:"prev,omitempty"`
	// More is true when the agent had further records of this lane
	// waiting behind this batch, so the hub knows it is still catching
	// up: the hub's dispatcher waits for an agent's SOS-lane reports of
	// notifications it sent during an outage before notifying itself.
	More    bool     `json:"more,omitempty"`
	Records []Record `json:"records"`
	// SentAt is the agent's clock when it sent the batch.
	SentAt time.Time `json:"sent_at"`
}

// First returns the first sequence number in the batch.
func (b *Batch) First() uint64 { return b.Records[0].Seq }

// Last returns the last sequence number in the batch.
func (b *Batch) Last() uint64 { return b.Records[len(b.Records)-1].Seq }

// EncodeBatch returns the wire form of b: its JSON encoding, as
// json.Marshal returns it. A batch of fix records takes a fast path (see
// AppendRecordJSON).
func EncodeBatch(b *Batch) ([]byte, error) {
	if data, ok := encodeBatchFast(b); ok {
		return data, nil
	}
	data, err := json.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("encode batch: %w", err)
	}
	return data, nil
}

// DecodeBatch parses and validates a batch. Records must belong to the
// batch's lane and have strictly increasing sequence numbers. A batch of
// fix records takes a fast path (see UnmarshalRecordJSON) with the result
// json.Unmarshal has.
func DecodeBatch(data []byte) (*Batch, error) {
	if len(data) > MaxBatchBytes {
		return nil, fmt.Errorf("%w: batch is %d bytes, limit %d", ErrTooLarge, len(data), MaxBatchBytes)
	}
	b, err := decodeBatchFast(data)
	if err != nil {
		b = &Batch{}
		if err := json.Unmarshal(data, b); err != nil {
			return nil, fmt.Errorf("%w: batch: %v", ErrMalformed, err)
		}
	}
	if err := b.Validate(); err != nil {
		return nil, err
	}
	return b, nil
}

// Validate checks the envelope and every record in it.
func (b *Batch) Validate() error {
	if err := ValidateAgentID(b.AgentID); err != nil {
		return err
	}
	if b.SpoolID == "" || len(b.SpoolID) > 64 {
		return fmt.Errorf("%w: spool id must be 1 to 64 characters", ErrInvalidBatch)
	}
	if !b.Lane.Valid() {
		return fmt.Errorf("%w: unknown lane %q", ErrInvalidBatch, b.Lane)
	}
	if len(b.Records) == 0 {
		return fmt.Errorf("%w: no records", ErrInvalidBatch)
	}
	if len(b.Records) > MaxBatchRecords {
		return fmt.Errorf("%w: %d records, limit %d", ErrTooLarge, len(b.Records), MaxBatchRecords)
	}
	var prev uint64
	for i := range b.Records {
		r := &b.Records[i]
		if err := r.Validate(); err != nil {
			return err
		}
		if r.Kind.Lane() != b.Lane {
			return fmt.Errorf("%w: record %d of kind %s in lane %s", ErrInvalidBatch, r.Seq, r.Kind, b.Lane)
		}
		if r.Seq <= prev {
			return fmt.Errorf("%w: seq %d after %d", ErrInvalidBatch, r.Seq, prev)
		}
		prev = r.Seq
	}
	if b.Prev >= b.First() {
		return fmt.Errorf("%w: prev %d is not before the first record %d", ErrInvalidBatch, b.Prev, b.First())
	}
	return nil
}

// Ack is the hub's application-level acknowledgement: every record of the
// lane up to and including Through is committed. An agent deletes spool
// records only on an Ack, never on an MQTT PUBACK alone.
type Ack struct {
	AgentID string `json:"agent"`
	SpoolID string `json:"spool"`
	Lane    Lane   `json:"lane"`
	Through uint64 `json:"through"`
	// Error is set when the hub rejected the batch; Through then repeats
	// the last committed sequence number.
	Error string `json:"error,omitempty"`
	// Permanent is true when resending the same batch cannot succeed.
	Permanent bool `json:"permanent,omitempty"`
}

// EncodeAck returns the wire form of a.
func EncodeAck(a *Ack) ([]byte, error) {
	data, err := json.Marshal(a)
	if err != nil {
		return nil, fmt.Errorf("encode ack: %w", err)
	}
	return data, nil
}

// DecodeAck parses and validates an acknowledgement.
func DecodeAck(data []byte) (*Ack, error) {
	var a Ack
	if err := json.Unmarshal(data, &a); err != nil {
		return nil, fmt.Errorf("%w: ack: %v", ErrMalformed, err)
	}
	if err := ValidateAgentID(a.AgentID); err != nil {
		return nil, err
	}
	if !a.Lane.Valid() {
		return nil, fmt.Errorf("%w: ack for unknown lane %q", ErrInvalidBatch, a.Lane)
	}
	return &a, nil
}
