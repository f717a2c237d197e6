package notify

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Retry timing. Backoff grows from BackoffBase and doubles per attempt up
// to BackoffCap, so the fourth retry waits at most 16 s and every retry
// from the ninth on waits at most 5 min. The cap is short because an
// unsent SOS alert loses value by the minute.
const (
	BackoffBase = 2 * time.Second
	BackoffCap  = 5 * time.Minute
	// MaxRetryAfter caps a provider's Retry-After, so that a receiver that
	// requests an hour's pause cannot hold an SOS alert back that long.
	MaxRetryAfter = 10 * time.Minute
)

// Error is a failed send, classified for the retry decision.
type Error struct {
	// Permanent means a retry fails the same way: the message must be
	// changed or dropped.
	Permanent bool
	// Unknown means the request may have reached the provider before the
	// failure (a timeout after the request was written, an HTTP 5xx reply,
	// a lost SMTP reply to the end of DATA). A retry may deliver a second
	// copy: see Twilio.Find.
	Unknown bool
	// RetryAfter is the wait the provider asked for (HTTP Retry-After), or
	// zero.
	RetryAfter time.Duration
	// Code is the provider's error code: Twilio's (e.g. 21211) or the SMTP
	// reply code (e.g. 550). Zero when the provider sent none.
	Code int
	// Status is the HTTP status of the provider's reply, or zero.
	Status int
	// Auth means the provider rejected the sender's credentials (HTTP 401
	// or 403: a wrong auth token, a suspended account). Such an error is
	// transient for the message, which is sent once an operator fixes the
	// account, but the channel is failing until then.
	Auth bool
	// Err is the underlying failure.
	Err error
}

// Error returns the underlying failure and its classification, e.g.
// "Twilio rejected SMS to +639171234567: ... (permanent)".
func (e *Error) Error() string {
	var b strings.Builder
	if e.Err != nil {
		b.WriteString(e.Err.Error())
	} else {
		b.WriteString("notification failed")
	}
	b.WriteString(" (")
	if e.Auth {
		b.WriteString("credentials rejected, ")
	}
	if e.Permanent {
		b.WriteString("permanent")
	} else {
		b.WriteString("transient")
	}
	if e.Unknown {
		b.WriteString(", outcome unknown")
	}
	if e.RetryAfter > 0 {
		b.WriteString(", retry after ")
		b.WriteString(e.RetryAfter.String())
	}
	b.WriteString(")")
	return b.String()
}

// Unwrap returns the underlying failure.
func (e *Error) Unwrap() error { return e.Err }

// IsPermanent reports whether err is an *Error marked permanent. Any other
// error, including nil, is not permanent.
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Permanent
}

// IsAuthError reports whether err is an *Error whose provider rejected
// the sender's credentials.
func IsAuthError(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Auth
}

// IsUnknownOutcome reports whether err is an *Error whose request may
// have reached the provider, so that a retry may deliver twice.
func IsUnknownOutcome(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Unknown
}

// Backoff returns the wait before retry number attempt (1 for the first
// retry): a uniformly random duration in [0, min(BackoffCap, BackoffBase ×
// 2^(attempt-1))], the "full jitter" scheme that spreads the retries of
// many senders. An attempt below 1 counts as 1. A nil rnd uses the
// package-level source of math/rand/v2.
func Backoff(attempt int, rnd *rand.Rand) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	ceiling := BackoffCap
	// BackoffBase << 8 already exceeds BackoffCap, so larger shifts only
	// risk overflow.
	if attempt <= 9 {
		ceiling = min(BackoffCap, BackoffBase<<(attempt-1))
	}
	if rnd == nil {
		return rand.N(ceiling + 1)
	}
	return time.Duration(rnd.Int64N(int64(ceiling) + 1))
}

// RetryDelay returns the wait before retry number attempt after err: the
// provider's RetryAfter when err carries one, else Backoff.
func RetryDelay(err error, attempt int, rnd *rand.Rand) time.Duration {
	var e *Error
	if errors.As(err, &e) && e.RetryAfter > 0 {
		return min(e.RetryAfter, MaxRetryAfter)
	}
	return Backoff(attempt, rnd)
}

// parseRetryAfter reads an HTTP Retry-After value, delay seconds or an
// HTTP date, as a duration from now. It returns zero for a missing,
// malformed or past value and caps the result at MaxRetryAfter.
func parseRetryAfter(value string, now time.Time) time.Duration {
	value = strings.TrimSpace(value)
	if value == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(value, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter
		}
		d = time.Duration(secs) * time.Second
	} else if at, err := http.ParseTime(value); err == nil {
		d = at.Sub(now)
	}
	if d <= 0 {
		return 0
	}
	return min(d, MaxRetryAfter)
}

// classifyHTTPStatus returns the error for an HTTP reply with a status
// outside 2xx: 408, 429 and 5xx are transient, everything else permanent
// (including 3xx, because the senders follow no redirects). A 5xx reply
// may come after the provider acted, so it is marked Unknown.
func classifyHTTPStatus(status int, retryAfter time.Duration, err error) *Error {
	e := &Error{Status: status, Err: err}
	switch {
	case status == http.StatusTooManyRequests || status == http.StatusRequestTimeout:
		e.RetryAfter = retryAfter
	case status >= 500:
		e.RetryAfter = retryAfter
		e.Unknown = true
	default:
		e.Permanent = true
	}
	return e
}

// invalidMessage returns the permanent error for a message no provider
// can send.
func invalidMessage(format string, args ...any) *Error {
	return &Error{Permanent: true, Err: fmt.Errorf(format, args...)}
}
