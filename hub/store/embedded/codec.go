package embedded

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// Bucket names and meta keys of the layout in the package comment.
var (
	bucketMeta              = []byte("meta")
	bucketAgents            = []byte("agents")
	bucketVehicles          = []byte("vehicles")
	bucketFixes             = []byte("fixes")
	bucketFixesByTime       = []byte("fixes_by_time")
	bucketLatest            = []byte("latest")
	bucketStatus            = []byte("status")
	bucketIncidents         = []byte("incidents")
	bucketIncidentsByOpened = []byte("incidents_by_opened")
	bucketIncidentsActive   = []byte("incidents_active")
	bucketIncidentSOS       = []byte("incident_sos")
	bucketIncidentEvents    = []byte("incident_events")
	bucketCursors           = []byte("cursors")
	bucketIncidentPresses   = []byte("incident_presses")
	bucketContacts          = []byte("contacts")
	bucketNotifications     = []byte("notifications")
	bucketNotificationKeys  = []byte("notifications_by_key")
	bucketNotificationsDue  = []byte("notifications_due")
	bucketNotificationsProv = []byte("notifications_by_provider")
	bucketAgentCredentials  = []byte("agent_credentials")
	bucketVehicleCreds      = []byte("vehicle_credentials")
	bucketOperators         = []byte("operators")
	bucketSessions          = []byte("operator_sessions")
	bucketAPITokens         = []byte("api_tokens")
	bucketAPITokenHashes    = []byte("api_token_hashes")
	bucketAudit             = []byte("audit_log")

	keyVersion = []byte("version")
)

// dataBuckets are created by Open next to the meta bucket.
var dataBuckets = [][]byte{
	bucketAgents, bucketVehicles, bucketFixes, bucketFixesByTime, bucketLatest, bucketStatus,
	bucketIncidents, bucketIncidentsByOpened, bucketIncidentsActive, bucketIncidentSOS,
	bucketIncidentEvents, bucketCursors, bucketIncidentPresses, bucketContacts, bucketNotifications,
	bucketNotificationKeys, bucketNotificationsDue, bucketNotificationsProv, bucketAgentCredentials,
	bucketVehicleCreds,
	bucketOperators, bucketSessions, bucketAPITokens, bucketAPITokenHashes, bucketAudit,
}

// The range of times the store can keep: microseconds since the Unix
// epoch must fit an int64, roughly the years -290307 to 294246.
// PostgreSQL's timestamptz reaches from 4713 BC to 294276 AD.
var (
	minStorableTime = time.UnixMicro(math.MinInt64).UTC()
	maxStorableTime = time.UnixMicro(math.MaxInt64).UTC()
)

// storable reports whether t is within the range the store can keep.
func storable(t time.Time) bool {
	return !t.Before(minStorableTime) && !t.After(maxStorableTime)
}

// timeKey returns t as an unsigned number whose big-endian bytes sort in
// time order: microseconds since the epoch with the sign bit flipped.
func timeKey(t time.Time) uint64 { return uint64(t.UnixMicro()) ^ (1 << 63) }

// keyTime is the inverse of timeKey.
func keyTime(u uint64) time.Time { return time.UnixMicro(int64(u ^ (1 << 63))).UTC() }

func appendTime(b []byte, t time.Time) []byte { return binary.BigEndian.AppendUint64(b, timeKey(t)) }

func readTime(b []byte) time.Time { return keyTime(binary.BigEndian.Uint64(b)) }

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// vehiclePrefix returns the key prefix of a vehicle's entries, with room
// to append a key's suffix. Clone it before appending to it twice: both
// appends would write to the same array.
func vehiclePrefix(vehicleID string) []byte {
	p := make([]byte, 0, len(vehicleID)+1+16)
	p = append(p, vehicleID...)
	return append(p, 0)
}

// fixKey returns the fixes key of a vehicle's fix.
func fixKey(vehicleID string, ts time.Time, unique uint64) []byte {
	k := appendTime(vehiclePrefix(vehicleID), ts)
	return binary.BigEndian.AppendUint64(k, unique)
}

