package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/xpress-ops/tower/hub/store"
)

// Limits of the vehicle admin routes.
const (
	// MaxVehiclesPerRequest is the most vehicles one POST
	// /api/v1/admin/vehicles provisions. Each token is hashed with
	// argon2id, a few milliseconds of CPU each, so a larger fleet is sent
	// in several requests (xpress admin vehicle add does that).
	MaxVehiclesPerRequest = 1000
	// maxVehicleAdminBody bounds the body of a vehicle admin request.
	maxVehicleAdminBody = 1 << 20
	// vehicleCreateTimeout bounds a create request, hashing included.
	vehicleCreateTimeout = 2 * time.Minute
)

// vehicleCredentialsDisabledMessage explains why the vehicle routes are not served.
const vehicleCredentialsDisabledMessage = "vehicle credentials are not available on this hub"

// vehicleAdminRoutes mounts the admin API routes that manage the
// credentials vehicles present to the agents' brokers. Each change is
// sent to the agents through OnVehicleCredentialChange.
func (s *Server) vehicleAdminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/admin/vehicles", s.admin(s.handleListVehicleCredentials))
	mux.HandleFunc("POST /api/v1/admin/vehicles", s.admin(s.handleCreateVehicleCredentials))
	mux.HandleFunc("POST /api/v1/admin/vehicles/{id}/rotate", s.admin(s.handleRotateVehicleCredential))
	mux.HandleFunc("DELETE /api/v1/admin/vehicles/{id}", s.admin(s.handleRevokeVehicleCredential))
}

// vehicleCredentialResponse is a vehicle credential, with its token right
// after a create or rotate, the only time the token is shown.
type vehicleCredentialResponse struct {
	store.VehicleCredential
	Revoked bool   `json:"revoked"`
	Token   string `json:"token,omitempty"`
}

func vehicleResponse(c store.VehicleCredential, token string) vehicleCredentialResponse {
	return vehicleCredentialResponse{VehicleCredential: c, Revoked: c.Revoked(), Token: token}
}

// vehicleStore returns the vehicle credential store, or writes 503 and
// returns nil when the hub has none.
func (s *Server) vehicleStore(w http.ResponseWriter, r *http.Request) store.VehicleCredentialStore {
	if s.cfg.VehicleCredentials == nil {
		s.writeJSON(w, r, http.StatusServiceUnavailable, map[string]string{"error": vehicleCredentialsDisabledMessage})
	}
	return s.cfg.VehicleCredentials
}

func (s *Server) vehicleCredentialsChanged() {
	if s.cfg.OnVehicleCredentialChange != nil {
		s.cfg.OnVehicleCredentialChange()
	}
}

func (s *Server) handleListVehicleCredentials(w http.ResponseWriter, r *http.Request) {
	vs := s.vehicleStore(w, r)
	if vs == nil {
		return
	}
	ctx, cancel := s.adminContext(r)
	defer cancel()
	list, err := vs.VehicleCredentials(ctx)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]vehicleCredentialResponse, len(list))
	for i, c := range list {
		out[i] = vehicleResponse(c, "")
	}
	s.writeJSON(w, r, http.StatusOK, map[string]any{"vehicles": out})
}

// handleCreateVehicleCredentials provisions one vehicle ({"id": "veh-1"})
// or a list ({"ids": ["veh-1", "veh-2"]}), all or none, and returns every
// token once: {"vehicles": [{"id": ..., "token": ...}, ...]}.
func (s *Server) handleCreateVehicleCredentials(w http.ResponseWriter, r *http.Request) {
	vs := s.vehicleStore(w, r)
	if vs == nil {
		return
	}
	var body struct {
		ID  string   `json:"id"`
		IDs []string `json:"ids"`
	}
	if err := decodeVehicleBody(w, r, &body, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	ids := body.IDs
	if body.ID != "" {
		ids = append([]string{body.ID}, ids...)
	}
	switch {
	case len(ids) == 0:
		s.writeError(w, r, badRequest(`no vehicle: send {"id": "veh-1"} or {"ids": ["veh-1", "veh-2"]}`))
		return
	case len(ids) > MaxVehiclesPerRequest:
		s.writeError(w, r, badRequest("%d vehicles in one request, at most %d: send the fleet in several requests", len(ids), MaxVehiclesPerRequest))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), vehicleCreateTimeout)
	defer cancel()
	issued, err := vs.CreateVehicleCredentials(ctx, ids)
	if err != nil {
		s.writeVehicleError(w, r, err)
		return
	}
	s.vehicleCredentialsChanged()
	out := make([]vehicleCredentialResponse, len(issued))
	for i, it := range issued {
		out[i] = vehicleResponse(it.Credential, it.Token)
	}
	s.log.Info("vehicle credentials created through the admin API", "vehicles", len(ids), "first", ids[0], "remote", r.RemoteAddr)
	s.writeJSON(w, r, http.StatusCreated, map[string]any{"vehicles": out})
}

func (s *Server) handleRotateVehicleCredential(w http.ResponseWriter, r *http.Request) {
	vs := s.vehicleStore(w, r)
	if vs == nil {
		return
	}
	var body struct {
		Grace string `json:"grace"`
	}
	if err := decodeVehicleBody(w, r, &body, true); err != nil {
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
	token, c, err := vs.RotateVehicleCredential(ctx, id, grace)
	if err != nil {
		s.writeVehicleError(w, r, err)
		return
	}
	s.vehicleCredentialsChanged()
	s.log.Info("vehicle credential rotated through the admin API", "vehicle", id, "grace", grace.String(), "remote", r.RemoteAddr)
	s.writeJSON(w, r, http.StatusOK, vehicleResponse(c, token))
}

func (s *Server) handleRevokeVehicleCredential(w http.ResponseWriter, r *http.Request) {
	vs := s.vehicleStore(w, r)
	if vs == nil {
		return
	}
	id := r.PathValue("id")
	ctx, cancel := s.adminContext(r)
	defer cancel()
	if _, err := vs.RevokeVehicleCredential(ctx, id); err != nil {
		s.writeVehicleError(w, r, err)
		return
	}
	s.vehicleCredentialsChanged()
	s.log.Info("vehicle credential revoked through the admin API", "vehicle", id, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
}

// writeVehicleError shows the store's message for an invalid argument, a
// vehicle that already has a credential and an unknown vehicle: each
// names the vehicle and the rule, never a token.
func (s *Server) writeVehicleError(w http.ResponseWriter, r *http.Request, err error) {
	code := 0
	switch {
	case errors.Is(err, store.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, store.ErrConflict):
		code = http.StatusConflict
	case errors.Is(err, store.ErrNotFound):
		code = http.StatusNotFound
	default:
		s.writeError(w, r, err)
		return
	}
	s.log.Info("request failed", "method", r.Method, "path", r.URL.Path, "status", code, "error", err)
	s.writeJSON(w, r, code, map[string]string{"error": err.Error()})
}

// decodeVehicleBody reads one JSON object of at most maxVehicleAdminBody
// bytes into v, refusing unknown fields. An empty body is allowed only
// when optional is set.
func decodeVehicleBody(w http.ResponseWriter, r *http.Request, v any, optional bool) error {
	raw, err := readBody(w, r, maxVehicleAdminBody)
	if err != nil {
		return err
	}
	return decodeObject(raw, v, optional)
}
