package notify

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestBackoffStaysWithinCeiling(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	ceilings := map[int]time.Duration{
		-3:      2 * time.Second, // below 1 counts as 1
		0:       2 * time.Second,
		1:       2 * time.Second,
		2:       4 * time.Second,
		4:       16 * time.Second,
		8:       256 * time.Second,
		9:       BackoffCap,
		10:      BackoffCap,
		63:      BackoffCap,
		64:      BackoffCap,
		1 << 30: BackoffCap,
	}
	for attempt, ceiling := range ceilings {
		var largest time.Duration
		for range 2000 {
			d := Backoff(attempt, rnd)
			if d < 0 || d > ceiling {
				t.Fatalf("Backoff(%d) = %v, want within [0, %v]", attempt, d, ceiling)
			}
			largest = max(largest, d)
		}
		// With 2000 uniform draws the largest is above 90 % of the
		// ceiling except with probability 0.9^2000.
		if largest < ceiling*9/10 {
			t.Errorf("Backoff(%d): largest of 2000 draws %v, want near the ceiling %v (no jitter spread?)", attempt, largest, ceiling)
		}
	}
}

func TestBackoffNilSource(t *testing.T) {
	for range 100 {
		if d := Backoff(3, nil); d < 0 || d > 8*time.Second {
			t.Fatalf("Backoff(3, nil) = %v, want within [0, 8s]", d)
		}
	}
}

func TestRetryDelayPrefersRetryAfter(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	err := fmt.Errorf("wrapped: %w", &Error{RetryAfter: 42 * time.Second})
	if got := RetryDelay(err, 1, rnd); got != 42*time.Second {
		t.Errorf("RetryDelay with RetryAfter 42s = %v, want 42s", got)
	}
	huge := &Error{RetryAfter: 3 * time.Hour}
	if got := RetryDelay(huge, 1, rnd); got != MaxRetryAfter {
		t.Errorf("RetryDelay with RetryAfter 3h = %v, want the cap %v", got, MaxRetryAfter)
	}
	if got := RetryDelay(errors.New("plain"), 2, rnd); got < 0 || got > 4*time.Second {
		t.Errorf("RetryDelay without RetryAfter = %v, want Backoff(2) within [0, 4s]", got)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 4, 14, 0, 0, 0, time.UTC)
	cases := []struct {
		value string
		want  time.Duration
	}{
		{"", 0},
		{"7", 7 * time.Second},
		{" 30 ", 30 * time.Second},
		{"0", 0},
		{"-5", 0},
		{"99999999999999999999", 0}, // does not parse as int64 or a date
		{"86400", MaxRetryAfter},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{now.Add(48 * time.Hour).Format(http.TimeFormat), MaxRetryAfter},
		{"soon", 0},
	}
	for _, c := range cases {
		if got := parseRetryAfter(c.value, now); got != c.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", c.value, got, c.want)
		}
	}
}

func TestClassifyHTTPStatus(t *testing.T) {
	cases := []struct {
		status    int
		permanent bool
		unknown   bool
	}{
		{301, true, false},
		{400, true, false},
		{401, true, false},
		{404, true, false},
		{408, false, false},
		{410, true, false},
		{422, true, false},
		{429, false, false},
		{500, false, true},
		{502, false, true},
		{503, false, true},
	}
	for _, c := range cases {
		e := classifyHTTPStatus(c.status, 5*time.Second, errors.New("reply"))
		if e.Permanent != c.permanent {
			t.Errorf("status %d: Permanent = %v, want %v", c.status, e.Permanent, c.permanent)
		}
		if e.Unknown != c.unknown {
			t.Errorf("status %d: Unknown = %v, want %v", c.status, e.Unknown, c.unknown)
		}
		if e.Status != c.status {
			t.Errorf("status %d: Status = %d", c.status, e.Status)
		}
		if !c.permanent && e.RetryAfter != 5*time.Second {
			t.Errorf("status %d: RetryAfter = %v, want the reply's 5s", c.status, e.RetryAfter)
		}
	}
}

func TestErrorWrapsAndDescribes(t *testing.T) {
	cause := errors.New("twilio said no")
	err := fmt.Errorf("dispatch: %w", &Error{Permanent: true, Code: 21211, Status: 400, Err: cause})
	if !IsPermanent(err) {
		t.Error("IsPermanent of a wrapped permanent *Error = false")
	}
	if !errors.Is(err, cause) {
		t.Error("errors.Is does not reach the cause through *Error")
	}
	if IsPermanent(cause) || IsPermanent(nil) {
		t.Error("IsPermanent of a plain error or nil = true")
	}
	msg := err.Error()
	for _, want := range []string{"twilio said no", "permanent"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error text %q lacks %q", msg, want)
		}
	}
	transient := &Error{Unknown: true, RetryAfter: 3 * time.Second, Err: cause}
	if !IsUnknownOutcome(transient) || IsPermanent(transient) {
		t.Errorf("IsUnknownOutcome/IsPermanent of %v wrong", transient)
	}
	for _, want := range []string{"transient", "outcome unknown", "retry after 3s"} {
		if !strings.Contains(transient.Error(), want) {
			t.Errorf("error text %q lacks %q", transient.Error(), want)
		}
	}
}

func TestReference(t *testing.T) {
	a := Reference("incident-12/sms/+639171234567")
	b := Reference("incident-12/sms/+639171234568")
	if len(a) != len("XOT-")+8 || !strings.HasPrefix(a, "XOT-") {
		t.Fatalf("Reference = %q, want XOT- and 8 characters", a)
	}
	if strings.Trim(a[4:], "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") != "" {
		t.Errorf("Reference %q has characters outside base32", a)
	}
	if a == b {
		t.Errorf("different keys share reference %q", a)
	}
	if a != Reference("incident-12/sms/+639171234567") {
		t.Error("Reference is not deterministic")
	}
	if Reference("") != "" {
		t.Error("Reference of an empty key is not empty")
	}
}

func TestParseLanguage(t *testing.T) {
	cases := map[string]Language{
		"en": English, "en-PH": English, "fil": Filipino, "fil-PH": Filipino, "FIL": Filipino,
		"tl": Filipino, "Tagalog": Filipino, "tl_PH": Filipino, "": English, "ceb": English,
	}
	for in, want := range cases {
		if got := ParseLanguage(in); got != want {
			t.Errorf("ParseLanguage(%q) = %q, want %q", in, got, want)
		}
	}
}
