package notify

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const webhookPayload = `{"type":"sos","incident_id":12,"vehicle_id":"taxi-0917","lat":14.5995,"lon":120.9842}`

// webhookReceiver is an httptest receiver that checks each request with
// VerifyWebhook and replies 401 to a bad one, as a real receiver would.
type webhookReceiver struct {
	srv      *httptest.Server
	secret   []byte
	hits     atomic.Int32
	verified atomic.Int32
	lastKey  atomic.Value
	lastBody atomic.Value
	// reply, when set, replies to verified requests instead of 202.
	reply func(w http.ResponseWriter)
}

func newWebhookReceiver(t *testing.T, secret []byte) *webhookReceiver {
	t.Helper()
	rcv := &webhookReceiver{secret: secret}
	rcv.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rcv.hits.Add(1)
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "want a JSON POST", http.StatusBadRequest)
			return
		}
		if err := VerifyWebhook(rcv.secret, r.Header, body, time.Now(), time.Minute); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		rcv.verified.Add(1)
		rcv.lastKey.Store(r.Header.Get(WebhookIdempotencyKeyHeader))
		rcv.lastBody.Store(string(body))
		if rcv.reply != nil {
			rcv.reply(w)
			return
		}
		w.Header().Set("X-Request-Id", "rcv-"+strconv.Itoa(int(rcv.verified.Load())))
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(rcv.srv.Close)
	return rcv
}

func newTestWebhook(t *testing.T, secret []byte, change func(*WebhookConfig)) *Webhook {
	t.Helper()
	cfg := WebhookConfig{Secret: secret, HTTPClient: &http.Client{Transport: loopbackOnly{}}, Timeout: 5 * time.Second}
	if change != nil {
		change(&cfg)
	}
	w, err := NewWebhook(cfg)
	if err != nil {
		t.Fatalf("NewWebhook: %v", err)
	}
	return w
}

func webhookMessage(to string) Message {
	return Message{Channel: ChannelWebhook, To: to, Key: "incident-12/webhook/ops", Payload: []byte(webhookPayload)}
}

func TestWebhookSendSigned(t *testing.T) {
	secret := []byte(randomHex(t, 32))
	rcv := newWebhookReceiver(t, secret)
	w := newTestWebhook(t, secret, nil)

	res, err := w.Send(context.Background(), webhookMessage(rcv.srv.URL+"/hooks/sos"))
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if rcv.verified.Load() != 1 {
		t.Fatalf("receiver verified %d requests, want 1", rcv.verified.Load())
	}
	if got := rcv.lastKey.Load(); got != "incident-12/webhook/ops" {
		t.Errorf("idempotency key header = %v", got)
	}
	if got := rcv.lastBody.Load(); got != webhookPayload {
		t.Errorf("body = %v, want the payload unchanged", got)
	}
	if res.ProviderID != "rcv-1" || res.Status != "202" {
		t.Errorf("Result = %+v, want ProviderID rcv-1 and Status 202", res)
	}
}

func TestWebhookSendWrongSecret(t *testing.T) {
	rcv := newWebhookReceiver(t, []byte(randomHex(t, 32)))
	w := newTestWebhook(t, []byte(randomHex(t, 32)), nil)
	_, err := w.Send(context.Background(), webhookMessage(rcv.srv.URL))
	var e *Error
	if !errors.As(err, &e) || !e.Permanent || e.Status != http.StatusUnauthorized {
		t.Fatalf("Send with a wrong secret = %v, want a permanent 401", err)
	}
	if !strings.Contains(err.Error(), "does not match") {
		t.Errorf("error %q does not carry the receiver's reason", err)
	}
}

func TestWebhookSendStaleClock(t *testing.T) {
	secret := []byte(randomHex(t, 32))
	rcv := newWebhookReceiver(t, secret)
	w := newTestWebhook(t, secret, func(c *WebhookConfig) {
		c.Now = func() time.Time { return time.Now().Add(-10 * time.Minute) }
	})
	_, err := w.Send(context.Background(), webhookMessage(rcv.srv.URL))
	if !IsPermanent(err) || !strings.Contains(err.Error(), "skew") {
		t.Fatalf("Send with a clock 10 min behind = %v, want the receiver's stale rejection", err)
	}
	if rcv.verified.Load() != 0 {
		t.Error("receiver accepted a stale request")
	}
}

