package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
)

// Webhook headers. The signature is "sha256=" and the hex HMAC-SHA256,
// keyed with the shared secret, of the timestamp, a dot and the body.
// It does not cover the idempotency key.
const (
	WebhookTimestampHeader      = "X-Xpress-Timestamp"
	WebhookIdempotencyKeyHeader = "X-Xpress-Idempotency-Key"
	WebhookSignatureHeader      = "X-Xpress-Signature"
)

// Webhook defaults and limits.
const (
	// DefaultWebhookTimeout bounds one webhook request.
	DefaultWebhookTimeout = 10 * time.Second
	// DefaultWebhookMaxSkew is the clock difference VerifyWebhook accepts
	// when given none.
	DefaultWebhookMaxSkew = 5 * time.Minute
	// MinWebhookSecret is the shortest secret NewWebhook accepts, in
	// bytes.
	MinWebhookSecret = 16
	// MaxWebhookPayload is the largest body Send posts, in bytes.
	MaxWebhookPayload = 1 << 20
)

// Errors of VerifyWebhook.
var (
	// ErrWebhookSignature means the signature is missing, malformed or
	// does not match the body and timestamp.
	ErrWebhookSignature = errors.New("webhook signature invalid")
	// ErrWebhookStale means the timestamp is further from now than the
	// allowed skew: a replay, or a clock that is off.
	ErrWebhookStale = errors.New("webhook timestamp outside the allowed skew")
)

// WebhookConfig configures a webhook sender.
type WebhookConfig struct {
	// Secret is the key shared with the receivers, at least
	// MinWebhookSecret bytes. Required. Load it from the environment or a
	// file, never from a flag.
	Secret []byte
	// HTTPClient supplies the transport. Nil means a private client. Its
	// Timeout is used when Timeout is zero. Redirects are never followed,
	// because a redirected POST would lose its body.
	HTTPClient *http.Client
	// Timeout bounds each request. Zero means HTTPClient.Timeout when
	// set, else DefaultWebhookTimeout.
	Timeout time.Duration
	// Now is the clock of the timestamp header. Nil means time.Now.
	Now func() time.Time
	// Logger receives a line per send. Nil means discard.
	Logger *slog.Logger
}

// Webhook posts signed JSON notifications to http(s) URLs. It is safe for
// concurrent use.
type Webhook struct {
	secret  []byte
	client  *http.Client
	timeout time.Duration
	now     func() time.Time
	log     *slog.Logger
}

var _ Sender = (*Webhook)(nil)

// NewWebhook checks cfg and returns a sender.
func NewWebhook(cfg WebhookConfig) (*Webhook, error) {
	if len(cfg.Secret) < MinWebhookSecret {
		return nil, fmt.Errorf("webhook: Secret has %d bytes, need at least %d", len(cfg.Secret), MinWebhookSecret)
	}
	w := &Webhook{
		secret:  bytes.Clone(cfg.Secret),
		timeout: cfg.Timeout,
		now:     cfg.Now,
		log:     cfg.Logger,
	}
	client := &http.Client{}
	if cfg.HTTPClient != nil {
		*client = *cfg.HTTPClient
		if w.timeout == 0 {
			w.timeout = cfg.HTTPClient.Timeout
		}
	}
	client.Timeout = 0
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	w.client = client
	if w.timeout <= 0 {
		w.timeout = DefaultWebhookTimeout
	}
	if w.now == nil {
		w.now = time.Now
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	return w, nil
}

// Send posts msg.Payload, which must be JSON, to msg.To with the
// timestamp, idempotency key and signature headers. A 2xx reply is
// success. 408, 429 and 5xx are transient, and any other reply, a
// redirect included, is permanent.
func (w *Webhook) Send(ctx context.Context, msg Message) (Result, error) {
	res, err := w.send(ctx, msg)
	if err != nil {
		attrs := []any{"key", msg.Key, "permanent", IsPermanent(err), "unknown_outcome", IsUnknownOutcome(err), "err", err}
		var e *Error
		if errors.As(err, &e) {
			attrs = append(attrs, "status", e.Status)
		}
		w.log.Warn("webhook send failed", attrs...)
		return Result{}, err
	}
	w.log.Info("webhook accepted notification", "key", msg.Key, "provider_id", res.ProviderID)
	return res, nil
}

func (w *Webhook) send(ctx context.Context, msg Message) (Result, error) {
	if msg.Channel != ChannelWebhook {
		return Result{}, invalidMessage("webhook: cannot send channel %q: use %q", msg.Channel, ChannelWebhook)
	}
	target, err := parseHTTPURL(msg.To)
	if err != nil {
		return Result{}, invalidMessage("webhook: %w", err)
	}
	if len(msg.Payload) > MaxWebhookPayload {
		return Result{}, invalidMessage("webhook: payload to %s has %d bytes, more than %d", HostOnly(target.String()), len(msg.Payload), MaxWebhookPayload)
	}
	if !json.Valid(msg.Payload) {
		return Result{}, invalidMessage("webhook: payload to %s is not valid JSON", HostOnly(target.String()))
	}
	// net/http rejects header values with control characters other than
	// tab, which would otherwise look like a transport failure.
	if strings.ContainsFunc(msg.Key, func(r rune) bool { return r != '\t' && (r < 0x20 || r == 0x7f) }) {
		return Result{}, invalidMessage("webhook: idempotency key %q contains a control character", truncateForError(msg.Key))
	}

	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	// The transport calls WroteRequest from its own goroutine.
	var wrote atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				wrote.Store(true)
			}
		},
	})

	timestamp := w.now().Unix()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target.String(), bytes.NewReader(msg.Payload))
	if err != nil {
		return Result{}, invalidMessage("webhook: building request to %s: %w", HostOnly(target.String()), err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "xpress-ops-tower-notify")
	req.Header.Set(WebhookTimestampHeader, strconv.FormatInt(timestamp, 10))
	if msg.Key != "" {
		req.Header.Set(WebhookIdempotencyKeyHeader, msg.Key)
	}
	req.Header.Set(WebhookSignatureHeader, SignWebhook(w.secret, timestamp, msg.Payload))

	resp, err := w.client.Do(req)
	if err != nil {
		return Result{}, &Error{Unknown: wrote.Load(), Err: redactError(fmt.Errorf("webhook: POST %s: %w", HostOnly(target.String()), err))}
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))

	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return Result{ProviderID: resp.Header.Get("X-Request-Id"), Status: strconv.Itoa(resp.StatusCode)}, nil
	}
	err = redactError(fmt.Errorf("webhook: POST %s: receiver replied %s: %s", HostOnly(target.String()), resp.Status, printableSnippet(snippet)))
	return Result{}, classifyHTTPStatus(resp.StatusCode, parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()), err)
}

