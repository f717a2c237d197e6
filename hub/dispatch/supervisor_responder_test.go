package dispatch_test

import (
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
)

// TestSupervisorWhoIsAlsoResponder saves Ana as a responder and as a
// supervisor with the same phone. Level 2 queues no second SMS to her,
// and its audit detail counts only what was queued and names her as
// already notified. Level 3 still calls her.
func TestSupervisorWhoIsAlsoResponder(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, options{})
		h.addContact(store.Contact{Name: "Ana Reyes", Role: store.RoleResponder, Region: testRegion, Phone: phoneAna})
		h.addContact(store.Contact{Name: "Ana Reyes", Role: store.RoleSupervisor, Region: testRegion, Phone: phoneAna})
		h.addContact(store.Contact{Name: "Sol Supervisor", Role: store.RoleSupervisor, Region: testRegion, Phone: phoneSupe})
		inc := h.openIncident(testRegion, testVehicle, "sos-dual")
		h.scan()
		h.sendDue()

		h.clock.Advance(30 * time.Second)
		h.scan()
		h.sendDue()
		_, evs := h.incident(inc.ID)
		level2 := eventsMatching(evs, store.EventEscalated, "not acknowledged after")
		if len(level2) != 1 {
			t.Fatalf("level 2 events: %+v", evs)
		}
		if !strings.Contains(level2[0].Detail, "2 supervisors of "+testRegion+": 1 sms") {
			t.Errorf("level 2 detail %q: want it to count the one SMS actually queued", level2[0].Detail)
		}
		if !strings.Contains(level2[0].Detail, phoneAna+" already notified by SMS as responder") {
			t.Errorf("level 2 detail %q: want it to say Ana was already notified", level2[0].Detail)
		}
		if n := len(h.twilio.MessagesTo(phoneAna)); n != 1 {
			t.Errorf("SMS to Ana: %d, want 1", n)
		}

		h.clock.Advance(30 * time.Second)
		h.scan()
		h.sendDue()
		for _, phone := range []string{phoneAna, phoneSupe} {
			if n := len(h.twilio.CallsTo(phone)); n != 1 {
				t.Errorf("calls to %s at level 3: %d, want 1", phone, n)
			}
		}
	})
}
