// Package outage sends the SOS alerts of an agent that cannot reach the
// hub. While the hub is reachable, its dispatcher notifies responders.
// When the agent's link to the hub has been down longer than
// Config.After, the Notifier sends the SOS alert SMS itself to each
// configured number. It does so for every SOS that neither the hub nor
// regional staff on the agent's local page acknowledged.
//
// Each (SOS, number) gets at most one SMS. The attempt is recorded in the
// local SOS store (localsos) before the send, so an agent that stops
// during a send finds the notification "sending" at its next start and
// looks it up at Twilio (SMSSender.Find) before it sends again. Transient
// errors are retried after notify.RetryDelay; a permanent error ends the
// notification. The outcome goes into the spool's SOS lane as a
// protocol.KindSOSNotified record, so the hub records the SMS as sent by
// the agent and its outbox does not send the same notification again.
package outage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/agent/localsos"
	"github.com/xpress-ops/tower/notify"
	"github.com/xpress-ops/tower/protocol"
)

// Defaults of Config.
const (
	// DefaultPollInterval is how often the notifier checks the link and
	// the local SOS store.
	DefaultPollInterval = time.Second
	// DefaultSendTimeout bounds one Send or Find call.
	DefaultSendTimeout = 30 * time.Second
	// DefaultMaxConcurrent caps the notifications in progress at once.
	DefaultMaxConcurrent = 4
	// DefaultAppendTimeout bounds the append of a KindSOSNotified record.
	DefaultAppendTimeout = 10 * time.Second
	// DefaultMaxPerNumber caps the SOS alert SMS to one number within
	// DefaultCapWindow. Past it a number gets one summary SMS per window.
	DefaultMaxPerNumber = 10
	// DefaultCapWindow is the window of DefaultMaxPerNumber.
	DefaultCapWindow = 10 * time.Minute
)

// channelSMS is the channel of the agent's notifications.
const channelSMS = string(notify.ChannelSMS)

// SMSSender sends SMS and finds an SMS that an earlier send created;
// *notify.Twilio implements it.
type SMSSender interface {
	Send(ctx context.Context, msg notify.Message) (notify.Result, error)
	Find(ctx context.Context, msg notify.Message, since time.Time) (notify.Result, bool, error)
}

// Appender stores records durably; *spool.Spool implements it.
type Appender interface {
	Append(ctx context.Context, recs []protocol.Record) error
}

// Config configures a Notifier.
type Config struct {
	// AgentID and Region name the agent, in the SMS and in the
	// notifications' idempotency keys. Required.
	AgentID string
	Region  string
	// After is how long the hub must have been unreachable before the
	// agent sends SMS itself. It must be positive.
	After time.Duration
	// To are the recipients, E.164 phone numbers (see
	// notify.NormalizePhone). At least one is required.
	To []string
	// Language is the language of the SMS. Empty means English.
	Language notify.Language
	// Sender sends the SMS. Required.
	Sender SMSSender
	// Store is the agent's local SOS store. Required.
	Store *localsos.Store
	// Spool receives the KindSOSNotified records. Required.
	Spool Appender
	// HubDownSince returns since when the hub has been unreachable, and
	// false while the agent is connected to it. Required.
	HubDownSince func() (time.Time, bool)
	// HubReceived reports whether the hub has an SOS although it sent no
	// state for it yet: the hub acknowledged its spool record. The hub's
	// dispatcher then notifies, so the agent does not. An SOS with an
	// incident id is the hub's in any case. Nil means the incident id
	// alone decides.
	HubReceived func(e *localsos.Entry) bool
	// PageURL is the agent's regional page, linked in the SMS. Empty
	// names the agent and region instead.
	PageURL string
	// MaxPerNumber caps the SOS alert SMS to one number within CapWindow.
	// Past it the number gets one summary SMS per window that counts the
	// SOS alerts left pending. Zero means DefaultMaxPerNumber (10).
	MaxPerNumber int
	// CapWindow is the window of MaxPerNumber. Zero means DefaultCapWindow (10 min).
	CapWindow time.Duration
	// Logger receives the notifier's logs. Nil discards them.
	Logger *slog.Logger
	// Registerer receives the notifier's metrics on Start. Nil means a
	// private registry.
	Registerer prometheus.Registerer
	// Now is the agent clock. Nil means time.Now.
	Now func() time.Time
	// PollInterval is how often the notifier checks the link and the
	// store. Zero means DefaultPollInterval (1 s).
	PollInterval time.Duration
	// SendTimeout bounds one Send or Find. Zero means DefaultSendTimeout (30 s).
	SendTimeout time.Duration
	// MaxConcurrent caps the notifications in progress at once. Zero
	// means DefaultMaxConcurrent (4).
	MaxConcurrent int
	// RetryDelay returns the wait before retry number attempt (from 1)
	// after err. Nil means notify.RetryDelay.
	RetryDelay func(err error, attempt int) time.Duration
}

