package notify

import (
	"net/url"
	"regexp"
)

// urlPattern matches an absolute URL in free text, up to white space or a
// quote.
var urlPattern = regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://[^\s"'<>` + "`" + `]+`)

// RedactURLs returns text with every absolute URL in it cut to its scheme
// and host, such as "https://hooks.example.ph". A webhook URL's path and
// query often hold a secret token, and a Twilio API URL holds the account
// SID, so errors that reach logs, the audit trail or a health page must
// not carry them.
func RedactURLs(text string) string {
	return urlPattern.ReplaceAllStringFunc(text, func(raw string) string {
		return HostOnly(raw)
	})
}

// HostOnly returns raw cut to its scheme and host, or "(URL)" when it does
// not parse.
func HostOnly(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return "(URL)"
	}
	return u.Scheme + "://" + u.Host
}

// redactedError is an error whose text has its URLs cut to scheme and
// host (see RedactURLs). errors.Is and errors.As still reach the error
// it wraps.
type redactedError struct{ err error }

func (e redactedError) Error() string { return RedactURLs(e.err.Error()) }
func (e redactedError) Unwrap() error { return e.err }

// redactError returns err with its URLs redacted in its text, nil for nil.
func redactError(err error) error {
	if err == nil {
		return nil
	}
	return redactedError{err: err}
}
