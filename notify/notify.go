package notify

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// Channel is the way a notification reaches its recipient.
type Channel string

// Channels.
const (
	ChannelSMS     Channel = "sms"
	ChannelVoice   Channel = "voice"
	ChannelEmail   Channel = "email"
	ChannelWebhook Channel = "webhook"
)

// Language is the language of a notification's text.
type Language string

// Languages. Filipino is the Tagalog-based national language as used in
// Philippine operations, with English terms where Filipinos use them
// (SOS, incident, dashboard).
const (
	English  Language = "en"
	Filipino Language = "fil"
)

// ParseLanguage returns the Language for a language tag or name such as
// "en", "en-PH", "fil", "fil-PH", "tl" or "Tagalog", and English for
// anything else.
func ParseLanguage(s string) Language {
	tag := strings.ToLower(strings.TrimSpace(s))
	if i := strings.IndexAny(tag, "-_"); i >= 0 {
		tag = tag[:i]
	}
	switch tag {
	case "fil", "tl", "filipino", "tagalog", "pilipino":
		return Filipino
	default:
		return English
	}
}

// Message is one notification to one recipient.
type Message struct {
	// Channel selects the sender's method: a Twilio sender sends SMS and
	// voice calls, an SMTP sender email, a webhook sender webhooks.
	Channel Channel
	// To is the recipient: an E.164 phone number (see NormalizePhone), an
	// email address or an http(s) webhook URL.
	To string
	// Subject is the email subject. Other channels ignore it.
	Subject string
	// Text is the SMS text, the email body, or the words a voice call
	// speaks.
	Text string
	// Language selects the voice of a call. Empty means English.
	Language Language
	// Key is the notification's idempotency key, unique per incident,
	// channel and recipient, e.g. "incident-12/sms/+639171234567". It is
	// sent as a header on webhooks, becomes part of the email Message-ID
	// and marks an SMS so that Twilio.Find can recognise it.
	Key string
	// Payload is the webhook's JSON body. Other channels ignore it.
	Payload []byte
}

// Result describes a notification the provider accepted.
type Result struct {
	// ProviderID is the provider's id of the message: the Twilio Message or
	// Call SID, the email Message-ID, or the webhook receiver's
	// X-Request-Id header when it sent one.
	ProviderID string
	// Status is the provider's status of the message when known, e.g.
	// Twilio's "queued", "sent" or "failed".
	Status string
}

// Sender sends notifications. Implementations are safe for concurrent
// use.
type Sender interface {
	// Send delivers msg. A failure is an *Error (see IsPermanent and
	// RetryDelay).
	Send(ctx context.Context, msg Message) (Result, error)
}

// referencePrefix starts every reference marker.
const referencePrefix = "XOT-"

// referenceEncoding writes reference markers in upper-case letters and
// digits 2 to 7 only, which read back unambiguously over the phone.
var referenceEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Reference returns the short marker of an idempotency key, "XOT-" and
// eight base32 characters of the key's SHA-256 hash (40 bits), or "" for
// an empty key.
func Reference(key string) string {
	if key == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(key))
	return referencePrefix + referenceEncoding.EncodeToString(sum[:5])
}
