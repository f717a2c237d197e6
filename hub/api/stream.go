package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/xpress-ops/tower/hub/events"
)

// The stream's own frame types, besides the bus events it forwards.
const (
	// frameHello is the first frame of every stream; its seq is the bus's
	// newest sequence number at connect time.
	frameHello = "hello"
	// frameReset means events after the client's resume point are no longer
	// kept, so the client must reload its state through the REST API. Its
	// seq is where the stream continues from: the next event has a higher seq.
	frameReset = "reset"
)

// maxResets bounds how many resets one subscribe sends before giving up,
// in case the history turns over faster than the client can resubscribe.
const maxResets = 3

// maxBatch bounds how many events the stream sends before it checks for
// pings and cancellation again.
const maxBatch = 64

// errServerClosing ends streams when Server.Close is called.
var errServerClosing = errors.New("hub shutting down")

// controlFrame is a hello or reset frame.
type controlFrame struct {
	Type string `json:"type"`
	Seq  uint64 `json:"seq"`
}

// handleStream upgrades to a WebSocket and streams bus events as JSON text
// frames: a hello frame, then the kept events after the "after" query
// parameter if it is given, then live events. The client sends nothing;
// a data frame from it closes the stream with status 1008 (policy violation).
//
// The handler returns once the upgrade is done, and the stream runs on a
// goroutine of its own. That frees the HTTP server's goroutine, whose stack
// grew while it parsed the request, and the request itself: about 8 KB of
// hub RSS per client in `xpress bench fanout` (docs/benchmarks.md).
//
// The stream sends only the events of the regions the request's principal
// may see, and rejects a request without a principal with 401. Signing
// out ends the stream of that session with status 1008 (see
// endSessionStreams).
func (s *Server) handleStream(w http.ResponseWriter, r *http.Request) {
	p, ok := PrincipalFrom(r.Context())
	if !ok {
		s.writeJSON(w, r, http.StatusUnauthorized, map[string]string{"error": "sign in to open the event stream"})
		return
	}
	after, resume, err := parseAfter(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !s.startStream() {
		s.writeJSON(w, r, http.StatusServiceUnavailable, map[string]string{"error": "hub shutting down"})
		return
	}

	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{OriginPatterns: s.cfg.AllowedOrigins})
	if err != nil {
		s.streams.Done()
		// Accept has already written the response, 403 for a foreign origin.
		s.log.Warn("websocket upgrade rejected",
			"remote", r.RemoteAddr, "origin", r.Header.Get("Origin"), "error", err)
		return
	}
	s.metrics.wsClients.Inc()

	log := s.log.With("remote", r.RemoteAddr, "operator", p.Operator)
	log.Info("stream client connected", "origin", r.Header.Get("Origin"), "after", r.URL.Query().Get("after"),
		"role", p.Role, "regions", p.Regions)
	st := &stream{server: s, conn: conn, log: log, started: time.Now(),
		principal: p, seeAll: p.AllRegionsVisible(), signedOut: make(chan struct{})}
	s.live.join(st)
	go st.serve(after, resume)
}

// serve runs the stream until it ends, closes the connection as the reason
// calls for and marks the stream done.
func (st *stream) serve(after uint64, resume bool) {
	defer st.server.streams.Done()
	defer st.server.metrics.wsClients.Dec()
	defer st.server.live.leave(st)

	ctx, cancel := context.WithCancel(context.Background())
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		st.readLoop(ctx, cancel)
	}()
	err := st.run(ctx, after, resume)

	log := st.log.With("seq", st.last, "connected_for", time.Since(st.started).Round(time.Millisecond))
	switch {
	case errors.Is(err, errServerClosing), errors.Is(err, events.ErrClosed):
		log.Info("stream closed by the hub", "reason", err)
		st.close(websocket.StatusGoingAway, "hub shutting down")
	case errors.Is(err, errSignedOut):
		log.Info("stream closed: its operator was signed out")
		st.close(websocket.StatusPolicyViolation, "signed out")
	case st.clientSentData.Load():
		log.Warn("stream client sent a message, closing")
		st.close(websocket.StatusPolicyViolation, "the stream accepts no messages")
	case ctx.Err() != nil:
		log.Info("stream client disconnected")
		st.conn.CloseNow()
	default:
		log.Warn("stream failed, disconnecting client", "error", err)
		st.conn.CloseNow()
	}
	cancel()
	<-readDone
}

