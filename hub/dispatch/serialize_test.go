package dispatch_test

import (
	"sync"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/dispatch/dispatchtest"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/notify"
)

// TestSendsToOneAddressRunOneAtATime queues an SMS to Ben for each of two
// incidents. While Twilio holds the reply to the first, the outbox pass
// must not send the second, so that a send whose outcome is lost can be
// matched to its own notification only.
func TestSendsToOneAddressRunOneAtATime(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, options{})
		h.addContact(store.Contact{Name: "Ben Cruz", Role: store.RoleResponder, Region: testRegion, Phone: phoneBen})
		first := h.openIncident(testRegion, testVehicle, "sos-a")
		second := h.openIncident(testRegion, "taxi-0918", "sos-b")
		h.scan()
		h.twilio.Script(phoneBen, dispatchtest.Reply{Hold: true})

		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); h.sendDue() }()
		select {
		case <-h.twilio.Held():
		case <-time.After(20 * time.Second):
			t.Fatal("the first SMS to Ben never reached the fake Twilio")
		}
		// A crash now would delay the SMS by the claim's lease: the send
		// timeout (10 s in the harness) plus 5 s.
		held := h.notification(first.ID, store.ChannelSMS, phoneBen)
		if held.State != store.NotificationSending {
			held = h.notification(second.ID, store.ChannelSMS, phoneBen)
		}
		if want := h.clock.Now().Add(15 * time.Second); held.State != store.NotificationSending || !held.NextAttemptAt.Equal(want) {
			t.Errorf("held SMS: state %s, lease until %s; want sending until %s", held.State, held.NextAttemptAt, want)
		}
		h.twilio.Release()
		wg.Wait()
		if n := len(h.twilio.MessagesTo(phoneBen)); n != 1 {
			t.Fatalf("one outbox pass sent %d SMS to Ben at once, want 1 while the other waits", n)
		}
		h.sendDue()
		if n := len(h.twilio.MessagesTo(phoneBen)); n != 2 {
			t.Fatalf("after the second pass Ben has %d SMS, want 2", n)
		}
		for _, id := range []int64{first.ID, second.ID} {
			if n := h.notification(id, store.ChannelSMS, phoneBen); n.State != store.NotificationSent {
				t.Errorf("incident %d: SMS to Ben is %s, want sent", id, n.State)
			}
		}
	})
}

// TestFindDoesNotClaimAmbiguousCall places two calls to the supervisor in
// the same window: Twilio keeps no text of a call, so Find cannot tell
// which belongs to which notification and must report none.
func TestFindDoesNotClaimAmbiguousCall(t *testing.T) {
	h := newHarness(t, "embedded", options{})
	since := h.clock.Now()
	msg := notify.Message{Channel: notify.ChannelVoice, To: phoneSupe, Text: "SOS call", Key: "incident-1-x/voice/" + phoneSupe}
	if _, err := h.sender.Send(h.ctx(), msg); err != nil {
		t.Fatalf("first call: %v", err)
	}
	res, found, err := h.sender.Find(h.ctx(), msg, since)
	if err != nil || !found || res.ProviderID == "" {
		t.Fatalf("Find with one call = %+v, %v, %v; want that call", res, found, err)
	}
	other := msg
	other.Key = "incident-2-y/voice/" + phoneSupe
	if _, err := h.sender.Send(h.ctx(), other); err != nil {
		t.Fatalf("second call: %v", err)
	}
	res, found, err = h.sender.Find(h.ctx(), msg, since)
	if err != nil || found {
		t.Fatalf("Find with two calls in the window = %+v, found %v, error %v; want not found", res, found, err)
	}
}

// TestReconcileSkipsCallOfAnotherNotification has a hub crash after it
// claimed incident B's call to the supervisor, while incident A's call to
// the same number was placed and recorded. When B's lease expires, the
// only call Twilio has in the window is A's: B must not claim it, and
// calls the supervisor itself.
func TestReconcileSkipsCallOfAnotherNotification(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, options{})
		h.addContact(store.Contact{Name: "Sol Supervisor", Role: store.RoleSupervisor, Region: testRegion, Phone: phoneSupe})
		a := h.openIncident(testRegion, testVehicle, "sos-a")
		b := h.openIncident(testRegion, "taxi-0918", "sos-b")
		h.scan()
		h.clock.Advance(30 * time.Second)
		h.scan()
		h.clock.Advance(30 * time.Second)
		h.scan()

		// The crashed hub claimed B's call and never placed it.
		now := h.clock.Now()
		bCall := h.notification(b.ID, store.ChannelVoice, phoneSupe)
		if _, _, err := h.store.ClaimNotification(h.ctx(), bCall.ID, now, now.Add(45*time.Second)); err != nil {
			t.Fatalf("claim B's call as the crashed hub: %v", err)
		}
		h.sendDue()
		aCall := h.notification(a.ID, store.ChannelVoice, phoneSupe)
		if aCall.State != store.NotificationSent || len(h.twilio.CallsTo(phoneSupe)) != 1 {
			t.Fatalf("A's call: state %s, calls %d; want sent once", aCall.State, len(h.twilio.CallsTo(phoneSupe)))
		}

		h.clock.Advance(46 * time.Second)
		h.sendDue()
		bCall = h.notification(b.ID, store.ChannelVoice, phoneSupe)
		if bCall.ProviderID == aCall.ProviderID {
			t.Fatalf("B's call was reconciled with A's call %s", aCall.ProviderID)
		}
		if calls := h.twilio.CallsTo(phoneSupe); bCall.State != store.NotificationSent || len(calls) != 2 || calls[1].SID != bCall.ProviderID {
			t.Errorf("B's call: state %s, provider id %q, calls %d; want its own call placed", bCall.State, bCall.ProviderID, len(calls))
		}
	})
}
