package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// Query limits of the REST routes.
const (
	// DefaultTrackLimit and MaxTrackLimit bound the fixes of one track request.
	DefaultTrackLimit = 1000
	MaxTrackLimit     = 10000
	// DefaultTrackRange is the time range of a track request without from and to.
	DefaultTrackRange = time.Hour
	// DefaultIncidentLimit and MaxIncidentLimit bound the incidents of one list request.
	DefaultIncidentLimit = 100
	MaxIncidentLimit     = 1000
	// MaxIncidentOffset bounds the offset of an incident list request.
	MaxIncidentOffset = 100000
	// maxRegionLength bounds the region filter, in bytes.
	maxRegionLength = 64
)

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	s.writeJSON(w, r, http.StatusOK, map[string]string{"status": "ok"})
}

// handleReady checks the store and the extra Ready check. A failure is
// logged with its detail; the response names only the failing part,
// except that a Ready error's message is shown as it is.
func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	notReady := func(reason string, err error) {
		s.log.Warn("not ready", "reason", reason, "error", err)
		s.writeJSON(w, r, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "reason": reason})
	}
	if s.isClosed() {
		notReady("shutting down", nil)
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	if err := s.cfg.Store.Ping(ctx); err != nil {
		notReady("store unavailable", err)
		return
	}
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(ctx); err != nil {
			notReady(err.Error(), err)
			return
		}
	}
	s.writeJSON(w, r, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) handleVehicles(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	positions, err := s.cfg.Store.LatestPositions(ctx)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	positions = filterScope(requestScope(r), positions, func(p store.Position) string { return p.Region })
	s.writeJSON(w, r, http.StatusOK, map[string]any{"vehicles": nonNil(positions)})
}

// trackResponse is the body of a track request.
type trackResponse struct {
	VehicleID string    `json:"vehicle_id"`
	From      time.Time `json:"from"`
	To        time.Time `json:"to"`
	Limit     int       `json:"limit"`
	// Truncated is true when the range holds more fixes than Limit; the
	// next page starts at the last fix's time.
	Truncated bool              `json:"truncated"`
	Fixes     []store.StoredFix `json:"fixes"`
}