func TestWebhookSendReplies(t *testing.T) {
	secret := []byte(randomHex(t, 32))
	cases := []struct {
		name       string
		reply      func(w http.ResponseWriter)
		permanent  bool
		unknown    bool
		status     int
		retryAfter time.Duration
		text       string
	}{
		{"429", func(w http.ResponseWriter) {
			w.Header().Set("Retry-After", "12")
			w.WriteHeader(http.StatusTooManyRequests)
		}, false, false, 429, 12 * time.Second, "429"},
		{"408", func(w http.ResponseWriter) { w.WriteHeader(http.StatusRequestTimeout) }, false, false, 408, 0, "408"},
		{"503", func(w http.ResponseWriter) { w.WriteHeader(http.StatusServiceUnavailable) }, false, true, 503, 0, "503"},
		{"400 with reason", func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, "unknown incident\x00\n")
		}, true, false, 400, 0, `"unknown incident"`},
		{"410", func(w http.ResponseWriter) { w.WriteHeader(http.StatusGone) }, true, false, 410, 0, "(empty body)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rcv := newWebhookReceiver(t, secret)
			rcv.reply = c.reply
			w := newTestWebhook(t, secret, nil)
			_, err := w.Send(context.Background(), webhookMessage(rcv.srv.URL))
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Send = %v, want *Error", err)
			}
			if e.Permanent != c.permanent || e.Unknown != c.unknown || e.Status != c.status || e.RetryAfter != c.retryAfter {
				t.Errorf("Error = {Permanent:%v Unknown:%v Status:%d RetryAfter:%v}, want {%v %v %d %v}",
					e.Permanent, e.Unknown, e.Status, e.RetryAfter, c.permanent, c.unknown, c.status, c.retryAfter)
			}
			if !strings.Contains(err.Error(), c.text) {
				t.Errorf("error %q lacks %q", err, c.text)
			}
		})
	}
}

func TestWebhookSendDoesNotFollowRedirects(t *testing.T) {
	secret := []byte(randomHex(t, 32))
	target := newWebhookReceiver(t, secret)
	redirect := httptest.NewServer(http.RedirectHandler(target.srv.URL, http.StatusFound))
	t.Cleanup(redirect.Close)

	w := newTestWebhook(t, secret, nil)
	_, err := w.Send(context.Background(), webhookMessage(redirect.URL))
	if !IsPermanent(err) {
		t.Fatalf("Send to a redirect = %v, want a permanent error", err)
	}
	if target.hits.Load() != 0 {
		t.Error("sender followed the redirect")
	}
}

func TestWebhookSendRejectsBadMessage(t *testing.T) {
	secret := []byte(randomHex(t, 32))
	rcv := newWebhookReceiver(t, secret)
	w := newTestWebhook(t, secret, nil)
	cases := []struct {
		name string
		msg  Message
		want string
	}{
		{"ftp URL", webhookMessage("ftp://127.0.0.1/hook"), "must start with http:// or https://"},
		{"file URL", webhookMessage("file:///etc/passwd"), "must start with http:// or https://"},
		{"javascript URL", webhookMessage("javascript:alert(1)"), "must start with http:// or https://"},
		{"no host", webhookMessage("http:///path"), "has no host"},
		{"empty URL", webhookMessage(""), "must start with http:// or https://"},
		{"not JSON", Message{Channel: ChannelWebhook, To: rcv.srv.URL, Payload: []byte("{oops")}, "not valid JSON"},
		{"empty payload", Message{Channel: ChannelWebhook, To: rcv.srv.URL}, "not valid JSON"},
		{"key with newline", Message{Channel: ChannelWebhook, To: rcv.srv.URL, Key: "a\r\nX-Evil: 1", Payload: []byte("{}")}, "control character"},
		{"key with NUL", Message{Channel: ChannelWebhook, To: rcv.srv.URL, Key: "a\x00b", Payload: []byte("{}")}, "control character"},
		{"SMS channel", Message{Channel: ChannelSMS, To: rcv.srv.URL, Payload: []byte("{}")}, `cannot send channel "sms"`},
		{"oversized", Message{Channel: ChannelWebhook, To: rcv.srv.URL, Payload: []byte(`"` + strings.Repeat("a", MaxWebhookPayload) + `"`)}, "more than"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := w.Send(context.Background(), c.msg)
			if !IsPermanent(err) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Send = %v, want a permanent error containing %q", err, c.want)
			}
		})
	}
	if rcv.hits.Load() != 0 {
		t.Errorf("receiver got %d requests for messages that cannot be sent", rcv.hits.Load())
	}
}

