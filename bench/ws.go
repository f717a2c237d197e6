package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// operatorReadLimit bounds one frame of the event stream.
const operatorReadLimit = 1 << 20

// operator is one operator's WebSocket on the hub's /api/v1/stream. It
// records when each incident.opened event arrived, by SOS id, and reads
// past every other frame without decoding it.
type operator struct {
	conn   *websocket.Conn
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	opened map[string]time.Time
	// notify receives a value after each new incident.opened, capacity 1.
	notify chan struct{}

	frames atomic.Int64
	// resets counts reset frames: the hub no longer had the events after
	// this client's position, so incidents opened meanwhile were not seen.
	resets atomic.Int64
	// err is the reason the read loop ended, set before done is closed.
	err error
}

// streamFrame is the part of an event frame the operator decodes.
type streamFrame struct {
	Type string `json:"type"`
	Data struct {
		Incident struct {
			SOSID string `json:"sos_id"`
		} `json:"incident"`
	} `json:"data"`
}

var (
	openedMarker = []byte(`"incident.opened"`)
	resetMarker  = []byte(`"type":"reset"`)
)

// sourceClient returns an HTTP client whose connections leave from the
// given loopback address, or from the default one when ip is nil. Spreading
// clients over 127.0.0.x gives each address its own range of ephemeral ports.
func sourceClient(ip net.IP) *http.Client {
	d := &net.Dialer{Timeout: 30 * time.Second}
	if ip != nil {
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

// operatorHandshakeTimeout bounds an operator's WebSocket handshake and
// hello frame.
const operatorHandshakeTimeout = 30 * time.Second

// dialOperator opens the event stream of the hub whose HTTP server is at
// httpAddr, authenticated with bearer token, and waits for its hello
// frame.
func dialOperator(ctx context.Context, httpAddr, token string, client *http.Client) (*operator, error) {
	url := "ws://" + loopbackHostPort(httpAddr) + "/api/v1/stream"
	// A hub at its connection cap leaves new TCP connections in the
	// kernel's accept queue without reading them, so the handshake needs
	// a deadline of its own.
	ctx, cancelDial := context.WithTimeout(ctx, operatorHandshakeTimeout)
	defer cancelDial()
	conn, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPClient: client,
		HTTPHeader: http.Header{"Authorization": {"Bearer " + token}},
	})
	if err != nil {
		return nil, fmt.Errorf("open operator stream %s: %w", url, err)
	}
	conn.SetReadLimit(operatorReadLimit)
	_, hello, err := conn.Read(ctx)
	if err != nil {
		conn.CloseNow()
		return nil, fmt.Errorf("read hello frame from %s: %w", url, err)
	}
	if !bytes.Contains(hello, []byte(`"type":"hello"`)) {
		conn.CloseNow()
		return nil, fmt.Errorf("first frame from %s is not a hello frame: %.200s", url, hello)
	}

	readCtx, cancel := context.WithCancel(context.Background())
	o := &operator{
		conn:   conn,
		cancel: cancel,
		done:   make(chan struct{}),
		opened: map[string]time.Time{},
		notify: make(chan struct{}, 1),
	}
	go o.readLoop(readCtx)
	return o, nil
}

func (o *operator) readLoop(ctx context.Context) {
	defer close(o.done)
	for {
		_, data, err := o.conn.Read(ctx)
		if err != nil {
			o.err = err
			return
		}
		now := time.Now()
		o.frames.Add(1)
		// Frames start with their type, so the first bytes tell an
		// incident apart from the far more frequent fixes.
		head := data[:min(len(data), 48)]
		if bytes.Contains(head, resetMarker) {
			o.resets.Add(1)
			continue
		}
		if !bytes.Contains(head, openedMarker) {
			continue
		}
		var f streamFrame
		if err := json.Unmarshal(data, &f); err != nil {
			o.err = fmt.Errorf("incident.opened frame is not JSON: %w: %.200s", err, data)
			return
		}
		o.mu.Lock()
		if _, dup := o.opened[f.Data.Incident.SOSID]; !dup {
			o.opened[f.Data.Incident.SOSID] = now
		}
		o.mu.Unlock()
		select {
		case o.notify <- struct{}{}:
		default:
		}
	}
}

// openedAt returns when the incident of an SOS id was seen opening.
func (o *operator) openedAt(sosID string) (time.Time, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	t, ok := o.opened[sosID]
	return t, ok
}

// waitOpened waits until the incidents of every id were seen opening, the
// stream ends or ctx is done, and returns how many were not seen.
func (o *operator) waitOpened(ctx context.Context, ids []string) int {
	for {
		missing := 0
		o.mu.Lock()
		for _, id := range ids {
			if _, ok := o.opened[id]; !ok {
				missing++
			}
		}
		o.mu.Unlock()
		if missing == 0 {
			return 0
		}
		select {
		case <-o.notify:
		case <-o.done:
			return missing
		case <-ctx.Done():
			return missing
		}
	}
}

// streamErr returns why the stream ended, or nil while it is open.
func (o *operator) streamErr() error {
	select {
	case <-o.done:
		if o.err == nil {
			return errors.New("stream ended")
		}
		return o.err
	default:
		return nil
	}
}

// close closes the WebSocket and waits for the read loop.
func (o *operator) close() {
	o.cancel()
	o.conn.CloseNow()
	<-o.done
}
