package outage

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/goleak"

	"github.com/xpress-ops/tower/agent/localsos"
	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/hub/dispatch/dispatchtest"
	"github.com/xpress-ops/tower/notify"
	"github.com/xpress-ops/tower/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	testAgent   = "ncr-1"
	testVehicle = "taxi-1"
	phoneAna    = "+639171234567"
	phoneBen    = "+639181234567"
	// waitTimeout bounds every wait for the notifier.
	waitTimeout = 15 * time.Second
)

// link is the hub link as the notifier sees it, set by the test.
type link struct {
	mu    sync.Mutex
	since time.Time
	down  bool
}

func (l *link) set(down bool, since time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down, l.since = down, since
}

func (l *link) HubDownSince() (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.since, l.down
}

// harness is a notifier over a real spool and local SOS store, sending
// to a fake Twilio.
type harness struct {
	t        *testing.T
	store    *localsos.Store
	spool    *spool.Spool
	twilio   *dispatchtest.Twilio
	sender   *notify.Twilio
	link     *link
	registry *prometheus.Registry
	dir      string
	// notifier is the last notifier start started.
	notifier *Notifier
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, link: &link{}, registry: prometheus.NewRegistry(), dir: t.TempDir()}
	h.twilio = dispatchtest.NewTwilio(t, nil)
	var err error
	h.sender, err = notify.NewTwilio(notify.TwilioConfig{
		AccountSID: h.twilio.AccountSID, AuthToken: h.twilio.AuthToken, From: "+639170000001",
		BaseURL: h.twilio.URL(), HTTPClient: dispatchtest.LoopbackClient(),
	})
	if err != nil {
		t.Fatal(err)
	}
	h.spool = spool.New(spool.Config{Path: filepath.Join(h.dir, "spool.db")})
	if err := h.spool.Open(); err != nil {
		t.Fatal(err)
	}
	h.store = localsos.New(localsos.Config{Path: filepath.Join(h.dir, localsos.File)})
	if err := h.store.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.store.Close(); err != nil {
			t.Error(err)
		}
		if err := h.spool.Close(); err != nil {
			t.Error(err)
		}
	})
	return h
}

// config returns the notifier's config with fast test timings.
func (h *harness) config(to ...string) Config {
	return Config{
		AgentID: testAgent, Region: "NCR-Manila", After: 2 * time.Minute, To: to,
		Sender: h.sender, Store: h.store, Spool: h.spool, HubDownSince: h.link.HubDownSince,
		Registerer: h.registry, PollInterval: 10 * time.Millisecond, SendTimeout: 5 * time.Second,
		RetryDelay: func(error, int) time.Duration { return 20 * time.Millisecond },
	}
}

// start starts a notifier for cfg and closes it on cleanup.
func (h *harness) start(cfg Config) *Notifier {
	h.t.Helper()
	n, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = n.Close() })
	h.notifier = n
	return n
}

// pressSOS records an SOS as the relay does when the spool stored it.
func (h *harness) pressSOS(sosID string) localsos.Entry {
	h.t.Helper()
	recs := []protocol.Record{{
		Kind: protocol.KindSOS, VehicleID: testVehicle, ReceivedAt: time.Now().UTC(),
		SOS: &protocol.SOS{ID: sosID, Kind: protocol.SOSMedical, HasLocation: true, Lat: 14.5995, Lon: 120.9842},
	}}
	if err := h.spool.Append(context.Background(), recs); err != nil {
		h.t.Fatal(err)
	}
	e, _, err := h.store.RecordSpooled(recs[0], h.spool.SpoolID())
	if err != nil {
		h.t.Fatal(err)
	}
	return e
}

