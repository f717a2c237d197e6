package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/xpress-ops/tower/hub/dispatch"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/httpsec"
)

// Names and limits of operator authentication.
const (
	// SessionCookie is the session cookie of a hub reached over plain
	// HTTP, which internal/tlsconfig allows only on loopback.
	SessionCookie = "xpress_session"
	// SecureSessionCookie is the session cookie of a hub reached over
	// TLS. The __Host- prefix makes browsers accept it only with Secure,
	// Path=/ and no Domain, so no other host can set or read it.
	SecureSessionCookie = "__Host-xpress_session"
	// CSRFHeader carries the session's CSRF token on every state-changing
	// request a session cookie authenticates.
	CSRFHeader = "X-CSRF-Token"
	// AdminTokenOperator is the operator name of requests authenticated
	// with the admin token, and their actor on audit entries.
	AdminTokenOperator = "admin-token"
	// DefaultLoginBurst and DefaultLoginInterval are the sign-in attempts
	// one remote address may make: a burst of 10, then one every 6 s.
	DefaultLoginBurst    = 10
	DefaultLoginInterval = 6 * time.Second
	// MaxLoginFailures failed sign-ins in a row from one remote address
	// lock the user name for that address for LockoutDuration, so one
	// address that guesses cannot lock the account out everywhere. These
	// counts and locks live in memory.
	MaxLoginFailures = 5
	LockoutDuration  = 15 * time.Minute
	// MaxAccountFailures failed sign-ins in a row from any addresses lock
	// the account for every address for LockoutDuration, which stops
	// guessing spread over many addresses. The count and the lock are
	// stored, so a restart keeps them. Unknown user names are counted the
	// same way in memory, so a lock does not tell them apart.
	MaxAccountFailures = 50
	// MinPasswordLength and MaxPasswordBytes bound a new password: at
	// least 12 characters, at most 256 bytes of valid UTF-8.
	MinPasswordLength = 12
	MaxPasswordBytes  = 256
	// sessionTouchInterval is how stale a session's last-seen time may
	// get before a request writes it again.
	sessionTouchInterval = time.Minute
	// maxLoginLimiters caps the remote addresses whose sign-in rate is
	// tracked; past it the table starts over. It also caps the pairs of
	// user name and address, and the unknown user names, whose failures
	// are counted.
	maxLoginLimiters = 10000
	// throttleAuditInterval is how often the refused sign-ins of one
	// remote address over the rate limit get an audit entry.
	throttleAuditInterval = time.Minute
)

// Messages of refused requests. They are part of the API the dashboard
// shows, so they stay stable.
const (
	msgSignIn       = "sign in first: send the session cookie or Authorization: Bearer <token>"
	msgBadToken     = "wrong or revoked token"
	msgCSRF         = "missing or wrong CSRF token"
	msgOrigin       = "request from another origin refused"
	msgRoleTooLow   = "your role may not do this"
	msgWrongLogin   = "wrong user name or password"
	msgNoAccounts   = "operator accounts are not available on this hub"
	msgLoginTooFast = "too many sign-in attempts from your address; wait and try again"
)

// authMethod is the kind of credential that authenticated a request.
type authMethod int

const (
	authNone authMethod = iota
	// authContext is a principal a wrapping handler put in the context.
	authContext
	authCookie
	authBearer
)

// authState is the server's sign-in state that lives in memory: the
// per-address rate limiters, the failures per user name and address,
// the failures of unknown user names and the dummy hash.
type authState struct {
	adminHash [sha256.Size]byte
	// pairs locks a user name for one remote address.
	pairs *httpsec.LoginLocks
	// unknown counts the failures of unknown user names from any
	// address, as the store counts those of accounts.
	unknown *httpsec.LoginLocks

	mu       sync.Mutex
	limiters map[string]*rate.Limiter
	// throttleAudited is when each remote address last got an audit
	// entry for a sign-in over the rate limit.
	throttleAudited map[string]time.Time

	dummyOnce sync.Once
	dummyHash string
}

