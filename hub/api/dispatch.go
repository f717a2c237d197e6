package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/xpress-ops/tower/hub/dispatch"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/notify"
)

// Dispatch is the dispatcher as the API uses it; *dispatch.Dispatcher
// implements it.
type Dispatch interface {
	// Health returns the channels' state and the outbox's size.
	Health(ctx context.Context) (dispatch.Health, error)
	// ReadTwilioStatus verifies and parses a Twilio status callback.
	ReadTwilioStatus(r *http.Request) (notify.TwilioStatus, error)
	// ApplyTwilioStatus records a verified status on its notification.
	ApplyTwilioStatus(ctx context.Context, st notify.TwilioStatus) (store.Notification, error)
	// RetryNotification makes a pending or failed notification due now.
	RetryNotification(ctx context.Context, incidentID, id int64, actor string) (store.Notification, error)
}

var _ Dispatch = (*dispatch.Dispatcher)(nil)

// Limits of /api/emergency/health.
const (
	// maxOpenScan is how many open incidents the emergency health reads.
	maxOpenScan = 5000
	// defaultUnacknowledgedLimit is how long an open incident may wait
	// before the emergency health reports it, without a dispatcher.
	defaultUnacknowledgedLimit = dispatch.DefaultEscalateAfter
)

func (s *Server) dispatchRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+dispatch.TwilioStatusPath, s.handleTwilioStatus)
	mux.HandleFunc("GET /api/health", s.handleHubHealth)
	mux.HandleFunc("GET /api/emergency/health", s.handleEmergencyHealth)
	mux.HandleFunc("POST /api/v1/incidents/{id}/notifications/{nid}/retry", s.handleRetryNotification)
}

