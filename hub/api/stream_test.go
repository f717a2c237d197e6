package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
)

// frame is a stream frame as a client decodes it.
type frame struct {
	Type string          `json:"type"`
	Seq  uint64          `json:"seq"`
	Time time.Time       `json:"time"`
	Data json.RawMessage `json:"data"`
}

// streamClient reads frames from a stream connection on its own goroutine,
// so the client responds to pings while the test waits.
type streamClient struct {
	conn   *websocket.Conn
	frames chan frame
	// done is closed when reading stops; err is why.
	done chan struct{}
	err  error
}

func (ts *testServer) streamURL(query string) string {
	return "ws" + strings.TrimPrefix(ts.URL, "http") + "/api/v1/stream" + query
}

// dial opens the stream with query (such as "?after=5") and starts reading.
func (ts *testServer) dial(t *testing.T, query string, opts *websocket.DialOptions) *streamClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	conn, res, err := websocket.Dial(ctx, ts.streamURL(query), opts)
	if err != nil {
		status := 0
		if res != nil {
			status = res.StatusCode
		}
		t.Fatalf("dial stream%s: status %d: %v", query, status, err)
	}
	conn.SetReadLimit(1 << 20)
	c := &streamClient{conn: conn, frames: make(chan frame, 4096), done: make(chan struct{})}
	go c.read()
	t.Cleanup(func() {
		conn.CloseNow()
		<-c.done
	})
	return c
}

func (c *streamClient) read() {
	defer close(c.done)
	for {
		typ, data, err := c.conn.Read(context.Background())
		if err != nil {
			c.err = err
			return
		}
		if typ != websocket.MessageText {
			c.err = fmt.Errorf("got a %v frame, want text", typ)
			return
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			c.err = fmt.Errorf("frame %s: %w", data, err)
			return
		}
		c.frames <- f
	}
}

// next returns the next frame, failing if none arrives within waitTimeout.
func (c *streamClient) next(t *testing.T) frame {
	t.Helper()
	select {
	case f := <-c.frames:
		return f
	case <-c.done:
		select {
		case f := <-c.frames:
			return f
		default:
		}
		t.Fatalf("stream ended while waiting for a frame: %v", c.err)
	case <-time.After(waitTimeout):
		t.Fatal("no frame within the timeout")
	}
	return frame{}
}

// expect reads the next frame and checks its type and seq.
func (c *streamClient) expect(t *testing.T, typ string, seq uint64) frame {
	t.Helper()
	f := c.next(t)
	if f.Type != typ || f.Seq != seq {
		t.Fatalf("frame = %s seq %d, want %s seq %d", f.Type, f.Seq, typ, seq)
	}
	return f
}

// waitClosed waits until the connection's reader stops and returns why.
func (c *streamClient) waitClosed(t *testing.T) error {
	t.Helper()
	select {
	case <-c.done:
		return c.err
	case <-time.After(waitTimeout):
		t.Fatal("stream still open")
		return nil
	}
}