func newAuthState(adminToken string) *authState {
	a := &authState{
		limiters:        make(map[string]*rate.Limiter),
		throttleAudited: make(map[string]time.Time),
		pairs:           httpsec.NewLoginLocks(MaxLoginFailures, LockoutDuration, maxLoginLimiters),
		unknown:         httpsec.NewLoginLocks(MaxAccountFailures, LockoutDuration, maxLoginLimiters),
	}
	if adminToken != "" {
		a.adminHash = sha256.Sum256([]byte(adminToken))
	}
	return a
}

// allowLogin takes one sign-in attempt of remote address ip from its
// limiter. It returns 0 when the attempt may go ahead, else how long to
// wait.
func (s *Server) allowLogin(ip string) time.Duration {
	a := s.auth
	a.mu.Lock()
	lim, ok := a.limiters[ip]
	if !ok {
		if len(a.limiters) >= maxLoginLimiters {
			a.limiters = make(map[string]*rate.Limiter)
		}
		lim = rate.NewLimiter(rate.Every(s.cfg.LoginInterval), s.cfg.LoginBurst)
		a.limiters[ip] = lim
	}
	a.mu.Unlock()
	now := time.Now()
	res := lim.ReserveN(now, 1)
	if delay := res.DelayFrom(now); delay > 0 {
		res.CancelAt(now)
		return delay
	}
	return 0
}

// auditThrottle reports whether a sign-in of remote address ip refused
// by the rate limit should get an audit entry: at most one per address
// per throttleAuditInterval, so a flood cannot fill the audit log.
func (s *Server) auditThrottle(ip string, now time.Time) bool {
	a := s.auth
	a.mu.Lock()
	defer a.mu.Unlock()
	if last, ok := a.throttleAudited[ip]; ok && now.Sub(last) < throttleAuditInterval {
		return false
	}
	if len(a.throttleAudited) >= maxLoginLimiters {
		for addr, last := range a.throttleAudited {
			if now.Sub(last) >= throttleAuditInterval {
				delete(a.throttleAudited, addr)
			}
		}
		if len(a.throttleAudited) >= maxLoginLimiters {
			return false
		}
	}
	a.throttleAudited[ip] = now
	return true
}

// routeRole is the least role a route needs, by the pattern the mux
// matched: supervisors manage contacts and retry notifications, admins
// use the admin API and read the audit log, operators do the rest.
func routeRole(pattern, urlPath string) Role {
	switch pattern {
	case "POST /api/v1/contacts", "PUT /api/v1/contacts/{id}", "DELETE /api/v1/contacts/{id}",
		"POST /api/v1/incidents/{id}/notifications/{nid}/retry":
		return RoleSupervisor
	case "GET /api/v1/audit":
		return RoleAdmin
	}
	if strings.HasPrefix(urlPath, "/api/v1/admin/") {
		return RoleAdmin
	}
	return RoleOperator
}

// openRoute reports whether a route under /api/ is served without a
// principal: sign-in, and Twilio's status callback, which checks its own
// signature.
func openRoute(pattern string) bool {
	return pattern == "POST /api/v1/session" || pattern == "POST "+dispatch.TwilioStatusPath
}

