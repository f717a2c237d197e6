package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/xpress-ops/tower/agent/localsos"
	"github.com/xpress-ops/tower/notify"
	"github.com/xpress-ops/tower/protocol"
)

// MaxLocalAckBody is the largest body of a local acknowledgement, in bytes.
const MaxLocalAckBody = 16 << 10

// linkReport is the hub link in the local API.
type linkReport struct {
	// State is "connected" or "disconnected".
	State string `json:"state"`
	// Since is when the link entered State, by the agent clock. An agent
	// that started during an outage counts it from its start.
	Since time.Time `json:"since,omitzero"`
	// UnreachableSeconds is how long the hub has been unreachable, 0
	// while it is reachable. It counts from the last contact, across
	// restarts, and also while the link looks connected but the hub sent
	// no acknowledgement for longer than the ack timeout.
	UnreachableSeconds float64 `json:"unreachable_seconds"`
	// Reachable reports whether the hub responds: the link is connected,
	// with an acknowledgement or connect within the ack timeout. Local
	// acknowledgements are rejected while it is set.
	Reachable bool `json:"reachable"`
	// LastContact is the last connect, acknowledgement or SOS state from
	// the hub, by the agent clock, and LastContactSeconds its age. Both
	// are empty when the agent never reached the hub.
	LastContact        time.Time `json:"last_contact,omitzero"`
	LastContactSeconds float64   `json:"last_contact_seconds,omitempty"`
}

// infoResponse is the body of GET /api/v1/info.
type infoResponse struct {
	// Mode is "regional": the agent's page serves one region's office.
	Mode   string     `json:"mode"`
	Agent  string     `json:"agent"`
	Region string     `json:"region"`
	Uplink linkReport `json:"uplink"`
	// OutageSMS describes the agent's own SMS during an outage.
	OutageSMS outageSMSReport `json:"outage_sms"`
}

// outageSMSReport describes Config.OutageNotifyAfter and its recipients.
type outageSMSReport struct {
	Enabled      bool    `json:"enabled"`
	AfterSeconds float64 `json:"after_seconds,omitempty"`
	Recipients   int     `json:"recipients,omitempty"`
}

// localSOSResponse is the body of GET /api/v1/local/sos.
type localSOSResponse struct {
	infoResponse
	// Now is the agent clock.
	Now time.Time `json:"now"`
	// Store is "open", or "unavailable" when the local SOS store could
	// not be opened or read; SOS is then empty.
	Store string `json:"store"`
	// StoreError is the reason the store is unavailable.
	StoreError string `json:"store_error,omitempty"`
	// SOS are the region's open SOS alerts, oldest received first, one
	// row per emergency: the repeat presses of a vehicle within
	// protocol.SOSRepeatWindow of its first press share the row.
	SOS []localSOS `json:"sos"`
}

// localSOS is one SOS in the local API.
type localSOS struct {
	VehicleID   string           `json:"vehicle"`
	SOSID       string           `json:"sos_id"`
	Kind        protocol.SOSKind `json:"kind,omitempty"`
	HasLocation bool             `json:"has_location"`
	Lat         float64          `json:"lat,omitempty"`
	Lon         float64          `json:"lon,omitempty"`
	// MapURL links to the position on a map, empty without one.
	MapURL string `json:"map_url,omitempty"`
	Note   string `json:"note,omitempty"`
	// ReceivedAt is the agent clock when the SOS arrived, in UTC, and
	// ReceivedAtManila the same time in Philippine time, as the SMS shows
	// it. Both are empty for an SOS known only from the hub.
	ReceivedAt       time.Time `json:"received_at,omitzero"`
	ReceivedAtManila string    `json:"received_at_manila,omitempty"`
	// State is received, acknowledged or dispatched.
	State   string    `json:"state"`
	StateAt time.Time `json:"state_at"`
	// IncidentID is the hub's incident, 0 until the hub reported one.
	IncidentID int64 `json:"incident,omitempty"`
	// HubReceived reports whether the hub has the SOS: it reported an
	// incident, or acknowledged the spool record.
	HubReceived bool `json:"hub_received"`
	// LocalAckBy and LocalAckAt record an acknowledgement on this page.
	LocalAckBy string    `json:"local_ack_by,omitempty"`
	LocalAckAt time.Time `json:"local_ack_at,omitzero"`
	// LocalAckQueued reports whether that acknowledgement is in the spool
	// for the hub.
	LocalAckQueued bool `json:"local_ack_queued,omitempty"`
	// Presses counts the SOS ids of the row, and SOSIDs lists them,
	// first press first. SOSID is the first press.
	Presses int      `json:"presses"`
	SOSIDs  []string `json:"sos_ids"`
	// CancelRequested reports that the driver asked to cancel, with
	// CancelReason and CancelRequestedAt. A driver may be forced to cancel,
	// so the SOS stays open until the hub closes it.
	CancelRequested   bool      `json:"cancel_requested,omitempty"`
	CancelReason      string    `json:"cancel_reason,omitempty"`
	CancelRequestedAt time.Time `json:"cancel_requested_at,omitzero"`
	// Notifications are the agent's own SMS about the row's SOS ids.
	Notifications []localNotification `json:"notifications,omitempty"`
}

