package notify

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

func FuzzNormalizePhone(f *testing.F) {
	for _, seed := range []string{
		"0917 123 4567", "+63 917 123 4567", "+63 0917 123 4567", "639171234567", "(0917) 123-4567",
		"0917.123.4567", "+63 2 8123 4567", "0917", "", "+", "++63", "((((", "+999 1234", "+1 415 555 2671",
		"0000000000000000000000000000000000000000", "0917\u00a0123\u00a04567", "٠٩١٧١٢٣٤٥٦٧",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		got, err := NormalizePhone(raw)
		if err != nil {
			if got != "" {
				t.Fatalf("NormalizePhone(%q) = %q with error %v", raw, got, err)
			}
			return
		}
		if len(got) < 2 || len(got) > 16 || got[0] != '+' || strings.Trim(got[1:], "0123456789") != "" {
			t.Fatalf("NormalizePhone(%q) = %q, not E.164", raw, got)
		}
		again, err := NormalizePhone(got)
		if err != nil || again != got {
			t.Fatalf("NormalizePhone(%q) = %q, %v; want it unchanged", got, again, err)
		}
	})
}

func FuzzVerifyWebhook(f *testing.F) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := int64(1_796_400_000)
	f.Add(secret, strconv.FormatInt(now, 10), SignWebhook(secret, now, []byte(`{"a":1}`)), []byte(`{"a":1}`), now, int64(60))
	f.Add(secret, "", "", []byte{}, now, int64(0))
	f.Add([]byte{}, "-9223372036854775808", "sha256=", []byte("x"), int64(-1), int64(-1))
	f.Add(secret, "9223372036854775807", "sha256="+strings.Repeat("0", 64), []byte("x"), int64(9223372036854775807), int64(9223372036854775807))
	f.Add(secret, "17964e5", "sha256=zz", []byte(nil), now, int64(1))
	f.Fuzz(func(t *testing.T, key []byte, timestamp, signature string, body []byte, nowUnix, skew int64) {
		header := http.Header{}
		header.Set(WebhookTimestampHeader, timestamp)
		header.Set(WebhookSignatureHeader, signature)
		at := time.Unix(nowUnix, 0)
		err := VerifyWebhook(key, header, body, at, time.Duration(skew))
		if err == nil {
			ts, perr := strconv.ParseInt(header.Get(WebhookTimestampHeader), 10, 64)
			if perr != nil {
				t.Fatalf("accepted timestamp %q that is not an integer", timestamp)
			}
			if want := SignWebhook(key, ts, body); !strings.EqualFold(header.Get(WebhookSignatureHeader), want) {
				t.Fatalf("accepted signature %q, want %q", signature, want)
			}
		}

		// A request signed now with a non-empty key always verifies.
		if len(key) > 0 {
			signed := http.Header{}
			signed.Set(WebhookTimestampHeader, strconv.FormatInt(nowUnix, 10))
			signed.Set(WebhookSignatureHeader, SignWebhook(key, nowUnix, body))
			if err := VerifyWebhook(key, signed, body, at, time.Minute); err != nil {
				t.Fatalf("fresh signature rejected: %v", err)
			}
		}
	})
}

func FuzzParseTwilioCallback(f *testing.F) {
	f.Add("MessageSid=SM" + strings.Repeat("a", 32) + "&MessageStatus=delivered&ErrorCode=0")
	f.Add("CallSid=CA" + strings.Repeat("b", 32) + "&CallStatus=completed")
	f.Add("MessageSid=&CallSid=x&ErrorCode=-1")
	f.Fuzz(func(t *testing.T, body string) {
		form, err := url.ParseQuery(body)
		if err != nil {
			return
		}
		st, err := ParseTwilioCallback(form)
		if err != nil {
			return
		}
		if st.ProviderID == "" || st.Status == "" || st.ErrorCode < 0 {
			t.Fatalf("accepted %q as %+v", body, st)
		}
		if st.Channel != ChannelSMS && st.Channel != ChannelVoice {
			t.Fatalf("accepted %q with channel %q", body, st.Channel)
		}
	})
}