// authenticate puts the request's principal in its context. It rejects
// with a JSON error a request under /api/ that needs a principal and has
// none (401). It rejects a cookie request from another origin, or one
// with a state-changing method and without the session's CSRF token
// (403). It rejects a principal whose role is below the route's (403).
// Paths outside /api/ (health, readiness, metrics, dashboard) are served
// to anyone. A principal already in the context, put there by a handler
// that wraps Handler, is kept as it is.
func (s *Server) authenticate(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, pattern := mux.Handler(r)
		if !strings.HasPrefix(r.URL.Path, "/api/") || openRoute(pattern) {
			mux.ServeHTTP(w, r)
			return
		}
		r.Pattern = pattern // labels the metrics of refused requests
		p, method, sess, err := s.identify(r)
		switch {
		case err != nil && errors.Is(err, store.ErrBadToken):
			s.log.Warn("request rejected: invalid or revoked bearer token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="xpress"`)
			s.writeJSON(w, r, http.StatusUnauthorized, map[string]string{"error": msgBadToken})
			return
		case err != nil:
			s.writeError(w, r, err)
			return
		case method == authNone:
			w.Header().Set("WWW-Authenticate", `Bearer realm="xpress"`)
			s.writeJSON(w, r, http.StatusUnauthorized, map[string]string{"error": msgSignIn})
			return
		}
		if method == authCookie {
			if !s.originAllowed(r) {
				s.log.Warn("cookie request from another origin rejected", "operator", p.Operator, "origin", r.Header.Get("Origin"), "path", r.URL.Path)
				s.writeJSON(w, r, http.StatusForbidden, map[string]string{"error": msgOrigin})
				return
			}
			if stateChanging(r.Method) && !csrfMatches(r.Header.Get(CSRFHeader), sess.CSRFToken) {
				s.log.Warn("request rejected: missing or invalid CSRF token", "operator", p.Operator, "method", r.Method, "path", r.URL.Path)
				s.writeJSON(w, r, http.StatusForbidden, map[string]string{"error": msgCSRF})
				return
			}
		}
		if need := routeRole(pattern, r.URL.Path); !p.Role.AtLeast(need) {
			s.log.Info("request rejected: role too low", "operator", p.Operator, "role", p.Role, "needs", need, "method", r.Method, "path", r.URL.Path)
			s.writeJSON(w, r, http.StatusForbidden, map[string]string{"error": msgRoleTooLow + ": it needs the " + string(need) + " role"})
			return
		}
		r2 := r
		switch method {
		case authCookie:
			r2 = r.WithContext(context.WithValue(WithPrincipal(r.Context(), p), sessionCtxKey{}, sess))
		case authBearer:
			r2 = r.WithContext(WithPrincipal(r.Context(), p))
		}
		action := auditedAction(r.Method, pattern)
		if action == "" {
			mux.ServeHTTP(w, r2)
			r.Pattern = r2.Pattern
			return
		}
		rec := &httpsec.StatusRecorder{ResponseWriter: w}
		mux.ServeHTTP(rec, r2)
		r.Pattern = r2.Pattern
		s.auditRequest(r2, action, rec.Status)
	})
}

