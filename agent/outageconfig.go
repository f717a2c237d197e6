package agent

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/xpress-ops/tower/agent/outage"
	"github.com/xpress-ops/tower/agent/uplink"
	"github.com/xpress-ops/tower/internal/configcheck"
	"github.com/xpress-ops/tower/notify"
)

// Limits of Config.OutageNotifyAfter. The floor leaves an agent that just
// started time to reach the hub before it sends SMS of its own: it counts
// an outage from its start.
const (
	MinOutageNotifyAfter = 10 * time.Second
	MaxOutageNotifyAfter = 24 * time.Hour
)

// validateOutage checks the settings of the agent's own SMS.
func (c *Config) validateOutage() []error {
	var errs []error
	if !validNotifyLanguage(c.OutageNotifyLanguage) {
		errs = append(errs, configcheck.Newf("OutageNotifyLanguage", "is %q: use en or fil", c.OutageNotifyLanguage))
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
		HubDownSince: a.hubDownSince,
		Logger:       logger,
		Registerer:   a.cfg.Registerer,
		Now:          a.cfg.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("outage notifier: %w", err)
	}
	return n, nil
}

// hubDownSince returns since when the hub has been unreachable, and false
// while the uplink is connected or not yet open. An agent that started
// during an outage counts it from its start.
func (a *Agent) hubDownSince() (time.Time, bool) {
	if a.uplink.State() == uplink.StateConnected {
		return time.Time{}, false
	}
	since := a.uplink.StateSince()
	return since, !since.IsZero()
}
