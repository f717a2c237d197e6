package api

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/xpress-ops/tower/hub/store"
)

// audit appends e to the audit log with the request's remote address and,
// when e has no actor, the request principal's. The entry is written even
// when the client has gone away; a failure is logged, not returned, as
// the change it records has already happened. Callers never put a
// password, session id or token in e.
func (s *Server) audit(r *http.Request, e store.AuditEntry) {
	if s.cfg.Accounts == nil {
		return
	}
	if e.Actor == "" {
		if p, ok := PrincipalFrom(r.Context()); ok {
			e.Actor = actorOf(p)
		}
	}
	e.Remote = remoteIP(r)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.QueryTimeout)
	defer cancel()
	if _, err := s.cfg.Accounts.AppendAudit(ctx, e); err != nil {
		s.log.Error("audit entry not written", "actor", e.Actor, "action", e.Action, "target", e.Target, "outcome", e.Outcome, "error", err)
	}
}

// handleAuditLog lists the audit log, newest first: GET /api/v1/audit
// with the optional query parameters since (RFC 3339), actor, action and
// limit (1 to store.MaxAuditLimit, default store.DefaultAuditLimit).
func (s *Server) handleAuditLog(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Accounts == nil {
		s.writeJSON(w, r, http.StatusServiceUnavailable, map[string]string{"error": msgNoAccounts})
		return
	}
	q := r.URL.Query()
	f := store.AuditFilter{Actor: q.Get("actor"), Action: q.Get("action")}
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			s.writeError(w, r, badRequest("invalid since %q: use an RFC 3339 time such as 2026-12-04T10:00:00+08:00", truncate(v, 40)))
			return
		}
		f.Since = t
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxAuditLimit {
			s.writeError(w, r, badRequest("invalid limit %q: use 1 to %d", truncate(v, 20), store.MaxAuditLimit))
			return
		}
		f.Limit = n
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	entries, err := s.cfg.Accounts.AuditLog(ctx, f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, map[string]any{"entries": nonNil(entries)})
}

// auditedAction names the audit action of a state-changing route whose
// handler does not write its own audit entries: the incident actions,
// contact changes, notification retries and the agent and vehicle
// credential routes. It returns "" for other routes.
func auditedAction(method, pattern string) string {
	if !stateChanging(method) {
		return ""
	}
	for _, route := range actionRoutes {
		if pattern == "POST /api/v1/incidents/{id}/"+route.path {
			return "incident." + string(route.action)
		}
	}
	switch pattern {
	case "POST /api/v1/contacts":
		return "contact.create"
	case "PUT /api/v1/contacts/{id}":
		return "contact.update"
	case "DELETE /api/v1/contacts/{id}":
		return "contact.delete"
	case "POST /api/v1/incidents/{id}/notifications/{nid}/retry":
		return "notification.retry"
	}
	for _, prefix := range []string{"/api/v1/admin/agents", "/api/v1/admin/vehicles"} {
		if _, p, ok := strings.Cut(pattern, " "); ok && strings.HasPrefix(p, prefix) {
			return "admin " + pattern
		}
	}
	return ""
}

// auditRequest writes the audit entry of a request to an audited route
// after its handler responded with status. The target comes from the
// path's id values, the outcome from the status.
func (s *Server) auditRequest(r *http.Request, action string, status int) {
	if status == 0 {
		status = http.StatusOK
	}
	var target string
	switch {
	case strings.HasPrefix(action, "incident.") || action == "notification.retry":
		target = "incident:" + r.PathValue("id")
		if nid := r.PathValue("nid"); nid != "" {
			target += " notification:" + nid
		}
	case strings.HasPrefix(action, "contact."):
		if id := r.PathValue("id"); id != "" {
			target = "contact:" + id
		}
	default:
		if id := r.PathValue("id"); id != "" {
			target = id
		}
	}
	outcome := "success"
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		outcome = "denied"
	case status >= 400:
		outcome = "failure"
	}
	s.audit(r, store.AuditEntry{Action: action, Target: target, Outcome: outcome, Detail: "status " + strconv.Itoa(status)})
}
