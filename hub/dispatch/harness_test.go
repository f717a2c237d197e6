package dispatch_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"log/slog"

	"github.com/xpress-ops/tower/hub/dispatch"
	"github.com/xpress-ops/tower/hub/dispatch/dispatchtest"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/hub/store/postgres"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/internal/pgtest"
	"github.com/xpress-ops/tower/notify"
	"github.com/xpress-ops/tower/protocol"
)

// t0 is the hub clock when each test starts: 10:00 in Manila.
var t0 = time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)

// Addresses of the test contacts. The numbers are valid Philippine mobile
// numbers, and only the fake Twilio receives messages to them.
const (
	phoneAna    = "+639171234567" // responder, Filipino, also email
	phoneBen    = "+639181234567" // responder
	phoneCarla  = "+639191234567" // emergency contact of the vehicle
	phoneSupe   = "+639201234567" // supervisor, also email
	emailAna    = "ana@example.ph"
	emailSupe   = "supervisor@example.ph"
	fromNumber  = "+639170000001"
	testRegion  = "NCR-Manila"
	testVehicle = "taxi-0917"
	publicURL   = "https://ops.example.ph"
)

// storeKinds are the stores the dispatcher tests run against.
var storeKinds = []string{"embedded", "postgres"}

// forEachStore runs fn once per store kind.
func forEachStore(t *testing.T, fn func(t *testing.T, kind string)) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) { fn(t, kind) })
	}
}

// openStore is a store with the lifecycle the tests drive.
type openStore interface {
	store.Store
	Open(ctx context.Context) error
}

// options change what newHarness builds.
type options struct {
	// noEmail leaves the email channel without a sender.
	noEmail bool
	// twilioTimeout bounds each Twilio request; zero means 5 s.
	twilioTimeout time.Duration
	// logTo, when set, receives the logs as text instead of the default.
	logTo io.Writer
	// catchingUp is the dispatcher's Config.CatchingUp.
	catchingUp func(agentID string) bool
}

// harness is a dispatcher on a real store with real notify senders that
// reach only the fakes of this test.
type harness struct {
	t      *testing.T
	kind   string
	clock  *dispatchtest.Clock
	twilio *dispatchtest.Twilio
	smtp   *dispatchtest.SMTPServer
	hook   *dispatchtest.WebhookReceiver
	secret []byte
	opts   options

	// storeFile or storeURL locate the store, so restart can reopen it.
	storeFile string
	storeURL  string
	store     openStore
	bus       *events.Bus
	sub       *events.Subscription
	reg       *prometheus.Registry
	d         *dispatch.Dispatcher
	sender    *notify.Twilio

	mu      sync.Mutex
	updated int
	seq     uint64
}

func newHarness(t *testing.T, kind string, opts options) *harness {
	t.Helper()
	h := &harness{t: t, kind: kind, clock: dispatchtest.NewClock(t0), opts: opts}
	h.secret = []byte(dispatchtest.RandomHex(t, 24))
	h.twilio = dispatchtest.NewTwilio(t, h.clock.Now)
	h.smtp = dispatchtest.NewSMTPServer(t)
	h.hook = dispatchtest.NewWebhookReceiver(t, h.secret, h.clock.Now)
	switch kind {
	case "embedded":
		h.storeFile = filepath.Join(t.TempDir(), "hub.db")
	case "postgres":
		h.storeURL = pgtest.NewDatabase(t)
	default:
		t.Fatalf("unknown store kind %q", kind)
	}
	h.start()
	t.Cleanup(h.stop)
	return h
}

func testLogger(t *testing.T) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
}

