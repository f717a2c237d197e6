package notify

import (
	"context"
	"encoding/xml"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	testMobile = "+639171234567"
	testKey    = "incident-12/sms/+639171234567"
)

func TestNewTwilioDefaultsToRealAPIWithoutSending(t *testing.T) {
	s, err := NewTwilio(TwilioConfig{AccountSID: "AC" + strings.Repeat("0", 32), AuthToken: "token123", From: "+639170000001"})
	if err != nil {
		t.Fatalf("NewTwilio: %v", err)
	}
	if got := s.BaseURL(); got != "https://api.twilio.com" {
		t.Errorf("BaseURL() = %q, want Twilio's API", got)
	}
	if s.timeout != DefaultTwilioTimeout {
		t.Errorf("timeout = %v, want %v", s.timeout, DefaultTwilioTimeout)
	}
	if s.voices[Filipino] != DefaultFilipinoVoice {
		t.Errorf("Filipino voice = %q, want %q", s.voices[Filipino], DefaultFilipinoVoice)
	}
}

func TestNewTwilioRejectsBadConfig(t *testing.T) {
	good := TwilioConfig{AccountSID: "AC0123", AuthToken: "abc123", From: "0917 000 0001", BaseURL: "http://127.0.0.1:1"}
	cases := []struct {
		name   string
		change func(*TwilioConfig)
		want   string
	}{
		{"no account", func(c *TwilioConfig) { c.AccountSID = "" }, "AccountSID is required"},
		{"account with symbols", func(c *TwilioConfig) { c.AccountSID = "AC-1" }, "AccountSID must contain only letters and digits"},
		{"no token", func(c *TwilioConfig) { c.AuthToken = "" }, "AuthToken is required"},
		{"token with symbols", func(c *TwilioConfig) { c.AuthToken = "a:b" }, "AuthToken must contain only letters and digits"},
		{"bad from", func(c *TwilioConfig) { c.From = "12" }, "From: phone number"},
		{"ftp base", func(c *TwilioConfig) { c.BaseURL = "ftp://127.0.0.1" }, "must start with http:// or https://"},
		{"relative callback", func(c *TwilioConfig) { c.StatusCallbackURL = "/status" }, "StatusCallbackURL"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := good
			c.change(&cfg)
			_, err := NewTwilio(cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("NewTwilio error = %v, want one containing %q", err, c.want)
			}
		})
	}
	if _, err := NewTwilio(good); err != nil {
		t.Fatalf("NewTwilio(good config): %v", err)
	}
}

