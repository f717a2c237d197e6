package notify

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"testing"
)

const callbackURL = "https://hub.example.ph/api/v1/twilio/status?region=ncr"

// twilioSignature computes X-Twilio-Signature as Twilio documents it:
// the URL, then each POST parameter's name and value sorted by name,
// signed with HMAC-SHA1 under the auth token and Base64-encoded.
func twilioSignature(authToken, fullURL string, form url.Values) string {
	names := make([]string, 0, len(form))
	for name := range form {
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString(fullURL)
	for _, name := range names {
		b.WriteString(name)
		b.WriteString(form.Get(name))
	}
	mac := hmac.New(sha1.New, []byte(authToken))
	mac.Write([]byte(b.String()))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func messageCallbackForm() url.Values {
	return url.Values{
		"AccountSid":    {"AC" + strings.Repeat("1", 32)},
		"MessageSid":    {"SM" + strings.Repeat("a", 32)},
		"SmsSid":        {"SM" + strings.Repeat("a", 32)},
		"MessageStatus": {"undelivered"},
		"SmsStatus":     {"undelivered"},
		"ErrorCode":     {"30003"},
		"To":            {"+639171234567"},
		"From":          {"+639170000001"},
		"ApiVersion":    {"2010-04-01"},
	}
}

func TestVerifyTwilioSignature(t *testing.T) {
	token := randomHex(t, 16)
	form := messageCallbackForm()
	signature := twilioSignature(token, callbackURL, form)

	if !VerifyTwilioSignature(token, callbackURL, form, signature) {
		t.Fatal("valid signature rejected")
	}

	tampered := messageCallbackForm()
	tampered.Set("MessageStatus", "delivered")
	added := messageCallbackForm()
	added.Set("Extra", "1")
	cases := []struct {
		name      string
		token     string
		url       string
		form      url.Values
		signature string
	}{
		{"tampered parameter", token, callbackURL, tampered, signature},
		{"added parameter", token, callbackURL, added, signature},
		{"wrong token", randomHex(t, 16), callbackURL, form, signature},
		{"other URL", token, "https://hub.example.ph/api/v1/twilio/status", form, signature},
		{"empty signature", token, callbackURL, form, ""},
		{"empty token", "", callbackURL, form, signature},
		{"garbage signature", token, callbackURL, form, "not base64 at all"},
	}
	for _, c := range cases {
		if VerifyTwilioSignature(c.token, c.url, c.form, c.signature) {
			t.Errorf("%s: signature accepted", c.name)
		}
	}
}

func TestVerifyTwilioSignatureDefaultPort(t *testing.T) {
	// Twilio may sign the URL with or without the default port.
	token := randomHex(t, 16)
	form := messageCallbackForm()
	signature := twilioSignature(token, "https://hub.example.ph:443/status", form)
	if !VerifyTwilioSignature(token, "https://hub.example.ph/status", form, signature) {
		t.Error("signature over the URL with :443 rejected for the URL without it")
	}
}

func callbackRequest(t *testing.T, token string, form url.Values) *http.Request {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, callbackURL, strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set(TwilioSignatureHeader, twilioSignature(token, callbackURL, form))
	return r
}

func TestReadTwilioCallbackMessage(t *testing.T) {
	token := randomHex(t, 16)
	st, err := ReadTwilioCallback(callbackRequest(t, token, messageCallbackForm()), token, callbackURL)
	if err != nil {
		t.Fatalf("ReadTwilioCallback: %v", err)
	}
	want := TwilioStatus{Channel: ChannelSMS, ProviderID: "SM" + strings.Repeat("a", 32), Status: "undelivered", ErrorCode: 30003, Final: true, AccountSID: "AC" + strings.Repeat("1", 32)}
	if st != want {
		t.Errorf("status = %+v, want %+v", st, want)
	}
}

func TestReadTwilioCallbackCall(t *testing.T) {
	token := randomHex(t, 16)
	form := url.Values{
		"AccountSid": {"AC" + strings.Repeat("1", 32)},
		"CallSid":    {"CA" + strings.Repeat("b", 32)},
		"CallStatus": {"ringing"},
		"To":         {"+639171234567"},
	}
	st, err := ReadTwilioCallback(callbackRequest(t, token, form), token, callbackURL)
	if err != nil {
		t.Fatalf("ReadTwilioCallback: %v", err)
	}
	want := TwilioStatus{Channel: ChannelVoice, ProviderID: "CA" + strings.Repeat("b", 32), Status: "ringing", AccountSID: "AC" + strings.Repeat("1", 32)}
	if st != want {
		t.Errorf("status = %+v, want %+v", st, want)
	}
}

func TestReadTwilioCallbackRejects(t *testing.T) {
	token := randomHex(t, 16)

	forged := callbackRequest(t, token, messageCallbackForm())
	forged.Header.Set(TwilioSignatureHeader, twilioSignature(randomHex(t, 16), callbackURL, messageCallbackForm()))
	if _, err := ReadTwilioCallback(forged, token, callbackURL); !errors.Is(err, ErrTwilioSignature) {
		t.Errorf("forged signature: err = %v, want ErrTwilioSignature", err)
	}

	get := httptest.NewRequest(http.MethodGet, callbackURL, nil)
	if _, err := ReadTwilioCallback(get, token, callbackURL); err == nil || !strings.Contains(err.Error(), "want POST") {
		t.Errorf("GET: err = %v, want a method error", err)
	}

	jsonBody := callbackRequest(t, token, messageCallbackForm())
	jsonBody.Header.Set("Content-Type", "application/json")
	if _, err := ReadTwilioCallback(jsonBody, token, callbackURL); err == nil || !strings.Contains(err.Error(), "Content-Type") {
		t.Errorf("JSON body: err = %v, want a Content-Type error", err)
	}

	huge := url.Values{"MessageSid": {strings.Repeat("x", MaxTwilioCallbackBody)}}
	if _, err := ReadTwilioCallback(callbackRequest(t, token, huge), token, callbackURL); err == nil || errors.Is(err, ErrTwilioSignature) {
		t.Errorf("oversized body: err = %v, want a read error", err)
	}
}

func TestParseTwilioCallbackRejects(t *testing.T) {
	cases := []struct {
		name string
		form url.Values
		want string
	}{
		{"no sid", url.Values{"MessageStatus": {"sent"}}, "neither MessageSid nor CallSid"},
		{"bad message sid", url.Values{"MessageSid": {"SM123"}, "MessageStatus": {"sent"}}, "not a message SID"},
		{"call sid as message", url.Values{"MessageSid": {"CA" + strings.Repeat("a", 32)}, "MessageStatus": {"sent"}}, "not a message SID"},
		{"unknown message status", url.Values{"MessageSid": {"SM" + strings.Repeat("a", 32)}, "MessageStatus": {"exploded"}}, "unknown MessageStatus"},
		{"bad call sid", url.Values{"CallSid": {"CAxyz"}, "CallStatus": {"completed"}}, "not a call SID"},
		{"unknown call status", url.Values{"CallSid": {"CA" + strings.Repeat("a", 32)}, "CallStatus": {"sent"}}, "unknown CallStatus"},
		{"bad error code", url.Values{"MessageSid": {"SM" + strings.Repeat("a", 32)}, "MessageStatus": {"failed"}, "ErrorCode": {"abc"}}, "invalid ErrorCode"},
	}
	for _, c := range cases {
		_, err := ParseTwilioCallback(c.form)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one containing %q", c.name, err, c.want)
		}
	}

	st, err := ParseTwilioCallback(url.Values{"MessageSid": {"MM" + strings.Repeat("0", 32)}, "SmsStatus": {"delivered"}})
	if err != nil || st.Status != "delivered" || !st.Final {
		t.Errorf("MMS with SmsStatus only = %+v, %v; want delivered and final", st, err)
	}
}