// SignWebhook returns the X-Xpress-Signature value for body sent at the
// Unix time timestamp: "sha256=" and the hex HMAC-SHA256 of
// "<timestamp>.<body>" keyed with secret.
func SignWebhook(secret []byte, timestamp int64, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(strconv.FormatInt(timestamp, 10)))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// VerifyWebhook checks a received webhook: the timestamp header must be
// within maxSkew of now (zero or less means DefaultWebhookMaxSkew), and
// the signature header must match body and timestamp under secret. It
// compares in constant time. The error matches ErrWebhookStale or
// ErrWebhookSignature. Reply 401 to either.
func VerifyWebhook(secret []byte, header http.Header, body []byte, now time.Time, maxSkew time.Duration) error {
	if maxSkew <= 0 {
		maxSkew = DefaultWebhookMaxSkew
	}
	if len(secret) == 0 {
		return fmt.Errorf("%w: no secret configured", ErrWebhookSignature)
	}

	rawTime := header.Get(WebhookTimestampHeader)
	if rawTime == "" {
		return fmt.Errorf("%w: missing %s header", ErrWebhookSignature, WebhookTimestampHeader)
	}
	timestamp, err := strconv.ParseInt(rawTime, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %s %q is not Unix seconds", ErrWebhookSignature, WebhookTimestampHeader, truncateForError(rawTime))
	}
	skew := now.Unix() - timestamp
	if skew < 0 {
		skew = -skew
	}
	// The subtraction overflows only for absurd timestamps, and then skew
	// is still negative or far beyond maxSkew.
	if skew < 0 || skew > int64(maxSkew/time.Second) {
		return fmt.Errorf("%w: timestamp %d is %d s from now, more than %s", ErrWebhookStale, timestamp, skew, maxSkew)
	}

	rawSignature := header.Get(WebhookSignatureHeader)
	hexSignature, ok := strings.CutPrefix(rawSignature, "sha256=")
	if !ok {
		return fmt.Errorf("%w: %s must start with \"sha256=\"", ErrWebhookSignature, WebhookSignatureHeader)
	}
	got, err := hex.DecodeString(hexSignature)
	if err != nil || len(got) != sha256.Size {
		return fmt.Errorf("%w: %s is not 64 hex digits", ErrWebhookSignature, WebhookSignatureHeader)
	}
	want, _ := hex.DecodeString(strings.TrimPrefix(SignWebhook(secret, timestamp, body), "sha256="))
	if !hmac.Equal(got, want) {
		return fmt.Errorf("%w: does not match the body and timestamp", ErrWebhookSignature)
	}
	return nil
}

// printableSnippet returns up to 200 printable characters of a reply body
// for an error message.
func printableSnippet(b []byte) string {
	s := strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, string(b))
	s = strings.TrimSpace(s)
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	if s == "" {
		return "(empty body)"
	}
	return strconv.Quote(s)
}
