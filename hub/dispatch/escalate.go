package dispatch

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/notify"
)

// Escalation levels, as stored in store.Incident.EscalationLevel.
const (
	// LevelOpened notifies responders, emergency contacts and webhooks.
	LevelOpened = 1
	// LevelSupervisors sends SMS and email to the region's supervisors.
	LevelSupervisors = 2
	// LevelVoice calls the region's supervisors.
	LevelVoice = 3
)

// Notification reasons, as stored in store.Notification.Reason. They
// select the message's wording at send time.
const (
	ReasonResponder        = "opened:responder"
	ReasonEmergencyContact = "opened:emergency-contact"
	ReasonWebhook          = "opened:webhook"
	ReasonSupervisor       = "escalation:supervisors"
	ReasonVoice            = "escalation:voice"
)

// activeStates are the states a scan reads.
var activeStates = []store.IncidentState{store.StateOpen, store.StateAcknowledged, store.StateDispatched}

// Scan raises every active incident to the escalation level it is due
// for, as the scan loop does on every tick. It pages through all active
// incidents and returns the first store read that failed. An escalation
// that fails is logged and retried on the next scan.
func (d *Dispatcher) Scan(ctx context.Context) error {
	d.scanMu.Lock()
	defer d.scanMu.Unlock()

	seen := map[int64]bool{}
	for offset := 0; ; offset += scanPageSize {
		qctx, cancel := d.queryContext(ctx)
		page, err := d.cfg.Store.Incidents(qctx, store.IncidentFilter{States: activeStates, Offset: offset, Limit: scanPageSize})
		cancel()
		if err != nil {
			return fmt.Errorf("list active incidents from offset %d: %w", offset, err)
		}
		for _, inc := range page {
			// An incident opened during the scan shifts the pages, so the
			// same incident can come twice.
			if seen[inc.ID] {
				continue
			}
			seen[inc.ID] = true
			if err := ctx.Err(); err != nil {
				return err
			}
			d.escalate(ctx, inc)
		}
		if len(page) < scanPageSize {
			break
		}
	}

	d.mu.Lock()
	for id := range d.level2At {
		if !seen[id] {
			delete(d.level2At, id)
		}
	}
	d.mu.Unlock()
	d.refreshOutboxGauges(ctx)
	return nil
}

// escalationBase is when an incident's escalation timer starts: when the
// agent received the SOS, or when the hub opened the incident if that is
// earlier, so that an agent clock running ahead cannot delay escalation.
func escalationBase(inc store.Incident) time.Time {
	base := inc.ReceivedAt
	if base.IsZero() || (!inc.OpenedAt.IsZero() && inc.OpenedAt.Before(base)) {
		base = inc.OpenedAt
	}
	return base
}

// MaxCatchUpHold bounds how long after an incident opened the dispatcher
// holds it back while its agent is catching up (Config.CatchingUp).
const MaxCatchUpHold = 30 * time.Second

// escalate raises inc through every level it is due for now.
func (d *Dispatcher) escalate(ctx context.Context, inc store.Incident) {
	now := d.cfg.Clock.Now()
	if d.cfg.CatchingUp != nil && now.Sub(inc.OpenedAt) < MaxCatchUpHold && d.cfg.CatchingUp(inc.AgentID) {
		d.log.Debug("incident held back while its agent sends its SOS backlog", "incident", inc.ID, "agent", inc.AgentID)
		return
	}
	var ok bool
	if inc.EscalationLevel < LevelOpened {
		if inc, ok = d.raiseOpened(ctx, inc); !ok {
			return
		}
	}
	if inc.State != store.StateOpen {
		return
	}
	supervisorsDue := escalationBase(inc).Add(d.cfg.EscalateAfter)
	if inc.EscalationLevel < LevelSupervisors {
		if now.Before(supervisorsDue) {
			return
		}
		if inc, ok = d.raiseSupervisors(ctx, inc, now); !ok {
			return
		}
	}
	if inc.EscalationLevel < LevelVoice {
		alerted, err := d.supervisorsAlertedAt(ctx, inc, supervisorsDue)
		if err != nil {
			d.log.Error("reading when supervisors were alerted failed; retrying on the next scan", "incident", inc.ID, "error", err)
			return
		}
		if now.Before(alerted.Add(d.cfg.VoiceAfter)) {
			return
		}
		d.raiseVoice(ctx, inc)
	}
}

// recipients collects an escalation's notifications, one per channel
// and address, and counts them for the event detail.
type recipients struct {
	list  []store.Notification
	seen  map[store.NotificationKey]bool
	count map[notify.Channel]int
}

func newRecipients() *recipients {
	return &recipients{seen: map[store.NotificationKey]bool{}, count: map[notify.Channel]int{}}
}