func TestWebhookSendTimeout(t *testing.T) {
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(hang.Close)
	t.Cleanup(func() { close(release) })

	w := newTestWebhook(t, []byte(randomHex(t, 32)), func(c *WebhookConfig) { c.Timeout = 200 * time.Millisecond })
	_, err := w.Send(context.Background(), webhookMessage(hang.URL))
	var e *Error
	if !errors.As(err, &e) || e.Permanent || !e.Unknown {
		t.Fatalf("Send to a silent receiver = %v, want a transient error with an unknown outcome", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not match context.DeadlineExceeded", err)
	}
}

func TestWebhookSendConnectionRefused(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	w := newTestWebhook(t, []byte(randomHex(t, 32)), nil)
	_, err := w.Send(context.Background(), webhookMessage(closed.URL))
	var e *Error
	if !errors.As(err, &e) || e.Permanent || e.Unknown {
		t.Fatalf("Send to a closed port = %v, want a transient error with a known outcome", err)
	}
}

func TestNewWebhookRejectsShortSecret(t *testing.T) {
	if _, err := NewWebhook(WebhookConfig{Secret: []byte("short")}); err == nil || !strings.Contains(err.Error(), "at least 16") {
		t.Errorf("NewWebhook with a 5-byte secret = %v, want an error", err)
	}
}

func TestVerifyWebhook(t *testing.T) {
	secret := []byte(randomHex(t, 32))
	now := time.Unix(1_796_400_000, 0)
	body := []byte(webhookPayload)
	signed := func(ts int64, b []byte, key []byte) http.Header {
		h := http.Header{}
		h.Set(WebhookTimestampHeader, strconv.FormatInt(ts, 10))
		h.Set(WebhookSignatureHeader, SignWebhook(key, ts, b))
		return h
	}

	if err := VerifyWebhook(secret, signed(now.Unix(), body, secret), body, now, time.Minute); err != nil {
		t.Fatalf("valid request rejected: %v", err)
	}
	if err := VerifyWebhook(secret, signed(now.Unix()-299, body, secret), body, now, 0); err != nil {
		t.Errorf("request 299 s old rejected under the default skew: %v", err)
	}

	timestampSwapped := signed(now.Unix(), body, secret)
	timestampSwapped.Set(WebhookTimestampHeader, strconv.FormatInt(now.Unix()+1, 10))
	upperHex := signed(now.Unix(), body, secret)
	upperHex.Set(WebhookSignatureHeader, "sha256="+strings.ToUpper(strings.TrimPrefix(upperHex.Get(WebhookSignatureHeader), "sha256=")))
	noPrefix := signed(now.Unix(), body, secret)
	noPrefix.Set(WebhookSignatureHeader, strings.TrimPrefix(noPrefix.Get(WebhookSignatureHeader), "sha256="))
	shortSig := signed(now.Unix(), body, secret)
	shortSig.Set(WebhookSignatureHeader, "sha256=abcd")
	noTimestamp := signed(now.Unix(), body, secret)
	noTimestamp.Del(WebhookTimestampHeader)
	badTimestamp := signed(now.Unix(), body, secret)
	badTimestamp.Set(WebhookTimestampHeader, "yesterday")

	cases := []struct {
		name   string
		secret []byte
		header http.Header
		body   []byte
		want   error
	}{
		{"tampered body", secret, signed(now.Unix(), body, secret), []byte(strings.Replace(webhookPayload, "12", "13", 1)), ErrWebhookSignature},
		{"timestamp changed after signing", secret, timestampSwapped, body, ErrWebhookSignature},
		{"wrong secret", []byte(randomHex(t, 32)), signed(now.Unix(), body, secret), body, ErrWebhookSignature},
		{"no secret", nil, signed(now.Unix(), body, secret), body, ErrWebhookSignature},
		{"stale", secret, signed(now.Unix()-61, body, secret), body, ErrWebhookStale},
		{"from the future", secret, signed(now.Unix()+61, body, secret), body, ErrWebhookStale},
		{"ancient", secret, signed(-1<<62, body, secret), body, ErrWebhookStale},
		{"no prefix", secret, noPrefix, body, ErrWebhookSignature},
		{"short signature", secret, shortSig, body, ErrWebhookSignature},
		{"no timestamp", secret, noTimestamp, body, ErrWebhookSignature},
		{"bad timestamp", secret, badTimestamp, body, ErrWebhookSignature},
		{"no headers", secret, http.Header{}, body, ErrWebhookSignature},
	}
	for _, c := range cases {
		err := VerifyWebhook(c.secret, c.header, c.body, now, time.Minute)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	// Hex digits in upper case decode to the same MAC.
	if err := VerifyWebhook(secret, upperHex, body, now, time.Minute); err != nil {
		t.Errorf("upper-case hex signature rejected: %v", err)
	}
}
