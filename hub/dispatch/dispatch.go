// Package dispatch notifies people of SOS incidents and escalates the
// incidents that no operator acknowledges.
//
// A Dispatcher scans the active incidents every ScanInterval (1 s), and at
// once when an incident.opened event arrives, and raises each incident
// through three escalation levels:
//
//  1. at the first scan after the incident opened: SMS, and email when
//     the contact has an address, to the responders of the incident's
//     region, SMS to the vehicle's emergency contacts, and a signed
//     webhook to each configured URL;
//  2. when the incident is still open EscalateAfter (30 s) after the
//     agent received the SOS: SMS and email to the region's supervisors;
//  3. when it is still open VoiceAfter (30 s) after level 2: a voice call
//     to the supervisors.
//
// Each level is one store.EscalateIncident call that sets the level and
// queues its notifications in the store's outbox in one transaction. The
// timers derive from the stored times and level, so they survive a hub
// restart, and two hubs on one store raise each level once.
//
// An outbox worker sends the queued notifications, at most Concurrency at
// once: it claims each with a lease, renders the text in the contact's
// language from the incident as it is at send time, sends it and records
// the outcome. Transient failures are retried with notify.Backoff (or
// the provider's Retry-After), permanent ones are not. When an attempt's
// outcome is unknown (the hub crashed before recording it, or the reply
// was lost), SMS and voice notifications are looked up at Twilio with
// Finder before they are sent again, so a recipient gets one message per
// incident and channel. Every attempt is added to the incident's audit
// trail and published as an incident.updated event.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/notify"
)

// Defaults of Config.
const (
	// DefaultEscalateAfter is how long after the agent received an SOS
	// the supervisors are alerted when the incident is still open.
	DefaultEscalateAfter = 30 * time.Second
	// DefaultVoiceAfter is how long after the supervisors' alert they are
	// called when the incident is still open.
	DefaultVoiceAfter = 30 * time.Second
	// DefaultScanInterval is how often the active incidents are scanned
	// and the outbox is read.
	DefaultScanInterval = time.Second
	// DefaultSendTimeout bounds one send. A crash mid-send delays that
	// notification by this plus leaseMargin (20 s), so it is kept short;
	// xpress hub gives each Twilio request and SMTP exchange the same
	// limit.
	DefaultSendTimeout = 15 * time.Second
	// DefaultConcurrency is how many notifications are sent at once.
	DefaultConcurrency = 4
	// DefaultQueryTimeout bounds each store call.
	DefaultQueryTimeout = 10 * time.Second
)

// leaseMargin is added to SendTimeout for a claim's lease, so that the
// outcome of a send that used its whole timeout is still recorded before
// another claim may take the notification over.
const leaseMargin = 5 * time.Second

// scanPageSize is how many incidents one store read of a scan returns.
// The store pages by offset, so a scan reads about n²/(2·scanPageSize)
// rows for n active incidents. With 100 per page, each scan during a
// burst of 10,000 SOS made 100 reads and about 500,000 row reads, on the
// PostgreSQL server that was committing the burst at the same time.
const scanPageSize = 1000

// outboxBatch is how many due notifications one outbox pass reads.
const outboxBatch = 100

// TwilioStatusPath is the route of Twilio's status callbacks on the hub.
// Twilio posts to Config.PublicURL followed by this path.
const TwilioStatusPath = "/api/v1/dispatch/twilio/status"

// Finder looks a message up at the provider after an attempt whose
// outcome is unknown. *notify.Twilio implements it.
type Finder interface {
	// Find returns the message or call an earlier Send of msg created at
	// or after since, and false when there is none.
	Find(ctx context.Context, msg notify.Message, since time.Time) (notify.Result, bool, error)
}

var _ Finder = (*notify.Twilio)(nil)

// Store is the part of store.Store the dispatcher uses.
type Store interface {
	Incidents(ctx context.Context, f store.IncidentFilter) ([]store.Incident, error)
	Incident(ctx context.Context, id int64) (store.Incident, []store.IncidentEvent, error)
	Contacts(ctx context.Context, f store.ContactFilter) ([]store.Contact, error)
	EscalateIncident(ctx context.Context, e store.Escalation) (store.IncidentChange, []store.Notification, error)
	DueNotifications(ctx context.Context, now time.Time, limit int) ([]store.Notification, error)
	ClaimNotification(ctx context.Context, id int64, now, leaseUntil time.Time) (store.Notification, bool, error)
	RecordAttempt(ctx context.Context, id int64, o store.AttemptOutcome) (store.Notification, store.IncidentChange, error)
	UpdateDeliveryStatus(ctx context.Context, providerID, status, errText string) (store.Notification, store.IncidentChange, error)
	Notifications(ctx context.Context, incidentID int64) ([]store.Notification, error)
	RetryNotification(ctx context.Context, incidentID, id int64, actor string) (store.Notification, store.IncidentChange, error)
	NotificationByProvider(ctx context.Context, providerID string) (store.Notification, error)
}

