package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/passhash"
)

// operatorAdminRoutes mounts the admin API's operator and API token
// routes. Like every admin route they need an admin: the admin token, or
// an operator with the admin role signed in or using an API token.
func (s *Server) operatorAdminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/admin/operators", s.accountsAdmin(s.handleListOperators))
	mux.HandleFunc("POST /api/v1/admin/operators", s.accountsAdmin(s.handleCreateOperator))
	mux.HandleFunc("PATCH /api/v1/admin/operators/{username}", s.accountsAdmin(s.handleUpdateOperator))
	mux.HandleFunc("DELETE /api/v1/admin/operators/{username}", s.accountsAdmin(s.handleDeleteOperator))
	mux.HandleFunc("GET /api/v1/admin/tokens", s.accountsAdmin(s.handleListTokens))
	mux.HandleFunc("POST /api/v1/admin/tokens", s.accountsAdmin(s.handleCreateToken))
	mux.HandleFunc("DELETE /api/v1/admin/tokens/{id}", s.accountsAdmin(s.handleRevokeToken))
}

// accountsAdmin wraps an operator or token route: an admin principal is
// required, and without an operator store the route responds 503.
func (s *Server) accountsAdmin(next http.HandlerFunc) http.HandlerFunc {
	return s.requireAdmin(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Accounts == nil {
			s.writeJSON(w, r, http.StatusServiceUnavailable, map[string]string{"error": msgNoAccounts})
			return
		}
		next(w, r)
	})
}