func TestTwilioSendSMS(t *testing.T) {
	fake := newFakeTwilio(t)
	s := fake.sender(t)

	text := "XPRESS SOS: panic button, vehicle taxi-0917."
	res, err := s.Send(context.Background(), Message{Channel: ChannelSMS, To: "0917 123 4567", Text: text, Key: testKey})
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	msgs := fake.snapshotMessages()
	if len(msgs) != 1 {
		t.Fatalf("fake holds %d messages, want 1", len(msgs))
	}
	got := msgs[0]
	if res.ProviderID != got.Sid || !strings.HasPrefix(res.ProviderID, "SM") {
		t.Errorf("ProviderID = %q, want the created SID %q", res.ProviderID, got.Sid)
	}
	if res.Status != "queued" {
		t.Errorf("Status = %q, want queued", res.Status)
	}
	if got.To != testMobile {
		t.Errorf("To = %q, want the E.164 %q", got.To, testMobile)
	}
	if got.From != "+639170000001" {
		t.Errorf("From = %q", got.From)
	}
	if want := text + " Ref " + Reference(testKey); got.Body != want {
		t.Errorf("Body = %q, want %q", got.Body, want)
	}
	if got.StatusCallback != fake.config().StatusCallbackURL {
		t.Errorf("StatusCallback = %q", got.StatusCallback)
	}

	// A text that already carries the marker, as rendered templates do,
	// gets no second one.
	_, withRef := RenderAlert(English, AlertData{VehicleID: "taxi-0917", Ref: Reference("incident-13/sms/+639171234567")})
	if _, err := s.Send(context.Background(), Message{Channel: ChannelSMS, To: testMobile, Text: withRef, Key: "incident-13/sms/+639171234567"}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if body := fake.snapshotMessages()[1].Body; body != withRef {
		t.Errorf("Body = %q, want the text unchanged %q", body, withRef)
	}
}

// sayTwiML is the TwiML of a call as Twilio reads it.
type sayTwiML struct {
	XMLName xml.Name `xml:"Response"`
	Says    []struct {
		Language string `xml:"language,attr"`
		Voice    string `xml:"voice,attr"`
		Text     string `xml:",chardata"`
	} `xml:"Say"`
	Pauses []struct {
		Length string `xml:"length,attr"`
	} `xml:"Pause"`
}

func TestTwilioSendVoice(t *testing.T) {
	fake := newFakeTwilio(t)
	s := fake.sender(t)

	cases := []struct {
		lang     Language
		language string
		voice    string
	}{
		{Filipino, "fil-PH", DefaultFilipinoVoice},
		{English, "en-US", ""},
		{"", "en-US", ""},
	}
	for i, c := range cases {
		text := `Alert <b>vehicle</b> "taxi" & 'co' sent an SOS.`
		res, err := s.Send(context.Background(), Message{Channel: ChannelVoice, To: testMobile, Text: text, Language: c.lang, Key: "incident-12/voice/" + testMobile})
		if err != nil {
			t.Fatalf("Send voice %q: %v", c.lang, err)
		}
		call := fake.snapshotCalls()[i]
		if res.ProviderID != call.Sid || !strings.HasPrefix(call.Sid, "CA") {
			t.Errorf("ProviderID = %q, want the call SID %q", res.ProviderID, call.Sid)
		}
		var twiml sayTwiML
		if err := xml.Unmarshal([]byte(call.Twiml), &twiml); err != nil {
			t.Fatalf("TwiML %q does not parse: %v", call.Twiml, err)
		}
		if len(twiml.Says) != 2 {
			t.Fatalf("TwiML has %d <Say>, want the text twice: %s", len(twiml.Says), call.Twiml)
		}
		for _, say := range twiml.Says {
			if say.Text != text {
				t.Errorf("<Say> text = %q, want %q", say.Text, text)
			}
			if say.Language != c.language || say.Voice != c.voice {
				t.Errorf("lang %q: <Say language=%q voice=%q>, want %q %q", c.lang, say.Language, say.Voice, c.language, c.voice)
			}
		}
		if len(twiml.Pauses) != 1 {
			t.Errorf("TwiML has %d <Pause>, want 1 between the two <Say>", len(twiml.Pauses))
		}
		if !slices.Contains(call.Events, "answered") || !slices.Contains(call.Events, "completed") {
			t.Errorf("StatusCallbackEvent = %v, want answered and completed among them", call.Events)
		}
	}
}

func TestTwilioVoicesOverride(t *testing.T) {
	fake := newFakeTwilio(t)
	cfg := fake.config()
	cfg.Voices = map[Language]string{English: "Polly.Joanna"}
	s, err := NewTwilio(cfg)
	if err != nil {
		t.Fatalf("NewTwilio: %v", err)
	}
	if _, err := s.Send(context.Background(), Message{Channel: ChannelVoice, To: testMobile, Text: "Hello"}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if twiml := fake.snapshotCalls()[0].Twiml; !strings.Contains(twiml, `voice="Polly.Joanna"`) {
		t.Errorf("TwiML %q lacks the configured voice", twiml)
	}
}

func TestTwilioSendErrors(t *testing.T) {
	cases := []struct {
		name       string
		to         string
		reply      fakeReply
		permanent  bool
		unknown    bool
		code       int
		status     int
		retryAfter time.Duration
	}{
		{"rate limited", "+639170000429", fakeReply{status: 429, code: 20429, retryAfter: "7"}, false, false, 20429, 429, 7 * time.Second},
		{"server error", "+639170000500", fakeReply{status: 500, code: 20500}, false, true, 20500, 500, 0},
		{"bad gateway html", "+639170000502", fakeReply{status: 502, rawBody: "<html>Bad Gateway</html>"}, false, true, 0, 502, 0},
		{"unavailable with retry-after", "+639170000503", fakeReply{status: 503, rawBody: "down", retryAfter: "30"}, false, true, 0, 503, 30 * time.Second},
		{"invalid number", "+639170021211", fakeReply{status: 400, code: 21211}, true, false, 21211, 400, 0},
		{"unsubscribed", "+639170021610", fakeReply{status: 400, code: 21610}, true, false, 21610, 400, 0},
		{"not mobile", "+639170021614", fakeReply{status: 400, code: 21614}, true, false, 21614, 400, 0},
		{"region disabled", "+639170021408", fakeReply{status: 400, code: 21408}, true, false, 21408, 400, 0},
		{"other 4xx", "+639170000404", fakeReply{status: 404, code: 20404}, true, false, 20404, 404, 0},
		{"permanent code with 5xx status", "+639170021612", fakeReply{status: 500, code: 21612}, true, false, 21612, 500, 0},
	}
	fake := newFakeTwilio(t)
	s := fake.sender(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fake.setReply(c.to, c.reply)
			_, err := s.Send(context.Background(), Message{Channel: ChannelSMS, To: c.to, Text: "SOS", Key: "k/" + c.to})
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Send error = %v (%T), want *Error", err, err)
			}
			if e.Permanent != c.permanent {
				t.Errorf("Permanent = %v, want %v (%v)", e.Permanent, c.permanent, err)
			}
			if IsPermanent(err) != c.permanent {
				t.Errorf("IsPermanent = %v, want %v", IsPermanent(err), c.permanent)
			}
			if e.Unknown != c.unknown {
				t.Errorf("Unknown = %v, want %v", e.Unknown, c.unknown)
			}
			if e.Code != c.code {
				t.Errorf("Code = %d, want %d", e.Code, c.code)
			}
			if e.Status != c.status {
				t.Errorf("Status = %d, want %d", e.Status, c.status)
			}
			if e.RetryAfter != c.retryAfter {
				t.Errorf("RetryAfter = %v, want %v", e.RetryAfter, c.retryAfter)
			}
			if !strings.Contains(err.Error(), c.to) {
				t.Errorf("error %q does not name the number", err)
			}
		})
	}
	if n := len(fake.snapshotMessages()); n != 0 {
		t.Errorf("fake stored %d messages for rejected requests", n)
	}
}