var _ Store = (store.Store)(nil)

// Config configures a Dispatcher.
type Config struct {
	// Store holds incidents, contacts and the outbox. Required.
	Store Store
	// Bus receives an incident.updated event for every escalation,
	// attempt and delivery status, and wakes the scan on incident.opened.
	// Required.
	Bus *events.Bus
	// CatchingUp reports whether an agent is still sending its SOS-lane
	// backlog after an outage (ingest.Server.CatchingUp). While it is,
	// the dispatcher holds back that agent's new incidents, at most
	// MaxCatchUpHold after they opened, because the agent's reports of
	// SMS it sent itself during the outage follow the SOS in that lane,
	// and notifying first would text the same people twice. Nil never
	// holds back.
	CatchingUp func(agentID string) bool
	// Senders sends each channel's notifications: a notify.Twilio for
	// SMS and voice, a notify.SMTP for email, a notify.Webhook for
	// webhooks. A channel without a sender is disabled: no notification
	// of it is queued, and notifications of it already queued wait in
	// the outbox until a hub with that sender runs.
	Senders map[notify.Channel]notify.Sender
	// Finder looks SMS and calls up at Twilio before they are sent again
	// after an attempt whose outcome is unknown. Nil sends them again,
	// which may deliver a second copy.
	Finder Finder
	// TwilioAuthToken verifies the signature of Twilio's status
	// callbacks. Empty rejects every callback.
	TwilioAuthToken string
	// TwilioAccountSID is the account whose status callbacks are applied;
	// a signed callback with another AccountSid is rejected. Empty skips
	// the check.
	TwilioAccountSID string
	// PublicURL is the hub's URL as Twilio and people reach it, such as
	// https://ops.example.ph, without a trailing slash. Status callbacks
	// are verified against it, and email links to the dashboard use it.
	// Required when TwilioAuthToken is set.
	PublicURL string
	// WebhookURLs each receive a signed JSON copy of every new incident.
	WebhookURLs []string
	// EscalateAfter is how long after the agent received the SOS an open
	// incident's supervisors are alerted. Zero means DefaultEscalateAfter.
	EscalateAfter time.Duration
	// VoiceAfter is how long after the supervisors' alert they are
	// called when the incident is still open. Zero means
	// DefaultVoiceAfter.
	VoiceAfter time.Duration
	// ScanInterval is how often incidents are scanned and the outbox is
	// read. Zero means DefaultScanInterval.
	ScanInterval time.Duration
	// SendTimeout bounds one send. Zero means DefaultSendTimeout.
	SendTimeout time.Duration
	// Concurrency is how many notifications are sent at once. Zero means
	// DefaultConcurrency.
	Concurrency int
	// QueryTimeout bounds each store call. Zero means DefaultQueryTimeout.
	QueryTimeout time.Duration
	// Clock is the dispatcher's clock. Nil means the system clock.
	Clock Clock
	// Logger receives the dispatcher's logs. Nil discards them.
	Logger *slog.Logger
	// Registerer receives the dispatcher's metrics. Nil means a private
	// registry.
	Registerer prometheus.Registerer
}

