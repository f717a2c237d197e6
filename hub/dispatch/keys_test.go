package dispatch_test

import (
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/dispatch"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/internal/pgtest"
)

var (
	refPattern       = regexp.MustCompile(`Ref (XOT-[A-Z2-7]{8})`)
	messageIDPattern = regexp.MustCompile(`(?i)Message-ID: <([^>]+)>`)
)

// sentKeys returns the webhook idempotency key, the SMS reference marker
// to phoneBen and the email Message-ID to emailAna of the one incident the
// harness has sent.
func sentKeys(t *testing.T, h *harness) (hookKey, ref, messageID string) {
	t.Helper()
	d := h.hook.Deliveries()
	if len(d) == 0 {
		t.Fatal("no webhook delivery")
	}
	hookKey = d[len(d)-1].Key
	msgs := h.twilio.MessagesTo(phoneBen)
	if len(msgs) == 0 {
		t.Fatal("no SMS to Ben")
	}
	m := refPattern.FindStringSubmatch(msgs[len(msgs)-1].Body)
	if m == nil {
		t.Fatalf("SMS %q has no reference marker", msgs[len(msgs)-1].Body)
	}
	mails := h.smtp.MailsTo(emailAna)
	if len(mails) == 0 {
		t.Fatal("no email to Ana")
	}
	id := messageIDPattern.FindStringSubmatch(mails[len(mails)-1].Data)
	if id == nil {
		t.Fatalf("email has no Message-ID:\n%s", mails[len(mails)-1].Data)
	}
	return hookKey, m[1], id[1]
}

// TestIdempotencyKeysDifferAfterStoreReset opens incident 1 on a store,
// then on a fresh store (as after a database reset or a switch from the
// embedded store to PostgreSQL), where the new SOS is incident 1 again
// and comes from the same vehicle. A receiver that drops copies by key,
// reference or Message-ID must not drop the second SOS.
func TestIdempotencyKeysDifferAfterStoreReset(t *testing.T) {
	forEachStore(t, func(t *testing.T, kind string) {
		h := newHarness(t, kind, options{})
		h.addStandardContacts()
		first := h.openIncident(testRegion, testVehicle, "sos-1")
		h.scan()
		h.sendDue()
		key1, ref1, mid1 := sentKeys(t, h)

		// A retry of the same notification keeps its key: the key is
		// derived from stored fields only.
		n := h.notification(first.ID, store.ChannelSMS, phoneBen)
		inc, _ := h.incident(first.ID)
		if a, b := keyOf(n, inc), keyOf(n, first); a != b {
			t.Errorf("key from the stored incident %q differs from the key from the committed one %q", a, b)
		}

		switch kind {
		case "embedded":
			h.storeFile = filepath.Join(t.TempDir(), "fresh.db")
		case "postgres":
			h.storeURL = pgtest.NewDatabase(t)
		}
		h.restart()
		h.clock.Advance(time.Hour)
		h.addStandardContacts()
		second := h.openIncident(testRegion, testVehicle, "sos-1")
		if second.ID != first.ID {
			t.Fatalf("fresh store gave incident id %d, want %d as in the old store", second.ID, first.ID)
		}
		h.scan()
		h.sendDue()
		key2, ref2, mid2 := sentKeys(t, h)
		if key1 == key2 {
			t.Errorf("webhook idempotency key %q repeats for a new SOS after a store reset", key1)
		}
		if ref1 == ref2 {
			t.Errorf("SMS reference %q repeats for a new SOS after a store reset", ref1)
		}
		if mid1 == mid2 {
			t.Errorf("email Message-ID %q repeats for a new SOS after a store reset", mid1)
		}
	})
}

func keyOf(n store.Notification, inc store.Incident) string {
	return dispatch.NotificationKey(n, inc)
}