func TestTwilioSendWrongToken(t *testing.T) {
	fake := newFakeTwilio(t)
	cfg := fake.config()
	cfg.AuthToken = "wrong0token"
	s, err := NewTwilio(cfg)
	if err != nil {
		t.Fatalf("NewTwilio: %v", err)
	}
	_, err = s.Send(context.Background(), Message{Channel: ChannelSMS, To: testMobile, Text: "SOS"})
	// The message is fine: once the account is fixed it goes out, so the
	// error is a transient credentials error, not a permanent one.
	var e *Error
	if !errors.As(err, &e) || e.Permanent || e.Unknown || !e.Auth || !IsAuthError(err) || e.Status != http.StatusUnauthorized || e.Code != 20003 {
		t.Fatalf("Send with a wrong token = %#v, want a transient credentials error, 401 with code 20003", err)
	}
}

func TestTwilioSendTimeout(t *testing.T) {
	fake := newFakeTwilio(t)
	cfg := fake.config()
	cfg.Timeout = 200 * time.Millisecond
	s, err := NewTwilio(cfg)
	if err != nil {
		t.Fatalf("NewTwilio: %v", err)
	}
	fake.setReply(testMobile, fakeReply{hang: true})

	_, err = s.Send(context.Background(), Message{Channel: ChannelSMS, To: testMobile, Text: "SOS", Key: testKey})
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("Send error = %v, want *Error", err)
	}
	if e.Permanent {
		t.Error("timeout classified permanent")
	}
	if !e.Unknown {
		t.Error("timeout after the request was written is not marked Unknown")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not match context.DeadlineExceeded", err)
	}
}

func TestTwilioSendConnectionRefused(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	fake := newFakeTwilio(t)
	cfg := fake.config()
	cfg.BaseURL = closed.URL
	s, err := NewTwilio(cfg)
	if err != nil {
		t.Fatalf("NewTwilio: %v", err)
	}
	_, err = s.Send(context.Background(), Message{Channel: ChannelSMS, To: testMobile, Text: "SOS"})
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("Send error = %v, want *Error", err)
	}
	if e.Permanent || e.Unknown {
		t.Errorf("refused connection: Permanent=%v Unknown=%v, want transient with a known outcome", e.Permanent, e.Unknown)
	}
}

