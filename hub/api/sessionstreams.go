package api

import (
	"context"
	"encoding/hex"
	"errors"
	"slices"
	"sync"

	"github.com/xpress-ops/tower/hub/store"
)

// errSignedOut ends the streams of a session that was signed out, revoked
// or expired, of an API token that was revoked, or of an operator whose
// account was disabled, deleted or changed.
var errSignedOut = errors.New("signed out")

// streamRegistry is the set of live WebSocket streams, so that signing out
// ends a session's streams at once instead of at the client's next
// reconnect. Its zero value is ready to use.
type streamRegistry struct {
	mu      sync.Mutex
	streams map[*stream]struct{}
}

// join adds st, whose principal must be set.
func (r *streamRegistry) join(st *stream) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.streams == nil {
		r.streams = make(map[*stream]struct{})
	}
	r.streams[st] = struct{}{}
}

// leave removes st.
func (r *streamRegistry) leave(st *stream) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.streams, st)
}

// end signs out every stream whose principal match selects. It returns
// how many it signed out and the operator of one of them. Each stream
// then closes its WebSocket with status 1008 (policy violation) on its
// own goroutine, so end does not wait for the close handshakes.
func (r *streamRegistry) end(match func(Principal) bool) (n int, operator string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for st := range r.streams {
		if match(st.principal) {
			st.signOut()
			n++
			operator = st.principal.Operator
		}
	}
	return n, operator
}

// endSessionStreams closes the WebSocket streams opened with the session
// sessionID, with status 1008 and the reason "signed out". Sign-out and
// session revocation call it. An empty sessionID matches nothing.
func (s *Server) endSessionStreams(sessionID string) {
	if sessionID == "" {
		return
	}
	// The log names the operator, not the session id, which identifies
	// the session to anyone who reads the log.
	if n, operator := s.live.end(func(p Principal) bool { return p.SessionID == sessionID }); n > 0 {
		s.log.Info("closed the streams of a signed-out session", "operator", operator, "streams", n)
	}
}

// endOperatorStreams closes every WebSocket stream of operator, whatever
// session or token opened it, with status 1008 and the reason "signed
// out". Disabling an operator, or changing its role or regions, calls it.
// An empty operator matches nothing.
func (s *Server) endOperatorStreams(operator string) {
	if operator == "" {
		return
	}
	if n, _ := s.live.end(func(p Principal) bool { return p.Operator == operator }); n > 0 {
		s.log.Info("closed the streams of an operator", "operator", operator, "streams", n)
	}
}

// endTokenStreams closes every WebSocket stream opened with API token
// tokenID, with status 1008 and the reason "signed out". Revoking the
// token calls it. Zero matches nothing.
func (s *Server) endTokenStreams(tokenID int64) {
	if tokenID == 0 {
		return
	}
	if n, operator := s.live.end(func(p Principal) bool { return p.TokenID == tokenID }); n > 0 {
		s.log.Info("closed the streams of a revoked API token", "token", tokenID, "operator", operator, "streams", n)
	}
}

// sessionEnded reports whether the sign-in behind stream principal p no
// longer holds, so that its stream must end: the session was deleted or
// has expired, its operator was deleted or disabled, or the operator's
// role or regions changed, which the stream's filter would not follow.
// The stream checks it at each ping; signing out ends streams at once
// through endSessionStreams, and this catches what that does not, such as
// an expiry. Principals without a session, those of API and admin tokens,
// are not checked.
//
// An open stream is the operator watching the dashboard, so it counts as
// activity: a session not seen for sessionTouchInterval gets its idle
// expiry moved, as a request would. Otherwise a wall display that only
// streams would be signed out after store.SessionIdleTimeout and stop
// showing new SOS alerts.
func (s *Server) sessionEnded(ctx context.Context, p Principal) (bool, error) {
	if p.SessionID == "" || s.cfg.Accounts == nil {
		return false, nil
	}
	hash, err := hex.DecodeString(p.SessionID)
	if err != nil {
		return true, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	sess, err := s.cfg.Accounts.Session(ctx, hash)
	if errors.Is(err, store.ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	now := store.Time(s.cfg.Now())
	if !now.Before(sess.ExpiresAt) || sess.Operator != p.Operator {
		return true, nil
	}
	o, err := s.cfg.Accounts.Operator(ctx, sess.Operator)
	if errors.Is(err, store.ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if o.Disabled || Role(o.Role) != p.Role || !slices.Equal(store.NormalizeRegions(o.Regions), store.NormalizeRegions(p.Regions)) {
		return true, nil
	}
	if now.Sub(sess.LastSeenAt) >= sessionTouchInterval {
		if err := s.cfg.Accounts.TouchSession(ctx, hash, now, store.SessionExpiry(sess.CreatedAt, now)); err != nil && !errors.Is(err, store.ErrNotFound) {
			return false, err
		}
	}
	return false, nil
}
