package dispatchtest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/notify"
)

// Delivery is one webhook request the receiver accepted.
type Delivery struct {
	Key  string
	Body []byte
}

// WebhookReceiver is an httptest server on 127.0.0.1 that verifies each
// request's signature with notify.VerifyWebhook, replies 401 to a bad
// one and keeps the accepted requests. Replies can be scripted.
type WebhookReceiver struct {
	t      testing.TB
	srv    *httptest.Server
	secret []byte
	now    func() time.Time

	mu         sync.Mutex
	deliveries []Delivery
	statuses   []int
	requests   int
	badSigs    int
}

// NewWebhookReceiver starts a receiver that checks signatures with secret
// against the clock now (nil means time.Now) and closes it at cleanup.
func NewWebhookReceiver(t testing.TB, secret []byte, now func() time.Time) *WebhookReceiver {
	t.Helper()
	if now == nil {
		now = time.Now
	}
	w := &WebhookReceiver{t: t, secret: secret, now: now}
	w.srv = httptest.NewServer(http.HandlerFunc(w.serve))
	t.Cleanup(w.srv.Close)
	return w
}

// URL returns the receiver's URL, with a path like a real hook's.
func (w *WebhookReceiver) URL() string { return w.srv.URL + "/hooks/sos/secret-token" }

// Script sets the statuses of the replies to the next requests, such as
// 500 or 410, before any request is accepted.
func (w *WebhookReceiver) Script(statuses ...int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.statuses = append(w.statuses, statuses...)
}

// Deliveries returns the accepted requests, oldest first.
func (w *WebhookReceiver) Deliveries() []Delivery {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Delivery(nil), w.deliveries...)
}

// Requests returns how many requests arrived, whatever their reply.
func (w *WebhookReceiver) Requests() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.requests
}

// BadSignatures returns how many requests failed verification.
func (w *WebhookReceiver) BadSignatures() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.badSigs
}

func (w *WebhookReceiver) serve(rw http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, notify.MaxWebhookPayload+1))
	if err != nil {
		http.Error(rw, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.requests++
	if err := notify.VerifyWebhook(w.secret, r.Header, body, w.now(), 0); err != nil {
		w.badSigs++
		http.Error(rw, err.Error(), http.StatusUnauthorized)
		return
	}
	if len(w.statuses) > 0 {
		status := w.statuses[0]
		w.statuses = w.statuses[1:]
		http.Error(rw, "scripted reply", status)
		return
	}
	w.deliveries = append(w.deliveries, Delivery{Key: r.Header.Get(notify.WebhookIdempotencyKeyHeader), Body: body})
	rw.Header().Set("X-Request-Id", "req-"+RandomHex(w.t, 6))
	rw.WriteHeader(http.StatusNoContent)
}