func TestTwilioSendCanceledContext(t *testing.T) {
	fake := newFakeTwilio(t)
	s := fake.sender(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Send(ctx, Message{Channel: ChannelSMS, To: testMobile, Text: "SOS"})
	if !errors.Is(err, context.Canceled) || IsPermanent(err) {
		t.Fatalf("Send with a canceled context = %v, want a transient error matching context.Canceled", err)
	}
	if n := len(fake.requestLog()); n != 0 {
		t.Errorf("fake received %d requests after cancel", n)
	}
}

func TestTwilioSendRejectsBadMessage(t *testing.T) {
	fake := newFakeTwilio(t)
	s := fake.sender(t)
	cases := []struct {
		name string
		msg  Message
		want string
	}{
		{"short number", Message{Channel: ChannelSMS, To: "0917", Text: "SOS"}, `"0917"`},
		{"letters in number", Message{Channel: ChannelSMS, To: "call me", Text: "SOS"}, "contains"},
		{"no text", Message{Channel: ChannelSMS, To: testMobile, Text: "  "}, "has no text"},
		{"email channel", Message{Channel: ChannelEmail, To: testMobile, Text: "SOS"}, `cannot send channel "email"`},
		{"too long", Message{Channel: ChannelSMS, To: testMobile, Text: strings.Repeat("a", MaxSMSLength+1)}, "more than Twilio's limit"},
		{"TwiML too long", Message{Channel: ChannelVoice, To: testMobile, Text: strings.Repeat("a", MaxTwiMLLength/2)}, "shorten the text"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := s.Send(context.Background(), c.msg)
			if !IsPermanent(err) {
				t.Fatalf("Send = %v, want a permanent error", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q lacks %q", err, c.want)
			}
		})
	}
	if n := len(fake.requestLog()); n != 0 {
		t.Errorf("fake received %d requests for messages that cannot be sent", n)
	}
}

func TestTwilioIgnoresRoutingEnvironment(t *testing.T) {
	// twilio-go turns api.twilio.com into api.<edge>.<region>.twilio.com
	// from these variables; the sender must still reach BaseURL.
	t.Setenv("TWILIO_EDGE", "sydney")
	t.Setenv("TWILIO_REGION", "au1")
	fake := newFakeTwilio(t)
	s := fake.sender(t)
	if _, err := s.Send(context.Background(), Message{Channel: ChannelSMS, To: testMobile, Text: "SOS"}); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if n := len(fake.snapshotMessages()); n != 1 {
		t.Fatalf("fake holds %d messages, want 1", n)
	}
}

func TestTwilioFindSMS(t *testing.T) {
	fake := newFakeTwilio(t)
	fake.pageSize = 2 // make Find page through the list
	s := fake.sender(t)
	ctx := context.Background()

	// An old message with the same key, from before the window.
	fake.addMessage(fakeRecord{To: testMobile, From: "+639170000001", Body: "old Ref " + Reference(testKey), Created: fake.now().Add(-time.Hour)})
	since := fake.now()

	// The wanted message is the oldest of three, on the second page.
	keys := []string{testKey, "incident-13/sms/b", "incident-14/sms/c"}
	sids := map[string]string{}
	for _, key := range keys {
		fake.advance(5 * time.Second)
		res, err := s.Send(ctx, Message{Channel: ChannelSMS, To: testMobile, Text: "SOS for " + key, Key: key})
		if err != nil {
			t.Fatalf("Send %s: %v", key, err)
		}
		sids[key] = res.ProviderID
	}
	// The same marker to another number, and a newer message from
	// another sender to ours, must not match.
	fake.addMessage(fakeRecord{To: "+639179999999", From: "+639170000001", Body: "Ref " + Reference(testKey), Created: fake.now()})
	fake.addMessage(fakeRecord{To: testMobile, From: "+639175555555", Body: "Ref " + Reference(testKey), Created: fake.now().Add(time.Minute)})

	res, found, err := s.Find(ctx, Message{Channel: ChannelSMS, To: "0917 123 4567", Key: testKey}, since)
	if err != nil {
		t.Fatalf("Find: %v", err)
	}
	if !found {
		t.Fatal("Find did not find the message sent with the key")
	}
	if res.ProviderID != sids[testKey] {
		t.Errorf("Find returned %q, want %q", res.ProviderID, sids[testKey])
	}

	lists := 0
	for _, r := range fake.requestLog() {
		if r.Method == http.MethodGet {
			lists++
			if r.Query.Get("To") != testMobile || r.Query.Get("From") != "+639170000001" {
				t.Errorf("list request filters To=%q From=%q, want ours", r.Query.Get("To"), r.Query.Get("From"))
			}
		}
	}
	if lists < 2 {
		t.Errorf("Find read %d list pages, want it to follow next_page_uri", lists)
	}

	_, found, err = s.Find(ctx, Message{Channel: ChannelSMS, To: testMobile, Key: "incident-99/sms/never-sent"}, since)
	if err != nil || found {
		t.Errorf("Find of a key never sent = found %v, err %v; want not found", found, err)
	}

	// The old message lies outside a window that starts now.
	_, found, err = s.Find(ctx, Message{Channel: ChannelSMS, To: testMobile, Key: testKey}, fake.now().Add(time.Hour))
	if err != nil || found {
		t.Errorf("Find after every message = found %v, err %v; want not found", found, err)
	}
}

func TestTwilioFindCall(t *testing.T) {
	fake := newFakeTwilio(t)
	s := fake.sender(t)
	ctx := context.Background()
	msg := Message{Channel: ChannelVoice, To: testMobile, Text: "SOS", Key: "incident-12/voice/" + testMobile}

	fake.addCall(fakeRecord{To: testMobile, From: "+639170000001", Created: fake.now().Add(-time.Minute)})
	since := fake.now()
	_, found, err := s.Find(ctx, msg, since)
	if err != nil || found {
		t.Fatalf("Find before any call in the window = found %v, err %v; want not found", found, err)
	}

	fake.advance(3 * time.Second)
	first, err := s.Send(ctx, msg)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	res, found, err := s.Find(ctx, msg, since)
	if err != nil || !found {
		t.Fatalf("Find = found %v, err %v; want the call", found, err)
	}
	if res.ProviderID != first.ProviderID {
		t.Errorf("Find returned %q, want the call in the window %q", res.ProviderID, first.ProviderID)
	}

	// Twilio keeps no text of a call, so with two calls in the window
	// Find cannot tell which one msg placed and claims neither.
	fake.advance(30 * time.Second)
	if _, err := s.Send(ctx, msg); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if res, found, err = s.Find(ctx, msg, since); err != nil || found {
		t.Fatalf("Find with two calls in the window = %+v, found %v, err %v; want not found", res, found, err)
	}
}

func TestTwilioFindErrors(t *testing.T) {
	fake := newFakeTwilio(t)
	s := fake.sender(t)
	ctx := context.Background()

	_, _, err := s.Find(ctx, Message{Channel: ChannelSMS, To: testMobile}, time.Now())
	if !IsPermanent(err) || !strings.Contains(err.Error(), "no Key") {
		t.Errorf("Find without a key = %v, want a permanent error naming the key", err)
	}
	_, _, err = s.Find(ctx, Message{Channel: ChannelWebhook, To: testMobile, Key: "k"}, time.Now())
	if !IsPermanent(err) {
		t.Errorf("Find of a webhook = %v, want a permanent error", err)
	}

	cfg := fake.config()
	cfg.AccountSID = "AC" + strings.Repeat("f", 32) // unknown to the fake: 401
	other, err := NewTwilio(cfg)
	if err != nil {
		t.Fatalf("NewTwilio: %v", err)
	}
	_, _, err = other.Find(ctx, Message{Channel: ChannelSMS, To: testMobile, Key: testKey}, time.Now())
	var e *Error
	if !errors.As(err, &e) || e.Status != http.StatusUnauthorized {
		t.Errorf("Find with bad credentials = %v, want an *Error with status 401", err)
	}
}
