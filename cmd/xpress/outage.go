package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/notify"
)

// outageFlags are the agent's flags for its outage mode: the regional
// page where staff acknowledge SOS while the hub is unreachable, and the
// SOS alert SMS the agent sends itself then.
type outageFlags struct {
	publicURL    string
	allowedHosts string

	after            time.Duration
	to               string
	language         string
	twilioAccountSID string
	twilioFrom       string
	twilioAPIURL     string
}

func (f *outageFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.publicURL, "public-url", "", "address where regional staff open this agent's page, e.g. https://agent-ncr.example.ph:9090/; "+
		"the agent's own SMS link to it (empty: the SMS names the agent id and region)")
	fs.StringVar(&f.allowedHosts, "http-allowed-hosts", "", "comma-separated host names the HTTP server answers to besides IP addresses and localhost, "+
		"e.g. agent-ncr.example.ph; requests naming another host get 421, which keeps DNS rebinding pages away from the acknowledge endpoint")
	fs.DurationVar(&f.after, "outage-notify-after", 0, fmt.Sprintf(
		"how long the hub must be unreachable before the agent sends the SOS alert SMS itself to --outage-notify-to, for every SOS nobody acknowledged, e.g. 2m; from %s to %s (0: off)",
		agent.MinOutageNotifyAfter, agent.MaxOutageNotifyAfter))
	fs.StringVar(&f.to, "outage-notify-to", "", "comma-separated phone numbers of the agent's own SMS, e.g. \"0917 123 4567,+639181234567\"")
	fs.StringVar(&f.language, "outage-notify-language", "en", "language of the agent's own SMS: en or fil")
	fs.StringVar(&f.twilioAccountSID, "twilio-account-sid", "", "Twilio account SID (AC…) of the agent's own SMS; the auth token comes from "+envTwilioAuthToken+" or "+envTwilioAuthToken+"_FILE")
	fs.StringVar(&f.twilioFrom, "twilio-from", "", "Twilio phone number that sends the agent's own SMS, e.g. +639170000001")
	fs.StringVar(&f.twilioAPIURL, "twilio-api-url", notify.DefaultTwilioBaseURL, "base URL of the Twilio REST API of the agent's own SMS; change it only for a test double or a proxy")
}

// apply sets the outage SMS fields of cfg from the flags and builds the
// Twilio sender. agent.Config.Validate checks the delay, the numbers and
// the language; apply checks the Twilio settings and secret.
func (f *outageFlags) apply(e env, log *slog.Logger, cfg *agent.Config) error {
	cfg.OutageNotifyAfter = f.after
	cfg.OutageNotifyTo = splitList(f.to)
	cfg.OutageNotifyLanguage = f.language
	cfg.PublicURL = f.publicURL
	cfg.HTTPAllowedHosts = splitList(f.allowedHosts)
	if f.after == 0 {
		if f.twilioAccountSID != "" || f.twilioFrom != "" {
			return fmt.Errorf("%s or %s is set but %s is 0: the agent uses Twilio only for its own SMS during a hub outage; set %s, or remove the Twilio flags",
				flagLabel("twilio-account-sid"), flagLabel("twilio-from"), flagLabel("outage-notify-after"), flagLabel("outage-notify-after"))
		}
		return nil
	}

	token, err := secretFromEnv(e, envTwilioAuthToken)
	if err != nil {
		return err
	}
	var errs []error
	if f.twilioAccountSID == "" {
		errs = append(errs, fmt.Errorf("%s needs %s: the agent sends its own SMS through Twilio", flagLabel("outage-notify-after"), flagLabel("twilio-account-sid")))
	}
	if token == "" {
		errs = append(errs, fmt.Errorf("%s needs the Twilio auth token in %s or %s_FILE", flagLabel("outage-notify-after"), envTwilioAuthToken, envTwilioAuthToken))
	}
	if f.twilioFrom == "" {
		errs = append(errs, fmt.Errorf("%s needs %s, the Twilio number that sends", flagLabel("outage-notify-after"), flagLabel("twilio-from")))
	} else if _, err := notify.NormalizePhone(f.twilioFrom); err != nil {
		errs = append(errs, fmt.Errorf("invalid %s: %w", flagLabel("twilio-from"), err))
	}
	if err := checkHTTPURL(f.twilioAPIURL); err != nil {
		errs = append(errs, fmt.Errorf("invalid %s: %w", flagLabel("twilio-api-url"), err))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	tw, err := notify.NewTwilio(notify.TwilioConfig{
		AccountSID: f.twilioAccountSID,
		AuthToken:  token,
		From:       f.twilioFrom,
		BaseURL:    f.twilioAPIURL,
		Logger:     log,
	})
	if err != nil {
		return fmt.Errorf("%s, %s, %s: %w", flagLabel("twilio-account-sid"), flagLabel("twilio-from"), flagLabel("twilio-api-url"), err)
	}
	cfg.OutageSMS = tw
	return nil
}
