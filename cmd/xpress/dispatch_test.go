package main

import (
	"crypto/rand"
	"encoding/hex"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/dispatch"
	"github.com/xpress-ops/tower/notify"
)

// runSecret is a secret generated for this test run.
var runSecret = func() string {
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}()

// testSecret returns the run's secret.
func testSecret(*testing.T) string { return runSecret }

// dispatchConfig parses args and vars as xpress hub does and returns the
// dispatcher configuration or the error.
func dispatchConfig(t *testing.T, args []string, vars map[string]string) (dispatch.Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("hub", flag.ContinueOnError)
	var df dispatchFlags
	df.register(fs)
	e := testEnv(vars)
	if err := parseFlags(fs, args, e); err != nil {
		return dispatch.Config{}, err
	}
	return df.config(e, slog.New(slog.DiscardHandler))
}

func TestDispatchFlags_NoneConfigured(t *testing.T) {
	cfg, err := dispatchConfig(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Senders) != 0 {
		t.Errorf("senders = %v, want none", cfg.Senders)
	}
	if cfg.EscalateAfter != dispatch.DefaultEscalateAfter || cfg.VoiceAfter != dispatch.DefaultVoiceAfter {
		t.Errorf("timers = %s, %s; want the defaults", cfg.EscalateAfter, cfg.VoiceAfter)
	}
}