// requireAdmin refuses a request whose principal is not an admin. The
// authentication middleware already refuses them for /api/v1/admin/; this
// keeps each admin handler safe on its own.
func (s *Server) requireAdmin(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := PrincipalFrom(r.Context())
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="xpress"`)
			s.writeJSON(w, r, http.StatusUnauthorized, map[string]string{"error": msgSignIn})
			return
		}
		if p.Role != RoleAdmin {
			s.writeJSON(w, r, http.StatusForbidden, map[string]string{"error": msgRoleTooLow + ": it needs the admin role"})
			return
		}
		next(w, r)
	}
}

func (s *Server) handleListOperators(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.adminContext(r)
	defer cancel()
	list, err := s.cfg.Accounts.Operators(ctx)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, map[string]any{"operators": nonNil(list)})
}

func (s *Server) handleCreateOperator(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Username    string   `json:"username"`
		DisplayName string   `json:"display_name"`
		Role        string   `json:"role"`
		Regions     []string `json:"regions"`
		Password    string   `json:"password"`
	}
	if err := decodeAdminBody(w, r, &body, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	if body.Username == AdminTokenOperator {
		s.writeError(w, r, badRequest("user name %q is reserved for the admin token: choose another", AdminTokenOperator))
		return
	}
	o := store.Operator{Username: body.Username, DisplayName: body.DisplayName, Role: body.Role, Regions: body.Regions}
	if err := store.ValidateOperator(o); err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	if err := ValidatePassword(body.Password); err != nil {
		s.writeError(w, r, badRequest("%v", err))
		return
	}
	hash, err := passhash.Hash(body.Password, passhash.Password)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := s.adminContext(r)
	defer cancel()
	created, err := s.cfg.Accounts.CreateOperator(ctx, o, hash)
	if err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	s.audit(r, store.AuditEntry{Action: "operator.create", Target: "operator:" + created.Username, Outcome: "success",
		Detail: fmt.Sprintf("role %s, regions %s", created.Role, strings.Join(created.Regions, ","))})
	s.log.Info("operator created through the admin API", "operator", created.Username, "role", created.Role, "remote", r.RemoteAddr)
	s.operatorChanged()
	s.writeJSON(w, r, http.StatusCreated, created)
}

// operatorPatch is the body of PATCH /api/v1/admin/operators/{username}:
// each field present changes that property.
type operatorPatch struct {
	DisplayName *string   `json:"display_name"`
	Role        *string   `json:"role"`
	Regions     *[]string `json:"regions"`
	Disabled    *bool     `json:"disabled"`
	Password    *string   `json:"password"`
	// Unlock true ends a lockout and clears the failed sign-in count.
	Unlock bool `json:"unlock"`
}

func (s *Server) handleUpdateOperator(w http.ResponseWriter, r *http.Request) {
	username := r.PathValue("username")
	var body operatorPatch
	if err := decodeAdminBody(w, r, &body, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	var hash string
	if body.Password != nil {
		if err := ValidatePassword(*body.Password); err != nil {
			s.writeError(w, r, badRequest("%v", err))
			return
		}
		var err error
		if hash, err = passhash.Hash(*body.Password, passhash.Password); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	ctx, cancel := s.adminContext(r)
	defer cancel()
	if err := s.keepAnAdmin(ctx, username, body.Role, body.Disabled, false); err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	now := store.Time(s.cfg.Now())
	var changed []string
	var endSessions bool
	updated, err := s.cfg.Accounts.UpdateOperator(ctx, username, func(o *store.StoredOperator) error {
		changed, endSessions = nil, false
		if body.DisplayName != nil {
			o.DisplayName, changed = *body.DisplayName, append(changed, "display name")
		}
		if body.Role != nil && *body.Role != o.Role {
			o.Role, changed, endSessions = *body.Role, append(changed, "role "+*body.Role), true
		}
		if body.Regions != nil && !slices.Equal(store.NormalizeRegions(*body.Regions), o.Regions) {
			o.Regions, changed, endSessions = *body.Regions, append(changed, "regions "+strings.Join(*body.Regions, ",")), true
		}
		if body.Disabled != nil && *body.Disabled != o.Disabled {
			o.Disabled = *body.Disabled
			changed = append(changed, fmt.Sprintf("disabled %t", o.Disabled))
			endSessions = endSessions || o.Disabled
		}
		if hash != "" {
			o.PasswordHash, o.PasswordChangedAt, changed, endSessions = hash, now, append(changed, "password"), true
		}
		if body.Unlock {
			o.FailedLogins, o.LockedUntil, changed = 0, time.Time{}, append(changed, "unlocked")
		}
		return nil
	})
	if err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	if endSessions {
		s.endOperatorSessions(ctx, username)
	}
	if body.Unlock {
		// The locks of single addresses live in memory.
		s.auth.pairs.Clear(username)
	}
	action := "operator.update"
	if body.Unlock && len(changed) == 1 {
		action = "operator.unlock"
	}
	s.audit(r, store.AuditEntry{Action: action, Target: "operator:" + username, Outcome: "success", Detail: strings.Join(changed, "; ")})
	s.log.Info("operator changed through the admin API", "operator", username, "changes", strings.Join(changed, "; "), "remote", r.RemoteAddr)
	s.operatorChanged()
	s.writeJSON(w, r, http.StatusOK, updated.Operator)
}

func (s *Server) handleDeleteOperator(w http.ResponseWriter, r *http.Request) {
	username := r.PathValue("username")
	ctx, cancel := s.adminContext(r)
	defer cancel()
	if err := s.keepAnAdmin(ctx, username, nil, nil, true); err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	if err := s.cfg.Accounts.DeleteOperator(ctx, username); err != nil {
		s.writeError(w, r, err)
		return
	}
	// The store deleted the sessions with the operator; the streams are
	// still open.
	s.endOperatorStreams(username)
	s.audit(r, store.AuditEntry{Action: "operator.delete", Target: "operator:" + username, Outcome: "success"})
	s.operatorChanged()
	s.log.Info("operator deleted through the admin API", "operator", username, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
}

// keepAnAdmin refuses, with 409, a change that would leave no enabled
// admin account: deleting, disabling or demoting the last one. The
// admin token, when set, still works, but an install without one would
// be locked out of its own admin API.
func (s *Server) keepAnAdmin(ctx context.Context, username string, role *string, disabled *bool, deleting bool) error {
	demoting := role != nil && *role != store.OperatorRoleAdmin
	disabling := disabled != nil && *disabled
	if !deleting && !demoting && !disabling {
		return nil
	}
	list, err := s.cfg.Accounts.Operators(ctx)
	if err != nil {
		return err
	}
	others, target := 0, false
	for _, o := range list {
		if o.Role != store.OperatorRoleAdmin || o.Disabled {
			continue
		}
		if o.Username == username {
			target = true
		} else {
			others++
		}
	}
	if target && others == 0 {
		return &conflictError{msg: username + " is the last enabled admin: it cannot be deleted, disabled or demoted; add another admin first"}
	}
	return nil
}

// conflictError is a refused change whose message is shown with 409.
type conflictError struct{ msg string }

func (e *conflictError) Error() string { return e.msg }

// writeAccountError sends err like writeError, but shows the message of a
// conflictError with 409 and the store's message of an invalid argument,
// which names the argument and the rule and never holds a password.
func (s *Server) writeAccountError(w http.ResponseWriter, r *http.Request, err error) {
	var conflict *conflictError
	if errors.As(err, &conflict) {
		s.log.Info("request refused", "method", r.Method, "path", r.URL.Path, "status", http.StatusConflict, "error", err)
		s.writeJSON(w, r, http.StatusConflict, map[string]string{"error": conflict.msg})
		return
	}
	if errors.Is(err, store.ErrConflict) {
		s.writeJSON(w, r, http.StatusConflict, map[string]string{"error": err.Error()})
		return
	}
	s.writeError(w, r, credentialError(err))
}

// tokenResponse is an API token, with the token itself right after it
// was created, the only time it is shown.
type tokenResponse struct {
	store.APIToken
	Token string `json:"token,omitempty"`
}

func (s *Server) handleListTokens(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.adminContext(r)
	defer cancel()
	list, err := s.cfg.Accounts.APITokens(ctx)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, map[string]any{"tokens": nonNil(list)})
}

func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Operator string `json:"operator"`
		Name     string `json:"name"`
	}
	if err := decodeAdminBody(w, r, &body, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := s.adminContext(r)
	defer cancel()
	token, t, err := s.cfg.Accounts.CreateAPIToken(ctx, body.Operator, body.Name)
	if errors.Is(err, store.ErrNotFound) {
		err = badRequest("no operator %q: create the operator first", truncate(body.Operator, 64))
	}
	if err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	s.audit(r, store.AuditEntry{Action: "token.create", Target: "token:" + strconv.FormatInt(t.ID, 10), Outcome: "success",
		Detail: fmt.Sprintf("%q for operator %s", t.Name, t.Operator)})
	s.log.Info("API token created through the admin API", "token", t.ID, "operator", t.Operator, "remote", r.RemoteAddr)
	s.writeJSON(w, r, http.StatusCreated, tokenResponse{t, token})
}

func (s *Server) handleRevokeToken(w http.ResponseWriter, r *http.Request) {
	raw := r.PathValue("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id <= 0 {
		s.writeError(w, r, badRequest("invalid token id %q: use a positive integer", truncate(raw, 40)))
		return
	}
	ctx, cancel := s.adminContext(r)
	defer cancel()
	if err := s.cfg.Accounts.RevokeAPIToken(ctx, id); err != nil {
		s.writeAccountError(w, r, err)
		return
	}
	s.endTokenStreams(id)
	s.audit(r, store.AuditEntry{Action: "token.revoke", Target: "token:" + raw, Outcome: "success"})
	s.log.Info("API token revoked through the admin API", "token", id, "remote", r.RemoteAddr)
	w.WriteHeader(http.StatusNoContent)
}

// operatorChanged calls Config.OnOperatorChange, if set.
func (s *Server) operatorChanged() {
	if s.cfg.OnOperatorChange != nil {
		s.cfg.OnOperatorChange()
	}
}