// parseAfter reads the "after" query parameter: the last seq the client
// has applied, and whether it was given.
func parseAfter(r *http.Request) (uint64, bool, error) {
	raw := r.URL.Query().Get("after")
	if raw == "" {
		return 0, false, nil
	}
	after, err := strconv.ParseUint(raw, 10, 64)
	if err != nil {
		return 0, false, badRequest("invalid after %q: use the seq of the last event received, a non-negative integer", truncate(raw, 40))
	}
	return after, true, nil
}

// stream is one WebSocket client's session.
type stream struct {
	server *Server
	conn   *websocket.Conn
	log    *slog.Logger
	// principal is who opened the stream; seeAll caches whether it sees
	// every region.
	principal Principal
	seeAll    bool
	// signedOut is closed by signOut.
	signedOut   chan struct{}
	signOutOnce sync.Once
	// clientSentData is set when the client sent a data message, which the
	// stream does not accept.
	clientSentData atomic.Bool
	// last is the seq of the last event sent, or where the stream started.
	last uint64
	// started is when the upgrade completed.
	started time.Time
	// writeTimer closes the connection when a frame write outlasts the
	// write timeout. The first write creates it, and each write arms it
	// and stops it again.
	writeTimer *time.Timer
}

// readLoop reads from the client until the connection closes or the
// client sends a data message, then cancels the stream. Reading keeps
// control frames flowing: it responds to pings and close frames and
// delivers the pongs that Ping waits for.
//
// NOTE: websocket.Conn.CloseRead would do the same, but in coder/websocket
// v1.8.15, when its goroutine receives a data message it calls Close,
// which waits up to 15 s for that same goroutine to exit.
func (st *stream) readLoop(ctx context.Context, cancel context.CancelFunc) {
	defer cancel()
	_, _, err := st.conn.Read(ctx)
	if err == nil {
		st.clientSentData.Store(true)
	}
}

// close runs the close handshake with code, or drops the connection if
// that fails.
func (st *stream) close(code websocket.StatusCode, reason string) {
	if err := st.conn.Close(code, reason); err != nil {
		st.log.Debug("close stream", "error", err)
	}
}

// run sends the hello frame and then events until the client goes away,
// a write or ping fails, the bus closes or the server closes.
func (st *stream) run(ctx context.Context, after uint64, resume bool) error {
	s := st.server
	latest := s.cfg.Bus.Latest()
	if err := st.send(controlFrame{Type: frameHello, Seq: latest}); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	if !resume {
		after = latest
	}
	sub, err := st.subscribe(after)
	if err != nil {
		return err
	}
	defer func() {
		if sub != nil {
			sub.Close()
		}
	}()

	ping := time.NewTicker(s.cfg.PingInterval)
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return errServerClosing
		case <-st.signedOut:
			return errSignedOut
		case <-ping.C:
			// NOTE: events wait while a ping waits for its pong. A client
			// that falls a bus buffer behind meanwhile is resubscribed by
			// sendReady.
			pctx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
			err := st.conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("ping: %w", err)
			}
			ended, err := s.sessionEnded(ctx, st.principal)
			if err != nil {
				// A store that cannot answer does not end the stream: the
				// next ping asks again.
				st.log.Warn("could not check the stream's session", "error", err)
			}
			if ended {
				return errSignedOut
			}
		case <-sub.Ready():
			if sub, err = st.sendReady(ctx, sub); err != nil {
				return err
			}
		}
	}
}

