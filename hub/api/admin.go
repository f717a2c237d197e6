package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/xpress-ops/tower/hub/store"
)

// DefaultRotationGrace is how long an agent's replaced token keeps
// working when a rotate request names no grace.
const DefaultRotationGrace = 24 * time.Hour

// adminDisabledMessage explains why the agent credential routes are not
// served.
const adminDisabledMessage = "admin API disabled: the hub has no credential store"

// adminRoutes mounts the admin API, which manages the agents' hub
// credentials. Every route needs an admin principal (see admin); without
// a credential store the routes respond 503.
func (s *Server) adminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/admin/agents", s.admin(s.handleListCredentials))
	mux.HandleFunc("POST /api/v1/admin/agents", s.admin(s.handleCreateCredential))
	mux.HandleFunc("POST /api/v1/admin/agents/{id}/rotate", s.admin(s.handleRotateCredential))
	mux.HandleFunc("DELETE /api/v1/admin/agents/{id}", s.admin(s.handleRevokeCredential))
	s.vehicleAdminRoutes(mux)
}

// admin wraps an admin handler: the request's principal must have the
// admin role, which the admin token (Authorization: Bearer
// <Config.AdminToken>, checked by the authentication middleware) and
// admin operators, signed in or with an API token, have. Without a
// credential store the route responds 503.
func (s *Server) admin(next http.HandlerFunc) http.HandlerFunc {
	return s.requireAdmin(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Credentials == nil {
			s.writeJSON(w, r, http.StatusServiceUnavailable, map[string]string{"error": adminDisabledMessage})
			return
		}
		next(w, r)
	})
}

// credentialResponse is an agent credential, with its token right after
// a create or rotate, the only time the token is shown.
type credentialResponse struct {
	store.AgentCredential
	Token string `json:"token,omitempty"`
}

func (s *Server) handleListCredentials(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.adminContext(r)
	defer cancel()
	list, err := s.cfg.Credentials.AgentCredentials(ctx)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, map[string]any{"agents": nonNil(list)})
}

func (s *Server) handleCreateCredential(w http.ResponseWriter, r *http.Request) {
	var body struct {
		ID     string `json:"id"`
		Region string `json:"region"`
	}
	if err := decodeAdminBody(w, r, &body, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := s.adminContext(r)
	defer cancel()
	token, c, err := s.cfg.Credentials.CreateAgentCredential(ctx, body.ID, body.Region)
	if err != nil {
		s.writeError(w, r, credentialError(err))
		return
	}
	s.log.Info("agent credential created through the admin API", "agent", c.AgentID, "region", c.Region, "remote", r.RemoteAddr)
	// The new agent needs its region's operator list before it connects.
	if s.cfg.OnCredentialChange != nil {
		s.cfg.OnCredentialChange(c.AgentID)
	}
	s.writeJSON(w, r, http.StatusCreated, credentialResponse{c, token})
}

func (s *Server) handleRotateCredential(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Grace string `json:"grace"`
	}
	if err := decodeAdminBody(w, r, &body, true); err != nil {
		s.writeError(w, r, err)
		return
	}
	grace, err := parseGrace(body.Grace)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	id := r.PathValue("id")
	ctx, cancel := s.adminContext(r)
	defer cancel()
	token, c, err := s.cfg.Credentials.RotateAgentCredential(ctx, id, grace)
	if err != nil {
		s.writeError(w, r, credentialError(err))
		return
	}
	if s.cfg.OnCredentialChange != nil {
		s.cfg.OnCredentialChange(id)
	}
	s.log.Info("agent credential rotated through the admin API", "agent", id, "grace", grace.String(), "remote", r.RemoteAddr)
	s.writeJSON(w, r, http.StatusOK, credentialResponse{c, token})
}

func (s *Server) handleRevokeCredential(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	ctx, cancel := s.adminContext(r)
	defer cancel()
	if err := s.cfg.Credentials.RevokeAgentCredential(ctx, id); err != nil {
		s.writeError(w, r, credentialError(err))
		return
	}
	if s.cfg.OnCredentialChange != nil {
		s.cfg.OnCredentialChange(id)
	}
	s.log.Info("agent credential revoked through the admin API", "agent", id, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
}

// credentialError shows the store's message of an invalid argument to the
// caller: it names the argument and the rule, never a token.
func credentialError(err error) error {
	if errors.Is(err, store.ErrInvalid) {
		return badRequest("%s", err.Error())
	}
	return err
}

// decodeAdminBody reads one JSON object into v, refusing unknown fields.
// An empty body is allowed only when optional is set.
func decodeAdminBody(w http.ResponseWriter, r *http.Request, v any, optional bool) error {
	raw, err := readTextBody(w, r)
	if err != nil {
		return err
	}
	return decodeObject(raw, v, optional)
}

// decodeObject decodes raw, one JSON object, into v, refusing unknown
// fields. An empty raw is allowed only when optional is set.
func decodeObject(raw []byte, v any, optional bool) error {
	if optional && len(bytes.TrimSpace(raw)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return badRequest("empty request body: send a JSON object")
		}
		return badRequest("invalid request body: %s", truncate(err.Error(), 160))
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		return badRequest("invalid request body: send exactly one JSON object")
	}
	return nil
}

// parseGrace returns the rotation grace a request names, or
// DefaultRotationGrace when it names none.
func parseGrace(text string) (time.Duration, error) {
	if text == "" {
		return DefaultRotationGrace, nil
	}
	grace, err := time.ParseDuration(text)
	if err != nil {
		return 0, badRequest("invalid grace %q: use a duration such as 24h or 0s", truncate(text, 40))
	}
	return grace, nil
}

// adminContext bounds the store call of one admin request.
func (s *Server) adminContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
}