// Validate checks the required fields.
func (c *Config) Validate() error {
	var errs []error
	if err := protocol.ValidateAgentID(c.AgentID); err != nil {
		errs = append(errs, fmt.Errorf("AgentID: %w", err))
	}
	if c.After <= 0 {
		errs = append(errs, fmt.Errorf("After is %s: it must be positive", c.After))
	}
	if len(c.To) == 0 {
		errs = append(errs, errors.New("To is empty: give at least one phone number"))
	}
	for _, to := range c.To {
		if e164, err := notify.NormalizePhone(to); err != nil || e164 != to {
			errs = append(errs, fmt.Errorf("To: %q is not an E.164 phone number: normalise it with notify.NormalizePhone", to))
		}
	}
	if c.Sender == nil || c.Store == nil || c.Spool == nil || c.HubDownSince == nil {
		errs = append(errs, errors.New("Sender, Store, Spool and HubDownSince are required"))
	}
	return errors.Join(errs...)
}

// Notifier sends the agent's own SOS alert SMS during a hub outage.
type Notifier struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	// ctx ends at Close and cancels the sends in progress.
	ctx    context.Context
	cancel context.CancelFunc

	mu sync.Mutex
	// working holds the notifications a worker goroutine handles.
	working map[workKey]bool
	workers sync.WaitGroup
	// storeFailing is set while the store cannot be read, so the failure
	// is logged once.
	storeFailing bool
	// starts are, per number, the start times of its SOS alert SMS within
	// the last CapWindow, and summaryAt is when its last summary SMS went.
	// Only the check goroutine uses them. The first check fills starts
	// from the store, so a restart keeps counting.
	starts    map[string][]time.Time
	summaryAt map[string]time.Time
	seeded    bool

	stop      chan struct{}
	done      chan struct{}
	startOnce sync.Once
	started   bool
	closeOnce sync.Once
}

// workKey names one notification: an SOS and a recipient.
type workKey struct {
	vehicleID, sosID, to string
}

// New checks cfg, fills defaults and returns a notifier. It does no I/O.
func New(cfg Config) (*Notifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid outage notifier config: %w", err)
	}
	if cfg.Language != notify.Filipino {
		cfg.Language = notify.English
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.SendTimeout <= 0 {
		cfg.SendTimeout = DefaultSendTimeout
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = DefaultMaxConcurrent
	}
	if cfg.MaxPerNumber <= 0 {
		cfg.MaxPerNumber = DefaultMaxPerNumber
	}
	if cfg.CapWindow <= 0 {
		cfg.CapWindow = DefaultCapWindow
	}
	if cfg.HubReceived == nil {
		cfg.HubReceived = func(*localsos.Entry) bool { return false }
	}
	if cfg.RetryDelay == nil {
		cfg.RetryDelay = func(err error, attempt int) time.Duration { return notify.RetryDelay(err, attempt, nil) }
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Notifier{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "outage"),
		metrics:   newMetrics(),
		ctx:       ctx,
		cancel:    cancel,
		working:   map[workKey]bool{},
		starts:    map[string][]time.Time{},
		summaryAt: map[string]time.Time{},
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}, nil
}

