package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/xpress-ops/tower/hub/dispatch"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/configcheck"
	"github.com/xpress-ops/tower/notify"
)

// Environment variables of the dispatcher's secrets. Each may instead
// name a file in <NAME>_FILE, readable by its owner only. There are no
// flags for them, since flags show in ps.
const (
	envTwilioAuthToken = "XPRESS_TWILIO_AUTH_TOKEN"
	envSMTPPassword    = "XPRESS_SMTP_PASSWORD"
	envWebhookSecret   = "XPRESS_WEBHOOK_SECRET"
)

// dispatchFlags are the hub's notification and escalation flags.
type dispatchFlags struct {
	twilioAccountSID string
	twilioFrom       string
	twilioAPIURL     string
	smtpAddr         string
	smtpUsername     string
	smtpFrom         string
	smtpTLS          string
	webhookURLs      urlList
	escalateAfter    time.Duration
	voiceAfter       time.Duration
	notifyTimeout    time.Duration
	publicURL        string
}

func (f *dispatchFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.twilioAccountSID, "twilio-account-sid", "", "Twilio account SID (AC…) for SMS and voice calls; the auth token comes from "+envTwilioAuthToken+" or "+envTwilioAuthToken+"_FILE")
	fs.StringVar(&f.twilioFrom, "twilio-from", "", "Twilio phone number that sends SMS and places calls, e.g. +639170000001")
	fs.StringVar(&f.twilioAPIURL, "twilio-api-url", notify.DefaultTwilioBaseURL, "base URL of the Twilio REST API")
	fs.StringVar(&f.smtpAddr, "smtp-addr", "", "SMTP server host:port for email notifications; empty disables email")
	fs.StringVar(&f.smtpUsername, "smtp-username", "", "SMTP user name; the password comes from "+envSMTPPassword+" or "+envSMTPPassword+"_FILE")
	fs.StringVar(&f.smtpFrom, "smtp-from", "", "sender of notification emails, e.g. \"Xpress Ops Tower <alerts@example.ph>\"")
	fs.StringVar(&f.smtpTLS, "smtp-tls", string(notify.TLSStartTLS), "SMTP connection security: none, starttls or tls")
	fs.Var(&f.webhookURLs, "webhook-url", "URL that receives a signed JSON copy of each new incident; repeat the flag or separate URLs with commas; the signing secret comes from "+envWebhookSecret+" or "+envWebhookSecret+"_FILE")
	fs.DurationVar(&f.escalateAfter, "escalate-after", dispatch.DefaultEscalateAfter, "how long after the agent received an SOS the region's supervisors are alerted if the incident is still open")
	fs.DurationVar(&f.voiceAfter, "voice-after", dispatch.DefaultVoiceAfter, "how long after the supervisors' alert they are called if the incident is still open")
	fs.DurationVar(&f.notifyTimeout, "notify-timeout", dispatch.DefaultSendTimeout, "time limit of one notification send and of each Twilio request in it (1s to 2m); after a crash mid-send, the notification is checked at Twilio and retried this long plus 5s after the send began")
	fs.StringVar(&f.publicURL, "public-url", "", "the hub's URL as Twilio and operators reach it, e.g. https://ops.example.ph; needed for Twilio status callbacks")
}

// durationRange is the accepted range of one dispatcher duration flag.
type durationRange struct {
	field, flag string
	value       func(*dispatchFlags) time.Duration
	lo, hi      time.Duration
}

// dispatchDurationRanges are the accepted ranges of the dispatcher's
// durations. An escalation timer under 5 s would alert supervisors before
// an operator can read the incident, and one over an hour leaves an SOS
// unescalated too long. A send needs at least a second and is cut at two
// minutes, since a crash mid-send delays the notification by this much.
var dispatchDurationRanges = []durationRange{
	{"EscalateAfter", "escalate-after", func(f *dispatchFlags) time.Duration { return f.escalateAfter }, 5 * time.Second, time.Hour},
	{"VoiceAfter", "voice-after", func(f *dispatchFlags) time.Duration { return f.voiceAfter }, 5 * time.Second, time.Hour},
	{"SendTimeout", "notify-timeout", func(f *dispatchFlags) time.Duration { return f.notifyTimeout }, time.Second, 2 * time.Minute},
}

// check checks one duration with configcheck and names the flag and its
// environment twin in the error. Zero is rejected too: the flags default
// to a positive value, so zero was set explicitly.
func (r durationRange) check(f *dispatchFlags) error {
	d := r.value(f)
	err := configcheck.Duration(r.field, d, r.lo, r.hi)
	if d == 0 {
		err = configcheck.Newf(r.field, "must be between %s and %s, got 0s", r.lo, r.hi)
	}
	if err == nil {
		return nil
	}
	return renameToFlags(err, map[string]string{r.field: r.flag})
}

