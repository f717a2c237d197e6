package notify

import (
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strconv"

	twclient "github.com/twilio/twilio-go/client"
)

// TwilioSignatureHeader is the header that carries Twilio's request
// signature.
const TwilioSignatureHeader = "X-Twilio-Signature"

// MaxTwilioCallbackBody is the largest status callback body
// ReadTwilioCallback accepts, in bytes. Twilio's status callbacks are
// about 1 KiB.
const MaxTwilioCallbackBody = 64 << 10

// ErrTwilioSignature means a status callback's signature is missing or
// does not match: the request did not come from Twilio, or the URL the
// hub was given is not the one Twilio requested.
var ErrTwilioSignature = errors.New("twilio callback: invalid " + TwilioSignatureHeader)

// TwilioStatus is one status callback of a message or call.
type TwilioStatus struct {
	// Channel is ChannelSMS for a message, ChannelVoice for a call.
	Channel Channel
	// ProviderID is the MessageSid or CallSid, as Send returned it.
	ProviderID string
	// Status is Twilio's MessageStatus (queued, sent, delivered,
	// undelivered, failed, …) or CallStatus (initiated, ringing,
	// in-progress, completed, busy, no-answer, failed, canceled).
	Status string
	// ErrorCode is Twilio's error code for a failed message or call
	// (e.g. 30003, unreachable handset), or zero.
	ErrorCode int
	// Final reports whether Status is one Twilio does not change again.
	Final bool
	// AccountSID is the account the message or call belongs to
	// (AccountSid), which the receiver compares with its own.
	AccountSID string
}

// Final statuses of messages and calls.
var (
	finalMessageStatus = map[string]bool{
		"delivered": true, "undelivered": true, "failed": true, "read": true, "canceled": true,
	}
	knownMessageStatus = map[string]bool{
		"accepted": true, "scheduled": true, "queued": true, "sending": true, "sent": true,
		"receiving": true, "received": true, "partially_delivered": true,
		"delivered": true, "undelivered": true, "failed": true, "read": true, "canceled": true,
	}
	finalCallStatus = map[string]bool{
		"completed": true, "busy": true, "failed": true, "no-answer": true, "canceled": true,
	}
	knownCallStatus = map[string]bool{
		"queued": true, "initiated": true, "ringing": true, "in-progress": true,
		"completed": true, "busy": true, "failed": true, "no-answer": true, "canceled": true,
	}
)

// VerifyTwilioSignature reports whether signature is Twilio's signature of
// a POST to fullURL with form: the Base64 HMAC-SHA1, keyed with the auth
// token, of the URL followed by each form parameter's name and value in
// name order. fullURL must be the URL exactly as Twilio requested it,
// scheme, host, path and query included. twilio-go's request validator
// also tries it with and without the default port. A parameter given more
// than once is signed with its first value, as twilio-go does.
func VerifyTwilioSignature(authToken, fullURL string, form url.Values, signature string) bool {
	if authToken == "" || signature == "" {
		return false
	}
	params := make(map[string]string, len(form))
	for name, values := range form {
		if len(values) > 0 {
			params[name] = values[0]
		}
	}
	validator := twclient.NewRequestValidator(authToken)
	return validator.Validate(fullURL, params, signature)
}

// ReadTwilioCallback reads a status callback request: it checks the
// method and body, verifies the X-Twilio-Signature header against
// authToken and fullURL (the public URL Twilio posted to, which a hub
// behind a proxy must know) and parses the form. A bad signature returns
// an error matching ErrTwilioSignature. Reply 403 to it and 400 to the
// other errors.
func ReadTwilioCallback(r *http.Request, authToken, fullURL string) (TwilioStatus, error) {
	if r.Method != http.MethodPost {
		return TwilioStatus{}, fmt.Errorf("twilio callback: method %s, want POST", r.Method)
	}
	mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mediaType != "application/x-www-form-urlencoded" {
		return TwilioStatus{}, fmt.Errorf("twilio callback: Content-Type %q, want application/x-www-form-urlencoded", r.Header.Get("Content-Type"))
	}
	r.Body = http.MaxBytesReader(nil, r.Body, MaxTwilioCallbackBody)
	if err := r.ParseForm(); err != nil {
		return TwilioStatus{}, fmt.Errorf("twilio callback: reading form: %w", err)
	}
	if !VerifyTwilioSignature(authToken, fullURL, r.PostForm, r.Header.Get(TwilioSignatureHeader)) {
		return TwilioStatus{}, fmt.Errorf("%w for URL %q", ErrTwilioSignature, truncateForError(fullURL))
	}
	return ParseTwilioCallback(r.PostForm)
}

// ParseTwilioCallback parses the form of a message or call status
// callback. It does not check the signature: see ReadTwilioCallback.
func ParseTwilioCallback(form url.Values) (TwilioStatus, error) {
	var st TwilioStatus
	switch {
	case form.Get("MessageSid") != "":
		st.Channel = ChannelSMS
		st.ProviderID = form.Get("MessageSid")
		st.Status = form.Get("MessageStatus")
		if st.Status == "" {
			st.Status = form.Get("SmsStatus")
		}
		if !isTwilioSID(st.ProviderID, "SM") && !isTwilioSID(st.ProviderID, "MM") {
			return TwilioStatus{}, fmt.Errorf("twilio callback: MessageSid %q is not a message SID (SM or MM and 32 hex digits)", truncateForError(st.ProviderID))
		}
		if !knownMessageStatus[st.Status] {
			return TwilioStatus{}, fmt.Errorf("twilio callback: message %s has unknown MessageStatus %q", st.ProviderID, truncateForError(st.Status))
		}
		st.Final = finalMessageStatus[st.Status]
	case form.Get("CallSid") != "":
		st.Channel = ChannelVoice
		st.ProviderID = form.Get("CallSid")
		st.Status = form.Get("CallStatus")
		if !isTwilioSID(st.ProviderID, "CA") {
			return TwilioStatus{}, fmt.Errorf("twilio callback: CallSid %q is not a call SID (CA and 32 hex digits)", truncateForError(st.ProviderID))
		}
		if !knownCallStatus[st.Status] {
			return TwilioStatus{}, fmt.Errorf("twilio callback: call %s has unknown CallStatus %q", st.ProviderID, truncateForError(st.Status))
		}
		st.Final = finalCallStatus[st.Status]
	default:
		return TwilioStatus{}, errors.New("twilio callback: form has neither MessageSid nor CallSid")
	}

	st.AccountSID = form.Get("AccountSid")
	if raw := form.Get("ErrorCode"); raw != "" {
		code, err := strconv.Atoi(raw)
		if err != nil || code < 0 {
			return TwilioStatus{}, fmt.Errorf("twilio callback: %s has invalid ErrorCode %q", st.ProviderID, truncateForError(raw))
		}
		st.ErrorCode = code
	}
	return st, nil
}

// isTwilioSID reports whether sid is prefix followed by 32 hex digits.
func isTwilioSID(sid, prefix string) bool {
	if len(sid) != len(prefix)+32 || sid[:len(prefix)] != prefix {
		return false
	}
	for _, r := range sid[len(prefix):] {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F') {
			return false
		}
	}
	return true
}