// fixIndexKey returns the fixes_by_time key of a fix.
func fixIndexKey(vehicleID string, ts time.Time, unique uint64) []byte {
	k := make([]byte, 0, 16+len(vehicleID))
	k = appendTime(k, ts)
	k = binary.BigEndian.AppendUint64(k, unique)
	return append(k, vehicleID...)
}

// fixKeyFromIndex returns the fixes key an index key points to.
func fixKeyFromIndex(k []byte) ([]byte, error) {
	if len(k) <= 16 {
		return nil, fmt.Errorf("%w: fixes_by_time key of %d bytes", ErrCorrupt, len(k))
	}
	fk := make([]byte, 0, len(k)+1)
	fk = append(fk, k[16:]...)
	fk = append(fk, 0)
	return append(fk, k[:16]...), nil
}

// activeKey returns the incidents_active key of an incident.
func activeKey(vehicleID string, received time.Time, id int64) []byte {
	k := appendTime(vehiclePrefix(vehicleID), received)
	return binary.BigEndian.AppendUint64(k, uint64(id))
}

// openedKey returns the incidents_by_opened key of an incident.
func openedKey(opened time.Time, id int64) []byte {
	return binary.BigEndian.AppendUint64(appendTime(nil, opened), uint64(id))
}

// sosKey returns the incident_sos key of a vehicle's SOS id.
func sosKey(vehicleID, sosID string) []byte {
	return append(vehiclePrefix(vehicleID), sosID...)
}

// pressKey returns the incident_presses key of a press: the vehicle, the
// SOS id and the press time. SOS ids never contain 0x00
// (protocol.ValidateSOSID), so the parts cannot run into each other.
func pressKey(vehicleID, sosID string, pressed time.Time) []byte {
	k := append(vehiclePrefix(vehicleID), sosID...)
	return appendTime(append(k, 0), pressed)
}

// notificationKey returns the notifications_by_key key of a notification:
// the incident id, the channel, 0x00 and the address. Channels never
// contain 0x00 (store.Channel.Valid), so the key is unambiguous.
func notificationKey(k store.NotificationKey) []byte {
	b := make([]byte, 0, 8+len(k.Channel)+1+len(k.Address))
	b = binary.BigEndian.AppendUint64(b, uint64(k.IncidentID))
	b = append(b, k.Channel...)
	b = append(b, 0)
	return append(b, k.Address...)
}

// dueKey returns the notifications_due key of a pending or sending
// notification: its NextAttemptAt and id.
func dueKey(next time.Time, id int64) []byte {
	return binary.BigEndian.AppendUint64(appendTime(nil, next), uint64(id))
}

// eventKey returns the incident_events key of an event.
func eventKey(incidentID, eventID int64) []byte {
	return binary.BigEndian.AppendUint64(u64(uint64(incidentID)), uint64(eventID))
}

// cursorKey returns the cursors key of an agent's spool lane. The parts
// are length-prefixed, so no id can make two keys collide.
func cursorKey(agentID, spoolID string, lane protocol.Lane) []byte {
	k := make([]byte, 0, 6+len(agentID)+len(spoolID)+len(lane))
	for _, part := range []string{agentID, spoolID, string(lane)} {
		k = binary.BigEndian.AppendUint16(k, uint16(min(len(part), math.MaxUint16)))
		k = append(k, part[:min(len(part), math.MaxUint16)]...)
	}
	return k
}

// Fix value layout, version fixCodecVersion:
//
//	[0]      version
//	[1]      flags: bit 0 historical, bits 1-5 which optional field follows
//	[2:10]   fix time (timeKey)
//	[10:18]  receive time (timeKey)
//	[18:26]  lat, IEEE 754 bits
//	[26:34]  lon
//	8 bytes per present optional field, in the order of fixOptionals
//	uvarint length + bytes each: vehicle id, agent id, region
const fixCodecVersion = 1

const fixHistorical = 1 << 0