// urlList is a repeatable flag whose values may also be comma lists.
type urlList []string

func (l *urlList) String() string { return strings.Join(*l, ",") }

// Set adds the comma-separated URLs in value.
func (l *urlList) Set(value string) error {
	for _, u := range strings.Split(value, ",") {
		if u = strings.TrimSpace(u); u != "" {
			*l = append(*l, u)
		}
	}
	return nil
}

// config checks the flags and secrets and builds the dispatcher's
// configuration with a sender per configured channel. Store, Bus, Logger
// and Registerer are left for the hub to fill.
func (f *dispatchFlags) config(e env, log *slog.Logger) (dispatch.Config, error) {
	var cfg dispatch.Config
	var errs []error
	for _, r := range dispatchDurationRanges {
		if err := r.check(f); err != nil {
			errs = append(errs, err)
		}
	}
	if f.publicURL != "" {
		if err := checkHTTPURL(f.publicURL); err != nil {
			errs = append(errs, fmt.Errorf("invalid %s: %w", flagLabel("public-url"), err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, err
	}
	cfg.EscalateAfter, cfg.VoiceAfter, cfg.SendTimeout = f.escalateAfter, f.voiceAfter, f.notifyTimeout
	cfg.PublicURL = strings.TrimRight(f.publicURL, "/")
	cfg.Senders = map[notify.Channel]notify.Sender{}

	if err := f.twilio(e, log, &cfg); err != nil {
		errs = append(errs, err)
	}
	if err := f.smtp(e, log, &cfg); err != nil {
		errs = append(errs, err)
	}
	if err := f.webhooks(e, log, &cfg); err != nil {
		errs = append(errs, err)
	}
	return cfg, errors.Join(errs...)
}

// twilio adds the SMS and voice sender when --twilio-account-sid is set.
func (f *dispatchFlags) twilio(e env, log *slog.Logger, cfg *dispatch.Config) error {
	token, err := secretFromEnv(e, envTwilioAuthToken)
	if err != nil {
		return err
	}
	if f.twilioAccountSID == "" {
		if token != "" || f.twilioFrom != "" {
			return errors.New("--twilio-account-sid is empty but --twilio-from or " + envTwilioAuthToken + " is set: set all three to enable SMS and voice, or none")
		}
		return nil
	}

	if token == "" {
		return fmt.Errorf("--twilio-account-sid needs the auth token in %s or %s_FILE", envTwilioAuthToken, envTwilioAuthToken)
	}
	if f.twilioFrom == "" {
		return errors.New("--twilio-account-sid needs --twilio-from, the Twilio number that sends")
	}
	if _, err := notify.NormalizePhone(f.twilioFrom); err != nil {
		return fmt.Errorf("invalid %s: %w", flagLabel("twilio-from"), err)
	}
	if err := checkHTTPURL(f.twilioAPIURL); err != nil {
		return fmt.Errorf("invalid %s: %w", flagLabel("twilio-api-url"), err)
	}

	if err := checkTwilioAuthToken(token); err != nil {
		return err
	}

	// Each Twilio request may use the whole send time limit, so a slow
	// but working Twilio is not cut off before the send is.
	tc := notify.TwilioConfig{
		AccountSID: f.twilioAccountSID,
		AuthToken:  token,
		From:       f.twilioFrom,
		BaseURL:    f.twilioAPIURL,
		Timeout:    cfg.SendTimeout,
		Logger:     log,
	}
	if cfg.PublicURL != "" {
		tc.StatusCallbackURL = cfg.PublicURL + dispatch.TwilioStatusPath
		cfg.TwilioAuthToken = token
	} else {
		log.Warn("no --public-url: Twilio status callbacks are off, so delivery is not confirmed")
	}

	tw, err := notify.NewTwilio(tc)
	if err != nil {
		return fmt.Errorf("--twilio-account-sid, --twilio-from, --twilio-api-url: %w", err)
	}
	cfg.Senders[notify.ChannelSMS] = tw
	cfg.Senders[notify.ChannelVoice] = tw
	cfg.Finder = tw
	cfg.TwilioAccountSID = f.twilioAccountSID
	return nil
}

// checkTwilioAuthToken checks the auth token's form without showing it:
// Twilio's console shows an account's auth token as 32 hex characters.
// Other letters and digits are accepted too, for API key secrets.
func checkTwilioAuthToken(token string) error {
	for _, c := range token {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return fmt.Errorf("%s (or the file in %s_FILE) is not a Twilio auth token: it contains %s; expected the 32 hex characters shown in the Twilio console",
				envTwilioAuthToken, envTwilioAuthToken, describeRune(c))
		}
	}
	return nil
}

// describeRune names a character of a secret for an error: a space or
// punctuation as itself, anything else by its kind only.
func describeRune(c rune) string {
	switch {
	case c == ' ' || c == '\t':
		return "white space"
	case c < 0x20 || c == 0x7f:
		return "a control character"
	case c > 0x7f:
		return "a non-ASCII character"
	}
	return "punctuation"
}

// smtp adds the email sender when --smtp-addr is set.
func (f *dispatchFlags) smtp(e env, log *slog.Logger, cfg *dispatch.Config) error {
	password, err := secretFromEnv(e, envSMTPPassword)
	if err != nil {
		return err
	}
	if f.smtpAddr == "" {
		if f.smtpUsername != "" || f.smtpFrom != "" || password != "" {
			return errors.New("--smtp-addr is empty but --smtp-username, --smtp-from or " + envSMTPPassword + " is set: set --smtp-addr to enable email")
		}
		return nil
	}

	host, rawPort, err := net.SplitHostPort(f.smtpAddr)
	port, perr := strconv.Atoi(rawPort)
	if err != nil || host == "" || perr != nil || port < 1 || port > 65535 {
		return fmt.Errorf("invalid %s %q: use host:port such as smtp.example.ph:587", flagLabel("smtp-addr"), f.smtpAddr)
	}
	if f.smtpFrom == "" {
		return errors.New("--smtp-addr needs --smtp-from, the sender address of notification emails")
	}
	mode := notify.TLSMode(f.smtpTLS)
	switch mode {
	case notify.TLSNone, notify.TLSStartTLS, notify.TLSImplicit:
	default:
		return fmt.Errorf("invalid %s %q: use none, starttls or tls", flagLabel("smtp-tls"), f.smtpTLS)
	}
	if password != "" && f.smtpUsername == "" {
		return fmt.Errorf("%s is set but --smtp-username is empty", envSMTPPassword)
	}

	mail, err := notify.NewSMTP(notify.SMTPConfig{
		Host: host, Port: port, Username: f.smtpUsername, Password: password,
		From: f.smtpFrom, TLS: mode, Timeout: cfg.SendTimeout, Logger: log,
	})
	if err != nil {
		return fmt.Errorf("--smtp-addr, --smtp-from, --smtp-tls: %w", err)
	}
	cfg.Senders[notify.ChannelEmail] = mail
	return nil
}

// webhooks adds the webhook sender when --webhook-url is set.
func (f *dispatchFlags) webhooks(e env, log *slog.Logger, cfg *dispatch.Config) error {
	secret, err := secretFromEnv(e, envWebhookSecret)
	if err != nil {
		return err
	}
	if len(f.webhookURLs) == 0 {
		return nil
	}
	for _, u := range f.webhookURLs {
		if err := store.ValidateWebhookURL(u); err != nil {
			return fmt.Errorf("invalid %s: %w", flagLabel("webhook-url"), err)
		}
	}
	if secret == "" {
		return fmt.Errorf("--webhook-url needs the signing secret in %s or %s_FILE", envWebhookSecret, envWebhookSecret)
	}
	hook, err := notify.NewWebhook(notify.WebhookConfig{Secret: []byte(secret), Logger: log})
	if err != nil {
		return fmt.Errorf("%s: %w", envWebhookSecret, err)
	}
	cfg.Senders[notify.ChannelWebhook] = hook
	cfg.WebhookURLs = append([]string(nil), f.webhookURLs...)
	return nil
}

// secretFromEnv reads a secret from the environment variable name or from
// the file named by name_FILE, which must be readable by its owner only.
// Setting both is an error.
func secretFromEnv(e env, name string) (string, error) {
	value, path := e.getenv(name), e.getenv(name+"_FILE")
	switch {
	case value != "" && path != "":
		return "", fmt.Errorf("both %s and %s_FILE are set: set one", name, name)
	case path != "":
		v, err := readSecretFile(path)
		if err != nil {
			return "", fmt.Errorf("%s_FILE: %w", name, err)
		}
		if v == "" {
			return "", fmt.Errorf("%s_FILE: %s is empty", name, path)
		}
		return v, nil
	}
	return strings.TrimSpace(value), nil
}

// checkHTTPURL checks that raw is an absolute http or https URL with a
// host.
func checkHTTPURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q does not parse: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q must start with http:// or https://", raw)
	}
	if u.Host == "" {
		return fmt.Errorf("%q has no host", raw)
	}
	return nil
}
