package dispatch_test

import (
	"strings"
	"testing"

	"github.com/xpress-ops/tower/hub/dispatch"
	"github.com/xpress-ops/tower/hub/dispatch/dispatchtest"
	"github.com/xpress-ops/tower/hub/store"
)

// TestPersonRetryWaitCapped makes Twilio ask for a 10-minute pause and
// then fail many times: an SOS text to a person never waits more than
// dispatch.PersonRetryCap between attempts, and the shortened Retry-After
// is logged.
func TestPersonRetryWaitCapped(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		var logs syncBuffer
		h := newHarness(t, kind, options{logTo: &logs})
		h.addContact(store.Contact{Name: "Ben Cruz", Role: store.RoleResponder, Region: testRegion, Phone: phoneBen})
		replies := []dispatchtest.Reply{{Status: 429, Code: 20429, RetryAfter: "600"}}
		// Backoff draws each wait from [0, ceiling], so a wait reaches the
		// cap only by chance until the ceiling passes it; 19 failures make
		// missing it every time vanishingly unlikely (below 1e-9).
		for range 19 {
			replies = append(replies, dispatchtest.Reply{Status: 503, Code: 20503})
		}
		h.twilio.Script(phoneBen, replies...)
		inc := h.openIncident(testRegion, testVehicle, "sos-cap")
		h.scan()
		h.sendDue()

		sms := h.notification(inc.ID, store.ChannelSMS, phoneBen)
		if want := h.clock.Now().Add(dispatch.PersonRetryCap); sms.State != store.NotificationPending || !sms.NextAttemptAt.Equal(want) {
			t.Fatalf("SMS after Retry-After 600: state %s, next attempt %s; want pending at %s", sms.State, sms.NextAttemptAt, want)
		}
		if !strings.Contains(logs.String(), "Retry-After shortened") || !strings.Contains(logs.String(), "retry_after=10m0s") {
			t.Errorf("no log of the shortened Retry-After in:\n%s", logs.String())
		}

		capped := 0
		for attempt := 2; attempt <= 20; attempt++ {
			h.clock.Set(sms.NextAttemptAt)
			h.sendDue()
			sms = h.notification(inc.ID, store.ChannelSMS, phoneBen)
			if sms.Attempts != attempt || sms.State != store.NotificationPending {
				t.Fatalf("after attempt %d: %d attempts, state %s", attempt, sms.Attempts, sms.State)
			}
			wait := sms.NextAttemptAt.Sub(h.clock.Now())
			if wait > dispatch.PersonRetryCap {
				t.Errorf("attempt %d: next attempt in %s, more than %s", attempt, wait, dispatch.PersonRetryCap)
			}
			if wait == dispatch.PersonRetryCap {
				capped++
			}
		}
		if capped == 0 {
			t.Error("no wait reached the cap: the test did not exercise it")
		}
	})
}