// add queues one notification unless its channel and address are already
// in the list.
func (r *recipients) add(ch notify.Channel, address string, contactID int64, lang store.Language, reason string) bool {
	n := store.Notification{Channel: store.Channel(ch), Address: address, ContactID: contactID, Language: lang, Reason: reason}
	k := store.NotificationKey{Channel: n.Channel, Address: n.Address}
	if r.seen[k] {
		return false
	}
	r.seen[k] = true
	r.list = append(r.list, n)
	r.count[ch]++
	return true
}

// summary describes what was added since the counts before, such as
// "2 sms, 1 email".
func (r *recipients) summary(before map[notify.Channel]int) string {
	var parts []string
	for _, ch := range allChannels {
		if n := r.count[ch] - before[ch]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, ch))
		}
	}
	if len(parts) == 0 {
		return "none on an enabled channel"
	}
	return strings.Join(parts, ", ")
}

func (r *recipients) snapshot() map[notify.Channel]int {
	out := make(map[notify.Channel]int, len(r.count))
	for ch, n := range r.count {
		out[ch] = n
	}
	return out
}

// contacts reads the contacts matching f.
func (d *Dispatcher) contacts(ctx context.Context, f store.ContactFilter) ([]store.Contact, error) {
	qctx, cancel := d.queryContext(ctx)
	defer cancel()
	list, err := d.cfg.Store.Contacts(qctx, f)
	if err != nil {
		return nil, fmt.Errorf("read %s contacts (region %q, vehicle %q): %w", f.Role, f.Region, f.VehicleID, err)
	}
	return list, nil
}

// regionContacts returns the contacts of role in region, none for an
// incident without a region (an empty filter would match every region).
func (d *Dispatcher) regionContacts(ctx context.Context, role store.ContactRole, region string) ([]store.Contact, error) {
	if region == "" {
		return nil, nil
	}
	return d.contacts(ctx, store.ContactFilter{Role: role, Region: region})
}

// raiseOpened queues level 1: responders, emergency contacts, webhooks.
func (d *Dispatcher) raiseOpened(ctx context.Context, inc store.Incident) (store.Incident, bool) {
	responders, err := d.regionContacts(ctx, store.RoleResponder, inc.Region)
	if err != nil {
		d.log.Error("cannot read responders; retrying on the next scan", "incident", inc.ID, "region", inc.Region, "error", err)
		return inc, false
	}
	var emergency []store.Contact
	if inc.VehicleID != "" {
		if emergency, err = d.contacts(ctx, store.ContactFilter{Role: store.RoleEmergency, VehicleID: inc.VehicleID}); err != nil {
			d.log.Error("cannot read emergency contacts; retrying on the next scan", "incident", inc.ID, "vehicle", inc.VehicleID, "error", err)
			return inc, false
		}
	}

	r := newRecipients()
	var details []string

	before := r.snapshot()
	for _, c := range responders {
		if c.Phone != "" && d.enabled(notify.ChannelSMS) {
			r.add(notify.ChannelSMS, c.Phone, c.ID, c.Language, ReasonResponder)
		}
		if c.Email != "" && d.enabled(notify.ChannelEmail) {
			r.add(notify.ChannelEmail, c.Email, c.ID, c.Language, ReasonResponder)
		}
	}
	switch {
	case len(responders) == 0:
		d.noContacts(inc, store.RoleResponder, LevelOpened)
		details = append(details, fmt.Sprintf("nobody configured: region %q has no responders", inc.Region))
	default:
		summary := r.summary(before)
		if r.count[notify.ChannelSMS]+r.count[notify.ChannelEmail] == 0 {
			d.log.Error("no responder notified: the region's responders have no address on an enabled channel",
				"incident", inc.ID, "region", inc.Region, "responders", len(responders))
		}
		details = append(details, fmt.Sprintf("%s of %s: %s", plural(len(responders), "responder"), inc.Region, summary))
	}

	before = r.snapshot()
	for _, c := range emergency {
		queued := false
		if c.Phone != "" && d.enabled(notify.ChannelSMS) {
			queued = r.add(notify.ChannelSMS, c.Phone, c.ID, c.Language, ReasonEmergencyContact)
		}
		// A contact without a phone, or while SMS is disabled, gets the
		// alert by email.
		if !queued && c.Email != "" && d.enabled(notify.ChannelEmail) {
			r.add(notify.ChannelEmail, c.Email, c.ID, c.Language, ReasonEmergencyContact)
		}
	}
	if len(emergency) > 0 {
		details = append(details, fmt.Sprintf("%s of vehicle %s: %s", plural(len(emergency), "emergency contact"), inc.VehicleID, r.summary(before)))
	}

	if d.enabled(notify.ChannelWebhook) {
		for _, u := range d.cfg.WebhookURLs {
			r.add(notify.ChannelWebhook, u, 0, store.LangEnglish, ReasonWebhook)
		}
		if n := r.count[notify.ChannelWebhook]; n > 0 {
			details = append(details, plural(n, "webhook"))
		}
	}

	return d.raise(ctx, inc, store.Escalation{
		IncidentID:    inc.ID,
		Level:         LevelOpened,
		Detail:        "new SOS: " + strings.Join(details, "; "),
		Notifications: r.list,
	})
}