// identify finds the principal of r: one already in the context, a
// bearer token (the admin token or an API token), or a session cookie.
// An unknown or expired session counts as none; a wrong bearer token is
// an error wrapping store.ErrBadToken.
func (s *Server) identify(r *http.Request) (Principal, authMethod, *store.Session, error) {
	if p, ok := PrincipalFrom(r.Context()); ok {
		return p, authContext, nil, nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	if auth := r.Header.Get("Authorization"); auth != "" {
		// The scheme is case-insensitive (RFC 9110, section 11.1).
		scheme, token, ok := strings.Cut(auth, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return Principal{}, authNone, nil, store.ErrBadToken
		}
		p, err := s.bearerPrincipal(ctx, strings.TrimSpace(token))
		return p, authBearer, nil, err
	}
	c, err := r.Cookie(sessionCookieName(r))
	if err != nil || c.Value == "" || s.cfg.Accounts == nil {
		return Principal{}, authNone, nil, nil
	}
	p, sess, err := s.sessionPrincipal(ctx, r, c.Value)
	if err != nil || sess == nil {
		return Principal{}, authNone, nil, err
	}
	return p, authCookie, sess, nil
}

// bearerPrincipal checks a bearer token: the admin token, compared as a
// SHA-256 hash in constant time, or an API token, which acts as its
// operator.
func (s *Server) bearerPrincipal(ctx context.Context, token string) (Principal, error) {
	if s.cfg.AdminToken != "" {
		got := sha256.Sum256([]byte(token))
		if subtle.ConstantTimeCompare(got[:], s.auth.adminHash[:]) == 1 {
			return Principal{Operator: AdminTokenOperator, Role: RoleAdmin, Regions: []string{AllRegions}}, nil
		}
	}
	if s.cfg.Accounts == nil || token == "" {
		return Principal{}, store.ErrBadToken
	}
	t, err := s.cfg.Accounts.VerifyAPIToken(ctx, token)
	if err != nil {
		return Principal{}, err
	}
	o, err := s.cfg.Accounts.Operator(ctx, t.Operator)
	if errors.Is(err, store.ErrNotFound) || err == nil && o.Disabled {
		return Principal{}, store.ErrBadToken
	}
	if err != nil {
		return Principal{}, err
	}
	return Principal{Operator: o.Username, Role: Role(o.Role), Regions: o.Regions, TokenID: t.ID}, nil
}

// sessionPrincipal reads the session of cookie value id. It returns a nil
// session for an unknown or expired session, or one of a disabled or
// deleted operator, and deletes the expired ones. A session not seen for
// sessionTouchInterval gets its idle expiry moved.
func (s *Server) sessionPrincipal(ctx context.Context, r *http.Request, id string) (Principal, *store.Session, error) {
	hash := store.HashSessionID(id)
	sess, err := s.cfg.Accounts.Session(ctx, hash)
	if errors.Is(err, store.ErrNotFound) {
		return Principal{}, nil, nil
	}
	if err != nil {
		return Principal{}, nil, err
	}
	now := store.Time(s.cfg.Now())
	if !now.Before(sess.ExpiresAt) {
		if err := s.cfg.Accounts.DeleteSession(ctx, hash); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("delete expired session", "operator", sess.Operator, "error", err)
		}
		return Principal{}, nil, nil
	}
	o, err := s.cfg.Accounts.Operator(ctx, sess.Operator)
	if errors.Is(err, store.ErrNotFound) || err == nil && o.Disabled {
		return Principal{}, nil, nil
	}
	if err != nil {
		return Principal{}, nil, err
	}
	if now.Sub(sess.LastSeenAt) >= sessionTouchInterval {
		expires := store.SessionExpiry(sess.CreatedAt, now)
		if err := s.cfg.Accounts.TouchSession(ctx, hash, now, expires); err != nil {
			s.log.Warn("record session activity", "operator", sess.Operator, "error", err)
		} else {
			sess.LastSeenAt, sess.ExpiresAt = now, expires
		}
	}
	return Principal{Operator: o.Username, Role: Role(o.Role), Regions: o.Regions, SessionID: sessionKey(hash)}, &sess, nil
}

type sessionCtxKey struct{}

// sessionFrom returns the session of a request authenticated by a session
// cookie, and nil for any other request.
func sessionFrom(ctx context.Context) *store.Session {
	sess, _ := ctx.Value(sessionCtxKey{}).(*store.Session)
	return sess
}

// sessionKey is the Principal.SessionID of a session: the hex of its id
// hash, which is safe to keep in memory and to compare, unlike the id.
func sessionKey(hash []byte) string { return hex.EncodeToString(hash) }

// sessionCookieName is the session cookie's name for r's scheme.
func sessionCookieName(r *http.Request) string {
	if r.TLS != nil {
		return SecureSessionCookie
	}
	return SessionCookie
}

// stateChanging reports whether method may change state, so a cookie
// request with it needs the CSRF token.
func stateChanging(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

// csrfMatches compares a sent CSRF token with the session's in constant
// time.
func csrfMatches(sent, want string) bool {
	if sent == "" || want == "" {
		return false
	}
	a, b := sha256.Sum256([]byte(sent)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// originAllowed reports whether r has no Origin header, or one whose
// host is the hub's own (the Host header, which must be one of the
// hosts Config.AllowedHosts allows) or matches Config.AllowedOrigins as
// the stream matches them. A request without Origin still needs the
// session's CSRF token to change anything.
func (s *Server) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if httpsec.SameOrigin(r, origin, s.hosts) {
		return true
	}
	for _, p := range s.cfg.AllowedOrigins {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(target)); ok {
			return true
		}
	}
	return false
}

// remoteIP is the address part of r.RemoteAddr. Forwarding headers are
// not trusted, since any client can send them.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// actorOf returns the name of p on incident events and audit entries.
func actorOf(p Principal) string {
	if p.Operator == AdminTokenOperator {
		return AdminTokenOperator
	}
	return "operator:" + p.Operator
}
