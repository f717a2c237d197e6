package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/xpress-ops/tower/agent/localauth"
	"github.com/xpress-ops/tower/internal/httpsec"
	"github.com/xpress-ops/tower/protocol"
)

// Names of the page's sign-in.
const (
	// LocalSessionCookie is the session cookie of the agent's page served
	// over plain HTTP. It differs from the hub's cookie, because cookies
	// do not tell ports apart and a hub and an agent may share a host.
	LocalSessionCookie = "xpress_agent_session"
	// SecureLocalSessionCookie is the session cookie over TLS. The
	// __Host- prefix makes browsers accept it only with Secure, Path=/ and
	// no Domain.
	SecureLocalSessionCookie = "__Host-xpress_agent_session"
	// CSRFHeader carries the session's CSRF token on state-changing
	// requests.
	CSRFHeader = "X-CSRF-Token"
	// maxLoginBody is the largest sign-in body, in bytes.
	maxLoginBody = 4 << 10
)

// Messages of the page's sign-in.
const (
	msgSignIn   = "sign in with your hub account"
	msgBadLogin = "wrong user name or password"
	msgCSRF     = "missing or wrong X-CSRF-Token header: reload the page"
	msgOrigin   = "request from another origin refused"
)

// localSessionResponse is the body of a sign-in and of GET
// /api/v1/local/session.
type localSessionResponse struct {
	Operator    string `json:"operator"`
	DisplayName string `json:"display_name"`
	Role        string `json:"role"`
	CSRFToken   string `json:"csrf_token"`
}

// signInRequired is the body of a 401 from the local API.
type signInRequired struct {
	Error string `json:"error"`
	// OperatorListReceived reports whether the agent has an operator list
	// from the hub. Without one, every sign-in fails.
	OperatorListReceived bool `json:"operator_list_received"`
}

// sessionKey is the context key of the request's session.
type sessionKey struct{}

// sessionFrom returns the session requireSession put in ctx.
func sessionFrom(ctx context.Context) (localauth.Session, bool) {
	s, ok := ctx.Value(sessionKey{}).(localauth.Session)
	return s, ok
}

// localCookieName returns the session cookie's name for r's scheme.
func localCookieName(r *http.Request) string {
	if r.TLS != nil {
		return SecureLocalSessionCookie
	}
	return LocalSessionCookie
}

// localSessionCookie is the session cookie: HttpOnly, SameSite=Strict,
// Path=/, and Secure with the __Host- prefix over TLS. It carries no
// Max-Age, so it ends with the browser; the agent ends the session after
// localauth.DefaultIdleTimeout without requests. A negative maxAge
// deletes it.
func localSessionCookie(r *http.Request, value string, maxAge int) *http.Cookie {
	return &http.Cookie{
		Name: localCookieName(r), Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
	}
}

// requestSession returns the live session of r's cookie.
func (a *Agent) requestSession(r *http.Request) (localauth.Session, bool) {
	c, err := r.Cookie(localCookieName(r))
	if err != nil {
		return localauth.Session{}, false
	}
	return a.operators.Session(c.Value)
}

// requireSession lets a request through only with a live session, which
// it puts in the request's context; others get 401 with
// signInRequired. It refuses with 403 a request whose Origin header is
// present and not the page's own origin (see originAllowed). With csrf
// set, it also requires the session's token in the X-CSRF-Token header
// (403 otherwise).
func (a *Agent) requireSession(csrf bool, next http.HandlerFunc) http.HandlerFunc {
	hosts := httpsec.NewHostCheck(a.cfg.HTTPAllowedHosts)
	return func(w http.ResponseWriter, r *http.Request) {
		sess, ok := a.requestSession(r)
		if !ok {
			msg := msgSignIn
			if !a.operators.Received() {
				msg = localauth.ErrNoOperators.Error()
			}
			writeJSON(w, http.StatusUnauthorized, signInRequired{Error: msg, OperatorListReceived: a.operators.Received()})
			return
		}
		if !a.originAllowed(r, hosts) {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": msgOrigin})
			return
		}
		if csrf && !sess.CheckCSRF(r.Header.Get(CSRFHeader)) {
			a.log.Warn("local API request rejected: missing or invalid CSRF token", "method", r.Method, "path", r.URL.Path,
				"username", sess.Username, "remote", r.RemoteAddr)
			writeJSON(w, http.StatusForbidden, map[string]string{"error": msgCSRF})
			return
		}
		next(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, sess)))
	}
}