func TestDispatchFlags_AllChannels(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "webhook_secret")
	if err := os.WriteFile(secretFile, []byte(testSecret(t)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := dispatchConfig(t, []string{
		"--twilio-account-sid", "AC0123456789abcdef0123456789abcdef",
		"--twilio-from", "0917 000 0001",
		"--twilio-api-url", "http://127.0.0.1:9",
		"--smtp-addr", "127.0.0.1:2525", "--smtp-from", "Xpress <alerts@example.ph>", "--smtp-tls", "none",
		"--webhook-url", "https://hooks.example.ph/a",
		"--escalate-after", "45s",
		"--public-url", "https://ops.example.ph/",
	}, map[string]string{
		"XPRESS_TWILIO_AUTH_TOKEN":   testSecret(t),
		"XPRESS_WEBHOOK_SECRET_FILE": secretFile,
		"XPRESS_WEBHOOK_URL":         "https://ignored.example.ph/b",
		"XPRESS_VOICE_AFTER":         "1m",
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range []notify.Channel{notify.ChannelSMS, notify.ChannelVoice, notify.ChannelEmail, notify.ChannelWebhook} {
		if cfg.Senders[ch] == nil {
			t.Errorf("no sender for %s", ch)
		}
	}
	tw, ok := cfg.Senders[notify.ChannelSMS].(*notify.Twilio)
	if !ok || tw.BaseURL() != "http://127.0.0.1:9" {
		t.Errorf("SMS sender = %T, want Twilio at the --twilio-api-url", cfg.Senders[notify.ChannelSMS])
	}
	if cfg.Finder == nil || cfg.TwilioAuthToken != testSecret(t) || cfg.PublicURL != "https://ops.example.ph" {
		t.Errorf("finder %v, token set %v, public URL %q", cfg.Finder != nil, cfg.TwilioAuthToken != "", cfg.PublicURL)
	}
	if len(cfg.WebhookURLs) != 1 || cfg.WebhookURLs[0] != "https://hooks.example.ph/a" {
		t.Errorf("webhook URLs = %v, want the flag's over the environment's", cfg.WebhookURLs)
	}
	if cfg.EscalateAfter != 45*time.Second || cfg.VoiceAfter != time.Minute {
		t.Errorf("timers = %s, %s; want 45s from the flag and 1m from XPRESS_VOICE_AFTER", cfg.EscalateAfter, cfg.VoiceAfter)
	}
}

func TestDispatchFlags_WebhookURLList(t *testing.T) {
	cfg, err := dispatchConfig(t, []string{"--webhook-url", "https://a.example.ph/x", "--webhook-url", "https://b.example.ph/y,https://c.example.ph/z"},
		map[string]string{"XPRESS_WEBHOOK_SECRET": testSecret(t)})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.WebhookURLs) != 3 {
		t.Errorf("webhook URLs = %v, want 3", cfg.WebhookURLs)
	}
}

func TestDispatchFlags_Errors(t *testing.T) {
	readable := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(readable, []byte(testSecret(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(readable, 0o644); err != nil {
		t.Fatal(err)
	}
	sid := []string{"--twilio-account-sid", "AC0123456789abcdef0123456789abcdef", "--twilio-from", "+639170000001"}
	cases := []struct {
		name string
		args []string
		vars map[string]string
		want string
	}{
		{"token without SID", nil, map[string]string{"XPRESS_TWILIO_AUTH_TOKEN": testSecret(t)}, "--twilio-account-sid is empty"},
		{"SID without token", sid, nil, "needs the auth token in XPRESS_TWILIO_AUTH_TOKEN"},
		{"token file readable by others", sid, map[string]string{"XPRESS_TWILIO_AUTH_TOKEN_FILE": readable}, "chmod 600"},
		{"token twice", sid, map[string]string{"XPRESS_TWILIO_AUTH_TOKEN": "x", "XPRESS_TWILIO_AUTH_TOKEN_FILE": readable}, "set one"},
		{"bad from", []string{"--twilio-account-sid", "AC0123456789abcdef0123456789abcdef", "--twilio-from", "12"}, map[string]string{"XPRESS_TWILIO_AUTH_TOKEN": testSecret(t)}, "invalid --twilio-from"},
		{"bad API URL", append(sid, "--twilio-api-url", "ftp://x"), map[string]string{"XPRESS_TWILIO_AUTH_TOKEN": testSecret(t)}, "invalid --twilio-api-url"},
		{"bad SMTP address", []string{"--smtp-addr", "mail.example.ph", "--smtp-from", "a@example.ph"}, nil, "invalid --smtp-addr"},
		{"SMTP without from", []string{"--smtp-addr", "127.0.0.1:25"}, nil, "--smtp-addr needs --smtp-from"},
		{"bad SMTP TLS", []string{"--smtp-addr", "127.0.0.1:25", "--smtp-from", "a@example.ph", "--smtp-tls", "ssl"}, nil, "invalid --smtp-tls"},
		{"password without user", []string{"--smtp-addr", "127.0.0.1:25", "--smtp-from", "a@example.ph"}, map[string]string{"XPRESS_SMTP_PASSWORD": "pw"}, "--smtp-username is empty"},
		{"webhook without secret", []string{"--webhook-url", "https://hooks.example.ph/a"}, nil, "XPRESS_WEBHOOK_SECRET"},
		{"short webhook secret", []string{"--webhook-url", "https://hooks.example.ph/a"}, map[string]string{"XPRESS_WEBHOOK_SECRET": "short"}, "XPRESS_WEBHOOK_SECRET"},
		{"bad webhook URL", []string{"--webhook-url", "hooks.example.ph"}, map[string]string{"XPRESS_WEBHOOK_SECRET": testSecret(t)}, "invalid --webhook-url"},
		{"zero escalate-after", []string{"--escalate-after", "0s"}, nil, "--escalate-after (XPRESS_ESCALATE_AFTER) must be between 5s and 1h0m0s"},
		{"short escalate-after", []string{"--escalate-after", "1s"}, nil, "--escalate-after (XPRESS_ESCALATE_AFTER) must be at least 5s, got 1s"},
		{"long escalate-after", nil, map[string]string{"XPRESS_ESCALATE_AFTER": "2h"}, "--escalate-after (XPRESS_ESCALATE_AFTER) must be at most 1h0m0s, got 2h0m0s"},
		{"negative voice-after", []string{"--voice-after", "-1s"}, nil, "--voice-after (XPRESS_VOICE_AFTER) must be at least 5s"},
		{"long voice-after", []string{"--voice-after", "61m"}, nil, "--voice-after (XPRESS_VOICE_AFTER) must be at most 1h0m0s"},
		{"zero notify-timeout", []string{"--notify-timeout", "0s"}, nil, "--notify-timeout (XPRESS_NOTIFY_TIMEOUT) must be between 1s and 2m0s"},
		{"short notify-timeout", []string{"--notify-timeout", "500ms"}, nil, "--notify-timeout (XPRESS_NOTIFY_TIMEOUT) must be at least 1s"},
		{"long notify-timeout", []string{"--notify-timeout", "3m"}, nil, "--notify-timeout (XPRESS_NOTIFY_TIMEOUT) must be at most 2m0s"},
		{"token with punctuation", sid, map[string]string{"XPRESS_TWILIO_AUTH_TOKEN": "abc-" + testSecret(t)}, "XPRESS_TWILIO_AUTH_TOKEN (or the file in XPRESS_TWILIO_AUTH_TOKEN_FILE) is not a Twilio auth token: it contains punctuation; expected the 32 hex characters"},
		{"bad public URL", []string{"--public-url", "ops.example.ph"}, nil, "invalid --public-url"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := dispatchConfig(t, c.args, c.vars)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error = %v, want one containing %q", err, c.want)
			}
			if err != nil && strings.Contains(err.Error(), testSecret(t)) {
				t.Errorf("error %q shows the secret", err)
			}
		})
	}
}

func TestDispatchFlags_NoSecretFlags(t *testing.T) {
	fs := flag.NewFlagSet("hub", flag.ContinueOnError)
	var df dispatchFlags
	df.register(fs)
	fs.VisitAll(func(f *flag.Flag) {
		for _, word := range []string{"token", "password", "secret"} {
			if strings.Contains(f.Name, word) {
				t.Errorf("flag --%s takes a secret; secrets come only from the environment or files", f.Name)
			}
		}
	})
}

func TestDispatchFlags_TwilioTimeoutFollowsNotifyTimeout(t *testing.T) {
	for _, timeout := range []string{"25s", "90s"} {
		cfg, err := dispatchConfig(t, []string{
			"--twilio-account-sid", "AC0123456789abcdef0123456789abcdef", "--twilio-from", "+639170000001",
			"--twilio-api-url", "http://127.0.0.1:9", "--notify-timeout", timeout,
		}, map[string]string{"XPRESS_TWILIO_AUTH_TOKEN": testSecret(t)})
		if err != nil {
			t.Fatal(err)
		}
		want, _ := time.ParseDuration(timeout)
		tw, ok := cfg.Senders[notify.ChannelSMS].(*notify.Twilio)
		if !ok || tw.Timeout() != want || cfg.SendTimeout != want {
			t.Errorf("--notify-timeout %s: Twilio request timeout %v, send timeout %s; want both %s", timeout, tw.Timeout(), cfg.SendTimeout, want)
		}
	}
}

func TestHubFlags_AllowRegion(t *testing.T) {
	parse := func(args ...string) (*hubFlags, error) {
		fs := flag.NewFlagSet("hub", flag.ContinueOnError)
		var hf hubFlags
		hf.register(fs)
		if err := parseFlags(fs, args, testEnv(nil)); err != nil {
			return nil, err
		}
		return &hf, hf.checkRegions()
	}
	hf, err := parse("--allow-region", "Bohol, Palawan")
	if err != nil {
		t.Fatal(err)
	}
	if got := hf.config().ExtraRegions; len(got) != 2 || got[0] != "Bohol" || got[1] != "Palawan" {
		t.Errorf("ExtraRegions = %q, want Bohol and Palawan", got)
	}
	if _, err := parse("--allow-region", "Bohol/East"); err == nil || !strings.Contains(err.Error(), "invalid --allow-region (XPRESS_ALLOW_REGION)") {
		t.Errorf("--allow-region Bohol/East: error %v, want one naming the flag", err)
	}
}