// raiseSupervisors queues level 2: SMS and email to the supervisors.
func (d *Dispatcher) raiseSupervisors(ctx context.Context, inc store.Incident, now time.Time) (store.Incident, bool) {
	supervisors, err := d.regionContacts(ctx, store.RoleSupervisor, inc.Region)
	if err != nil {
		d.log.Error("cannot read supervisors; retrying on the next scan", "incident", inc.ID, "region", inc.Region, "error", err)
		return inc, false
	}
	// The outbox keeps one notification per incident, channel and
	// address, so a supervisor who already got this incident's alert on a
	// channel (as a responder) is not queued again on it.
	qctx, cancel := d.queryContext(ctx)
	existing, err := d.cfg.Store.Notifications(qctx, inc.ID)
	cancel()
	if err != nil {
		d.log.Error("cannot read the incident's notifications; retrying on the next scan", "incident", inc.ID, "error", err)
		return inc, false
	}
	r := newRecipients()
	var already []string
	for _, n := range existing {
		r.seen[store.NotificationKey{Channel: n.Channel, Address: n.Address}] = true
	}

	addSupervisor := func(c store.Contact, ch notify.Channel, address string) {
		if r.add(ch, address, c.ID, c.Language, ReasonSupervisor) {
			return
		}
		for _, n := range existing {
			if n.Channel == store.Channel(ch) && n.Address == address {
				already = append(already, fmt.Sprintf("%s already notified by %s as %s",
					store.DescribeAddress(n.Channel, address), strings.ToUpper(string(ch)), reasonRole(n.Reason)))
				d.log.Info("supervisor already notified of the incident on this channel; not queued again",
					"incident", inc.ID, "contact", c.ID, "channel", ch, "address", store.DescribeAddress(n.Channel, address), "reason", n.Reason)
				return
			}
		}
	}
	for _, c := range supervisors {
		if c.Phone != "" && d.enabled(notify.ChannelSMS) {
			addSupervisor(c, notify.ChannelSMS, c.Phone)
		}
		if c.Email != "" && d.enabled(notify.ChannelEmail) {
			addSupervisor(c, notify.ChannelEmail, c.Email)
		}
	}

	waited := now.Sub(escalationBase(inc)).Round(time.Second)
	detail := fmt.Sprintf("not acknowledged after %s: ", waited)
	if len(supervisors) == 0 {
		d.noContacts(inc, store.RoleSupervisor, LevelSupervisors)
		detail += fmt.Sprintf("nobody configured: region %q has no supervisors", inc.Region)
	} else {
		detail += fmt.Sprintf("%s of %s: %s", plural(len(supervisors), "supervisor"), inc.Region, r.summary(nil))
		if len(already) > 0 {
			detail += "; " + strings.Join(already, "; ")
		}
	}
	return d.raise(ctx, inc, store.Escalation{
		IncidentID:    inc.ID,
		Level:         LevelSupervisors,
		OnlyIfOpen:    true,
		Detail:        detail,
		Notifications: r.list,
	})
}

// raiseVoice queues level 3: a call to each supervisor with a phone.
func (d *Dispatcher) raiseVoice(ctx context.Context, inc store.Incident) {
	supervisors, err := d.regionContacts(ctx, store.RoleSupervisor, inc.Region)
	if err != nil {
		d.log.Error("cannot read supervisors; retrying on the next scan", "incident", inc.ID, "region", inc.Region, "error", err)
		return
	}
	r := newRecipients()
	if d.enabled(notify.ChannelVoice) {
		for _, c := range supervisors {
			if c.Phone != "" {
				r.add(notify.ChannelVoice, c.Phone, c.ID, c.Language, ReasonVoice)
			}
		}
	}
	detail := "still not acknowledged: calling supervisors: "
	switch {
	case len(supervisors) == 0:
		d.noContacts(inc, store.RoleSupervisor, LevelVoice)
		detail += fmt.Sprintf("nobody configured: region %q has no supervisors", inc.Region)
	case !d.enabled(notify.ChannelVoice):
		detail += "voice calls are disabled on this hub"
	default:
		detail += fmt.Sprintf("%s of %s: %s", plural(len(supervisors), "supervisor"), inc.Region, r.summary(nil))
	}
	d.raise(ctx, inc, store.Escalation{
		IncidentID:    inc.ID,
		Level:         LevelVoice,
		OnlyIfOpen:    true,
		Detail:        detail,
		Notifications: r.list,
	})
}