// handleTrack returns a vehicle's fixes with fix time in [from, to).
// Without from and to it covers the last DefaultTrackRange. Without from,
// from is DefaultTrackRange before to. Without to, to is now.
func (s *Server) handleTrack(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := protocol.ValidateVehicleID(id); err != nil {
		s.writeError(w, r, badRequest("invalid vehicle id %q: use 1 to 64 letters, digits, '-' or '_'", truncate(id, 80)))
		return
	}
	q := r.URL.Query()
	from, hasFrom, err := parseTime(q, "from")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	to, hasTo, err := parseTime(q, "to")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	switch {
	case !hasFrom && !hasTo:
		to = s.cfg.Now().UTC()
		from = to.Add(-DefaultTrackRange)
	case !hasFrom:
		from = to.Add(-DefaultTrackRange)
	case !hasTo:
		to = s.cfg.Now().UTC()
	}
	if !from.Before(to) {
		s.writeError(w, r, badRequest("from %s is not before to %s", from.Format(time.RFC3339), to.Format(time.RFC3339)))
		return
	}
	limit, err := parseLimit(q, DefaultTrackLimit, MaxTrackLimit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	// A vehicle outside the caller's regions gets the 404 of an unknown
	// one. A caller who sees every region gets an empty track for an
	// unknown vehicle, as before scoping.
	visible, err := s.vehicleVisible(ctx, r, id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !visible {
		s.writeError(w, r, errNotVisible)
		return
	}
	fixes, err := s.cfg.Store.Fixes(ctx, id, from, to, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// Fixes the vehicle sent while in another region stay hidden.
	fixes = filterScope(requestScope(r), fixes, func(f store.StoredFix) string { return f.Region })
	s.writeJSON(w, r, http.StatusOK, trackResponse{
		VehicleID: id, From: from, To: to, Limit: limit, Truncated: len(fixes) >= limit, Fixes: nonNil(fixes),
	})
}

func (s *Server) handleIncidents(w http.ResponseWriter, r *http.Request) {
	f, err := parseIncidentFilter(r.URL.Query())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	incidents, err := s.scopedIncidents(ctx, r, f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, map[string]any{"incidents": nonNil(incidents)})
}

// incidentResponse is the body of a single-incident request.
type incidentResponse struct {
	Incident store.Incident        `json:"incident"`
	Events   []store.IncidentEvent `json:"events"`
}

func (s *Server) handleIncident(w http.ResponseWriter, r *http.Request) {
	id, err := incidentID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	inc, evs, err := s.visibleIncident(ctx, r, id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, incidentResponse{Incident: inc, Events: nonNil(evs)})
}

func (s *Server) handleAgents(w http.ResponseWriter, r *http.Request) {
	agents := filterScope(requestScope(r), slices.Clone(s.cfg.Agents()), func(a AgentState) string { return a.Region })
	slices.SortFunc(agents, func(a, b AgentState) int { return strings.Compare(a.ID, b.ID) })
	s.writeJSON(w, r, http.StatusOK, map[string]any{"agents": nonNil(agents)})
}

func (s *Server) handleUnknownAPI(w http.ResponseWriter, r *http.Request) {
	s.writeError(w, r, errors.Join(store.ErrNotFound, errors.New("no API route "+r.URL.Path)))
}

// parseIncidentFilter reads state (comma-separated), region, vehicle,
// assigned_to, since and until (RFC 3339, opening time in [since, until)),
// offset and limit.
func parseIncidentFilter(q url.Values) (store.IncidentFilter, error) {
	var f store.IncidentFilter
	for _, raw := range strings.Split(q.Get("state"), ",") {
		st := store.IncidentState(strings.TrimSpace(raw))
		switch st {
		case "":
		case store.StateOpen, store.StateAcknowledged, store.StateDispatched, store.StateResolved, store.StateCancelled:
			if !slices.Contains(f.States, st) {
				f.States = append(f.States, st)
			}
		default:
			return f, badRequest("invalid state %q: use open, acknowledged, dispatched, resolved or cancelled", truncate(string(st), 40))
		}
	}

	f.Region = q.Get("region")
	if len(f.Region) > maxRegionLength || strings.IndexFunc(f.Region, unicode.IsControl) >= 0 {
		return f, badRequest("invalid region %q: use at most %d printable bytes", truncate(f.Region, 80), maxRegionLength)
	}
	if v := q.Get("vehicle"); v != "" {
		if err := protocol.ValidateVehicleID(v); err != nil {
			return f, badRequest("invalid vehicle id %q: use 1 to 64 letters, digits, '-' or '_'", truncate(v, 80))
		}
		f.VehicleID = v
	}
	if v := q.Get("assigned_to"); v != "" {
		if err := store.ValidateOperatorName(v); err != nil {
			return f, badRequest("invalid assigned_to %q: use an operator name of 1 to %d printable characters", truncate(v, 80), store.MaxOperatorName)
		}
		f.AssignedTo = v
	}

	var err error
	if f.Since, _, err = parseTime(q, "since"); err != nil {
		return f, err
	}
	if f.Until, _, err = parseTime(q, "until"); err != nil {
		return f, err
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return f, badRequest("since %s is not before until %s", f.Since.Format(time.RFC3339), f.Until.Format(time.RFC3339))
	}
	if raw := q.Get("offset"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 0 || n > MaxIncidentOffset {
			return f, badRequest("invalid offset %q: use an integer from 0 to %d", truncate(raw, 40), MaxIncidentOffset)
		}
		f.Offset = n
	}

	if f.Limit, err = parseLimit(q, DefaultIncidentLimit, MaxIncidentLimit); err != nil {
		return f, err
	}
	return f, nil
}

// parseLimit reads the limit parameter: def when absent, else an integer
// from 1 to max.
func parseLimit(q url.Values, def, max int) (int, error) {
	raw := q.Get("limit")
	if raw == "" {
		return def, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 || n > max {
		return 0, badRequest("invalid limit %q: use an integer from 1 to %d", truncate(raw, 40), max)
	}
	return n, nil
}

// parseTime reads an RFC 3339 time parameter and returns it in UTC, and
// whether it was present. A space is read as '+', because an offset such as
// +08:00 sent unescaped in a query string arrives as " 08:00".
func parseTime(q url.Values, name string) (time.Time, bool, error) {
	raw := strings.ReplaceAll(q.Get(name), " ", "+")
	if raw == "" {
		return time.Time{}, false, nil
	}
	t, err := time.Parse(time.RFC3339Nano, raw)
	if err != nil {
		return time.Time{}, false, badRequest("invalid %s %q: use RFC 3339 with an offset, such as 2026-12-04T10:00:00+08:00", name, truncate(raw, 60))
	}
	return t.UTC(), true, nil
}

// nonNil returns an empty slice for nil, so JSON shows [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// truncate shortens s to at most n bytes for messages, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
