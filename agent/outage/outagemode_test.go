package outage

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/xpress-ops/tower/agent/localsos"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

// pressAt records an SOS of vehicleID received at at, as the relay does
// when the spool stored it.
func (h *harness) pressAt(vehicleID, sosID string, at time.Time) localsos.Entry {
	h.t.Helper()
	recs := []protocol.Record{{
		Kind: protocol.KindSOS, VehicleID: vehicleID, ReceivedAt: at.UTC(),
		SOS: &protocol.SOS{ID: sosID, Kind: protocol.SOSPanic},
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

// settle waits for the notifier's checks to reach a steady state: the
// notifier polls every 10 ms.
func settle() { time.Sleep(300 * time.Millisecond) }

func TestRepeatWindowMatchesHub(t *testing.T) {
	if protocol.SOSRepeatWindow != store.RepeatWindow {
		t.Fatalf("protocol.SOSRepeatWindow = %s, hub store.RepeatWindow = %s: the agent must group presses as the hub does",
			protocol.SOSRepeatWindow, store.RepeatWindow)
	}
}

// Once the hub has an SOS (an incident id, or its spool record
// acknowledged), the hub's dispatcher notifies and the agent does not.
func TestNotifier_NoSMSForSOSTheHubHas(t *testing.T) {
	h := newHarness(t)
	now := time.Now()
	h.pressAt("taxi-incident", "sos-incident", now)
	if _, _, err := h.store.Apply(protocol.SOSStateUpdate{VehicleID: "taxi-incident", SOSID: "sos-incident", IncidentID: 7,
		State: protocol.SOSState{State: protocol.SOSStateReceived, TS: now, Message: "received"}}); err != nil {
		t.Fatal(err)
	}
	h.pressAt("taxi-acked", "sos-acked", now)
	// A repeat press of an SOS the hub has is the hub's too.
	h.pressAt("taxi-repeat", "sos-at-hub", now)
	h.pressAt("taxi-repeat", "sos-repeat", now.Add(30*time.Second))
	h.pressAt(testVehicle, "sos-open", now)
	h.link.set(true, now.Add(-time.Hour))
	cfg := h.config(phoneAna)
	cfg.HubReceived = func(e *localsos.Entry) bool { return e.SOSID == "sos-acked" || e.SOSID == "sos-at-hub" }
	h.start(cfg)

	h.waitDone("sos-open", phoneAna)
	settle()
	msgs := h.twilio.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d SMS, want 1 (about sos-open only): %+v", len(msgs), msgs)
	}
	if !strings.Contains(msgs[0].Body, "sos-open") {
		t.Errorf("SMS %q, want the one about sos-open", msgs[0].Body)
	}
}

// Repeat presses of a vehicle within the repeat window get one SMS per
// number, which counts the presses; a press after the window is a new
// emergency.
func TestNotifier_RepeatPressesShareOneSMS(t *testing.T) {
	h := newHarness(t)
	first := time.Now().Add(-10 * time.Minute)
	h.pressAt(testVehicle, "sos-1", first)
	h.pressAt(testVehicle, "sos-2", first.Add(30*time.Second))
	h.pressAt(testVehicle, "sos-3", first.Add(protocol.SOSRepeatWindow))
	h.pressAt(testVehicle, "sos-late", first.Add(protocol.SOSRepeatWindow+time.Second))
	h.link.set(true, time.Now().Add(-time.Hour))
	h.start(h.config(phoneAna, phoneBen))

	h.waitDone("sos-1", phoneAna, phoneBen)
	h.waitDone("sos-late", phoneAna, phoneBen)
	settle()
	for _, to := range []string{phoneAna, phoneBen} {
		msgs := h.twilio.MessagesTo(to)
		if len(msgs) != 2 {
			t.Fatalf("%d SMS to %s, want 2 (one per emergency): %+v", len(msgs), to, msgs)
		}
		if !strings.Contains(msgs[0].Body+msgs[1].Body, "Pressed 3 times") {
			t.Errorf("SMS to %s %q, want one that counts the 3 presses", to, msgs[0].Body+" | "+msgs[1].Body)
		}
	}
	for _, id := range []string{"sos-2", "sos-3"} {
		e, err := h.store.Get(testVehicle, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(e.Notifications) != 0 {
			t.Errorf("repeat press %s has notifications %+v, want none", id, e.Notifications)
		}
	}
}

// Past MaxPerNumber SMS within CapWindow a number gets one summary SMS
// instead of one per SOS.
func TestNotifier_CapsSMSPerNumber(t *testing.T) {
	logs := &syncWriter{w: &bytes.Buffer{}}
	h := newHarness(t)
	now := time.Now()
	for _, v := range []string{"taxi-a", "taxi-b", "taxi-c", "taxi-d", "taxi-e"} {
		h.pressAt(v, "sos-"+v, now)
	}
	h.link.set(true, now.Add(-time.Hour))
	cfg := h.config(phoneAna)
	cfg.MaxPerNumber = 2
	cfg.PageURL = "https://agent-ncr.example.ph:9090/"
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	h.start(cfg)

	h.waitSMS(phoneAna, 3)
	settle()
	msgs := h.twilio.MessagesTo(phoneAna)
	if len(msgs) != 3 {
		t.Fatalf("%d SMS, want 2 alerts and 1 summary: %+v", len(msgs), msgs)
	}
	var summaries []string
	for _, m := range msgs {
		if strings.Contains(m.Body, "more SOS pending") {
			summaries = append(summaries, m.Body)
		}
	}
	if len(summaries) != 1 || !strings.Contains(summaries[0], "3 more SOS pending, see the regional page") ||
		!strings.Contains(summaries[0], cfg.PageURL) {
		t.Errorf("summary SMS %q, want one naming 3 pending SOS and the page", summaries)
	}
	if got := h.outcome(outcomeSummary); got != 1 {
		t.Errorf("summary outcome = %v, want 1", got)
	}
	if got := testutil.ToFloat64(h.notifier.metrics.capped); got != 3 {
		t.Errorf("capped = %v, want 3", got)
	}
	if !strings.Contains(logs.String(), "outage SMS cap reached") {
		t.Errorf("no log of the cap in %s", logs.String())
	}
}

// The agent's SMS says it comes from the regional office agent during a
// hub outage, points to the agent's page, and carries the driver's cancel.
func TestNotifier_OutageTemplateAndCancel(t *testing.T) {
	h := newHarness(t)
	now := time.Now()
	h.pressAt(testVehicle, "sos-page", now)
	h.pressAt("taxi-cancel", "sos-cancel", now)
	if _, changed, err := h.store.RecordCancel(protocol.Record{Kind: protocol.KindSOSCancel, VehicleID: "taxi-cancel",
		ReceivedAt: now.Add(time.Second), Cancel: &protocol.SOSCancel{ID: "sos-cancel", Reason: "false alarm"}}); err != nil || !changed {
		t.Fatalf("record cancel: changed %v, %v", changed, err)
	}
	h.link.set(true, now.Add(-time.Hour))
	cfg := h.config(phoneAna)
	cfg.PageURL = "https://agent-ncr.example.ph:9090/"
	h.start(cfg)

	h.waitSMS(phoneAna, 2)
	for _, m := range h.twilio.MessagesTo(phoneAna) {
		for _, part := range []string{"NCR-Manila office agent", "hub unreachable", cfg.PageURL} {
			if !strings.Contains(m.Body, part) {
				t.Errorf("SMS %q does not contain %q", m.Body, part)
			}
		}
		if strings.Contains(m.Body, "dashboard") {
			t.Errorf("SMS %q points to the dashboard, which is unreachable in an outage", m.Body)
		}
		if strings.Contains(m.Body, "sos-cancel") != strings.Contains(m.Body, "Driver asked to cancel (false alarm)") {
			t.Errorf("SMS %q: the cancel belongs in the SMS of sos-cancel only", m.Body)
		}
	}
}

// Without a page URL the SMS names the agent and region.
func TestNotifier_TemplateWithoutPageURL(t *testing.T) {
	h := newHarness(t)
	h.pressAt(testVehicle, "sos-1", time.Now())
	h.link.set(true, time.Now().Add(-time.Hour))
	h.start(h.config(phoneAna))
	h.waitDone("sos-1", phoneAna)
	msgs := h.twilio.MessagesTo(phoneAna)
	if len(msgs) != 1 || !strings.Contains(msgs[0].Body, "page of agent "+testAgent+", NCR-Manila office") {
		t.Errorf("SMS %+v, want one naming agent %s and its region", msgs, testAgent)
	}
}

// The log line of a report names the sequence number the spool assigned.
func TestNotifier_ReportLogsSpoolSeq(t *testing.T) {
	logs := &syncWriter{w: &bytes.Buffer{}}
	h := newHarness(t)
	h.pressAt(testVehicle, "sos-1", time.Now())
	h.link.set(true, time.Now().Add(-time.Hour))
	cfg := h.config(phoneAna)
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	h.start(cfg)
	h.waitDone("sos-1", phoneAna)
	reports := h.reports()
	if len(reports) != 1 {
		t.Fatalf("%d reports in the spool, want 1", len(reports))
	}
	h.notifier.Close()
	line := regexp.MustCompile(`msg="outage SMS outcome queued for the hub".*`).FindString(logs.String())
	if want := "seq=" + strconv.FormatUint(reports[0].Seq, 10); !strings.Contains(line, want+" ") {
		t.Errorf("log line %q, want %s", line, want)
	}
}

// syncWriter serialises writes of the notifier's goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

// waitSMS waits until to got n SMS.
func (h *harness) waitSMS(to string, n int) {
	h.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for len(h.twilio.MessagesTo(to)) < n {
		if time.Now().After(deadline) {
			h.t.Fatalf("%d SMS to %s within %s, want %d", len(h.twilio.MessagesTo(to)), to, waitTimeout, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