func publish(t *testing.T, bus *events.Bus, n int) {
	t.Helper()
	for i := range n {
		if _, err := bus.Publish(events.TypeFix, map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStream_SendsHelloWithLatestSeq(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	publish(t, ts.bus, 3)

	c := ts.dial(t, "", nil)
	c.expect(t, "hello", 3)
	select {
	case f := <-c.frames:
		t.Fatalf("got %s seq %d after hello without after=, want only live events", f.Type, f.Seq)
	default:
	}
}

func TestStream_DeliversLiveEvents(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	c := ts.dial(t, "", nil)
	c.expect(t, "hello", 0)

	if _, err := ts.bus.Publish(events.TypeIncidentOpened, map[string]any{"incident": map[string]any{"id": 7, "state": "open"}}); err != nil {
		t.Fatal(err)
	}
	f := c.expect(t, events.TypeIncidentOpened, 1)
	if string(f.Data) != `{"incident":{"id":7,"state":"open"}}` {
		t.Errorf("data = %s", f.Data)
	}
	if f.Time.IsZero() {
		t.Error("event frame has no time")
	}

	publish(t, ts.bus, 2)
	c.expect(t, events.TypeFix, 2)
	c.expect(t, events.TypeFix, 3)

	// The counter moves after the write returns, so the client may read a
	// frame a moment before it is counted.
	want := map[string]float64{"hello": 1, events.TypeIncidentOpened: 1, events.TypeFix: 2}
	for typ, n := range want {
		eventually(t, fmt.Sprintf("frames_sent_total{type=%s} = %v", typ, n), func() bool {
			return metricValue(t, ts.reg, "xpress_api_websocket_frames_sent_total", map[string]string{"type": typ}) == n
		})
	}
	if got := metricValue(t, ts.reg, "xpress_api_websocket_clients", nil); got != 1 {
		t.Errorf("websocket_clients = %v, want 1", got)
	}
}

func TestStream_FrameJSONShape(t *testing.T) {
	ts := newTestServer(t, events.Config{Now: func() time.Time { return testNow }}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, ts.streamURL(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()

	_, hello, err := conn.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(hello); got != `{"type":"hello","seq":0}` {
		t.Errorf("hello frame = %s", got)
	}

	if _, err := ts.bus.Publish(events.TypeVehicleStatus, map[string]any{"vehicle_id": "MNL-0001", "online": false}); err != nil {
		t.Fatal(err)
	}
	_, event, err := conn.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"type":"vehicle.status","seq":1,"time":"2026-12-04T02:00:00Z","data":{"online":false,"vehicle_id":"MNL-0001"}}`
	if got := string(event); got != want {
		t.Errorf("event frame = %s, want %s", got, want)
	}
}

func TestStream_ResumesAfterSeq(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	publish(t, ts.bus, 5)

	c := ts.dial(t, "?after=2", nil)
	c.expect(t, "hello", 5)
	for seq := uint64(3); seq <= 5; seq++ {
		c.expect(t, events.TypeFix, seq)
	}
	publish(t, ts.bus, 1)
	c.expect(t, events.TypeFix, 6)
}

func TestStream_ResetWhenResumePointLost(t *testing.T) {
	ts := newTestServer(t, events.Config{History: 3}, nil)
	publish(t, ts.bus, 10)

	c := ts.dial(t, "?after=1", nil)
	c.expect(t, "hello", 10)
	c.expect(t, "reset", 10)
	publish(t, ts.bus, 1)
	c.expect(t, events.TypeFix, 11)
}

func TestStream_ResetWhenResumePointAhead(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	publish(t, ts.bus, 2)

	// A client that saw seq 900 of a previous hub process.
	c := ts.dial(t, "?after=900", nil)
	c.expect(t, "hello", 2)
	c.expect(t, "reset", 2)
	publish(t, ts.bus, 1)
	c.expect(t, events.TypeFix, 3)
}

func TestStream_BadAfterIs400(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	for _, after := range []string{"-1", "abc", "1.5"} {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		_, res, err := websocket.Dial(ctx, ts.streamURL("?after="+after), nil)
		cancel()
		if err == nil {
			t.Errorf("dial with after=%s succeeded, want 400", after)
			continue
		}
		if res == nil || res.StatusCode != http.StatusBadRequest {
			t.Errorf("dial with after=%s: response %v, want 400", after, res)
		}
	}
}

func TestStream_RejectsForeignOrigin(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()

	header := http.Header{"Origin": {"https://evil.example"}}
	_, res, err := websocket.Dial(ctx, ts.streamURL(""), &websocket.DialOptions{HTTPHeader: header})
	if err == nil {
		t.Fatal("dial from a foreign origin succeeded")
	}
	if res == nil || res.StatusCode != http.StatusForbidden {
		t.Fatalf("dial from a foreign origin: response %v, want 403", res)
	}
	if got := res.Header.Get("X-Frame-Options"); got != "DENY" {
		t.Errorf("403 response X-Frame-Options = %q, want DENY", got)
	}

	// The hub's own origin is accepted.
	same := http.Header{"Origin": {ts.URL}}
	c := ts.dial(t, "", &websocket.DialOptions{HTTPHeader: same})
	c.expect(t, "hello", 0)
}

func TestStream_AcceptsConfiguredOrigin(t *testing.T) {
	ts := newTestServer(t, events.Config{}, func(c *api.Config) {
		c.AllowedOrigins = []string{"ops.example.com"}
	})
	c := ts.dial(t, "", &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://ops.example.com"}}})
	c.expect(t, "hello", 0)

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	_, res, err := websocket.Dial(ctx, ts.streamURL(""), &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://other.example.com"}}})
	if err == nil || res == nil || res.StatusCode != http.StatusForbidden {
		t.Errorf("dial from an unlisted origin: err %v, response %v, want 403", err, res)
	}
}

func TestConfig_ValidateRejectsBadOriginPattern(t *testing.T) {
	cfg := api.Config{Store: &fakeStore{}, Bus: events.NewBus(events.Config{}), AllowedOrigins: []string{"[ops"}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), `invalid origin pattern "[ops"`) {
		t.Errorf("Validate() = %v, want an invalid origin pattern error", err)
	}
	if err := (api.Config{}).Validate(); err == nil || !strings.Contains(err.Error(), "Store is required") || !strings.Contains(err.Error(), "Bus is required") {
		t.Errorf("Validate() of an empty config = %v, want Store and Bus required", err)
	}
}

func TestStream_PingKeepsConnectionAlive(t *testing.T) {
	ts := newTestServer(t, events.Config{}, func(c *api.Config) {
		c.PingInterval = 20 * time.Millisecond
		c.WriteTimeout = time.Second
	})
	pings := make(chan struct{}, 100)
	c := ts.dial(t, "", &websocket.DialOptions{OnPingReceived: func(context.Context, []byte) bool {
		select {
		case pings <- struct{}{}:
		default:
		}
		return true
	}})
	c.expect(t, "hello", 0)

	for i := range 5 {
		select {
		case <-pings:
		case <-time.After(waitTimeout):
			t.Fatalf("received %d pings, want 5", i)
		}
	}
	publish(t, ts.bus, 1)
	c.expect(t, events.TypeFix, 1)
}

func TestStream_UnresponsiveClientDisconnected(t *testing.T) {
	ts := newTestServer(t, events.Config{}, func(c *api.Config) {
		c.PingInterval = 20 * time.Millisecond
		c.WriteTimeout = 100 * time.Millisecond
	})

	// A raw client completes the handshake and then never reads, so it
	// never responds to a ping.
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /api/v1/stream HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", strings.TrimPrefix(ts.URL, "http://"))
	if err := conn.SetReadDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake status %d, want 101", res.StatusCode)
	}
	eventually(t, "the stream counts one client", func() bool {
		return metricValue(t, ts.reg, "xpress_api_websocket_clients", nil) == 1
	})

	eventually(t, "the server drops the client that misses its pongs", func() bool {
		return metricValue(t, ts.reg, "xpress_api_websocket_clients", nil) == 0
	})
	// The server closed the TCP connection: reading ends with EOF.
	if _, err := io.Copy(io.Discard, conn); err != nil {
		t.Errorf("read after disconnect: %v, want EOF", err)
	}
}

func TestStream_ServerCloseDisconnectsClients(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	a := ts.dial(t, "", nil)
	b := ts.dial(t, "?after=0", nil)
	a.expect(t, "hello", 0)
	b.expect(t, "hello", 0)

	closed := make(chan error, 1)
	go func() { closed <- ts.api.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("close: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Close did not return")
	}

	for name, c := range map[string]*streamClient{"a": a, "b": b} {
		err := c.waitClosed(t)
		if status := websocket.CloseStatus(err); status != websocket.StatusGoingAway {
			t.Errorf("client %s closed with %v (status %d), want going away", name, err, status)
		}
	}
	if got := metricValue(t, ts.reg, "xpress_api_websocket_clients", nil); got != 0 {
		t.Errorf("websocket_clients after Close = %v, want 0", got)
	}

	// New streams are refused once the server is closing.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	_, res, err := websocket.Dial(ctx, ts.streamURL(""), nil)
	if err == nil || res == nil || res.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial after Close: err %v, response %v, want 503", err, res)
	}
	if err := ts.api.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestStream_BusCloseDisconnectsClients(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	c := ts.dial(t, "", nil)
	c.expect(t, "hello", 0)
	if err := ts.bus.Close(); err != nil {
		t.Fatal(err)
	}
	if status := websocket.CloseStatus(c.waitClosed(t)); status != websocket.StatusGoingAway {
		t.Errorf("close status %d, want going away", status)
	}
}

func TestStream_ClientDataFrameClosesStream(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	c := ts.dial(t, "", nil)
	c.expect(t, "hello", 0)

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(`{"type":"ack"}`)); err != nil {
		t.Fatal(err)
	}
	if status := websocket.CloseStatus(c.waitClosed(t)); status != websocket.StatusPolicyViolation {
		t.Errorf("close status %d, want policy violation", status)
	}
	eventually(t, "the client is no longer counted", func() bool {
		return metricValue(t, ts.reg, "xpress_api_websocket_clients", nil) == 0
	})
}

// A client that stops reading while events pile up falls behind the bus.
// The stream resumes from its last sent event, so the client still gets
// every event in order.
func TestStream_SlowClientGetsEveryEvent(t *testing.T) {
	const n, size = 200, 64 << 10
	ts := newTestServer(t, events.Config{Buffer: 2}, func(c *api.Config) {
		c.WriteTimeout = waitTimeout
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, ts.streamURL(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 20)
	if _, _, err := conn.Read(ctx); err != nil {
		t.Fatalf("read hello: %v", err)
	}

	// About 13 MB of events without reading: more than loopback socket
	// buffers hold, so the stream's writes block and its buffer of 2 overflows.
	pad := strings.Repeat("x", size)
	for i := range n {
		if _, err := ts.bus.Publish(events.TypeFix, map[string]any{"n": i, "pad": pad}); err != nil {
			t.Fatal(err)
		}
	}
	var next uint64 = 1
	for next <= n {
		_, data, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("read event %d: %v", next, err)
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			t.Fatal(err)
		}
		if f.Type != events.TypeFix || f.Seq != next {
			t.Fatalf("frame %s seq %d, want fix seq %d", f.Type, f.Seq, next)
		}
		next++
	}
	if got := metricValue(t, ts.reg, "xpress_events_slow_consumers_total", nil); got < 1 {
		t.Errorf("slow consumers = %v, want at least 1: the test did not exercise a resume", got)
	}
}

func TestStream_CountsClients(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	for range 3 {
		c := ts.dial(t, "", nil)
		c.expect(t, "hello", 0)
	}
	if got := metricValue(t, ts.reg, "xpress_api_websocket_clients", nil); got != 3 {
		t.Errorf("websocket_clients = %v, want 3", got)
	}
	if err := ts.api.Close(); err != nil {
		t.Fatal(err)
	}
	if got := metricValue(t, ts.reg, "xpress_api_websocket_clients", nil); got != 0 {
		t.Errorf("websocket_clients after Close = %v, want 0", got)
	}
}

// The stream writes the bytes the bus encoded at publish, so every client
// gets exactly the event's JSON encoding.
func TestStream_WritesBusFrame(t *testing.T) {
	ts := newTestServer(t, events.Config{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, ts.streamURL(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	if _, _, err := conn.Read(ctx); err != nil {
		t.Fatalf("read hello: %v", err)
	}

	ev, err := ts.bus.Publish(events.TypeIncidentOpened, map[string]any{"note": `<b>"SOS" & help</b>`, "driver": "Niño"})
	if err != nil {
		t.Fatal(err)
	}
	_, got, err := conn.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) || string(got) != string(ev.Frame()) {
		t.Errorf("frame = %s\nwant %s", got, want)
	}
}

func TestStream_ManyClientsGetEveryEvent(t *testing.T) {
	const clients, n = 20, 200
	ts := newTestServer(t, events.Config{}, nil)
	cs := make([]*streamClient, clients)
	for i := range cs {
		cs[i] = ts.dial(t, "", nil)
		cs[i].expect(t, "hello", 0)
	}

	for i := range n {
		typ := events.TypeFix
		if i%10 == 0 {
			typ = events.TypeIncidentOpened
		}
		if _, err := ts.bus.Publish(typ, map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range cs {
		for seq := uint64(1); seq <= n; seq++ {
			f := c.next(t)
			if f.Seq != seq {
				t.Fatalf("client %d: frame seq %d, want %d", i, f.Seq, seq)
			}
			if want := seq%10 == 1; want != (f.Type == events.TypeIncidentOpened) {
				t.Fatalf("client %d: frame %d has type %s", i, seq, f.Type)
			}
		}
	}
}

// A client that stops reading until the history no longer holds its next
// event gets a reset frame, then the events after it.
func TestStream_ClientBehindHistoryGetsReset(t *testing.T) {
	const n, size = 400, 64 << 10
	ts := newTestServer(t, events.Config{History: 10}, func(c *api.Config) {
		c.WriteTimeout = 2 * waitTimeout
	})
	ctx, cancel := context.WithTimeout(context.Background(), 4*waitTimeout)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, ts.streamURL(""), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 20)
	if _, _, err := conn.Read(ctx); err != nil {
		t.Fatalf("read hello: %v", err)
	}

	// About 26 MB of events without reading: more than loopback socket
	// buffers hold, so the stream's writes block while the history of 10
	// moves on.
	pad := strings.Repeat("x", size)
	for i := range n {
		if _, err := ts.bus.Publish(events.TypeFix, map[string]any{"n": i, "pad": pad}); err != nil {
			t.Fatal(err)
		}
	}

	read := func() frame {
		t.Helper()
		_, data, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	var want uint64 = 1
	f := read()
	for f.Type != "reset" {
		if f.Type != events.TypeFix || f.Seq != want {
			t.Fatalf("frame %s seq %d before the reset, want fix seq %d", f.Type, f.Seq, want)
		}
		want++
		f = read()
	}
	if f.Seq < want {
		t.Fatalf("reset seq %d, want at least the next seq %d", f.Seq, want)
	}

	// After the reset the stream continues from the reset's seq.
	marker, err := ts.bus.Publish(events.TypeIncidentOpened, "after the reset")
	if err != nil {
		t.Fatal(err)
	}
	for want = f.Seq + 1; want <= marker.Seq; want++ {
		if f = read(); f.Seq != want {
			t.Fatalf("frame %s seq %d after the reset, want seq %d", f.Type, f.Seq, want)
		}
	}
	if f.Type != events.TypeIncidentOpened {
		t.Errorf("last frame type %s, want %s", f.Type, events.TypeIncidentOpened)
	}
	if got := metricValue(t, ts.reg, "xpress_events_slow_consumers_total", nil); got < 1 {
		t.Errorf("slow consumers = %v, want at least 1", got)
	}
}

// A client that stops reading is disconnected once a write blocks for the
// write timeout, even with no ping due.
func TestStream_BlockedWriteTimesOut(t *testing.T) {
	const n, size = 400, 64 << 10
	ts := newTestServer(t, events.Config{}, func(c *api.Config) {
		c.PingInterval = time.Hour
		c.WriteTimeout = 200 * time.Millisecond
	})

	// A raw client completes the handshake and then never reads.
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /api/v1/stream HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", strings.TrimPrefix(ts.URL, "http://"))
	if err := conn.SetReadDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake status %d, want 101", res.StatusCode)
	}
	eventually(t, "the stream counts one client", func() bool {
		return metricValue(t, ts.reg, "xpress_api_websocket_clients", nil) == 1
	})

	pad := strings.Repeat("x", size)
	for i := range n {
		if _, err := ts.bus.Publish(events.TypeFix, map[string]any{"n": i, "pad": pad}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the server drops the client whose writes block", func() bool {
		return metricValue(t, ts.reg, "xpress_api_websocket_clients", nil) == 0
	})
	sent := metricValue(t, ts.reg, "xpress_api_websocket_frames_sent_total", map[string]string{"type": events.TypeFix})
	if sent >= n {
		t.Errorf("%v fix frames counted as sent to a client that never read, want fewer than %d", sent, n)
	}
}