// reasonRole returns the role a notification reason addresses, such as
// "responder", for event details.
func reasonRole(reason string) string {
	switch reason {
	case ReasonResponder:
		return "responder"
	case ReasonEmergencyContact:
		return "emergency contact"
	case ReasonSupervisor, ReasonVoice:
		return "supervisor"
	case ReasonWebhook:
		return "webhook"
	}
	return reason
}

// plural returns "1 responder" or "2 responders".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// noContacts logs and counts an escalation that finds no contact to notify.
// noContacts counts an escalation that finds no contact to notify, and
// logs it once per region and role per missingContactsLogEvery with the
// number of incidents not logged in between, so a burst of SOS does not
// flood the log. The metric and each incident's audit trail count every one.
func (d *Dispatcher) noContacts(inc store.Incident, role store.ContactRole, level int) {
	d.metrics.noContacts.WithLabelValues(string(role)).Inc()
	now := d.cfg.Clock.Now()
	key := inc.Region + "\x00" + string(role)
	d.mu.Lock()
	if d.missingLogged == nil {
		d.missingLogged = make(map[string]*missingContacts)
	}
	m := d.missingLogged[key]
	if m == nil {
		m = &missingContacts{}
		d.missingLogged[key] = m
	}
	if !m.at.IsZero() && now.Sub(m.at) < missingContactsLogEvery {
		m.suppressed++
		d.mu.Unlock()
		return
	}
	suppressed := m.suppressed
	m.at, m.suppressed = now, 0
	d.mu.Unlock()
	d.log.Error("no "+string(role)+" contacts configured for the incident's region, so the hub notifies no one at this level; add contacts with POST /api/v1/contacts",
		"incident", inc.ID, "region", inc.Region, "vehicle", inc.VehicleID, "role", role, "level", level,
		"incidents_not_logged_since_last", suppressed)
}

// missingContactsLogEvery is how often a region without contacts of a
// role is logged.
const missingContactsLogEvery = 10 * time.Minute

// missingContacts tracks the log of one region and role without contacts.
type missingContacts struct {
	at         time.Time
	suppressed int
}

// raise applies one escalation step and returns the incident as changed,
// or false when the store refused it (another hub raised it, or the
// incident left a state the step needs) or failed.
func (d *Dispatcher) raise(ctx context.Context, inc store.Incident, e store.Escalation) (store.Incident, bool) {
	qctx, cancel := d.queryContext(ctx)
	change, queued, err := d.cfg.Store.EscalateIncident(qctx, e)
	cancel()
	if err != nil {
		if errors.Is(err, store.ErrConflict) {
			d.log.Debug("escalation not applied", "incident", inc.ID, "level", e.Level, "reason", err)
			return inc, false
		}
		d.metrics.escalationFailures.Inc()
		d.log.Error("escalation failed; retrying on the next scan", "incident", inc.ID, "level", e.Level, "error", err)
		return inc, false
	}
	d.metrics.escalations.WithLabelValues(strconv.Itoa(e.Level)).Inc()
	d.log.Info("incident escalated", "incident", inc.ID, "level", e.Level, "queued", len(queued),
		"event", change.Event.ID, "detail", change.Event.Detail)
	if e.Level == LevelSupervisors {
		d.mu.Lock()
		d.level2At[inc.ID] = change.Event.At
		d.mu.Unlock()
	}
	d.publish(change)
	if len(queued) > 0 {
		wake(d.sendWake)
	}
	return change.Incident, true
}

// supervisorsAlertedAt returns when inc reached level 2: from the cache,
// else from its escalated event, else fallback.
func (d *Dispatcher) supervisorsAlertedAt(ctx context.Context, inc store.Incident, fallback time.Time) (time.Time, error) {
	d.mu.Lock()
	at, ok := d.level2At[inc.ID]
	d.mu.Unlock()
	if ok {
		return at, nil
	}
	qctx, cancel := d.queryContext(ctx)
	_, evs, err := d.cfg.Store.Incident(qctx, inc.ID)
	cancel()
	if err != nil {
		return time.Time{}, fmt.Errorf("read incident %d: %w", inc.ID, err)
	}
	at = fallback
	prefix := fmt.Sprintf("level %d", LevelSupervisors)
	for _, ev := range evs {
		if ev.Type == store.EventEscalated && (ev.Detail == prefix || strings.HasPrefix(ev.Detail, prefix+":")) {
			at = ev.At
		}
	}
	d.mu.Lock()
	d.level2At[inc.ID] = at
	d.mu.Unlock()
	return at, nil
}
