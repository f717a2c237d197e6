package notify

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	twclient "github.com/twilio/twilio-go/client"
	twapi "github.com/twilio/twilio-go/rest/api/v2010"
)

// Twilio defaults and limits.
const (
	// DefaultTwilioBaseURL is Twilio's REST API.
	DefaultTwilioBaseURL = "https://api.twilio.com"
	// DefaultTwilioTimeout bounds one Twilio API request.
	DefaultTwilioTimeout = 10 * time.Second
	// MaxSMSLength is the longest SMS text Twilio accepts, in characters.
	MaxSMSLength = 1600
	// MaxTwiMLLength is the longest inline TwiML Twilio accepts for a
	// call, in characters.
	MaxTwiMLLength = 4000
	// DefaultFilipinoVoice is the text-to-speech voice for Filipino calls:
	// Twilio's basic voices speak no Filipino, so <Say> needs one of the
	// Google voices Twilio offers for the language tag fil-PH.
	DefaultFilipinoVoice = "Google.fil-PH-Standard-A"
)

// twilioPathBase is the host twilio-go builds request URLs on. The sender
// replaces it with TwilioConfig.BaseURL.
const twilioPathBase = "https://api.twilio.com"

// Find limits. Find reads at most findMaxPages pages of findPageSize
// records, newest first.
const (
	findPageSize = 50
	findMaxPages = 20
	// findSMSSlack widens the search window for SMS, which the reference
	// marker identifies, to cover clock skew between this host and
	// Twilio.
	findSMSSlack = 10 * time.Minute
	// findVoiceSlack is the clock skew allowed when matching a call by its
	// creation time alone. It is short because a call carries no marker.
	findVoiceSlack = 2 * time.Second
)

// twilioPermanentCodes are Twilio error codes that no retry can fix. The
// sender treats every other 4xx reply except 408 and 429 as permanent too.
// This list keeps these codes permanent whatever HTTP status comes with
// them.
var twilioPermanentCodes = map[int]string{
	21211: "invalid 'To' phone number",
	21217: "phone number does not appear to be valid",
	21408: "permission to send to this region is not enabled",
	21610: "recipient unsubscribed (replied STOP)",
	21612: "the 'To' number cannot be reached from the 'From' number",
	21614: "'To' number is not a mobile number",
}

// TwilioConfig configures a Twilio sender.
type TwilioConfig struct {
	// AccountSID is the Twilio account SID ("AC…"). Required.
	AccountSID string
	// AuthToken is the account's auth token. Required. Load it from the
	// environment or a file, never from a flag.
	AuthToken string
	// From is the caller id and SMS sender, an E.164 number that belongs
	// to the account. Required.
	From string
	// BaseURL replaces Twilio's API host, for example with a regional
	// endpoint or a test server. Empty means DefaultTwilioBaseURL. The
	// sender ignores the TWILIO_EDGE and TWILIO_REGION environment
	// variables that twilio-go reads.
	BaseURL string
	// StatusCallbackURL, when set, is where Twilio posts the status of
	// each message and call (see ReadTwilioCallback).
	StatusCallbackURL string
	// HTTPClient supplies the transport and cookie jar. Nil means a
	// private transport. Its Timeout and CheckRedirect are not used: see
	// Timeout. Redirects are never followed.
	HTTPClient *http.Client
	// Timeout bounds each API request. Zero means HTTPClient.Timeout when
	// set, else DefaultTwilioTimeout.
	Timeout time.Duration
	// Voices maps a language to the <Say> voice of calls in it, e.g.
	// "Polly.Joanna". A language missing from the map uses the account's
	// default voice, except Filipino, which uses DefaultFilipinoVoice.
	Voices map[Language]string
	// Logger receives a line per send. Nil means discard.
	Logger *slog.Logger
}

// Twilio sends SMS and voice calls through Twilio's REST API (API version
// 2010-04-01) with twilio-go. It is safe for concurrent use.
type Twilio struct {
	accountSID string
	authToken  string
	from       string
	baseURL    *url.URL
	callback   string
	transport  http.RoundTripper
	jar        http.CookieJar
	timeout    time.Duration
	voices     map[Language]string
	log        *slog.Logger
}

