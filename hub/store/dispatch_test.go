package store_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

var dispatchNow = time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)

func TestDeliveryStatusState_Mapping(t *testing.T) {
	for status, want := range map[string]store.NotificationState{
		"delivered": store.NotificationDelivered, "read": store.NotificationDelivered, "completed": store.NotificationDelivered,
		"Delivered":   store.NotificationDelivered,
		"undelivered": store.NotificationFailed, "failed": store.NotificationFailed, "busy": store.NotificationFailed,
		"no-answer": store.NotificationFailed, "canceled": store.NotificationFailed,
		"queued": "", "sending": "", "sent": "", "ringing": "", "in-progress": "", "accepted": "", "": "",
	} {
		got, ok := store.DeliveryStatusState(status)
		if got != want || ok != (want != "") {
			t.Errorf("DeliveryStatusState(%q) = %q, %v, want %q", status, got, ok, want)
		}
	}
}

func TestDescribeAddress_HidesWebhookPath(t *testing.T) {
	cases := map[string]struct {
		ch   store.Channel
		addr string
		want string
	}{
		"sms":             {store.ChannelSMS, "+639171234567", "+639171234567"},
		"email":           {store.ChannelEmail, "ana@example.ph", "ana@example.ph"},
		"webhook":         {store.ChannelWebhook, "https://user:pw@hooks.example.ph:8443/T0/secret?token=x", "https://hooks.example.ph:8443"},
		"invalid webhook": {store.ChannelWebhook, "::not a url", "(invalid webhook URL)"},
	}
	for name, tc := range cases {
		if got := store.DescribeAddress(tc.ch, tc.addr); got != tc.want {
			t.Errorf("%s: DescribeAddress = %q, want %q", name, got, tc.want)
		}
	}
	if err := store.ValidateWebhookURL("https://hooks.example.ph/T0/secret-token\x7f"); err == nil || strings.Contains(err.Error(), "secret-token") {
		t.Errorf("invalid webhook URL: error %v, want one that does not show the path", err)
	}
}

func TestCleanLine_CleansAndCaps(t *testing.T) {
	if got := store.CleanLine("  a\x00b\nc\xff ", 100); got != "ab c" {
		t.Errorf("CleanLine = %q, want %q", got, "ab c")
	}
	if got := store.CleanLine(strings.Repeat("ñ", 10), 5); got != "ññ" {
		t.Errorf("CleanLine cut = %q, want two whole characters", got)
	}
}

func TestStateError_NotificationMessage(t *testing.T) {
	n := store.Notification{ID: 9, IncidentID: 4, State: store.NotificationSent}
	_, err := store.ApplyClaim(&n, dispatchNow, dispatchNow.Add(time.Minute), dispatchNow)
	if got, want := err.Error(), "cannot claim notification 9 of incident 4: it is sent"; got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
	if !errors.Is(err, store.ErrConflict) {
		t.Errorf("error %v does not wrap ErrConflict", err)
	}
	inc := store.Incident{ID: 4, State: store.StateOpen, EscalationLevel: 2}
	_, err = store.ApplyEscalation(&inc, store.Escalation{IncidentID: 4, Level: 2}, dispatchNow)
	if got, want := err.Error(), "cannot escalate incident 4: it is already at escalation level 2, requested 2"; got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
}

func TestApplyLocalAck_ClampsTime(t *testing.T) {
	// The agent received the SOS during the outage; the hub opened the
	// incident 10 minutes later, when the link returned.
	received := dispatchNow.Add(-20 * time.Minute)
	opened := dispatchNow.Add(-10 * time.Minute)
	for name, tc := range map[string]struct{ at, want time.Time }{
		"during the outage":  {received.Add(time.Minute), received.Add(time.Minute)},
		"after the opening":  {opened.Add(time.Minute), opened.Add(time.Minute)},
		"before the receipt": {received.Add(-time.Hour), received},
		"after now":          {dispatchNow.Add(time.Hour), dispatchNow},
	} {
		inc := store.Incident{ID: 1, State: store.StateOpen, ReceivedAt: received, OpenedAt: opened}
		ev := store.ApplyLocalAck(&inc, "ncr-1", &protocol.LocalAck{SOSID: "s", Actor: "Maria", At: tc.at}, dispatchNow)
		if inc.State != store.StateAcknowledged || !inc.AcknowledgedAt.Equal(tc.want) || !inc.UpdatedAt.Equal(dispatchNow) {
			t.Errorf("%s: state %s acknowledged at %s updated %s, want acknowledged at %s", name, inc.State, inc.AcknowledgedAt, inc.UpdatedAt, tc.want)
		}
		if ev.Type != store.EventAcknowledged || ev.Actor != "Maria (at agent ncr-1)" || !ev.At.Equal(dispatchNow) {
			t.Errorf("%s: event %+v", name, ev)
		}
	}
}

func TestApplyAgentNotified_Branches(t *testing.T) {
	sent := &protocol.AgentNotified{SOSID: "s", Channel: "sms", Address: "+639171234567", ProviderID: "SM1", At: dispatchNow}
	failed := &protocol.AgentNotified{SOSID: "s", Channel: "sms", Address: "+639171234567", At: dispatchNow, Error: "no signal"}
	hub := func(st store.NotificationState) *store.Notification {
		return &store.Notification{ID: 3, IncidentID: 1, Channel: store.ChannelSMS, Address: "+639171234567", State: st, SentBy: "", Reason: "opened"}
	}
	cases := []struct {
		name      string
		existing  *store.Notification
		report    *protocol.AgentNotified
		wantWrite bool
		wantState store.NotificationState
		wantBy    string
	}{
		{"new, sent", nil, sent, true, store.NotificationSent, "ncr-1"},
		{"new, failed", nil, failed, true, store.NotificationFailed, "ncr-1"},
		{"pending, sent", hub(store.NotificationPending), sent, true, store.NotificationSent, "ncr-1"},
		{"sending, sent", hub(store.NotificationSending), sent, true, store.NotificationSent, "ncr-1"},
		{"failed by the hub, sent", hub(store.NotificationFailed), sent, true, store.NotificationSent, "ncr-1"},
		{"pending, failed", hub(store.NotificationPending), failed, false, store.NotificationPending, ""},
		{"sent by the hub, sent", hub(store.NotificationSent), sent, false, store.NotificationSent, ""},
		{"delivered, sent", hub(store.NotificationDelivered), sent, false, store.NotificationDelivered, ""},
	}
	for _, tc := range cases {
		n, write, detail, err := store.ApplyAgentNotified(tc.existing, 1, "ncr-1", tc.report, dispatchNow)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if write != tc.wantWrite || n.State != tc.wantState || n.SentBy != tc.wantBy {
			t.Errorf("%s: write %v state %s sent by %q, want %v %s %q", tc.name, write, n.State, n.SentBy, tc.wantWrite, tc.wantState, tc.wantBy)
		}
		if detail == "" || !strings.Contains(detail, "ncr-1") {
			t.Errorf("%s: detail %q does not name the agent", tc.name, detail)
		}
	}
	if _, _, _, err := store.ApplyAgentNotified(nil, 1, "ncr-1", &protocol.AgentNotified{SOSID: "s", Channel: "fax", Address: "1", At: dispatchNow}, dispatchNow); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("unknown channel: error %v, want ErrInvalid", err)
	}
}
