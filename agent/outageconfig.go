package agent

import (
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/xpress-ops/tower/agent/outage"
	"github.com/xpress-ops/tower/internal/configcheck"
	"github.com/xpress-ops/tower/notify"
)

// Limits of Config.OutageNotifyAfter. An outage counts from the last
// contact with the hub, kept across restarts, or from the agent's first
// start when it never reached the hub.
const (
	MinOutageNotifyAfter = 10 * time.Second
	MaxOutageNotifyAfter = 24 * time.Hour
)

// outageStartGrace is how long a started agent waits before it sends SMS
// of its own, however old the outage is, so the uplink gets one attempt
// to reach the hub first. A crash-looping agent that lives longer than
// this still sends.
const outageStartGrace = 5 * time.Second

// validateOutage checks the settings of the agent's own SMS.
func (c *Config) validateOutage() []error {
	var errs []error
	if !validNotifyLanguage(c.OutageNotifyLanguage) {
		errs = append(errs, configcheck.Newf("OutageNotifyLanguage", "is %q: use en or fil", c.OutageNotifyLanguage))
	}
	if c.PublicURL != "" {
		if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, configcheck.Newf("PublicURL", "is %q: use an absolute http or https URL, such as https://agent-ncr.example.ph:9090/", c.PublicURL))
		}
	}
	for _, h := range c.HTTPAllowedHosts {
		if h == "" || strings.ContainsAny(h, "/:@ ") {
			errs = append(errs, configcheck.Newf("HTTPAllowedHosts", "contains %q: give host names without scheme or port, such as agent-ncr.example.ph", h))
		}
	}
	if c.OutageNotifyAfter == 0 {
		if len(c.OutageNotifyTo) > 0 {
			errs = append(errs, configcheck.Compare("OutageNotifyTo", "OutageNotifyAfter", func(after string) string {
				return "is set but " + after + " is 0, which turns the agent's own SMS off: set both, or neither"
			}))
		}
		return errs
	}
	if c.OutageNotifyAfter < MinOutageNotifyAfter || c.OutageNotifyAfter > MaxOutageNotifyAfter {
		errs = append(errs, configcheck.Newf("OutageNotifyAfter", "must be 0 (off) or from %s to %s, got %s",
			MinOutageNotifyAfter, MaxOutageNotifyAfter, c.OutageNotifyAfter))
	}
	if len(c.OutageNotifyTo) == 0 {
		errs = append(errs, configcheck.Compare("OutageNotifyTo", "OutageNotifyAfter", func(after string) string {
			return "is empty: " + after + " needs at least one phone number to send to"
		}))
	}
	for _, raw := range c.OutageNotifyTo {
		if _, err := notify.NormalizePhone(raw); err != nil {
			errs = append(errs, configcheck.Wrap("OutageNotifyTo", err))
		}
	}
	if c.OutageSMS == nil {
		errs = append(errs, configcheck.Compare("OutageSMS", "OutageNotifyAfter", func(after string) string {
			return "is not set: " + after + " needs an SMS sender (Twilio)"
		}))
	}
	return errs
}

// validNotifyLanguage reports whether lang names English or Filipino, the
// languages of the notify templates. Empty means English.
func validNotifyLanguage(lang string) bool {
	if lang == "" || notify.ParseLanguage(lang) == notify.Filipino {
		return true
	}
	tag := strings.ToLower(strings.TrimSpace(lang))
	if i := strings.IndexAny(tag, "-_"); i >= 0 {
		tag = tag[:i]
	}
	return tag == "en" || tag == "english"
}

// normalizePhones returns the E.164 form of each number that has one,
// without repeats, in the order given.
func normalizePhones(raw []string) []string {
	var out []string
	for _, r := range raw {
		if e164, err := notify.NormalizePhone(r); err == nil && !slices.Contains(out, e164) {
			out = append(out, e164)
		}
	}
	return out
}

// newNotifier builds the outage notifier of Config.OutageNotifyAfter.
func (a *Agent) newNotifier(logger *slog.Logger) (*outage.Notifier, error) {
	n, err := outage.New(outage.Config{
		AgentID:      a.cfg.ID,
		Region:       a.cfg.Region,
		After:        a.cfg.OutageNotifyAfter,
		To:           a.cfg.OutageNotifyTo,
		Language:     notify.ParseLanguage(a.cfg.OutageNotifyLanguage),
		Sender:       a.cfg.OutageSMS,
		Store:        a.sos,
		Spool:        a.spool,
		HubDownSince: a.notifyDownSince,
		HubReceived:  a.hubReceived,
		PageURL:      a.cfg.PublicURL,
		Logger:       logger,
		Registerer:   a.cfg.Registerer,
		Now:          a.cfg.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("outage notifier: %w", err)
	}
	return n, nil
}

// hubDownSince returns since when the hub has been unreachable: the last
// contact with it, kept across restarts, or the agent's first start when
// it never reached the hub. It returns false while the hub is reachable
// (see hubContact.reachable) and before the uplink is open.
func (a *Agent) hubDownSince() (time.Time, bool) {
	if a.uplink.StateSince().IsZero() || a.contact.reachable() {
		return time.Time{}, false
	}
	return a.contact.lastOrFirst(), true
}

// notifyDownSince is hubDownSince for the outage notifier: the outage
// counts as starting no sooner than OutageNotifyAfter before the end of
// outageStartGrace after this process's start, so a restarted agent sends
// nothing before its uplink tried to reach the hub.
func (a *Agent) notifyDownSince() (time.Time, bool) {
	since, down := a.hubDownSince()
	if !down {
		return since, false
	}
	earliest := a.contact.startedAt().Add(outageStartGrace - a.cfg.OutageNotifyAfter)
	if since.Before(earliest) {
		since = earliest
	}
	return since, true
}