var _ Sender = (*Twilio)(nil)

// NewTwilio checks cfg and returns a sender. It sends nothing.
func NewTwilio(cfg TwilioConfig) (*Twilio, error) {
	if cfg.AccountSID == "" {
		return nil, errors.New("twilio: AccountSID is required")
	}
	if !isAlphanumeric(cfg.AccountSID) {
		return nil, errors.New("twilio: AccountSID must contain only letters and digits")
	}
	if cfg.AuthToken == "" {
		return nil, errors.New("twilio: AuthToken is required")
	}
	// twilio-go rejects credentials with other characters (error 21224).
	if !isAlphanumeric(cfg.AuthToken) {
		return nil, errors.New("twilio: AuthToken must contain only letters and digits")
	}
	from, err := NormalizePhone(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("twilio: From: %w", err)
	}

	rawBase := cfg.BaseURL
	if rawBase == "" {
		rawBase = DefaultTwilioBaseURL
	}
	base, err := parseHTTPURL(rawBase)
	if err != nil {
		return nil, fmt.Errorf("twilio: BaseURL: %w", err)
	}
	if cfg.StatusCallbackURL != "" {
		if _, err := parseHTTPURL(cfg.StatusCallbackURL); err != nil {
			return nil, fmt.Errorf("twilio: StatusCallbackURL: %w", err)
		}
	}

	t := &Twilio{
		accountSID: cfg.AccountSID,
		authToken:  cfg.AuthToken,
		from:       from,
		baseURL:    base,
		callback:   cfg.StatusCallbackURL,
		timeout:    cfg.Timeout,
		voices:     map[Language]string{Filipino: DefaultFilipinoVoice},
		log:        cfg.Logger,
	}
	for lang, voice := range cfg.Voices {
		t.voices[lang] = voice
	}
	if cfg.HTTPClient != nil {
		t.transport = cfg.HTTPClient.Transport
		t.jar = cfg.HTTPClient.Jar
		if t.timeout == 0 {
			t.timeout = cfg.HTTPClient.Timeout
		}
	}
	if t.transport == nil {
		t.transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	if t.timeout <= 0 {
		t.timeout = DefaultTwilioTimeout
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	return t, nil
}

// BaseURL returns the API base URL the sender sends to.
func (t *Twilio) BaseURL() string { return t.baseURL.String() }

// Timeout returns the time limit of each API request.
func (t *Twilio) Timeout() time.Duration { return t.timeout }

// Send sends an SMS (ChannelSMS) or places a voice call (ChannelVoice) to
// msg.To, which may be in any form NormalizePhone accepts.
//
// An SMS carries msg.Text, followed by " Ref " and Reference(msg.Key) when
// the text does not already contain that marker. A call speaks msg.Text
// twice in msg.Language. The returned ProviderID is the Message or Call
// SID.
func (t *Twilio) Send(ctx context.Context, msg Message) (Result, error) {
	res, err := t.send(ctx, msg)
	if err != nil {
		t.logFailure("twilio send failed", msg, err)
		return Result{}, err
	}
	t.log.Info("twilio accepted notification", "key", msg.Key, "channel", msg.Channel, "sid", res.ProviderID, "status", res.Status)
	return res, nil
}

func (t *Twilio) send(ctx context.Context, msg Message) (Result, error) {
	to, err := NormalizePhone(msg.To)
	if err != nil {
		return Result{}, invalidMessage("twilio: %s to %w", msg.Channel, err)
	}
	if strings.TrimSpace(msg.Text) == "" {
		return Result{}, invalidMessage("twilio: %s to %s has no text", msg.Channel, to)
	}

	switch msg.Channel {
	case ChannelSMS:
		return t.sendSMS(ctx, to, msg)
	case ChannelVoice:
		return t.call(ctx, to, msg)
	default:
		return Result{}, invalidMessage("twilio: cannot send channel %q: use %q or %q", msg.Channel, ChannelSMS, ChannelVoice)
	}
}

func (t *Twilio) sendSMS(ctx context.Context, to string, msg Message) (Result, error) {
	body := withReference(msg.Text, msg.Key)
	if n := utf8.RuneCountInString(body); n > MaxSMSLength {
		return Result{}, invalidMessage("twilio: SMS to %s has %d characters, more than Twilio's limit of %d", to, n, MaxSMSLength)
	}

	params := &twapi.CreateMessageParams{}
	params.SetTo(to).SetFrom(t.from).SetBody(body)
	if t.callback != "" {
		params.SetStatusCallback(t.callback)
	}

	api, req, done := t.newRequest(ctx)
	defer done()
	created, err := api.CreateMessage(params)
	if err != nil {
		return Result{}, t.classify(fmt.Sprintf("SMS to %s", to), err, req)
	}
	if created == nil || created.Sid == nil || *created.Sid == "" {
		return Result{}, &Error{Unknown: true, Status: req.lastStatus(), Err: fmt.Errorf("twilio: SMS to %s: reply has no message SID", to)}
	}
	return Result{ProviderID: *created.Sid, Status: deref(created.Status)}, nil
}

func (t *Twilio) call(ctx context.Context, to string, msg Message) (Result, error) {
	twiml := t.voiceTwiML(msg.Language, msg.Text)
	if n := utf8.RuneCountInString(twiml); n > MaxTwiMLLength {
		return Result{}, invalidMessage("twilio: call to %s: TwiML has %d characters, more than Twilio's limit of %d; shorten the text", to, n, MaxTwiMLLength)
	}

	params := &twapi.CreateCallParams{}
	params.SetTo(to).SetFrom(t.from).SetTwiml(twiml)
	if t.callback != "" {
		params.SetStatusCallback(t.callback)
		params.SetStatusCallbackEvent([]string{"initiated", "ringing", "answered", "completed"})
	}

	api, req, done := t.newRequest(ctx)
	defer done()
	created, err := api.CreateCall(params)
	if err != nil {
		return Result{}, t.classify(fmt.Sprintf("call to %s", to), err, req)
	}
	if created == nil || created.Sid == nil || *created.Sid == "" {
		return Result{}, &Error{Unknown: true, Status: req.lastStatus(), Err: fmt.Errorf("twilio: call to %s: reply has no call SID", to)}
	}
	return Result{ProviderID: *created.Sid, Status: deref(created.Status)}, nil
}

// sayLanguage maps a Language to the language attribute of <Say>.
func sayLanguage(lang Language) string {
	if lang == Filipino {
		return "fil-PH"
	}
	return "en-US"
}

// voiceTwiML returns the TwiML of a call that speaks text twice with a
// pause between.
func (t *Twilio) voiceTwiML(lang Language, text string) string {
	if lang != Filipino {
		lang = English
	}
	var say strings.Builder
	say.WriteString(`<Say language="`)
	say.WriteString(sayLanguage(lang))
	say.WriteString(`"`)
	if voice := t.voices[lang]; voice != "" {
		say.WriteString(` voice="`)
		_ = xml.EscapeText(&say, []byte(voice))
		say.WriteString(`"`)
	}
	say.WriteString(`>`)
	_ = xml.EscapeText(&say, []byte(strings.TrimSpace(text)))
	say.WriteString(`</Say>`)

	return `<?xml version="1.0" encoding="UTF-8"?><Response>` +
		say.String() + `<Pause length="2"/>` + say.String() +
		`</Response>`
}

// withReference appends " Ref <marker>" to text unless text already
// contains the marker of key.
func withReference(text, key string) string {
	ref := Reference(key)
	if ref == "" || strings.Contains(text, ref) {
		return text
	}
	return strings.TrimRight(text, " \n") + " Ref " + ref
}

// Find looks for a message or call that an earlier Send of msg created at
// or after since, for when that Send's outcome is unknown: the process
// stopped before it recorded the reply, or the reply was lost. Pass as
// since the time the earlier attempt started.
//
// For ChannelSMS it lists the messages from the sender's number to msg.To
// and matches the one whose text contains Reference(msg.Key), which Send
// puts into every SMS. msg.Key is required.
//
// For ChannelVoice it lists the calls from the sender's number to msg.To
// and returns the one created since then. Twilio keeps no text of a call,
// so two calls to the same number from the same sender after since cannot
// be distinguished: when more than one matches, Find logs it and reports
// found=false rather than claim another message's call. A caller that
// places at most one call to a recipient at a time avoids that case.
//
// Find reports found=false when no such message exists. The earlier
// attempt then did not reach Twilio, and sending again is safe.
//
// NOTE: an account that redacts message bodies returns SMS without text,
// so Find cannot match them and reports found=false. A retry then sends a
// second SMS rather than none.
func (t *Twilio) Find(ctx context.Context, msg Message, since time.Time) (Result, bool, error) {
	to, err := NormalizePhone(msg.To)
	if err != nil {
		return Result{}, false, invalidMessage("twilio: find %s to %w", msg.Channel, err)
	}
	var (
		res   Result
		found bool
	)
	switch msg.Channel {
	case ChannelSMS:
		if msg.Key == "" {
			return Result{}, false, invalidMessage("twilio: find SMS to %s: the message has no Key to match", to)
		}
		res, found, err = t.findSMS(ctx, to, Reference(msg.Key), since)
	case ChannelVoice:
		res, found, err = t.findCall(ctx, to, since)
	default:
		return Result{}, false, invalidMessage("twilio: cannot find channel %q: use %q or %q", msg.Channel, ChannelSMS, ChannelVoice)
	}
	if err != nil {
		t.logFailure("twilio find failed", msg, err)
		return Result{}, false, err
	}
	t.log.Info("twilio find finished", "key", msg.Key, "channel", msg.Channel, "found", found, "sid", res.ProviderID)
	return res, found, nil
}

func (t *Twilio) findSMS(ctx context.Context, to, ref string, since time.Time) (Result, bool, error) {
	api, req, done := t.newRequest(ctx)
	defer done()
	operation := fmt.Sprintf("list SMS to %s", to)
	oldest := since.Add(-findSMSSlack)

	params := &twapi.ListMessageParams{}
	params.SetTo(to).SetFrom(t.from).SetPageSize(findPageSize)
	page, err := api.PageMessage(params, "", "")
	for pages := 1; ; pages++ {
		if err != nil {
			return Result{}, false, t.classify(operation, err, req)
		}
		allOlder := len(page.Messages) > 0
		for _, m := range page.Messages {
			created, ok := parseTwilioTime(deref(m.DateCreated))
			if !ok || !created.Before(oldest) {
				allOlder = false
			}
			if strings.Contains(deref(m.Body), ref) && (!ok || !created.Before(oldest)) {
				return Result{ProviderID: deref(m.Sid), Status: deref(m.Status)}, true, nil
			}
		}
		next := deref(page.NextPageUri)
		if allOlder || next == "" {
			return Result{}, false, nil
		}
		if pages == findMaxPages {
			return Result{}, false, &Error{Err: fmt.Errorf("twilio: %s: read %d pages without reaching %s; search again later", operation, pages, since.Format(time.RFC3339))}
		}
		page = &twapi.ListMessageResponse{}
		err = t.getPage(api, next, page)
	}
}

func (t *Twilio) findCall(ctx context.Context, to string, since time.Time) (Result, bool, error) {
	api, req, done := t.newRequest(ctx)
	defer done()
	operation := fmt.Sprintf("list calls to %s", to)
	oldest := since.Add(-findVoiceSlack)

	var (
		best        Result
		bestCreated time.Time
		found       bool
		candidates  int
	)
	params := &twapi.ListCallParams{}
	params.SetTo(to).SetFrom(t.from).SetPageSize(findPageSize)
	page, err := api.PageCall(params, "", "")
	for pages := 1; ; pages++ {
		if err != nil {
			return Result{}, false, t.classify(operation, err, req)
		}
		allOlder := len(page.Calls) > 0
		for _, c := range page.Calls {
			created, ok := parseTwilioTime(deref(c.DateCreated))
			if !ok {
				// A call without a readable creation time cannot be placed
				// in the window, so it neither matches nor ends the search.
				allOlder = false
				continue
			}
			if created.Before(oldest) {
				continue
			}
			allOlder = false
			candidates++
			if !found || created.Before(bestCreated) {
				best = Result{ProviderID: deref(c.Sid), Status: deref(c.Status)}
				bestCreated = created
				found = true
			}
		}
		next := deref(page.NextPageUri)
		if allOlder || next == "" {
			if candidates > 1 {
				// Claiming one of them could record another notification's
				// call, so Find returns none.
				t.log.Warn("twilio find: several calls match, so none is claimed",
					"to", to, "since", since.UTC().Format(time.RFC3339Nano), "candidates", candidates)
				return Result{}, false, nil
			}
			return best, found, nil
		}
		if pages == findMaxPages {
			return Result{}, false, &Error{Err: fmt.Errorf("twilio: %s: read %d pages without reaching %s; search again later", operation, pages, since.Format(time.RFC3339))}
		}
		page = &twapi.ListCallResponse{}
		err = t.getPage(api, next, page)
	}
}

// getPage reads the list page at Twilio's next_page_uri into page.
func (t *Twilio) getPage(api *twapi.ApiService, nextPageURI string, page any) error {
	resp, err := api.RequestHandler().Get(twilioPathBase+nextPageURI, nil, nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(page); err != nil {
		return fmt.Errorf("decoding list page: %w", err)
	}
	return nil
}

// parseTwilioTime reads a timestamp of the 2010-04-01 API, which uses RFC
// 1123 with a numeric zone ("Thu, 04 Dec 2026 14:03:00 +0000").
func parseTwilioTime(s string) (time.Time, bool) {
	for _, layout := range []string{time.RFC1123Z, time.RFC1123, time.RFC3339} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// classify turns a twilio-go error into an *Error. operation names the
// failed operation, e.g. "SMS to +639171234567".
func (t *Twilio) classify(operation string, err error, req *twilioRequest) *Error {
	status, retryAfter, wrote := req.snapshot()

	var rest *twclient.TwilioRestError
	var restV1 *twclient.RestErrorV1
	code := 0
	message := ""
	switch {
	case errors.As(err, &rest):
		code, message = rest.Code, rest.Message
		if rest.Status != 0 && status == 0 {
			status = rest.Status
		}
	case errors.As(err, &restV1):
		code, message = restV1.Code, restV1.Message
		if restV1.HttpStatusCode != 0 && status == 0 {
			status = restV1.HttpStatusCode
		}
	}

	var e *Error
	switch {
	case code != 0:
		wrapped := fmt.Errorf("twilio: %s rejected with error %d (HTTP %d): %s", operation, code, status, message)
		if status == 0 {
			// twilio-go made this error up itself, before any request
			// (e.g. 21222 for invalid credentials).
			e = &Error{Permanent: true, Err: wrapped}
		} else {
			e = classifyHTTPStatus(status, retryAfter, wrapped)
		}
		e.Code = code
		if _, ok := twilioPermanentCodes[code]; ok {
			e.Permanent = true
			e.Unknown = false
			e.RetryAfter = 0
		}
		markAuth(e)
	case status >= 300:
		// An error reply whose body is not Twilio's JSON error.
		e = classifyHTTPStatus(status, retryAfter, fmt.Errorf("twilio: %s failed with HTTP %d: %w", operation, status, err))
		markAuth(e)
	case status >= 200:
		// Twilio accepted the request but its reply could not be read.
		e = &Error{Unknown: true, Status: status, Err: fmt.Errorf("twilio: %s: reading the reply to HTTP %d: %w", operation, status, err)}
	default:
		e = &Error{Unknown: wrote, Err: fmt.Errorf("twilio: %s: %w", operation, err)}
	}
	// Transport errors quote the request URL, which holds the account SID.
	e.Err = redactError(e.Err)
	return e
}

// markAuth marks a reply of HTTP 401 or 403 as a credentials error:
// Twilio sends these for a wrong auth token (error 20003) and a suspended
// account, before it creates anything. Every message fails the same way
// until an operator fixes the account, and then goes out, so the error is
// transient rather than permanent for the message.
func markAuth(e *Error) {
	if e.Status != http.StatusUnauthorized && e.Status != http.StatusForbidden {
		return
	}
	e.Auth, e.Permanent, e.Unknown = true, false, false
}

func (t *Twilio) logFailure(text string, msg Message, err error) {
	attrs := []any{"key", msg.Key, "channel", msg.Channel, "permanent", IsPermanent(err), "unknown_outcome", IsUnknownOutcome(err), "err", err}
	var e *Error
	if errors.As(err, &e) {
		attrs = append(attrs, "code", e.Code, "status", e.Status)
	}
	t.log.Warn(text, attrs...)
}

// newRequest returns a twilio-go API client for one operation and the
// record of its HTTP exchanges. done releases the operation's resources.
//
// twilio-go sends every request with context.Background and does not
// return the reply's headers. So the client gets an http.Client of its
// own, whose transport applies ctx and the timeout. The transport also
// records the status, the Retry-After header and whether the request was
// written.
func (t *Twilio) newRequest(ctx context.Context) (*twapi.ApiService, *twilioRequest, func()) {
	ctx, cancel := context.WithCancel(ctx)
	req := &twilioRequest{ctx: ctx, base: t.transport, timeout: t.timeout}
	httpClient := &http.Client{
		Transport: req,
		Jar:       t.jar,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	c := &twclient.Client{
		Credentials: twclient.NewCredentials(t.accountSID, t.authToken),
		HTTPClient:  httpClient,
	}
	c.SetAccountSid(t.accountSID)
	handler := twclient.NewRequestHandler(&twilioBaseClient{Client: c, base: t.baseURL})
	// Requests go to BaseURL alone, whatever TWILIO_EDGE and TWILIO_REGION
	// contain.
	handler.Edge, handler.Region = "", ""
	return twapi.NewApiService(handler), req, cancel
}

// twilioBaseClient sends twilio-go's requests to the configured base URL.
type twilioBaseClient struct {
	*twclient.Client
	base *url.URL
}

// SendRequest replaces the scheme and host of rawURL with the base URL's
// and prefixes its path.
func (c *twilioBaseClient) SendRequest(method string, rawURL string, data url.Values,
	headers map[string]interface{}, body ...byte) (*http.Response, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parsing Twilio URL %q: %w", rawURL, err)
	}
	u.Scheme = c.base.Scheme
	u.Host = c.base.Host
	u.User = nil
	u.Path = strings.TrimRight(c.base.Path, "/") + u.Path
	u.RawPath = ""
	return c.Client.SendRequest(method, u.String(), data, headers, body...)
}

// twilioRequest is the transport of one operation's http.Client.
type twilioRequest struct {
	ctx     context.Context
	base    http.RoundTripper
	timeout time.Duration

	mu         sync.Mutex
	status     int
	retryAfter time.Duration
	wrote      bool
}

// RoundTrip sends req under the operation's context and a per-request
// timeout, and notes the reply.
func (r *twilioRequest) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(r.ctx, r.timeout)
	trace := &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				r.mu.Lock()
				r.wrote = true
				r.mu.Unlock()
			}
		},
	}
	resp, err := r.base.RoundTrip(req.WithContext(httptrace.WithClientTrace(ctx, trace)))
	if err != nil {
		cancel()
		return nil, err
	}

	r.mu.Lock()
	r.status = resp.StatusCode
	r.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	r.mu.Unlock()
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

func (r *twilioRequest) snapshot() (status int, retryAfter time.Duration, wrote bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status, r.retryAfter, r.wrote
}

func (r *twilioRequest) lastStatus() int {
	status, _, _ := r.snapshot()
	return status
}

// cancelOnClose ends a request's context when its body is closed.
// twilio-go leaves error bodies open, and the operation's done function
// ends those.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func isAlphanumeric(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// parseHTTPURL parses an absolute http or https URL with a host.
func parseHTTPURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("invalid URL %q: %w", truncateForError(raw), err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("URL %q must start with http:// or https://", truncateForError(raw))
	}
	if u.Host == "" {
		return nil, fmt.Errorf("URL %q has no host", truncateForError(raw))
	}
	return u, nil
}

// truncateForError shortens s for an error message.
func truncateForError(s string) string {
	const max = 200
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