// Start registers the metrics and starts checking every PollInterval.
// The first check looks up every notification a stopped agent left
// "sending" at the provider before anything is sent again.
func (n *Notifier) Start() error {
	err := errors.New("outage notifier already started")
	n.startOnce.Do(func() {
		if err = n.metrics.register(n.cfg.Registerer); err != nil {
			err = fmt.Errorf("register outage notifier metrics: %w", err)
			return
		}
		n.started = true
		go n.run()
		n.log.Info("outage notifier started", "after", n.cfg.After, "recipients", len(n.cfg.To), "language", n.cfg.Language)
	})
	return err
}

// Close stops checking, cancels the sends in progress (their
// notifications stay "sending" for the next start) and waits for them.
// It is safe to call more than once.
func (n *Notifier) Close() error {
	n.closeOnce.Do(func() {
		n.startOnce.Do(func() {})
		close(n.stop)
		n.cancel()
		if n.started {
			<-n.done
			n.workers.Wait()
			n.metrics.unregister(n.cfg.Registerer)
		}
	})
	return nil
}

// run checks now and every PollInterval until Close.
func (n *Notifier) run() {
	defer close(n.done)
	t := time.NewTicker(n.cfg.PollInterval)
	defer t.Stop()
	for {
		n.check()
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
	}
}

// check reports finished notifications not yet in the spool, resumes
// notifications left "sending", and starts the notifications that are
// due. Each emergency gets one per number, and the repeat presses of a
// vehicle within protocol.SOSRepeatWindow are one emergency. A number
// gets at most MaxPerNumber within CapWindow.
func (n *Notifier) check() {
	entries, err := n.cfg.Store.ListTracked()
	n.mu.Lock()
	wasFailing := n.storeFailing
	n.storeFailing = err != nil
	n.mu.Unlock()
	if err != nil {
		if !wasFailing {
			n.metrics.failures.WithLabelValues(stageStore).Inc()
			n.log.Error("outage notifications paused: local SOS store unreadable", "error", err)
		}
		return
	}
	if wasFailing {
		n.log.Info("outage notifications resumed: local SOS store readable again")
	}
	now := n.cfg.Now()
	if !n.seeded {
		n.seedStarts(entries)
	}

	var active []localsos.Entry
	for _, e := range entries {
		for _, rec := range e.Notifications {
			// A worker reports a finished notification, or resumes one
			// left "sending", one worker per notification at a time.
			if rec.Channel == channelSMS && (!rec.Done() || !rec.Reported) {
				n.startWork(workKey{e.VehicleID, e.SOSID, rec.Address})
			}
		}
		if e.Active() {
			active = append(active, e)
		}
	}
	if !n.hubDownLongEnough() {
		return
	}
	for _, to := range n.cfg.To {
		var skipped int
		for _, group := range localsos.GroupRepeats(active) {
			carrier, ok := n.carrier(group, to)
			if !ok {
				continue
			}
			if !n.allow(to, now) {
				skipped++
				continue
			}
			if n.startWork(workKey{carrier.VehicleID, carrier.SOSID, to}) {
				n.starts[to] = append(n.starts[to], now)
			}
		}
		if skipped > 0 {
			n.summarize(to, skipped, now)
		}
	}
}

// carrier returns the SOS of an emergency that carries its SMS to to: the
// first due SOS of the group. ok is false when the group needs no SMS to
// that number, one of its SOS already has one, or the hub has one of them
// (it attaches the repeat presses to that incident and notifies itself).
func (n *Notifier) carrier(group []localsos.Entry, to string) (localsos.Entry, bool) {
	var out localsos.Entry
	found := false
	for i := range group {
		if _, ok := group[i].Notification(channelSMS, to); ok {
			return localsos.Entry{}, false
		}
		if group[i].IncidentID != 0 || n.cfg.HubReceived(&group[i]) {
			return localsos.Entry{}, false
		}
		if !found && n.due(&group[i]) {
			out, found = group[i], true
		}
	}
	return out, found
}