// handleLocalLogin signs an operator in on the page: POST
// /api/v1/local/session with {"username","password"}. It responds 429
// past the per-address rate and 503 while the agent has no operator list.
// A locked user name gets 423, and an unknown user or a wrong password
// gets 401 with one message. Success gets 200 with the session and its
// cookie. The password is never logged.
func (a *Agent) handleLocalLogin(w http.ResponseWriter, r *http.Request) {
	remote := remoteIP(r)
	if !a.originAllowed(r, httpsec.NewHostCheck(a.cfg.HTTPAllowedHosts)) {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": msgOrigin})
		return
	}
	if err := checkJSONContentType(r.Header.Get("Content-Type")); err != nil {
		a.writeAPIError(w, r, err, "", "")
		return
	}
	var body struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxLoginBody))
	if err != nil {
		a.writeAPIError(w, r, apiErrorf(http.StatusRequestEntityTooLarge, "request body is larger than %d bytes", maxLoginBody), "", "")
		return
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		a.writeAPIError(w, r, apiErrorf(http.StatusBadRequest, `invalid request body: %v; send {"username": "...", "password": "..."}`, err), "", "")
		return
	}
	tried := body.Username
	if len(tried) > 64 {
		tried = tried[:64]
	}
	sess, err := a.operators.Login(body.Username, body.Password, remote)
	var throttled *localauth.ThrottledError
	var locked *localauth.LockedError
	switch {
	case err == nil:
		a.log.Info("local sign-in", "username", sess.Username, "role", sess.Role, "remote", remote)
		http.SetCookie(w, localSessionCookie(r, sess.ID, 0))
		writeJSON(w, http.StatusOK, localSessionResponse{
			Operator: sess.Username, DisplayName: sess.DisplayName, Role: sess.Role, CSRFToken: sess.CSRFToken,
		})
	case errors.As(err, &throttled):
		a.log.Warn("local sign-in rejected: too many attempts from the address", "username", tried, "remote", remote)
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(throttled.RetryAfter.Seconds()))))
		writeJSON(w, http.StatusTooManyRequests, map[string]string{"error": throttled.Error()})
	case errors.As(err, &locked):
		a.log.Warn("local sign-in rejected: user name locked", "username", tried, "remote", remote, "until", locked.Until)
		wait := max(locked.Until.Sub(a.cfg.Now()), time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		writeJSON(w, http.StatusLocked, map[string]string{"error": locked.Error()})
	case errors.Is(err, localauth.ErrNoOperators):
		a.log.Warn("local sign-in rejected: no operator list from the hub yet", "username", tried, "remote", remote)
		writeJSON(w, http.StatusServiceUnavailable, signInRequired{Error: err.Error()})
	case errors.Is(err, localauth.ErrBadCredentials):
		a.log.Info("local sign-in failed", "username", tried, "remote", remote)
		writeJSON(w, http.StatusUnauthorized, signInRequired{Error: msgBadLogin, OperatorListReceived: true})
	default:
		a.log.Error("local sign-in failed", "username", tried, "remote", remote, "error", err)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "sign-in failed: " + err.Error() + "; try again, or check the agent's log"})
	}
}

// handleLocalSession returns the current session: GET /api/v1/local/session.
func (a *Agent) handleLocalSession(w http.ResponseWriter, r *http.Request) {
	sess, _ := sessionFrom(r.Context())
	writeJSON(w, http.StatusOK, localSessionResponse{
		Operator: sess.Username, DisplayName: sess.DisplayName, Role: sess.Role, CSRFToken: sess.CSRFToken,
	})
}

// handleLocalLogout ends the current session: DELETE
// /api/v1/local/session, with the CSRF header. It deletes the cookie.
func (a *Agent) handleLocalLogout(w http.ResponseWriter, r *http.Request) {
	sess, _ := sessionFrom(r.Context())
	if c, err := r.Cookie(localCookieName(r)); err == nil {
		a.operators.Logout(c.Value)
	}
	a.log.Info("local sign-out", "username", sess.Username, "remote", remoteIP(r))
	http.SetCookie(w, localSessionCookie(r, "", -1))
	w.WriteHeader(http.StatusNoContent)
}

// localActor returns the name the acknowledgement of a session records:
// "<display name> (<username>)", or the user name alone when there is no
// display name or the pair is longer than protocol.MaxOperatorName.
func localActor(sess localauth.Session) string {
	if sess.DisplayName != "" && sess.DisplayName != sess.Username {
		name := sess.DisplayName + " (" + sess.Username + ")"
		if protocol.ValidateOperatorName(name) == nil {
			return name
		}
	}
	return sess.Username
}

// originAllowed reports whether r has no Origin header, or one naming
// the host r was sent to, which hosts allows. It logs a refusal. A
// request without Origin still needs its session's CSRF token to change
// anything.
func (a *Agent) originAllowed(r *http.Request, hosts *httpsec.HostCheck) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || httpsec.SameOrigin(r, origin, hosts) {
		return true
	}
	a.log.Warn("local API request rejected: Origin of another site", "origin", httpsec.ShownHost(origin), "method", r.Method,
		"path", r.URL.Path, "remote", r.RemoteAddr)
	return false
}

// remoteIP returns the IP address of r's client, without the port.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// LocalAuth returns the store of the operator list the hub sent, which
// checks sign-ins on the page and keeps their sessions.
func (a *Agent) LocalAuth() *localauth.Store { return a.operators }