// validate checks cfg and fills its defaults.
func (c *Config) validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("Store is nil"))
	}
	if c.Bus == nil {
		errs = append(errs, errors.New("Bus is nil"))
	}
	for ch, s := range c.Senders {
		if !store.Channel(ch).Valid() {
			errs = append(errs, fmt.Errorf("sender for unknown channel %q: use sms, voice, email or webhook", ch))
		}
		if s == nil {
			delete(c.Senders, ch)
		}
	}
	for i, u := range c.WebhookURLs {
		if err := store.ValidateWebhookURL(u); err != nil {
			errs = append(errs, fmt.Errorf("webhook URL %d: %w", i+1, err))
		}
	}
	if c.PublicURL != "" {
		if err := checkPublicURL(c.PublicURL); err != nil {
			errs = append(errs, err)
		}
		c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	}
	if c.TwilioAuthToken != "" && c.PublicURL == "" {
		errs = append(errs, errors.New("PublicURL is required to verify Twilio status callbacks"))
	}
	for name, d := range map[string]time.Duration{
		"EscalateAfter": c.EscalateAfter, "VoiceAfter": c.VoiceAfter, "ScanInterval": c.ScanInterval,
		"SendTimeout": c.SendTimeout, "QueryTimeout": c.QueryTimeout,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s %s is negative", name, d))
		}
	}
	if c.Concurrency < 0 {
		errs = append(errs, fmt.Errorf("Concurrency %d is negative", c.Concurrency))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid dispatch config: %w", err)
	}

	if c.EscalateAfter == 0 {
		c.EscalateAfter = DefaultEscalateAfter
	}
	if c.VoiceAfter == 0 {
		c.VoiceAfter = DefaultVoiceAfter
	}
	if c.ScanInterval == 0 {
		c.ScanInterval = DefaultScanInterval
	}
	if c.SendTimeout == 0 {
		c.SendTimeout = DefaultSendTimeout
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.QueryTimeout == 0 {
		c.QueryTimeout = DefaultQueryTimeout
	}
	if c.Clock == nil {
		c.Clock = SystemClock()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	return nil
}

// checkPublicURL checks that raw is an absolute http(s) URL with a host
// and neither query nor fragment.
func checkPublicURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("PublicURL %q does not parse: %w", raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("PublicURL %q must be an absolute http or https URL such as https://ops.example.ph", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("PublicURL %q must not have a query, fragment or user", raw)
	}
	return nil
}

// Dispatcher escalates incidents and sends their notifications. Create it
// with New, call Start once and Close once.
type Dispatcher struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	startOnce sync.Once
	closeOnce sync.Once

	// scanWake and sendWake start a scan or an outbox pass before the
	// next tick.
	scanWake chan struct{}
	sendWake chan struct{}
	// slots bounds the sends in progress.
	slots chan struct{}
	// scanMu makes scans run one at a time.
	scanMu sync.Mutex

	mu sync.Mutex
	// inFlight holds the ids of notifications being sent by this process.
	inFlight map[int64]bool
	// addressBusy holds the channel and address of every send in
	// progress; addressWaiting is set when a due notification was
	// skipped because its address was busy.
	addressBusy    map[store.NotificationKey]bool
	addressWaiting bool
	// idleSender notes the notifications skipped because their channel
	// has no sender, so each is logged once.
	idleSender map[int64]bool
	// level2At caches when each open incident reached level 2.
	level2At map[int64]time.Time
	// channels holds the last outcome per channel, for Health.
	channels map[notify.Channel]*channelState
	// missingLogged holds, per region and role without contacts, when
	// that was last logged and how many incidents were not logged since.
	missingLogged map[string]*missingContacts
	// gaugesAt is when the outbox gauges were last refreshed.
	gaugesAt time.Time
	// earlyCallbacks holds, by provider id, the status callbacks that
	// arrived before RecordAttempt stored that id, to apply afterwards.
	earlyCallbacks map[string][]earlyCallback
}

// channelState is the recent outcomes of one channel's sends.
type channelState struct {
	lastSuccess time.Time
	lastFailure time.Time
	lastError   string
	// failures holds the times of the failed attempts within
	// recentFailureWindow.
	failures []time.Time
	// authFailure is when the provider last rejected the credentials,
	// authLogged when that was last logged, and authSuppressed how many
	// rejections were not logged since.
	authFailure    time.Time
	authLogged     time.Time
	authSuppressed int
}

// New checks cfg, fills defaults and registers the metrics. It starts
// nothing.
func New(cfg Config) (*Dispatcher, error) {
	senders := make(map[notify.Channel]notify.Sender, len(cfg.Senders))
	for ch, s := range cfg.Senders {
		senders[ch] = s
	}
	cfg.Senders = senders
	cfg.WebhookURLs = append([]string(nil), cfg.WebhookURLs...)
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("register dispatch metrics: %w", err)
	}
	d := &Dispatcher{
		cfg:            cfg,
		log:            cfg.Logger.With("component", "dispatch"),
		metrics:        m,
		scanWake:       make(chan struct{}, 1),
		sendWake:       make(chan struct{}, 1),
		slots:          make(chan struct{}, cfg.Concurrency),
		inFlight:       map[int64]bool{},
		addressBusy:    map[store.NotificationKey]bool{},
		idleSender:     map[int64]bool{},
		level2At:       map[int64]time.Time{},
		channels:       map[notify.Channel]*channelState{},
		earlyCallbacks: map[string][]earlyCallback{},
	}
	for _, ch := range allChannels {
		d.channels[ch] = &channelState{}
		if d.enabled(ch) {
			m.channelEnabled.WithLabelValues(string(ch)).Set(1)
		}
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d, nil
}

// allChannels lists the channels in the order logs and Health show them.
var allChannels = []notify.Channel{notify.ChannelSMS, notify.ChannelVoice, notify.ChannelEmail, notify.ChannelWebhook}

