package notify

import (
	"context"
	"net"
	"strings"
	"testing"
)

// closedURL returns an http URL on 127.0.0.1 whose port has no listener.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return "http://" + addr
}

func TestRedactURLs(t *testing.T) {
	in := `Post "https://api.twilio.com/2010-04-01/Accounts/AC0123/Messages.json": dial tcp: refused; see https://hooks.example.ph/x?token=abc`
	got := RedactURLs(in)
	want := `Post "https://api.twilio.com": dial tcp: refused; see https://hooks.example.ph`
	if got != want {
		t.Errorf("RedactURLs = %q, want %q", got, want)
	}
}

// TestTransportErrorsHideURLs sends to ports with no listener: the
// errors, which quote the request URL, show neither the webhook's secret
// path and query nor the Twilio account SID.
func TestTransportErrorsHideURLs(t *testing.T) {
	w := newTestWebhook(t, []byte("0123456789abcdef0123"), nil)
	target := closedURL(t) + "/hooks/secret-path?token=secret-query"
	_, err := w.Send(context.Background(), webhookMessage(target))
	if err == nil {
		t.Fatal("webhook Send to a closed port succeeded")
	}
	if strings.Contains(err.Error(), "secret-path") || strings.Contains(err.Error(), "secret-query") {
		t.Errorf("webhook error %q shows the URL's path or query", err)
	}

	fake := newFakeTwilio(t)
	cfg := fake.config()
	cfg.BaseURL = closedURL(t)
	s, err := NewTwilio(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Send(context.Background(), Message{Channel: ChannelSMS, To: testMobile, Text: "SOS", Key: "incident-1-x/sms/" + testMobile})
	if err == nil {
		t.Fatal("Twilio Send to a closed port succeeded")
	}
	if strings.Contains(err.Error(), cfg.AccountSID) {
		t.Errorf("Twilio error %q shows the account SID", err)
	}
	if IsPermanent(err) {
		t.Errorf("Twilio error %v to a closed port is permanent, want transient", err)
	}
}