// allow reports whether to may get another SOS alert SMS at now, within
// MaxPerNumber per CapWindow.
func (n *Notifier) allow(to string, now time.Time) bool {
	recent := n.starts[to][:0]
	for _, t := range n.starts[to] {
		if now.Sub(t) < n.cfg.CapWindow {
			recent = append(recent, t)
		}
	}
	n.starts[to] = recent
	return len(recent) < n.cfg.MaxPerNumber
}

// seedStarts counts the SMS the store records as started within the
// last CapWindow, so a restarted agent does not send a new batch.
func (n *Notifier) seedStarts(entries []localsos.Entry) {
	n.seeded = true
	now := n.cfg.Now()
	for _, e := range entries {
		for _, rec := range e.Notifications {
			if rec.Channel == channelSMS && now.Sub(rec.FirstAttemptAt) < n.cfg.CapWindow {
				n.starts[rec.Address] = append(n.starts[rec.Address], rec.FirstAttemptAt)
			}
		}
	}
}

// summarize sends to, once per CapWindow, one SMS that counts the SOS
// alerts the cap held back, and logs and counts them.
func (n *Notifier) summarize(to string, pending int, now time.Time) {
	last, sent := n.summaryAt[to]
	if sent && now.Sub(last) < n.cfg.CapWindow {
		return
	}
	n.metrics.capped.Add(float64(pending))
	n.summaryAt[to] = now
	n.log.Error("outage SMS cap reached: SOS alerts not sent one by one; sending one summary SMS",
		"to", to, "pending", pending, "max_per_number", n.cfg.MaxPerNumber, "window", n.cfg.CapWindow)
	key := fmt.Sprintf("agent/%s/summary/%s/%d", n.cfg.AgentID, to, now.UnixMilli())
	msg := notify.Message{
		Channel: notify.ChannelSMS, To: to, Language: n.cfg.Language, Key: key,
		Text: notify.RenderOutageSummary(n.cfg.Language, n.cfg.Region, n.cfg.AgentID, n.cfg.PageURL, pending),
	}
	res, err := n.send(msg)
	if err != nil {
		n.metrics.sms.WithLabelValues(outcomeSummaryFailed).Inc()
		n.log.Error("outage summary SMS failed; the next one goes after the cap window", "to", to, "pending", pending, "error", err)
		return
	}
	n.metrics.sms.WithLabelValues(outcomeSummary).Inc()
	n.log.Warn("outage summary SMS sent", "to", to, "pending", pending, "provider_id", res.ProviderID)
}

// hubDownLongEnough reports whether the hub has been unreachable for at
// least After.
func (n *Notifier) hubDownLongEnough() bool {
	since, down := n.cfg.HubDownSince()
	return down && n.cfg.Now().Sub(since) >= n.cfg.After
}

// due reports whether an SOS needs the agent's SMS: the vehicle's SOS is
// open, the hub does not have it yet (no incident id, its spool record
// not acknowledged) and neither the hub nor regional staff acknowledged
// it. Once the hub has an SOS, its dispatcher notifies. An SOS the agent
// learned about only from the hub is the hub's to notify.
func (n *Notifier) due(e *localsos.Entry) bool {
	return e.Active() && e.State == protocol.SOSStateReceived && e.LocalAckBy == "" && !e.ReceivedAt.IsZero() &&
		e.IncidentID == 0 && !n.cfg.HubReceived(e)
}

// startWork starts a worker for k unless one runs or MaxConcurrent do; a
// notification left out is picked up by a later check.
func (n *Notifier) startWork(k workKey) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.working[k] || len(n.working) >= n.cfg.MaxConcurrent {
		return false
	}
	select {
	case <-n.stop:
		return false
	default:
	}
	n.working[k] = true
	n.workers.Add(1)
	go func() {
		defer n.workers.Done()
		defer func() {
			n.mu.Lock()
			delete(n.working, k)
			n.mu.Unlock()
		}()
		n.work(k)
	}()
	return true
}