// start opens the store and builds a bus and a dispatcher on it. The
// dispatcher's loops are not started: tests call Scan and SendDue.
func (h *harness) start() {
	t := h.t
	t.Helper()
	log := testLogger(t)
	if h.opts.logTo != nil {
		log = slog.New(slog.NewTextHandler(h.opts.logTo, nil))
	}
	switch h.kind {
	case "embedded":
		h.store = embedded.New(embedded.Config{Path: h.storeFile, Now: h.clock.Now, Logger: log, Registerer: prometheus.NewRegistry()})
	case "postgres":
		h.store = postgres.New(postgres.Config{URL: h.storeURL, Now: h.clock.Now, Logger: log, Registerer: prometheus.NewRegistry()})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.store.Open(ctx); err != nil {
		t.Fatalf("open %s store: %v", h.kind, err)
	}
	h.bus = events.NewBus(events.Config{Now: h.clock.Now})
	sub, err := h.bus.Subscribe(0)
	if err != nil {
		t.Fatal(err)
	}
	h.sub = sub

	timeout := h.opts.twilioTimeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	tw, err := notify.NewTwilio(notify.TwilioConfig{
		AccountSID:        h.twilio.AccountSID,
		AuthToken:         h.twilio.AuthToken,
		From:              fromNumber,
		BaseURL:           h.twilio.URL(),
		StatusCallbackURL: publicURL + dispatch.TwilioStatusPath,
		HTTPClient:        dispatchtest.LoopbackClient(),
		Timeout:           timeout,
		Logger:            log,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.sender = tw
	senders := map[notify.Channel]notify.Sender{notify.ChannelSMS: tw, notify.ChannelVoice: tw}
	if !h.opts.noEmail {
		mail, err := notify.NewSMTP(notify.SMTPConfig{
			Host: h.smtp.Host(), Port: h.smtp.Port(), From: "Xpress Ops Tower <alerts@example.ph>",
			TLS: notify.TLSNone, Timeout: 5 * time.Second, Logger: log,
		})
		if err != nil {
			t.Fatal(err)
		}
		senders[notify.ChannelEmail] = mail
	}
	hook, err := notify.NewWebhook(notify.WebhookConfig{Secret: h.secret, HTTPClient: dispatchtest.LoopbackClient(), Now: h.clock.Now, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	senders[notify.ChannelWebhook] = hook

	h.reg = prometheus.NewRegistry()
	h.d, err = dispatch.New(dispatch.Config{
		Store:            h.store,
		Bus:              h.bus,
		CatchingUp:       h.opts.catchingUp,
		Senders:          senders,
		Finder:           tw,
		TwilioAuthToken:  h.twilio.AuthToken,
		TwilioAccountSID: h.twilio.AccountSID,
		PublicURL:        publicURL,
		WebhookURLs:      []string{h.hook.URL()},
		Clock:            h.clock,
		SendTimeout:      10 * time.Second,
		Logger:           log,
		Registerer:       h.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
}

// stop closes the dispatcher, the bus and the store.
func (h *harness) stop() {
	if h.d == nil {
		return
	}
	if err := h.d.Close(); err != nil {
		h.t.Errorf("close dispatcher: %v", err)
	}
	h.sub.Close()
	h.bus.Close()
	if err := h.store.Close(); err != nil {
		h.t.Errorf("close store: %v", err)
	}
	h.d = nil
}

// restart stops everything and opens a new dispatcher on the same store,
// as a hub restart does.
func (h *harness) restart() {
	h.t.Helper()
	h.stop()
	h.start()
}

func (h *harness) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	h.t.Cleanup(cancel)
	return ctx
}

// addContact saves a contact.
func (h *harness) addContact(c store.Contact) store.Contact {
	h.t.Helper()
	saved, err := h.store.SaveContact(h.ctx(), c)
	if err != nil {
		h.t.Fatalf("save contact %s: %v", c.Name, err)
	}
	return saved
}

// addStandardContacts saves two responders and a supervisor of testRegion
// and an emergency contact of testVehicle.
func (h *harness) addStandardContacts() {
	h.addContact(store.Contact{Name: "Ana Reyes", Role: store.RoleResponder, Region: testRegion, Phone: phoneAna, Email: emailAna, Language: store.LangFilipino})
	h.addContact(store.Contact{Name: "Ben Cruz", Role: store.RoleResponder, Region: testRegion, Phone: phoneBen})
	h.addContact(store.Contact{Name: "Carla Santos", Role: store.RoleEmergency, VehicleID: testVehicle, Phone: phoneCarla})
	h.addContact(store.Contact{Name: "Sol Supervisor", Role: store.RoleSupervisor, Region: testRegion, Phone: phoneSupe, Email: emailSupe})
}

// openIncident commits one SOS of vehicle in region, received by the
// agent at the current clock, and returns the incident.
func (h *harness) openIncident(region, vehicle, sosID string) store.Incident {
	h.t.Helper()
	h.mu.Lock()
	h.seq++
	seq := h.seq
	h.mu.Unlock()
	rec := storetest.SOSRecord(seq, vehicle, sosID, h.clock.Now())
	b := &protocol.Batch{
		AgentID: "agent-" + strings.ToLower(region), Region: region, SpoolID: "spool-a",
		Lane: rec.Kind.Lane(), Records: []protocol.Record{rec}, SentAt: h.clock.Now(),
	}
	res, err := h.store.CommitBatch(h.ctx(), b)
	if err != nil {
		h.t.Fatalf("commit SOS %s: %v", sosID, err)
	}
	if len(res.Incidents) != 1 || !res.Incidents[0].Opened {
		h.t.Fatalf("SOS %s: changes %+v, want one opened incident", sosID, res.Incidents)
	}
	return res.Incidents[0].Incident
}

// scan runs one scan and fails the test on error.
func (h *harness) scan() {
	h.t.Helper()
	if err := h.d.Scan(h.ctx()); err != nil {
		h.t.Fatalf("Scan: %v", err)
	}
}

// sendDue runs one outbox pass and returns how many sends it started.
func (h *harness) sendDue() int {
	h.t.Helper()
	n, err := h.d.SendDue(h.ctx())
	if err != nil {
		h.t.Fatalf("SendDue: %v", err)
	}
	return n
}

// incident returns the stored incident and its events.
func (h *harness) incident(id int64) (store.Incident, []store.IncidentEvent) {
	h.t.Helper()
	inc, evs, err := h.store.Incident(h.ctx(), id)
	if err != nil {
		h.t.Fatalf("Incident(%d): %v", id, err)
	}
	return inc, evs
}

// notifications returns the incident's notifications.
func (h *harness) notifications(id int64) []store.Notification {
	h.t.Helper()
	list, err := h.store.Notifications(h.ctx(), id)
	if err != nil {
		h.t.Fatalf("Notifications(%d): %v", id, err)
	}
	return list
}

// notification returns the incident's notification on ch to address.
func (h *harness) notification(id int64, ch store.Channel, address string) store.Notification {
	h.t.Helper()
	for _, n := range h.notifications(id) {
		if n.Channel == ch && n.Address == address {
			return n
		}
	}
	h.t.Fatalf("incident %d has no %s notification to %s; it has %+v", id, ch, address, h.notifications(id))
	return store.Notification{}
}

// hasNotification reports whether the incident has a notification on ch
// to address.
func (h *harness) hasNotification(id int64, ch store.Channel, address string) bool {
	for _, n := range h.notifications(id) {
		if n.Channel == ch && n.Address == address {
			return true
		}
	}
	return false
}

// updatedEvents returns how many incident.updated events the bus carried
// so far.
func (h *harness) updatedEvents() int {
	for {
		select {
		case ev, ok := <-h.sub.C():
			if !ok {
				return h.updated
			}
			if ev.Type == events.TypeIncidentUpdated {
				h.updated++
			}
		default:
			return h.updated
		}
	}
}

// eventsMatching returns the incident's events of type typ whose detail
// contains substr.
func eventsMatching(evs []store.IncidentEvent, typ, substr string) []store.IncidentEvent {
	var out []store.IncidentEvent
	for _, ev := range evs {
		if ev.Type == typ && strings.Contains(ev.Detail, substr) {
			out = append(out, ev)
		}
	}
	return out
}

// metric returns the value of the registry's sample name whose labels
// include labels, or 0 when there is none.
func (h *harness) metric(name string, labels map[string]string) float64 {
	h.t.Helper()
	families, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			match := true
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				match = match && found
			}
			if !match {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	return 0
}
