package api

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/passhash"
)

// sessionResponse is the body of a sign-in and of GET /api/v1/session.
type sessionResponse struct {
	Operator    string   `json:"operator"`
	DisplayName string   `json:"display_name"`
	Role        string   `json:"role"`
	Regions     []string `json:"regions"`
	CSRFToken   string   `json:"csrf_token"`
}

// sessionRoutes mounts sign-in, the current session, sign-out, the
// password change and the audit log.
func (s *Server) sessionRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/v1/session", s.handleLogin)
	mux.HandleFunc("GET /api/v1/session", s.handleSession)
	mux.HandleFunc("DELETE /api/v1/session", s.handleLogout)
	mux.HandleFunc("POST /api/v1/session/password", s.handleChangePassword)
	mux.HandleFunc("GET /api/v1/audit", s.handleAuditLog)
}

// ValidatePassword checks a new password: at least MinPasswordLength
// characters, at most MaxPasswordBytes bytes, valid UTF-8. The message
// never repeats the password.
func ValidatePassword(pw string) error {
	switch {
	case !utf8.ValidString(pw):
		return errors.New("password is not valid UTF-8")
	case utf8.RuneCountInString(pw) < MinPasswordLength:
		return fmt.Errorf("password is shorter than %d characters", MinPasswordLength)
	case len(pw) > MaxPasswordBytes:
		return fmt.Errorf("password is longer than %d bytes", MaxPasswordBytes)
	}
	return nil
}

// dummyHash returns a password hash made once per server. Sign-in checks
// it for an unknown user name, so the response takes about as long as for
// a known one.
func (s *Server) dummyHash() string {
	a := s.auth
	a.dummyOnce.Do(func() {
		id, err := store.NewSessionID()
		if err == nil {
			a.dummyHash, err = passhash.Hash(id, passhash.Password)
		}
		if err != nil {
			s.log.Error("make the dummy password hash", "error", err)
		}
	})
	return a.dummyHash
}

