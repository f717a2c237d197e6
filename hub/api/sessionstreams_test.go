package api_test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
)

// dialStream opens the event stream of the authServer with the
// session's cookie, as the dashboard does, and reads its hello frame.
func (s *testSession) dialStream(t *testing.T) *streamClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	url := "ws" + strings.TrimPrefix(s.as.URL, "http") + "/api/v1/stream"
	conn, res, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: http.Header{"Cookie": {s.cookie.String()}}})
	if err != nil {
		status := 0
		if res != nil {
			status = res.StatusCode
		}
		t.Fatalf("dial stream as %s: status %d: %v", s.operator, status, err)
	}
	conn.SetReadLimit(1 << 20)
	c := &streamClient{conn: conn, frames: make(chan frame, 4096), done: make(chan struct{})}
	go c.read()
	t.Cleanup(func() {
		conn.CloseNow()
		<-c.done
	})
	if f := c.next(t); f.Type != "hello" {
		t.Fatalf("first frame = %s, want hello", f.Type)
	}
	return c
}

// wantSignedOut fails the test unless c closes with 1008 "signed out".
func wantSignedOut(t *testing.T, stream string, c *streamClient) {
	t.Helper()
	if code, reason := waitClose(t, c); code != websocket.StatusPolicyViolation || reason != "signed out" {
		t.Errorf("%s: stream closed with %d %q, want 1008 \"signed out\"", stream, code, reason)
	}
}

// TestStream_EndsWithItsSession signs operators in through the API and
// opens their streams with the session cookie. Signing out closes that
// session's stream at once. The streams of a session deleted in the
// store, of a disabled operator, of an operator given other regions and
// of a session past its maximum age close at the next ping. A session
// still valid keeps its stream until then.
func TestStream_EndsWithItsSession(t *testing.T) {
	var bus *events.Bus
	as := newAuthServer(t, false, func(c *api.Config) {
		c.PingInterval = 20 * time.Millisecond
		bus = c.Bus.(*events.Bus)
	})
	ctx := context.Background()
	keep := as.sessionAs(t, store.OperatorRoleOperator, "NCR")
	kept := keep.dialStream(t)

	out := as.sessionAs(t, store.OperatorRoleOperator, "NCR")
	signedOut := out.dialStream(t)
	res, v := out.do(t, http.MethodDelete, "/api/v1/session", "")
	wantStatus(t, "sign out", res, v, http.StatusNoContent)
	wantSignedOut(t, "signed-out session", signedOut)

	revoked := as.sessionAs(t, store.OperatorRoleOperator, "NCR")
	revokedStream := revoked.dialStream(t)
	if _, err := as.accounts.DeleteOperatorSessions(ctx, revoked.operator); err != nil {
		t.Fatal(err)
	}
	wantSignedOut(t, "session deleted in the store", revokedStream)

	disabled := as.sessionAs(t, store.OperatorRoleSupervisor, "NCR")
	disabledStream := disabled.dialStream(t)
	if _, err := as.accounts.UpdateOperator(ctx, disabled.operator, func(o *store.StoredOperator) error {
		o.Disabled = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wantSignedOut(t, "session of a disabled operator", disabledStream)

	moved := as.sessionAs(t, store.OperatorRoleOperator, "NCR")
	movedStream := moved.dialStream(t)
	if _, err := as.accounts.UpdateOperator(ctx, moved.operator, func(o *store.StoredOperator) error {
		o.Regions = []string{"Cebu"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wantSignedOut(t, "session of an operator given other regions", movedStream)

	// The stream that stayed receives its region's events throughout.
	ev, err := bus.PublishIn("NCR", events.TypeFix, map[string]string{"vehicle_id": "MNL-0001"})
	if err != nil {
		t.Fatal(err)
	}
	kept.readUntil(t, ev.Seq)

	// Past the session's maximum age, its stream ends too, although the
	// open stream kept the session from going idle.
	as.clock.Set(testNow.Add(store.SessionMaxAge + time.Minute))
	wantSignedOut(t, "session past its maximum age", kept)
}

// TestStream_EndsWhenItsTokenIsRevoked opens a stream with an API token
// and revokes the token through the admin API: the stream closes with
// 1008 at once.
func TestStream_EndsWhenItsTokenIsRevoked(t *testing.T) {
	as := newAuthServer(t, false, nil)
	as.addOperator(t, "integration", store.OperatorRoleOperator, "NCR")
	token, tok, err := as.accounts.CreateAPIToken(context.Background(), "integration", "wall display")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	url := "ws" + strings.TrimPrefix(as.URL, "http") + "/api/v1/stream"
	conn, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + token}}})
	if err != nil {
		t.Fatalf("dial stream with the API token: %v", err)
	}
	c := &streamClient{conn: conn, frames: make(chan frame, 16), done: make(chan struct{})}
	go c.read()
	t.Cleanup(func() {
		conn.CloseNow()
		<-c.done
	})
	c.expect(t, "hello", 0)

	res, v := as.bearer(t, testAdminToken, http.MethodDelete, "/api/v1/admin/tokens/"+strconv.FormatInt(tok.ID, 10), "")
	wantStatus(t, "revoke the token", res, v, http.StatusNoContent)
	wantSignedOut(t, "stream of a revoked API token", c)
}