// enabled reports whether channel ch has a sender.
func (d *Dispatcher) enabled(ch notify.Channel) bool { return d.cfg.Senders[ch] != nil }

// Start logs the channels' state once and starts the scan loop and the
// outbox worker. It returns at once.
func (d *Dispatcher) Start() {
	d.startOnce.Do(func() {
		var enabled []string
		for _, ch := range allChannels {
			if d.enabled(ch) {
				enabled = append(enabled, string(ch))
				continue
			}
			d.log.Warn("dispatch channel disabled: no sender configured, so none of its notifications are queued", "channel", ch)
		}
		if len(d.cfg.WebhookURLs) > 0 && !d.enabled(notify.ChannelWebhook) {
			d.log.Warn("webhook URLs configured but no webhook sender: set the webhook secret", "urls", len(d.cfg.WebhookURLs))
		}
		d.log.Info("dispatcher started", "channels", strings.Join(enabled, ","),
			"escalate_after", d.cfg.EscalateAfter.String(), "voice_after", d.cfg.VoiceAfter.String(),
			"webhooks", len(d.cfg.WebhookURLs), "concurrency", d.cfg.Concurrency)

		sub, err := d.cfg.Bus.Subscribe(d.cfg.Bus.Latest())
		if err != nil {
			d.log.Warn("dispatcher cannot follow the event bus; scanning on the timer only", "error", err)
		}
		d.wg.Add(3)
		go d.followBus(sub)
		go d.scanLoop()
		go d.sendLoop()
	})
}

// Close stops the loops and waits for the sends in progress, which end
// at the latest when their SendTimeout passes. Safe to call more than
// once.
func (d *Dispatcher) Close() error {
	d.closeOnce.Do(func() {
		d.startOnce.Do(func() {}) // a later Start does nothing
		d.cancel()
		d.wg.Wait()
		d.log.Info("dispatcher stopped")
	})
	return nil
}

// followBus wakes the scan on every incident.opened event. A subscription
// closed as a slow consumer is replaced; a closed bus ends the loop, and
// the timer still drives the scans.
func (d *Dispatcher) followBus(sub *events.Subscription) {
	defer d.wg.Done()
	for sub != nil {
		select {
		case <-d.ctx.Done():
			sub.Close()
			return
		case ev, ok := <-sub.C():
			if ok {
				if ev.Type == events.TypeIncidentOpened {
					wake(d.scanWake)
				}
				continue
			}
			if !errors.Is(sub.Err(), events.ErrSlowConsumer) {
				return
			}
			// Missed events only delay a scan until the next tick.
			wake(d.scanWake)
			next, err := d.cfg.Bus.Subscribe(d.cfg.Bus.Latest())
			if err != nil {
				return
			}
			sub = next
		}
	}
}

// scanLoop runs Scan on every tick and wake-up until Close.
func (d *Dispatcher) scanLoop() {
	defer d.wg.Done()
	ticker := d.cfg.Clock.NewTicker(d.cfg.ScanInterval)
	defer ticker.Stop()
	d.runScan()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-ticker.C():
		case <-d.scanWake:
		}
		d.runScan()
	}
}

func (d *Dispatcher) runScan() {
	if err := d.Scan(d.ctx); err != nil && d.ctx.Err() == nil {
		d.log.Error("incident scan failed; retrying on the next tick", "error", err)
	}
}

// sendLoop starts the due notifications' sends on every tick and
// wake-up until Close, then waits for the sends in progress.
func (d *Dispatcher) sendLoop() {
	defer d.wg.Done()
	var sends sync.WaitGroup
	defer sends.Wait()
	ticker := d.cfg.Clock.NewTicker(d.cfg.ScanInterval)
	defer ticker.Stop()
	for {
		if _, err := d.startDue(d.ctx, &sends); err != nil && d.ctx.Err() == nil {
			d.log.Error("outbox read failed; retrying on the next tick", "error", err)
		}
		select {
		case <-d.ctx.Done():
			return
		case <-ticker.C():
		case <-d.sendWake:
		}
	}
}

// wake signals ch without blocking; one pending signal is enough.
func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// publish sends a change as an incident.updated event.
func (d *Dispatcher) publish(c store.IncidentChange) {
	if _, err := d.cfg.Bus.PublishIn(c.Incident.Region, events.TypeIncidentUpdated, c); err != nil && !errors.Is(err, events.ErrClosed) {
		d.log.Error("publish incident.updated failed", "incident", c.Incident.ID, "event", c.Event.ID, "error", err)
	}
}

// queryContext bounds one store call.
func (d *Dispatcher) queryContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d.cfg.QueryTimeout)
}