// handleLogin signs an operator in: POST /api/v1/session with
// {"username","password"}. It responds 429 past the per-address rate.
// It responds 423 for a user name locked for the remote address or for
// every address. An unknown user, a wrong password and a disabled
// account get 401 with one message. Success gets 200 with the session
// and its cookie.
// Unknown user names lock like real ones, so a 423 does not reveal that
// an account exists. Every outcome is audited, never with the password;
// the refusals of the rate limit at most once per address per minute.
func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	ip := remoteIP(r)
	if wait := s.allowLogin(ip); wait > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		s.log.Warn("sign-in rejected: rate limit exceeded", "remote", ip)
		if s.auditThrottle(ip, s.cfg.Now()) {
			// The user name is not read yet: the body of a refused request is not.
			s.audit(r, store.AuditEntry{Actor: "login:", Action: "login", Outcome: "denied",
				Detail: "rate limit: too many sign-in attempts from the address; more refusals within a minute are not audited"})
		}
		s.writeJSON(w, r, http.StatusTooManyRequests, map[string]string{"error": msgLoginTooFast})
		return
	}
	if !s.originAllowed(r) {
		s.writeJSON(w, r, http.StatusForbidden, map[string]string{"error": msgOrigin})
		return
	}
	if s.cfg.Accounts == nil {
		s.writeJSON(w, r, http.StatusServiceUnavailable, map[string]string{"error": msgNoAccounts})
		return
	}
	if err := checkJSONContentType(r.Header.Get("Content-Type")); err != nil {
		s.writeError(w, r, err)
		return
	}
	var body struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	if err := decodeAdminBody(w, r, &body, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	tried := truncate(body.Username, store.MaxUsernameLength)
	now := store.Time(s.cfg.Now())
	fail := func(reason string, accountUntil time.Time) {
		s.audit(r, store.AuditEntry{Actor: "login:" + tried, Action: "login", Target: "operator:" + tried, Outcome: "failure", Detail: reason})
		until, locked := s.auth.pairs.Fail(tried, ip, now)
		if accountUntil.After(until) {
			until, locked = accountUntil, true
		}
		if locked {
			s.lockedOut(w, r, tried, until, now)
			return
		}
		s.log.Info("sign-in failed", "username", tried, "reason", reason, "remote", ip)
		s.writeJSON(w, r, http.StatusUnauthorized, map[string]string{"error": msgWrongLogin})
	}
	if until, locked := s.auth.pairs.Locked(tried, ip, now); locked {
		_ = passhash.Verify(s.dummyHash(), body.Password)
		s.refuseLocked(w, r, until, now)
		return
	}
	if len(body.Password) > MaxPasswordBytes {
		fail("password too long", time.Time{})
		return
	}

	o, err := s.cfg.Accounts.Operator(ctx, body.Username)
	if errors.Is(err, store.ErrNotFound) {
		_ = passhash.Verify(s.dummyHash(), body.Password)
		if until, locked := s.auth.unknown.Locked(tried, "", now); locked {
			s.refuseLocked(w, r, until, now)
			return
		}
		until, _ := s.auth.unknown.Fail(tried, "", now)
		fail("unknown user name", until)
		return
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if now.Before(o.LockedUntil) {
		_ = passhash.Verify(s.dummyHash(), body.Password)
		s.refuseLocked(w, r, o.LockedUntil, now)
		return
	}
	verr := passhash.Verify(o.PasswordHash, body.Password)
	if verr != nil && !errors.Is(verr, passhash.ErrMismatch) {
		s.log.Error("stored password hash unreadable", "operator", o.Username, "error", verr)
	}
	if verr == nil && o.Disabled {
		fail("account disabled", time.Time{})
		return
	}
	if verr != nil {
		s.loginFailed(w, r, o.Username, now)
		return
	}
	s.auth.pairs.Succeed(tried, ip)

	if o.FailedLogins != 0 || !o.LockedUntil.IsZero() {
		if _, err := s.cfg.Accounts.UpdateOperator(ctx, o.Username, func(o *store.StoredOperator) error {
			o.FailedLogins, o.LockedUntil = 0, time.Time{}
			return nil
		}); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	sess, err := s.startSession(ctx, w, r, o.Username, now)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.audit(r, store.AuditEntry{Actor: "operator:" + o.Username, Action: "login", Target: "operator:" + o.Username, Outcome: "success"})
	s.log.Info("operator signed in", "operator", o.Username, "role", o.Role, "remote", ip)
	s.writeJSON(w, r, http.StatusOK, sessionResponse{
		Operator: o.Username, DisplayName: o.DisplayName, Role: o.Role, Regions: nonNil(o.Regions), CSRFToken: sess.CSRFToken,
	})
}

// loginFailed counts a wrong password: in the store for the account,
// which it locks for every address at the MaxAccountFailures-th in a
// row, and in memory for the user name and remote address, which lock at
// the MaxLoginFailures-th.
func (s *Server) loginFailed(w http.ResponseWriter, r *http.Request, username string, now time.Time) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.QueryTimeout)
	defer cancel()
	o, err := s.cfg.Accounts.UpdateOperator(ctx, username, func(o *store.StoredOperator) error {
		o.FailedLogins++
		if o.FailedLogins >= MaxAccountFailures {
			o.FailedLogins, o.LockedUntil = 0, now.Add(LockoutDuration)
		}
		return nil
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.audit(r, store.AuditEntry{Actor: "login:" + username, Action: "login", Target: "operator:" + username, Outcome: "failure", Detail: "wrong password"})
	until, locked := s.auth.pairs.Fail(username, remoteIP(r), now)
	if o.LockedUntil.After(now) {
		until, locked = o.LockedUntil, true
	}
	if locked {
		s.lockedOut(w, r, username, until, now)
		return
	}
	s.log.Info("sign-in failed", "username", username, "reason", "wrong password", "failures", o.FailedLogins, "remote", remoteIP(r))
	s.writeJSON(w, r, http.StatusUnauthorized, map[string]string{"error": msgWrongLogin})
}

// lockedOut audits and logs the lock of username that the failure just
// made, for the remote address or for every address, and responds 423.
func (s *Server) lockedOut(w http.ResponseWriter, r *http.Request, username string, until, now time.Time) {
	s.audit(r, store.AuditEntry{Actor: "login:" + username, Action: "lockout", Target: "operator:" + username, Outcome: "success",
		Detail: fmt.Sprintf("too many failed sign-ins in a row; locked until %s", until.Format(time.RFC3339))})
	s.log.Warn("sign-in locked", "username", username, "until", until, "remote", remoteIP(r))
	s.refuseLocked(w, r, until, now)
}

// refuseLocked responds 423 for a locked user name, with Retry-After.
// The message is the same for a lock of one address and of every
// address, and for unknown user names.
func (s *Server) refuseLocked(w http.ResponseWriter, r *http.Request, until, now time.Time) {
	wait := until.Sub(now)
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
	s.writeJSON(w, r, http.StatusLocked, map[string]string{"error": fmt.Sprintf(
		"account locked after too many failed sign-ins; try again in %d minutes or ask an admin to unlock it",
		int(math.Ceil(wait.Minutes())))})
}

// startSession stores a new session of operator and sets its cookie.
func (s *Server) startSession(ctx context.Context, w http.ResponseWriter, r *http.Request, operator string, now time.Time) (store.Session, error) {
	id, err := store.NewSessionID()
	if err != nil {
		return store.Session{}, err
	}
	csrf, err := store.NewSessionID()
	if err != nil {
		return store.Session{}, err
	}
	sess := store.Session{
		IDHash: store.HashSessionID(id), Operator: operator, CreatedAt: now, LastSeenAt: now,
		ExpiresAt: store.SessionExpiry(now, now), CSRFToken: csrf,
		RemoteAddr: remoteIP(r), UserAgent: truncate(r.UserAgent(), 200),
	}
	if err := s.cfg.Accounts.CreateSession(ctx, sess); err != nil {
		return store.Session{}, err
	}
	http.SetCookie(w, sessionCookie(r, id, int(store.SessionMaxAge/time.Second)))
	return sess, nil
}

// sessionCookie is the session cookie for r's scheme: HttpOnly,
// SameSite=Strict, Path=/, and Secure with the __Host- prefix over TLS.
// A negative maxAge deletes it.
func sessionCookie(r *http.Request, value string, maxAge int) *http.Cookie {
	return &http.Cookie{
		Name: sessionCookieName(r), Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
	}
}

// handleSession returns the current session: GET /api/v1/session. A
// request authenticated otherwise than by a session cookie gets 401.
func (s *Server) handleSession(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	sess := sessionFrom(r.Context())
	if sess == nil {
		s.writeJSON(w, r, http.StatusUnauthorized, map[string]string{"error": msgSignIn})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	o, err := s.cfg.Accounts.Operator(ctx, p.Operator)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, sessionResponse{
		Operator: o.Username, DisplayName: o.DisplayName, Role: o.Role, Regions: nonNil(o.Regions), CSRFToken: sess.CSRFToken,
	})
}

// handleLogout ends the current session: DELETE /api/v1/session. It
// deletes the session, clears the cookie and closes the session's
// streams.
func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	sess := sessionFrom(r.Context())
	if sess == nil {
		s.writeError(w, r, badRequest("not signed in with a session: only a session cookie can sign out"))
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.QueryTimeout)
	defer cancel()
	if err := s.cfg.Accounts.DeleteSession(ctx, sess.IDHash); err != nil && !errors.Is(err, store.ErrNotFound) {
		s.writeError(w, r, err)
		return
	}
	s.endSessionStreams(p.SessionID)
	http.SetCookie(w, sessionCookie(r, "", -1))
	s.audit(r, store.AuditEntry{Action: "logout", Target: "operator:" + p.Operator, Outcome: "success"})
	s.log.Info("operator signed out", "operator", p.Operator, "remote", remoteIP(r))
	w.WriteHeader(http.StatusNoContent)
}

// handleChangePassword changes the signed-in operator's own password:
// POST /api/v1/session/password with {"current","new"}. It ends every
// session of the operator and starts a new one for this request, whose
// cookie and CSRF token the response carries.
func (s *Server) handleChangePassword(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	if sessionFrom(r.Context()) == nil {
		s.writeError(w, r, badRequest("not signed in with a session: sign in to change your password"))
		return
	}
	if err := checkJSONContentType(r.Header.Get("Content-Type")); err != nil {
		s.writeError(w, r, err)
		return
	}
	var body struct {
		Current string `json:"current"`
		New     string `json:"new"`
	}
	if err := decodeAdminBody(w, r, &body, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := ValidatePassword(body.New); err != nil {
		s.writeError(w, r, badRequest("new %v", err))
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.QueryTimeout)
	defer cancel()
	o, err := s.cfg.Accounts.Operator(ctx, p.Operator)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if len(body.Current) > MaxPasswordBytes || passhash.Verify(o.PasswordHash, body.Current) != nil {
		s.audit(r, store.AuditEntry{Action: "password.change", Target: "operator:" + p.Operator, Outcome: "failure", Detail: "wrong current password"})
		s.writeJSON(w, r, http.StatusForbidden, map[string]string{"error": "current password is wrong"})
		return
	}
	hash, err := passhash.Hash(body.New, passhash.Password)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	now := store.Time(s.cfg.Now())
	if _, err := s.cfg.Accounts.UpdateOperator(ctx, p.Operator, func(o *store.StoredOperator) error {
		o.PasswordHash, o.PasswordChangedAt = hash, now
		return nil
	}); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.endOperatorSessions(ctx, p.Operator)
	sess, err := s.startSession(ctx, w, r, p.Operator, now)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.audit(r, store.AuditEntry{Action: "password.change", Target: "operator:" + p.Operator, Outcome: "success"})
	s.log.Info("operator changed their password", "operator", p.Operator, "remote", remoteIP(r))
	s.writeJSON(w, r, http.StatusOK, sessionResponse{
		Operator: o.Username, DisplayName: o.DisplayName, Role: o.Role, Regions: nonNil(o.Regions), CSRFToken: sess.CSRFToken,
	})
}

// endOperatorSessions deletes every session of operator and closes the
// operator's streams, after a change of their rights or password.
func (s *Server) endOperatorSessions(ctx context.Context, operator string) {
	ids, err := s.cfg.Accounts.DeleteOperatorSessions(ctx, operator)
	if err != nil {
		s.log.Error("end the sessions of an operator", "operator", operator, "error", err)
	}
	s.endOperatorStreams(operator)
	if len(ids) > 0 {
		s.log.Info("ended the sessions of an operator", "operator", operator, "sessions", len(ids))
	}
}