// waitDone waits until the SOS's notification to each number is finished
// and reported, and returns them by number.
func (h *harness) waitDone(sosID string, numbers ...string) map[string]localsos.Notification {
	h.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		e, err := h.store.Get(testVehicle, sosID)
		if err != nil {
			h.t.Fatal(err)
		}
		out := map[string]localsos.Notification{}
		for _, to := range numbers {
			if rec, ok := e.Notification("sms", to); ok && rec.Done() && rec.Reported {
				out[to] = rec
			}
		}
		if len(out) == len(numbers) {
			return out
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("notifications of %s not finished and reported within %s: %+v", sosID, waitTimeout, e.Notifications)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// reports returns the KindSOSNotified records in the spool.
func (h *harness) reports() []protocol.Record {
	h.t.Helper()
	recs, err := h.spool.Read(protocol.LaneSOS, 0, 0, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []protocol.Record
	for _, rec := range recs {
		if rec.Kind == protocol.KindSOSNotified {
			out = append(out, rec)
		}
	}
	return out
}

// outcome returns the SMS outcome counter of the last notifier started.
func (h *harness) outcome(label string) float64 {
	return testutil.ToFloat64(h.notifier.metrics.sms.WithLabelValues(label))
}

// The agent sends one SMS per number once the hub has been unreachable
// for After, reports each to the hub through the spool, and sends none
// again however long the outage lasts.
func TestNotifier_OneSMSPerNumberAfterDelay(t *testing.T) {
	h := newHarness(t)
	e := h.pressSOS("sos-1")
	clock := newClock(time.Now())
	h.link.set(true, clock.Now())
	cfg := h.config(phoneAna, phoneBen)
	cfg.Now = clock.Now
	h.start(cfg)

	// Within the delay nothing is sent. The notifier polls every 10 ms.
	clock.Set(clock.Now().Add(time.Minute))
	time.Sleep(200 * time.Millisecond)
	if got := len(h.twilio.Messages()); got != 0 {
		t.Fatalf("%d SMS within the delay, want none", got)
	}

	clock.Set(clock.Now().Add(90 * time.Second))
	done := h.waitDone("sos-1", phoneAna, phoneBen)
	for _, to := range []string{phoneAna, phoneBen} {
		msgs := h.twilio.MessagesTo(to)
		if len(msgs) != 1 {
			t.Fatalf("SMS to %s: %d, want 1", to, len(msgs))
		}
		rec := done[to]
		if rec.State != localsos.NotificationSent || rec.ProviderID != msgs[0].SID || rec.Attempts != 1 {
			t.Errorf("notification to %s = %+v, want sent as %s after 1 attempt", to, rec, msgs[0].SID)
		}
		body := msgs[0].Body
		for _, part := range []string{"XPRESS SOS", "medical emergency", testVehicle, "NCR-Manila", "maps.google.com/?q=14.59950,120.98420", "SOS sos-1", "Ref XOT-"} {
			if !strings.Contains(body, part) {
				t.Errorf("SMS to %s %q does not contain %q", to, body, part)
			}
		}
	}
	reports := h.reports()
	if len(reports) != 2 {
		t.Fatalf("%d notification records in the spool, want 2", len(reports))
	}
	for _, rec := range reports {
		n := rec.Notified
		if err := rec.Validate(); err != nil {
			t.Errorf("record %d invalid: %v", rec.Seq, err)
		}
		if rec.VehicleID != testVehicle || n.SOSID != "sos-1" || n.Channel != "sms" || n.ProviderID != done[n.Address].ProviderID || n.Error != "" {
			t.Errorf("notification record = %+v (%+v), want sms of sos-1 with its provider id", rec, n)
		}
	}
	if got := h.outcome(outcomeSent); got != 2 {
		t.Errorf("sent = %v, want 2", got)
	}

	// The outage goes on: nothing more is sent.
	clock.Set(clock.Now().Add(time.Hour))
	time.Sleep(200 * time.Millisecond)
	if got := len(h.twilio.Messages()); got != 2 {
		t.Errorf("%d SMS after an hour more, want still 2", got)
	}
	if e.State != protocol.SOSStateReceived {
		t.Errorf("entry state %s, want received", e.State)
	}
}

// An SOS acknowledged by regional staff or by the hub, or known only from
// the hub, gets no SMS; nor does any SOS while the hub is reachable.
func TestNotifier_NoSMSWhenNotNeeded(t *testing.T) {
	h := newHarness(t)
	// Other vehicles than sos-open's, so they are not repeat presses of it.
	h.pressAt("taxi-local", "sos-local", time.Now())
	if _, _, err := h.store.MarkLocalAck("taxi-local", "sos-local", "Ana Reyes", time.Now()); err != nil {
		t.Fatal(err)
	}
	h.pressAt("taxi-hub", "sos-hub", time.Now())
	if _, _, err := h.store.Apply(protocol.SOSStateUpdate{VehicleID: "taxi-hub", SOSID: "sos-hub", IncidentID: 4,
		State: protocol.SOSState{State: protocol.SOSStateAcknowledged, TS: time.Now(), Message: "An operator is handling your SOS."}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.store.Apply(protocol.SOSStateUpdate{VehicleID: "taxi-hub-only", SOSID: "sos-hub-only", IncidentID: 5,
		State: protocol.SOSState{State: protocol.SOSStateReceived, TS: time.Now(), Message: "received"}}); err != nil {
		t.Fatal(err)
	}
	h.pressSOS("sos-open")
	h.link.set(false, time.Now().Add(-time.Hour))
	h.start(h.config(phoneAna))

	time.Sleep(200 * time.Millisecond)
	if got := len(h.twilio.Messages()); got != 0 {
		t.Fatalf("%d SMS while the hub is reachable, want none", got)
	}
	h.link.set(true, time.Now().Add(-time.Hour))
	h.waitDone("sos-open", phoneAna)
	time.Sleep(200 * time.Millisecond)
	msgs := h.twilio.Messages()
	if len(msgs) != 1 || !strings.Contains(msgs[0].Body, "sos-open") {
		t.Errorf("SMS sent: %+v, want one about sos-open", msgs)
	}
}

// A transient error is retried; a permanent one ends the notification,
// which the hub then learns failed.
func TestNotifier_RetriesTransientStopsOnPermanent(t *testing.T) {
	h := newHarness(t)
	h.twilio.Script(phoneAna, dispatchtest.Reply{Status: 429, Code: 20429}, dispatchtest.Reply{Status: 503})
	h.twilio.Script(phoneBen, dispatchtest.Reply{Status: 400, Code: 21610})
	h.pressSOS("sos-1")
	h.link.set(true, time.Now().Add(-time.Hour))
	h.start(h.config(phoneAna, phoneBen))

	done := h.waitDone("sos-1", phoneAna, phoneBen)
	if ana := done[phoneAna]; ana.State != localsos.NotificationSent || ana.Attempts != 3 {
		t.Errorf("notification to Ana = %+v, want sent on the third attempt", ana)
	}
	if got := h.twilio.Creates(phoneAna); got != 3 {
		t.Errorf("create requests for Ana: %d, want 3", got)
	}
	if got := len(h.twilio.MessagesTo(phoneAna)); got != 1 {
		t.Errorf("SMS to Ana: %d, want 1", got)
	}
	ben := done[phoneBen]
	if ben.State != localsos.NotificationFailed || !strings.Contains(ben.Error, "21610") || ben.Attempts != 1 {
		t.Errorf("notification to Ben = %+v, want failed with error 21610 after 1 attempt", ben)
	}
	if got := h.twilio.Creates(phoneBen); got != 1 {
		t.Errorf("create requests for Ben: %d, want 1: a permanent error is not retried", got)
	}
	for _, rec := range h.reports() {
		if rec.Notified.Address == phoneBen && !strings.Contains(rec.Notified.Error, "21610") {
			t.Errorf("report of Ben's failure = %+v, want the error", rec.Notified)
		}
	}
	for outcome, want := range map[string]float64{outcomeSent: 1, outcomeTransient: 2, outcomePermanent: 1} {
		if got := h.outcome(outcome); got != want {
			t.Errorf("outcome %s = %v, want %v", outcome, got, want)
		}
	}
}

// A send whose reply is lost may have created the SMS: the notifier looks
// it up before sending again, and finds it.
func TestNotifier_LostReplyFoundNotResent(t *testing.T) {
	h := newHarness(t)
	h.twilio.Script(phoneAna, dispatchtest.Reply{Hold: true})
	h.pressSOS("sos-1")
	h.link.set(true, time.Now().Add(-time.Hour))
	cfg := h.config(phoneAna)
	cfg.SendTimeout = 500 * time.Millisecond
	h.start(cfg)

	done := h.waitDone("sos-1", phoneAna)
	msgs := h.twilio.MessagesTo(phoneAna)
	if len(msgs) != 1 {
		t.Fatalf("SMS to Ana: %d, want 1", len(msgs))
	}
	if rec := done[phoneAna]; rec.State != localsos.NotificationSent || rec.ProviderID != msgs[0].SID {
		t.Errorf("notification = %+v, want sent as %s, found at Twilio", rec, msgs[0].SID)
	}
	if got := h.outcome(outcomeFound); got != 1 {
		t.Errorf("found = %v, want 1", got)
	}
}

// An agent that stopped during a send finds the notification "sending" at
// its next start: it looks the SMS up at Twilio and sends again only when
// Twilio has none.
func TestNotifier_ReconcilesSendingAtStart(t *testing.T) {
	h := newHarness(t)
	e := h.pressSOS("sos-1")
	h.link.set(true, time.Now().Add(-time.Hour))
	cfg := h.config(phoneAna, phoneBen)

	// The previous run began both sends; only Ana's reached Twilio.
	prev, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{phoneAna, phoneBen} {
		if _, err := prev.begin(workKey{testVehicle, "sos-1", to}); err != nil {
			t.Fatal(err)
		}
	}
	sent, err := h.sender.Send(context.Background(), prev.message(&e, phoneAna))
	if err != nil {
		t.Fatal(err)
	}
	_ = prev.Close()

	h.start(cfg)
	done := h.waitDone("sos-1", phoneAna, phoneBen)
	if got := h.twilio.Creates(phoneAna); got != 1 {
		t.Errorf("create requests for Ana: %d, want 1: the SMS of the stopped run must be found, not sent again", got)
	}
	if rec := done[phoneAna]; rec.ProviderID != sent.ProviderID || rec.State != localsos.NotificationSent {
		t.Errorf("Ana's notification = %+v, want sent as %s", rec, sent.ProviderID)
	}
	if got := len(h.twilio.MessagesTo(phoneBen)); got != 1 {
		t.Errorf("SMS to Ben: %d, want 1", got)
	}
	if rec := done[phoneBen]; rec.Attempts != 2 || rec.State != localsos.NotificationSent {
		t.Errorf("Ben's notification = %+v, want sent on the second attempt", rec)
	}
}

// When the hub comes back while a send is being retried, the notifier
// gives up and reports the failure to the hub, whose dispatcher then
// sends the SMS.
func TestNotifier_GivesUpWhenHubReturns(t *testing.T) {
	h := newHarness(t)
	for range 50 {
		h.twilio.Script(phoneAna, dispatchtest.Reply{Status: 429})
	}
	h.pressSOS("sos-1")
	h.link.set(true, time.Now().Add(-time.Hour))
	h.start(h.config(phoneAna))

	deadline := time.Now().Add(waitTimeout)
	for h.twilio.Creates(phoneAna) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the notifier did not retry")
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.link.set(false, time.Now())
	rec := h.waitDone("sos-1", phoneAna)[phoneAna]
	if rec.State != localsos.NotificationFailed || !strings.Contains(rec.Error, "hub is reachable again") || !strings.Contains(rec.Error, "429") {
		t.Errorf("notification = %+v, want failed because the hub is back, with the last error", rec)
	}
	if got := len(h.twilio.MessagesTo(phoneAna)); got != 0 {
		t.Errorf("SMS to Ana: %d, want none", got)
	}
	if got := h.outcome(outcomeAbandoned); got != 1 {
		t.Errorf("abandoned = %v, want 1", got)
	}
}

func TestConfig_Validate(t *testing.T) {
	h := newHarness(t)
	good := h.config(phoneAna)
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mutate := range map[string]func(*Config){
		"no delay":      func(c *Config) { c.After = 0 },
		"no numbers":    func(c *Config) { c.To = nil },
		"local number":  func(c *Config) { c.To = []string{"0917 123 4567"} },
		"no sender":     func(c *Config) { c.Sender = nil },
		"bad agent id":  func(c *Config) { c.AgentID = "ncr 1" },
		"no link state": func(c *Config) { c.HubDownSince = nil },
	} {
		cfg := good
		mutate(&cfg)
		if err := cfg.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
	}
}

func TestNotifier_MetricsPassLint(t *testing.T) {
	h := newHarness(t)
	h.start(h.config(phoneAna))
	mfs, err := h.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
}

// testClock is a settable clock, safe for concurrent use.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock(t time.Time) *testClock { return &testClock{now: t} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}