// handleRetryNotification makes a pending or failed notification due now,
// for an operator who fixed its cause (a contact's number, the provider's
// credentials) or will not wait for its backoff. The audit event names
// the principal, as for the incident actions; it takes no body. A notification being sent or already sent gets 409.
func (s *Server) handleRetryNotification(w http.ResponseWriter, r *http.Request) {
	operator, err := operatorName(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	id, err := incidentID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	raw := r.PathValue("nid")
	nid, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || nid <= 0 {
		s.writeError(w, r, badRequest("invalid notification id %q: use a positive integer", truncate(raw, 40)))
		return
	}
	if s.cfg.Dispatch == nil {
		s.writeError(w, r, errors.Join(store.ErrNotFound, errors.New("this hub has no dispatcher")))
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	if _, _, err := s.visibleIncident(ctx, r, id); err != nil {
		s.writeError(w, r, err)
		return
	}
	n, err := s.cfg.Dispatch.RetryNotification(ctx, id, nid, actorFor(r))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("notification retry requested", "operator", operator, "incident", id, "notification", nid)
	n.Address = store.DescribeAddress(n.Channel, n.Address)
	s.writeJSON(w, r, http.StatusOK, map[string]any{"notification": n})
}

// handleTwilioStatus applies a Twilio status callback. A bad signature
// gets 403, a malformed callback 400, and a SID the hub does not know 200,
// so that Twilio does not retry it forever. A store failure gets 5xx, and
// Twilio retries those.
func (s *Server) handleTwilioStatus(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Dispatch == nil {
		s.writeError(w, r, errors.Join(store.ErrNotFound, errors.New("Twilio status callbacks are not enabled on this hub")))
		return
	}
	st, err := s.cfg.Dispatch.ReadTwilioStatus(r)
	switch {
	case errors.Is(err, notify.ErrTwilioSignature):
		s.writeJSON(w, r, http.StatusForbidden, map[string]string{"error": "invalid " + notify.TwilioSignatureHeader})
		return
	case errors.Is(err, dispatch.ErrWrongAccount):
		s.writeJSON(w, r, http.StatusForbidden, map[string]string{"error": "AccountSid is not this hub's Twilio account"})
		return
	case err != nil:
		s.writeError(w, r, badRequest("%v", err))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	n, err := s.cfg.Dispatch.ApplyTwilioStatus(ctx, st)
	switch {
	case errors.Is(err, store.ErrNotFound):
		s.writeJSON(w, r, http.StatusOK, map[string]string{"status": "ignored", "reason": "unknown SID " + truncate(st.ProviderID, 40)})
	case err != nil:
		s.writeError(w, r, err)
	default:
		s.writeJSON(w, r, http.StatusOK, map[string]any{"status": "applied", "notification_id": n.ID, "state": n.State})
	}
}

// hubHealth is the body of /api/health.
type hubHealth struct {
	// Status is "ok", or "unavailable" when the store cannot be reached.
	Status string `json:"status"`
	Store  string `json:"store"`
	// StoreError names the store check's failure.
	StoreError   string `json:"store_error,omitempty"`
	AgentsOnline int    `json:"agents_online"`
	AgentsTotal  int    `json:"agents_total"`
}

// handleHubHealth reports the store and the agents: 200 when the store
// replies to a ping, else 503.
func (s *Server) handleHubHealth(w http.ResponseWriter, r *http.Request) {
	body := hubHealth{Status: "ok", Store: "ok"}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	if err := s.cfg.Store.Ping(ctx); err != nil {
		s.log.Warn("health: store unavailable", "error", err)
		body.Status, body.Store, body.StoreError = "unavailable", "unavailable", storeProblem(err)
	}
	for _, a := range s.cfg.Agents() {
		body.AgentsTotal++
		if a.Connected {
			body.AgentsOnline++
		}
	}
	code := http.StatusOK
	if body.Status != "ok" {
		code = http.StatusServiceUnavailable
	}
	s.writeJSON(w, r, code, body)
}

// emergencyHealth is the body of /api/emergency/health.
type emergencyHealth struct {
	// Status is "ok", "degraded" when Problems is not empty, or
	// "unavailable" when the store cannot be read.
	Status   string   `json:"status"`
	Problems []string `json:"problems"`
	// OpenUnacknowledged counts incidents still open, up to maxOpenScan.
	OpenUnacknowledged int `json:"open_unacknowledged"`
	// OldestUnacknowledgedSeconds is how long the oldest of them has
	// waited since its agent received the SOS, and OldestIncidentID its id.
	OldestUnacknowledgedSeconds float64 `json:"oldest_unacknowledged_seconds"`
	OldestIncidentID            int64   `json:"oldest_incident_id,omitempty"`
	// Dispatch is the dispatcher's state, null when the hub has none.
	Dispatch      *dispatch.Health `json:"dispatch"`
	DispatchError string           `json:"dispatch_error,omitempty"`
	AgentsOnline  int              `json:"agents_online"`
	AgentsOffline []string         `json:"agents_offline"`
}

// handleEmergencyHealth reports what an SOS depends on: incidents waiting
// for an operator, the dispatcher's channels and outbox, and offline
// agents. It returns 200 with status "degraded" and the problems listed
// when something needs attention, and 503 when the store cannot be read.
func (s *Server) handleEmergencyHealth(w http.ResponseWriter, r *http.Request) {
	now := s.cfg.Now()
	body := emergencyHealth{Status: "ok", Problems: []string{}, AgentsOffline: []string{}}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()

	open, capped, err := s.openIncidents(ctx)
	if err != nil {
		s.log.Warn("emergency health: reading open incidents failed", "error", err)
		body.Status = "unavailable"
		body.Problems = append(body.Problems, "cannot read incidents: "+storeProblem(err))
		s.writeJSON(w, r, http.StatusServiceUnavailable, body)
		return
	}
	// Operators and supervisors see the incidents and agents of their
	// own regions only; the dispatcher's channels are the same for all.
	sc := requestScope(r)
	open = filterScope(sc, open, func(inc store.Incident) string { return inc.Region })
	body.OpenUnacknowledged = len(open)
	for _, inc := range open {
		if waited := now.Sub(waitingSince(inc)).Seconds(); waited > body.OldestUnacknowledgedSeconds || body.OldestIncidentID == 0 {
			body.OldestUnacknowledgedSeconds, body.OldestIncidentID = max(waited, 0), inc.ID
		}
	}
	if capped {
		body.Problems = append(body.Problems, fmt.Sprintf("more than %d incidents are open", maxOpenScan))
	}

	limit := defaultUnacknowledgedLimit
	if s.cfg.Dispatch == nil {
		body.Problems = append(body.Problems, "no dispatcher: nobody is notified of new incidents")
	} else if h, err := s.cfg.Dispatch.Health(ctx); err != nil {
		s.log.Warn("emergency health: reading the dispatcher's state failed", "error", err)
		body.DispatchError = storeProblem(err)
		body.Problems = append(body.Problems, "cannot read the notification outbox: "+body.DispatchError)
	} else {
		body.Dispatch = &h
		limit = time.Duration(h.EscalateAfterSeconds * float64(time.Second))
		body.Problems = append(body.Problems, channelProblems(h)...)
	}
	if body.OpenUnacknowledged > 0 && body.OldestUnacknowledgedSeconds > limit.Seconds() {
		body.Problems = append(body.Problems, fmt.Sprintf("%s unacknowledged, the oldest (incident %d) for %.0f s",
			countNoun(body.OpenUnacknowledged, "open incident", "open incidents"), body.OldestIncidentID, body.OldestUnacknowledgedSeconds))
	}

	for _, a := range filterScope(sc, s.cfg.Agents(), func(a AgentState) string { return a.Region }) {
		if a.Connected {
			body.AgentsOnline++
		} else {
			body.AgentsOffline = append(body.AgentsOffline, a.ID)
		}
	}
	slices.Sort(body.AgentsOffline)
	if len(body.AgentsOffline) > 0 {
		body.Problems = append(body.Problems, countNoun(len(body.AgentsOffline), "agent", "agents")+" offline")
	}
	if len(body.Problems) > 0 {
		body.Status = "degraded"
	}
	s.writeJSON(w, r, http.StatusOK, body)
}

// channelProblems lists the SMS channel disabled, every channel with a
// problem of its own (the provider rejecting the credentials), and every
// channel with a failed attempt in the last 5 minutes or whose last
// attempt failed.
func channelProblems(h dispatch.Health) []string {
	var out []string
	for _, ch := range h.Channels {
		switch {
		case !ch.Enabled && ch.Channel == string(notify.ChannelSMS):
			out = append(out, "SMS is disabled: responders get no SMS")
		case ch.Enabled && ch.Problem != "":
			out = append(out, fmt.Sprintf("%s: %s (last error: %s)", ch.Channel, ch.Problem, ch.LastError))
		case ch.Enabled && ch.RecentFailures > 0:
			out = append(out, fmt.Sprintf("%s: %s in the last 5 minutes, the last: %s",
				ch.Channel, countNoun(ch.RecentFailures, "failed attempt", "failed attempts"), ch.LastError))
		case ch.Enabled && !ch.LastFailure.IsZero() && ch.LastFailure.After(ch.LastSuccess):
			out = append(out, fmt.Sprintf("%s: last attempt failed: %s", ch.Channel, ch.LastError))
		}
	}
	return out
}

// countNoun returns "1 agent" or "2 agents": n with the singular or
// plural noun.
func countNoun(n int, singular, plural string) string {
	if n == 1 {
		return "1 " + singular
	}
	return strconv.Itoa(n) + " " + plural
}

// openIncidents reads the open incidents, up to maxOpenScan, and reports
// whether there were more.
func (s *Server) openIncidents(ctx context.Context) ([]store.Incident, bool, error) {
	var out []store.Incident
	for offset := 0; offset < maxOpenScan; offset += MaxIncidentLimit {
		page, err := s.cfg.Store.Incidents(ctx, store.IncidentFilter{
			States: []store.IncidentState{store.StateOpen}, Offset: offset, Limit: MaxIncidentLimit,
		})
		if err != nil {
			return nil, false, err
		}
		out = append(out, page...)
		if len(page) < MaxIncidentLimit {
			return out, false, nil
		}
	}
	return out, true, nil
}

// waitingSince is when an incident started waiting for an operator: when
// its agent received the SOS, or when the hub opened it if that is
// earlier.
func waitingSince(inc store.Incident) time.Time {
	since := inc.ReceivedAt
	if since.IsZero() || (!inc.OpenedAt.IsZero() && inc.OpenedAt.Before(since)) {
		since = inc.OpenedAt
	}
	return since
}

// storeProblem names a store failure without its detail, which may hold
// a connection string.
func storeProblem(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	case errors.Is(err, store.ErrUnavailable):
		return "store unavailable"
	default:
		return "store error"
	}
}