// localNotification is one of the agent's own notifications.
type localNotification struct {
	Channel    string `json:"channel"`
	Address    string `json:"address"`
	State      string `json:"state"`
	Attempts   int    `json:"attempts"`
	ProviderID string `json:"provider_id,omitempty"`
	Error      string `json:"error,omitempty"`
}

// localAckResponse is the body of a successful local acknowledgement.
type localAckResponse struct {
	SOS localSOS `json:"sos"`
	// AlreadyAcknowledged is set when the SOS was acknowledged on this
	// page before, also by a request that ran at the same time. The first
	// acknowledgement is kept, and AcknowledgedBy and AcknowledgedAt name
	// it. Message is a sentence for staff about the outcome.
	AlreadyAcknowledged bool      `json:"already_acknowledged"`
	AcknowledgedBy      string    `json:"acknowledged_by"`
	AcknowledgedAt      time.Time `json:"acknowledged_at"`
	Message             string    `json:"message"`
	// AcknowledgedSOSIDs are the SOS ids of the row this request
	// acknowledged: the requested one and its repeat presses.
	AcknowledgedSOSIDs []string `json:"acknowledged_sos_ids"`
	// HubRecord is "queued" when the acknowledgement is in the spool for
	// the hub, or "pending" when the spool did not take it yet and the
	// agent retries.
	HubRecord string `json:"hub_record"`
}

// apiError is a failed local API request: its status and the message for
// the client.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func apiErrorf(status int, format string, args ...any) *apiError {
	return &apiError{status: status, msg: fmt.Sprintf(format, args...)}
}

// info returns the agent's identity, hub link and outage SMS settings.
func (a *Agent) info() infoResponse {
	r := infoResponse{Mode: "regional", Agent: a.cfg.ID, Region: a.cfg.Region}
	r.Uplink.State = a.uplink.State().String()
	r.Uplink.Since = a.uplink.StateSince().UTC()
	now := a.cfg.Now()
	if since, down := a.hubDownSince(); down {
		r.Uplink.UnreachableSeconds = max(now.Sub(since), 0).Round(time.Millisecond).Seconds()
	} else {
		r.Uplink.Reachable = !r.Uplink.Since.IsZero()
	}
	if last := a.contact.lastContact(); !last.IsZero() {
		r.Uplink.LastContact = last.UTC()
		r.Uplink.LastContactSeconds = max(now.Sub(last), 0).Round(time.Millisecond).Seconds()
	}
	if a.cfg.OutageNotifyAfter > 0 {
		r.OutageSMS = outageSMSReport{Enabled: true, AfterSeconds: a.cfg.OutageNotifyAfter.Seconds(), Recipients: len(a.cfg.OutageNotifyTo)}
	}
	return r
}

// handleInfo serves GET /api/v1/info.
func (a *Agent) handleInfo(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, a.info())
}

// handleLocalSOS serves GET /api/v1/local/sos: the open SOS alerts of the
// agent's vehicles with the hub link's state, for the regional page.
func (a *Agent) handleLocalSOS(w http.ResponseWriter, r *http.Request) {
	resp := localSOSResponse{infoResponse: a.info(), Now: a.cfg.Now().UTC(), Store: "open", SOS: []localSOS{}}
	entries, err := a.sos.ListActive()
	if err != nil {
		a.log.Error("local SOS list failed", "method", r.Method, "path", r.URL.Path, "error", err)
		resp.Store, resp.StoreError = "unavailable", err.Error()
		writeJSON(w, http.StatusServiceUnavailable, resp)
		return
	}
	for _, group := range localsos.GroupRepeats(entries) {
		resp.SOS = append(resp.SOS, a.localRowOf(group))
	}
	writeJSON(w, http.StatusOK, resp)
}