// sendReady sends the events that are ready, at most maxBatch of them, so
// that the loop in run also gets to pings and cancellation during a long
// backlog. It returns the subscription to go on with: a new one when the
// bus ended this one for falling behind, which resumes from the last event
// sent or, when those events are no longer kept, after a reset frame.
func (st *stream) sendReady(ctx context.Context, sub *events.Subscription) (*events.Subscription, error) {
	for range maxBatch {
		if err := ctx.Err(); err != nil {
			return sub, err
		}
		ev, ok, err := sub.Next()
		if errors.Is(err, events.ErrSlowConsumer) {
			st.log.Info("stream fell behind the event bus, resuming", "seq", st.last)
			return st.subscribe(st.last)
		}
		if err != nil {
			return sub, fmt.Errorf("event subscription ended: %w", err)
		}
		if !ok {
			return sub, nil
		}
		if !st.seeAll && !st.principal.CanSee(ev.Region) {
			// The client never learns of the event, but a resume starts
			// after it.
			st.last = ev.Seq
			continue
		}
		if err := st.sendEvent(ev); err != nil {
			return sub, fmt.Errorf("send event %d: %w", ev.Seq, err)
		}
		st.last = ev.Seq
	}
	return sub, nil
}

// subscribe subscribes to the bus after seq after. When those events are
// no longer kept it sends a reset frame and subscribes from the newest
// event instead.
func (st *stream) subscribe(after uint64) (*events.Subscription, error) {
	for resets := 0; ; resets++ {
		sub, err := st.server.cfg.Bus.Subscribe(after)
		var gap *events.GapError
		if !errors.As(err, &gap) || resets == maxResets {
			if err != nil {
				return nil, fmt.Errorf("subscribe after %d: %w", after, err)
			}
			st.last = after
			return sub, nil
		}

		st.log.Info("resume point outside the event history, sending reset",
			"seq", after, "oldest", gap.Oldest, "latest", gap.Latest)
		if err := st.send(controlFrame{Type: frameReset, Seq: gap.Latest}); err != nil {
			return nil, fmt.Errorf("send reset: %w", err)
		}
		after = gap.Latest
	}
}

// send writes a control frame as one JSON text frame.
func (st *stream) send(f controlFrame) error {
	body, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode %s frame: %w", f.Type, err)
	}
	return st.write(f.Type, body)
}

// sendEvent writes an event's frame. The bus encoded it once for every
// client, so sending costs no encoding here.
func (st *stream) sendEvent(ev events.Event) error {
	body := ev.Frame()
	if body == nil {
		// Only events that a Bus published have a frame.
		var err error
		if body, err = json.Marshal(ev); err != nil {
			return fmt.Errorf("encode %s frame: %w", ev.Type, err)
		}
	}
	return st.write(ev.Type, body)
}

// write writes body as one text frame within the write timeout and counts
// it under frame type typ. The timeout is a timer that closes the
// connection, rearmed for each write, because a context with a deadline
// for each write would allocate for every frame to every client. So a
// cancelled stream context does not stop a write that has started.
func (st *stream) write(typ string, body []byte) error {
	timeout := st.server.cfg.WriteTimeout
	if st.writeTimer == nil {
		st.writeTimer = time.AfterFunc(timeout, func() { st.conn.CloseNow() })
	} else {
		st.writeTimer.Reset(timeout)
	}
	err := st.conn.Write(context.Background(), websocket.MessageText, body)
	if !st.writeTimer.Stop() {
		// The timer fired and closed the connection, whatever Write returned.
		return fmt.Errorf("write %s frame: timed out after %s: %w", typ, timeout, context.DeadlineExceeded)
	}
	if err != nil {
		return err
	}
	st.server.metrics.framesSent.WithLabelValues(frameLabel(typ)).Inc()
	return nil
}

// signOut ends the stream, which then closes the connection with status
// 1008 and the reason "signed out". It does not wait, and is safe to call
// more than once.
func (st *stream) signOut() {
	st.signOutOnce.Do(func() { close(st.signedOut) })
}