// fixOptionals returns pointers to a fix's optional fields in codec order.
func fixOptionals(f *protocol.Fix) [5]**float64 {
	return [5]**float64{&f.SpeedKmh, &f.HeadingDeg, &f.AccuracyM, &f.AltM, &f.BatteryPct}
}

// encodeFix returns the fixes (and latest) value of f.
func encodeFix(f *store.StoredFix) []byte {
	b := make([]byte, 0, 34+5*8+3+len(f.VehicleID)+len(f.AgentID)+len(f.Region))
	var flags byte
	if f.Historical {
		flags |= fixHistorical
	}
	fix := f.Fix
	optionals := fixOptionals(&fix)
	for i, p := range optionals {
		if *p != nil {
			flags |= 1 << (i + 1)
		}
	}
	b = append(b, fixCodecVersion, flags)
	b = appendTime(b, f.Fix.Time)
	b = appendTime(b, f.ReceivedAt)
	b = binary.BigEndian.AppendUint64(b, math.Float64bits(f.Fix.Lat))
	b = binary.BigEndian.AppendUint64(b, math.Float64bits(f.Fix.Lon))
	for _, p := range optionals {
		if *p != nil {
			b = binary.BigEndian.AppendUint64(b, math.Float64bits(**p))
		}
	}
	for _, s := range []string{f.VehicleID, f.AgentID, f.Region} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

// decodeFix parses a value written by encodeFix. The result shares no
// memory with v, so it stays valid after the transaction.
func decodeFix(v []byte) (store.StoredFix, error) {
	var f store.StoredFix
	if len(v) < 34 || v[0] != fixCodecVersion {
		return f, fmt.Errorf("%w: fix value of %d bytes, version %d", ErrCorrupt, len(v), firstByte(v))
	}
	flags := v[1]
	f.Historical = flags&fixHistorical != 0
	f.Fix.Time = readTime(v[2:])
	f.ReceivedAt = readTime(v[10:])
	f.Fix.Lat = math.Float64frombits(binary.BigEndian.Uint64(v[18:]))
	f.Fix.Lon = math.Float64frombits(binary.BigEndian.Uint64(v[26:]))
	rest := v[34:]
	for i, p := range fixOptionals(&f.Fix) {
		if flags&(1<<(i+1)) == 0 {
			continue
		}
		if len(rest) < 8 {
			return f, fmt.Errorf("%w: fix value ends inside optional field %d", ErrCorrupt, i)
		}
		value := math.Float64frombits(binary.BigEndian.Uint64(rest))
		*p = &value
		rest = rest[8:]
	}
	for _, s := range []*string{&f.VehicleID, &f.AgentID, &f.Region} {
		n, size := binary.Uvarint(rest)
		if size <= 0 || uint64(len(rest)-size) < n {
			return f, fmt.Errorf("%w: fix value ends inside a string", ErrCorrupt)
		}
		*s = string(rest[size : size+int(n)])
		rest = rest[size+int(n):]
	}
	return f, nil
}

func firstByte(b []byte) int {
	if len(b) == 0 {
		return -1
	}
	return int(b[0])
}

// statusValue is a vehicle's stored online state.
type statusValue struct {
	Online     bool
	AgentID    string
	ReceivedAt time.Time
}

// Status value layout: [0] online (0 or 1), [1:9] receive time
// (timeKey), then the agent id.
func encodeStatus(st statusValue) []byte {
	b := make([]byte, 0, 9+len(st.AgentID))
	var online byte
	if st.Online {
		online = 1
	}
	b = append(b, online)
	b = appendTime(b, st.ReceivedAt)
	return append(b, st.AgentID...)
}

func decodeStatus(v []byte) (statusValue, error) {
	if len(v) < 9 || v[0] > 1 {
		return statusValue{}, fmt.Errorf("%w: status value of %d bytes", ErrCorrupt, len(v))
	}
	return statusValue{Online: v[0] == 1, ReceivedAt: readTime(v[1:]), AgentID: string(v[9:])}, nil
}

// Cursor value layout: [0:8] seq, [8:16] time of the last change (timeKey).
func encodeCursor(seq uint64, updated time.Time) []byte {
	return appendTime(u64(seq), updated)
}

func decodeCursor(v []byte) (uint64, error) {
	if v == nil {
		return 0, nil
	}
	if len(v) != 16 {
		return 0, fmt.Errorf("%w: cursor value of %d bytes", ErrCorrupt, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// The JSON values below keep times as microseconds since the Unix epoch
// (micros), because encoding/json rejects years past 9999 and the store
// keeps every time PostgreSQL keeps.

// micros returns t as microseconds since the Unix epoch.
func micros(t time.Time) int64 { return t.UnixMicro() }

// fromMicros is the inverse of micros, in UTC.
func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

// agentValue is the agents bucket's JSON value.
type agentValue struct {
	Region    string `json:"region"`
	FirstSeen int64  `json:"first_seen_us"`
	LastSeen  int64  `json:"last_seen_us"`
}

// vehicleValue is the vehicles bucket's JSON value: the agent and region
// a vehicle was last seen through.
type vehicleValue struct {
	AgentID   string `json:"agent_id"`
	Region    string `json:"region"`
	FirstSeen int64  `json:"first_seen_us"`
	LastSeen  int64  `json:"last_seen_us"`
}

// incidentValue is the incidents bucket's JSON value. Lat and Lon keep
// values JSON has no number for, so an SOS with a NaN position, which
// PostgreSQL stores, is stored here too.
type incidentValue struct {
	ID              int64     `json:"id"`
	SOSID           string    `json:"sos_id"`
	VehicleID       string    `json:"vehicle_id"`
	AgentID         string    `json:"agent_id"`
	Region          string    `json:"region"`
	Kind            string    `json:"kind"`
	State           string    `json:"state"`
	Note            string    `json:"note"`
	HasLocation     bool      `json:"has_location"`
	Lat             jsonFloat `json:"lat"`
	Lon             jsonFloat `json:"lon"`
	PressedAt       int64     `json:"pressed_at_us"`
	ReceivedAt      int64     `json:"received_at_us"`
	OpenedAt        int64     `json:"opened_at_us"`
	UpdatedAt       int64     `json:"updated_at_us"`
	Presses         int       `json:"presses"`
	CancelRequested bool      `json:"cancel_requested"`
	Historical      bool      `json:"historical"`
	AssignedTo      string    `json:"assigned_to,omitempty"`
	// The lifecycle times are absent while zero, and in files written
	// before the lifecycle existed.
	AcknowledgedAt *int64 `json:"acknowledged_at_us,omitempty"`
	DispatchedAt   *int64 `json:"dispatched_at_us,omitempty"`
	ResolvedAt     *int64 `json:"resolved_at_us,omitempty"`
	CancelledAt    *int64 `json:"cancelled_at_us,omitempty"`
	// EscalationLevel is absent while 0, and in files written before
	// dispatch existed.
	EscalationLevel int `json:"escalation_level,omitempty"`
}

func encodeIncident(inc store.Incident) ([]byte, error) {
	v := incidentValue{
		ID: inc.ID, SOSID: inc.SOSID, VehicleID: inc.VehicleID, AgentID: inc.AgentID, Region: inc.Region,
		Kind: string(inc.Kind), State: string(inc.State), Note: inc.Note, HasLocation: inc.HasLocation,
		Lat: jsonFloat(inc.Lat), Lon: jsonFloat(inc.Lon),
		PressedAt: micros(inc.PressedAt), ReceivedAt: micros(inc.ReceivedAt),
		OpenedAt: micros(inc.OpenedAt), UpdatedAt: micros(inc.UpdatedAt),
		Presses: inc.Presses, CancelRequested: inc.CancelRequested, Historical: inc.Historical,
		AssignedTo:     inc.AssignedTo,
		AcknowledgedAt: optionalMicros(inc.AcknowledgedAt), DispatchedAt: optionalMicros(inc.DispatchedAt),
		ResolvedAt: optionalMicros(inc.ResolvedAt), CancelledAt: optionalMicros(inc.CancelledAt),
		EscalationLevel: inc.EscalationLevel,
	}
	data, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode incident %d: %w", inc.ID, err)
	}
	return data, nil
}

func decodeIncident(data []byte) (store.Incident, error) {
	var v incidentValue
	if err := json.Unmarshal(data, &v); err != nil {
		return store.Incident{}, fmt.Errorf("%w: incident: %v", ErrCorrupt, err)
	}
	return store.Incident{
		ID: v.ID, SOSID: v.SOSID, VehicleID: v.VehicleID, AgentID: v.AgentID, Region: v.Region,
		Kind: protocol.SOSKind(v.Kind), State: store.IncidentState(v.State), Note: v.Note, HasLocation: v.HasLocation,
		Lat: float64(v.Lat), Lon: float64(v.Lon),
		PressedAt: fromMicros(v.PressedAt), ReceivedAt: fromMicros(v.ReceivedAt),
		OpenedAt: fromMicros(v.OpenedAt), UpdatedAt: fromMicros(v.UpdatedAt),
		Presses: v.Presses, CancelRequested: v.CancelRequested, Historical: v.Historical,
		AssignedTo:     v.AssignedTo,
		AcknowledgedAt: fromOptionalMicros(v.AcknowledgedAt), DispatchedAt: fromOptionalMicros(v.DispatchedAt),
		ResolvedAt: fromOptionalMicros(v.ResolvedAt), CancelledAt: fromOptionalMicros(v.CancelledAt),
		EscalationLevel: v.EscalationLevel,
	}, nil
}

// optionalMicros returns t as microseconds since the Unix epoch, or nil
// for the zero time.
func optionalMicros(t time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	us := micros(t)
	return &us
}

// fromOptionalMicros is the inverse of optionalMicros.
func fromOptionalMicros(us *int64) time.Time {
	if us == nil {
		return time.Time{}
	}
	return fromMicros(*us)
}

// eventValue is the incident_events bucket's JSON value.
type eventValue struct {
	ID         int64  `json:"id"`
	IncidentID int64  `json:"incident_id"`
	Type       string `json:"type"`
	Actor      string `json:"actor"`
	Detail     string `json:"detail"`
	At         int64  `json:"at_us"`
}

func encodeEvent(ev store.IncidentEvent) ([]byte, error) {
	data, err := json.Marshal(eventValue{
		ID: ev.ID, IncidentID: ev.IncidentID, Type: ev.Type, Actor: ev.Actor, Detail: ev.Detail, At: micros(ev.At),
	})
	if err != nil {
		return nil, fmt.Errorf("encode event %d of incident %d: %w", ev.ID, ev.IncidentID, err)
	}
	return data, nil
}

func decodeEvent(data []byte) (store.IncidentEvent, error) {
	var v eventValue
	if err := json.Unmarshal(data, &v); err != nil {
		return store.IncidentEvent{}, fmt.Errorf("%w: incident event: %v", ErrCorrupt, err)
	}
	return store.IncidentEvent{
		ID: v.ID, IncidentID: v.IncidentID, Type: v.Type, Actor: v.Actor, Detail: v.Detail, At: fromMicros(v.At),
	}, nil
}

// contactValue is the contacts bucket's JSON value.
type contactValue struct {
	ID        int64  `json:"id"`
	Name      string `json:"name"`
	Role      string `json:"role"`
	Region    string `json:"region,omitempty"`
	VehicleID string `json:"vehicle_id,omitempty"`
	Phone     string `json:"phone,omitempty"`
	Email     string `json:"email,omitempty"`
	Language  string `json:"language"`
	CreatedAt int64  `json:"created_at_us"`
	UpdatedAt int64  `json:"updated_at_us"`
}

func encodeContact(c store.Contact) ([]byte, error) {
	data, err := json.Marshal(contactValue{
		ID: c.ID, Name: c.Name, Role: string(c.Role), Region: c.Region, VehicleID: c.VehicleID,
		Phone: c.Phone, Email: c.Email, Language: string(c.Language),
		CreatedAt: micros(c.CreatedAt), UpdatedAt: micros(c.UpdatedAt),
	})
	if err != nil {
		return nil, fmt.Errorf("encode contact %d: %w", c.ID, err)
	}
	return data, nil
}

func decodeContact(data []byte) (store.Contact, error) {
	var v contactValue
	if err := json.Unmarshal(data, &v); err != nil {
		return store.Contact{}, fmt.Errorf("%w: contact: %v", ErrCorrupt, err)
	}
	return store.Contact{
		ID: v.ID, Name: v.Name, Role: store.ContactRole(v.Role), Region: v.Region, VehicleID: v.VehicleID,
		Phone: v.Phone, Email: v.Email, Language: store.Language(v.Language),
		CreatedAt: fromMicros(v.CreatedAt), UpdatedAt: fromMicros(v.UpdatedAt),
	}, nil
}

// notificationValue is the notifications bucket's JSON value.
type notificationValue struct {
	ID            int64  `json:"id"`
	IncidentID    int64  `json:"incident_id"`
	Channel       string `json:"channel"`
	Address       string `json:"address"`
	ContactID     int64  `json:"contact_id,omitempty"`
	Language      string `json:"language"`
	Reason        string `json:"reason"`
	State         string `json:"state"`
	Attempts      int    `json:"attempts"`
	NextAttemptAt *int64 `json:"next_attempt_at_us,omitempty"`
	ProviderID    string `json:"provider_id,omitempty"`
	LastError     string `json:"last_error,omitempty"`
	SentBy        string `json:"sent_by,omitempty"`
	CreatedAt     int64  `json:"created_at_us"`
	UpdatedAt     int64  `json:"updated_at_us"`
}

func encodeNotification(n store.Notification) ([]byte, error) {
	data, err := json.Marshal(notificationValue{
		ID: n.ID, IncidentID: n.IncidentID, Channel: string(n.Channel), Address: n.Address, ContactID: n.ContactID,
		Language: string(n.Language), Reason: n.Reason, State: string(n.State), Attempts: n.Attempts,
		NextAttemptAt: optionalMicros(n.NextAttemptAt), ProviderID: n.ProviderID, LastError: n.LastError,
		SentBy: n.SentBy, CreatedAt: micros(n.CreatedAt), UpdatedAt: micros(n.UpdatedAt),
	})
	if err != nil {
		return nil, fmt.Errorf("encode notification %d: %w", n.ID, err)
	}
	return data, nil
}

func decodeNotification(data []byte) (store.Notification, error) {
	var v notificationValue
	if err := json.Unmarshal(data, &v); err != nil {
		return store.Notification{}, fmt.Errorf("%w: notification: %v", ErrCorrupt, err)
	}
	return store.Notification{
		ID: v.ID, IncidentID: v.IncidentID, Channel: store.Channel(v.Channel), Address: v.Address, ContactID: v.ContactID,
		Language: store.Language(v.Language), Reason: v.Reason, State: store.NotificationState(v.State), Attempts: v.Attempts,
		NextAttemptAt: fromOptionalMicros(v.NextAttemptAt), ProviderID: v.ProviderID, LastError: v.LastError,
		SentBy: v.SentBy, CreatedAt: fromMicros(v.CreatedAt), UpdatedAt: fromMicros(v.UpdatedAt),
	}, nil
}

// jsonFloat is a float64 that encodes NaN and the infinities as the JSON
// strings "NaN", "+Inf" and "-Inf", and every other value as a number.
type jsonFloat float64

// MarshalJSON implements json.Marshaler.
func (f jsonFloat) MarshalJSON() ([]byte, error) {
	v := float64(f)
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return strconv.AppendQuote(nil, strconv.FormatFloat(v, 'g', -1, 64)), nil
	}
	return strconv.AppendFloat(nil, v, 'g', -1, 64), nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (f *jsonFloat) UnmarshalJSON(data []byte) error {
	text := strings.Trim(string(data), `"`)
	v, err := strconv.ParseFloat(text, 64)
	if err != nil {
		return fmt.Errorf("parse float %s: %w", data, err)
	}
	*f = jsonFloat(v)
	return nil
}