// localRowOf returns the API row of an emergency: the first press of the
// group with the ids, cancels and notifications of all of them.
func (a *Agent) localRowOf(group []localsos.Entry) localSOS {
	row := a.localSOSOf(&group[0])
	for i := 1; i < len(group); i++ {
		e := &group[i]
		row.SOSIDs = append(row.SOSIDs, e.SOSID)
		if !row.CancelRequested && e.CancelRequested() {
			row.CancelRequested, row.CancelReason, row.CancelRequestedAt = true, e.CancelReason, e.CancelRequestedAt.UTC()
		}
		for _, n := range e.Notifications {
			row.Notifications = append(row.Notifications, localNotificationOf(&n))
		}
	}
	row.Presses = len(row.SOSIDs)
	// A press after the row's acknowledgement leaves the row open, so
	// staff see the button again; acknowledging covers the new press.
	for i := range group {
		if group[i].LocalAckBy == "" && row.LocalAckBy != "" {
			row.LocalAckBy, row.LocalAckAt, row.LocalAckQueued = "", time.Time{}, false
			break
		}
	}
	return row
}

// handleLocalAck serves POST
// /api/v1/local/sos/{vehicle}/{sos_id}/acknowledge for a signed-in
// operator, with the session's CSRF token in the X-CSRF-Token header
// (see requireSession). The acknowledgement names the operator of the
// session (see localActor); an "actor" field of the body, which older
// pages sent, is ignored. It rejects the request with 409 while the hub
// is reachable, because operators then acknowledge on the hub's
// dashboard. It then checks, in order, the Content-Type (415), the ids
// (400) and the body, which may be empty or a JSON object (400, or 413
// past MaxLocalAckBody). Invalid UTF-8 is rejected, not replaced. Last
// it acknowledges the SOS and its repeat presses (see
// localsos.GroupRepeats) through the relay: 404 for an unknown SOS, 409
// for a closed one, 503 when the local SOS store is unavailable.
//
// NOTE: requiring application/json and the CSRF header keeps other
// sites from posting: an HTML form can send neither, and a script on
// another origin can send them only after a CORS preflight, which the
// agent does not approve; the session cookie is SameSite=Strict. The
// Host check (see checkHost) keeps DNS rebinding away.
func (a *Agent) handleLocalAck(w http.ResponseWriter, r *http.Request) {
	vehicleID, sosID := r.PathValue("vehicle"), r.PathValue("sos_id")
	if a.contact.reachable() {
		a.writeAPIError(w, r, apiErrorf(http.StatusConflict,
			"the hub is reachable: acknowledge on the operators' dashboard; this page takes acknowledgements only while the hub is unreachable"),
			vehicleID, sosID)
		return
	}
	sess, _ := sessionFrom(r.Context())
	if err := a.checkLocalAck(w, r, vehicleID, sosID); err != nil {
		a.writeAPIError(w, r, err, vehicleID, sosID)
		return
	}
	actor := localActor(sess)
	a.log.Info("local acknowledgement", "vehicle", vehicleID, "sos", sosID, "username", sess.Username, "remote", remoteIP(r))

	e, recorded, err := a.relay.AcknowledgeLocal(vehicleID, sosID, actor)
	resp := localAckResponse{AlreadyAcknowledged: !recorded, HubRecord: "queued", AcknowledgedSOSIDs: []string{sosID}}
	switch {
	case errors.Is(err, localsos.ErrNotReported):
		// The acknowledgement is recorded and the vehicle informed. The
		// relay appends the record for the hub later.
		resp.HubRecord = "pending"
	case err != nil:
		a.writeAPIError(w, r, err, vehicleID, sosID)
		return
	}
	if !e.LocalAckReported {
		resp.HubRecord = "pending"
	}
	group := a.repeatGroup(e)
	for _, other := range group {
		if other.SOSID == sosID {
			continue
		}
		oe, otherRecorded, err := a.relay.AcknowledgeLocal(vehicleID, other.SOSID, actor)
		recorded = recorded || otherRecorded
		switch {
		case errors.Is(err, localsos.ErrNotReported):
			resp.HubRecord = "pending"
		case err != nil:
			a.log.Warn("repeat press not acknowledged with its first press", "vehicle", vehicleID, "sos", other.SOSID,
				"first_sos", sosID, "error", err)
			continue
		case !oe.LocalAckReported:
			resp.HubRecord = "pending"
		}
		resp.AcknowledgedSOSIDs = append(resp.AcknowledgedSOSIDs, other.SOSID)
	}
	// A repeat press after the first press was acknowledged makes this
	// request a new acknowledgement, not a repeated one.
	resp.AlreadyAcknowledged = !recorded
	resp.AcknowledgedBy, resp.AcknowledgedAt = e.LocalAckBy, e.LocalAckAt.UTC()
	if resp.AlreadyAcknowledged {
		resp.Message = fmt.Sprintf("SOS %s of vehicle %s was already acknowledged by %s at %s; that acknowledgement stands",
			sosID, vehicleID, e.LocalAckBy, notify.ManilaTime(e.LocalAckAt))
	} else {
		resp.Message = fmt.Sprintf("SOS %s of vehicle %s acknowledged by %s; the driver has been told", sosID, vehicleID, e.LocalAckBy)
	}
	resp.SOS = a.localSOSOf(&e)
	if len(group) > 0 {
		if fresh, err := a.sos.ListActive(); err == nil {
			if g := groupOf(fresh, vehicleID, group[0].SOSID); len(g) > 0 {
				resp.SOS = a.localRowOf(g)
			}
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// repeatGroup returns the active SOS alerts of e's emergency (see
// localsos.GroupRepeats), or none when the store cannot list them.
func (a *Agent) repeatGroup(e localsos.Entry) []localsos.Entry {
	active, err := a.sos.ListActive()
	if err != nil {
		a.log.Error("repeat presses not looked up: local SOS store unreadable", "vehicle", e.VehicleID, "sos", e.SOSID, "error", err)
		return nil
	}
	return groupOf(active, e.VehicleID, e.SOSID)
}

// groupOf returns the group of localsos.GroupRepeats that holds the SOS.
func groupOf(entries []localsos.Entry, vehicleID, sosID string) []localsos.Entry {
	for _, group := range localsos.GroupRepeats(entries) {
		for _, g := range group {
			if g.VehicleID == vehicleID && g.SOSID == sosID {
				return group
			}
		}
	}
	return nil
}

// hubReceived reports whether the hub has an SOS: it reported an
// incident, or acknowledged the SOS record of the agent's spool. The
// spool deletes SOS-lane records in order once the hub commits them, so
// a record before the first one left is at the hub. A record the hub
// rejected as invalid leaves the lane too. An acknowledgement counts
// before the delete.
func (a *Agent) hubReceived(e *localsos.Entry) bool {
	if e.IncidentID != 0 {
		return true
	}
	if e.SpoolSeq == 0 || e.SpoolID != a.spool.SpoolID() {
		return false
	}
	return e.SpoolSeq < a.firstPendingSOSSeq() || e.SpoolSeq <= a.uplink.Acked()[protocol.LaneSOS]
}

// checkLocalAck checks a local acknowledgement request: its
// Content-Type, ids and body, which may be empty or one JSON object.
func (a *Agent) checkLocalAck(w http.ResponseWriter, r *http.Request, vehicleID, sosID string) error {
	if err := checkJSONContentType(r.Header.Get("Content-Type")); err != nil {
		return err
	}
	if err := protocol.ValidateVehicleID(vehicleID); err != nil {
		return apiErrorf(http.StatusBadRequest, "invalid vehicle id: %v", err)
	}
	if err := protocol.ValidateSOSID(sosID); err != nil {
		return apiErrorf(http.StatusBadRequest, "invalid SOS id: %v", err)
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxLocalAckBody))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return apiErrorf(http.StatusRequestEntityTooLarge, "request body is larger than %d bytes", tooLarge.Limit)
	case err != nil:
		return apiErrorf(http.StatusBadRequest, "request body not read: %v", err)
	case !utf8.Valid(raw):
		return apiErrorf(http.StatusBadRequest, "request body is not valid UTF-8")
	case len(bytes.TrimSpace(raw)) == 0:
		return nil
	}
	// The session names the operator; an "actor" field is not trusted.
	var body struct {
		Actor json.RawMessage `json:"actor"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		return apiErrorf(http.StatusBadRequest, "invalid request body: %v; send {} or no body", err)
	}
	if dec.More() {
		return apiErrorf(http.StatusBadRequest, "invalid request body: send exactly one JSON object")
	}
	return nil
}

// checkJSONContentType accepts application/json, with charset=utf-8 at most.
func checkJSONContentType(value string) error {
	mediaType, params, err := mime.ParseMediaType(value)
	if err == nil && mediaType == "application/json" {
		ok := true
		for name, v := range params {
			ok = ok && name == "charset" && strings.EqualFold(v, "utf-8")
		}
		if ok {
			return nil
		}
	}
	shown := value
	if len(shown) > 60 {
		shown = shown[:60] + "..."
	}
	return apiErrorf(http.StatusUnsupportedMediaType, "unsupported Content-Type %q: send application/json", shown)
}

// writeAPIError sends err as a JSON error and logs it with the ids:
// client mistakes at Info level (unknown SOS at Debug), failures at Error.
// The request counter counts it by status.
func (a *Agent) writeAPIError(w http.ResponseWriter, r *http.Request, err error, vehicleID, sosID string) {
	var apiErr *apiError
	status, msg := http.StatusInternalServerError, "internal error"
	switch {
	case errors.As(err, &apiErr):
		status, msg = apiErr.status, apiErr.msg
	case errors.Is(err, localsos.ErrNotFound):
		status, msg = http.StatusNotFound, fmt.Sprintf("SOS %s of vehicle %s not found at this agent", sosID, vehicleID)
	case errors.Is(err, localsos.ErrSOSClosed):
		status, msg = http.StatusConflict, err.Error()
	case errors.Is(err, localsos.ErrInvalid):
		status, msg = http.StatusBadRequest, err.Error()
	case errors.Is(err, localsos.ErrNotOpen):
		status, msg = http.StatusServiceUnavailable, "local SOS store unavailable: acknowledge at the hub, or call the operators"
	}
	level := a.log.Info
	switch {
	case status >= http.StatusInternalServerError:
		level = a.log.Error
	case status == http.StatusNotFound:
		level = a.log.Debug
	}
	level("local API request failed", "method", r.Method, "path", r.URL.Path, "vehicle", vehicleID, "sos", sosID,
		"status", status, "error", err)
	writeJSON(w, status, map[string]string{"error": msg})
}

// localSOSOf returns the API form of e.
func (a *Agent) localSOSOf(e *localsos.Entry) localSOS {
	out := localSOS{
		VehicleID: e.VehicleID, SOSID: e.SOSID, Kind: e.Kind, HasLocation: e.HasLocation, Note: e.Note,
		State: e.State, StateAt: e.StateAt.UTC(), IncidentID: e.IncidentID,
		LocalAckBy: e.LocalAckBy, LocalAckAt: e.LocalAckAt, LocalAckQueued: e.LocalAckReported,
	}
	if e.HasLocation {
		out.Lat, out.Lon, out.MapURL = e.Lat, e.Lon, notify.MapLink(e.Lat, e.Lon)
	}
	if !e.ReceivedAt.IsZero() {
		out.ReceivedAt, out.ReceivedAtManila = e.ReceivedAt.UTC(), notify.ManilaTime(e.ReceivedAt)
	}
	out.HubReceived = a.hubReceived(e)
	out.SOSIDs, out.Presses = []string{e.SOSID}, 1
	if e.CancelRequested() {
		out.CancelRequested, out.CancelReason, out.CancelRequestedAt = true, e.CancelReason, e.CancelRequestedAt.UTC()
	}
	for _, n := range e.Notifications {
		out.Notifications = append(out.Notifications, localNotificationOf(&n))
	}
	return out
}

func localNotificationOf(n *localsos.Notification) localNotification {
	return localNotification{
		Channel: n.Channel, Address: n.Address, State: n.State, Attempts: n.Attempts, ProviderID: n.ProviderID, Error: n.Error,
	}
}

// firstPendingSOSSeq returns the sequence number of the first record of
// the spool's SOS lane, or the next one to be appended when the lane is
// empty, and 0 when the spool is closed.
func (a *Agent) firstPendingSOSSeq() uint64 {
	if !a.spoolOpen.Load() {
		return 0
	}
	st := a.spool.Stats()[protocol.LaneSOS]
	return st.NextSeq - uint64(st.Records)
}
