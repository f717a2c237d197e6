package notify

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/protocol"
)

// sampleAlert is an SOS raised at 10:03 PM Manila time (14:03 UTC).
func sampleAlert() AlertData {
	return AlertData{
		Audience:    AudienceResponders,
		IncidentID:  "12",
		SOSID:       "sos-1",
		VehicleID:   "taxi-0917",
		Kind:        "medical",
		Region:      "NCR-Manila",
		HasLocation: true,
		Lat:         14.5995,
		Lon:         120.9842,
		Time:        time.Date(2026, 12, 4, 14, 3, 0, 0, time.UTC),
		Note:        "Passenger collapsed",
		Ref:         Reference("incident-12/sms/+639171234567"),
	}
}

const sampleLink = "https://maps.google.com/?q=14.59950,120.98420"

func TestManilaTime(t *testing.T) {
	cases := []struct {
		at   time.Time
		want string
	}{
		{time.Date(2026, 12, 4, 14, 3, 0, 0, time.UTC), "4 Dec 2026 10:03 PM PHT"},
		{time.Date(2026, 12, 4, 20, 30, 0, 0, time.UTC), "5 Dec 2026 4:30 AM PHT"},
		{time.Date(2026, 6, 1, 4, 0, 0, 0, time.FixedZone("CEST", 2*3600)), "1 Jun 2026 10:00 AM PHT"},
	}
	for _, c := range cases {
		if got := ManilaTime(c.at); got != c.want {
			t.Errorf("ManilaTime(%v) = %q, want %q", c.at, got, c.want)
		}
	}
	if manila.String() != "Asia/Manila" {
		t.Errorf("zone = %q, want Asia/Manila from the zone database", manila)
	}
}

func TestMapLink(t *testing.T) {
	if got := MapLink(14.5995, 120.9842); got != sampleLink {
		t.Errorf("MapLink = %q, want %q", got, sampleLink)
	}
	if got := MapLink(-33.8688, 151.2093); got != "https://maps.google.com/?q=-33.86880,151.20930" {
		t.Errorf("MapLink southern hemisphere = %q", got)
	}
}

func TestRenderAlertResponders(t *testing.T) {
	d := sampleAlert()
	cases := []struct {
		lang    Language
		subject []string
		text    []string
	}{
		{English,
			[]string{"SOS", "medical emergency", "vehicle taxi-0917", "NCR-Manila", "incident 12"},
			[]string{"XPRESS SOS", "medical emergency", "vehicle taxi-0917", "NCR-Manila", "4 Dec 2026 10:03 PM PHT", "Map: " + sampleLink, "Incident 12.", "Acknowledge on the dashboard.", "Ref " + d.Ref}},
		{Filipino,
			[]string{"SOS", "medical emergency", "sasakyang taxi-0917", "NCR-Manila", "incident 12"},
			[]string{"XPRESS SOS", "mula sa sasakyang taxi-0917", "4 Dec 2026 10:03 PM PHT", "Mapa: " + sampleLink, "Incident 12.", "Paki-acknowledge sa dashboard.", "Ref " + d.Ref}},
	}
	for _, c := range cases {
		subject, text := RenderAlert(c.lang, d)
		assertContainsAll(t, string(c.lang)+" subject", subject, c.subject)
		assertContainsAll(t, string(c.lang)+" SMS", text, c.text)
		if n := SMSSegments(text); n > 2 {
			t.Errorf("%s SMS needs %d segments: %q", c.lang, n, text)
		}
	}
}

func TestRenderAlertContacts(t *testing.T) {
	d := sampleAlert()
	d.Audience = AudienceContacts

	subject, text := RenderAlert(English, d)
	assertContainsAll(t, "en subject", subject, []string{"SOS from vehicle taxi-0917"})
	assertContainsAll(t, "en SMS", text, []string{"Vehicle taxi-0917 sent an SOS (medical emergency)", "4 Dec 2026 10:03 PM PHT", "Last location: " + sampleLink, "operations team is responding", d.Ref})
	assertContainsNone(t, "en contacts SMS", text, []string{"Acknowledge", "dashboard"})

	subject, text = RenderAlert(Filipino, d)
	assertContainsAll(t, "fil subject", subject, []string{"SOS mula sa sasakyang taxi-0917"})
	assertContainsAll(t, "fil SMS", text, []string{"Nagpadala ng SOS (medical emergency) ang sasakyang taxi-0917", "noong 4 Dec 2026 10:03 PM PHT", "Huling lokasyon: " + sampleLink, "Inaasikaso na ito", d.Ref})
	if n := SMSSegments(text); n > 2 {
		t.Errorf("fil contacts SMS needs %d segments", n)
	}
}

func TestRenderAlertLocationUnknown(t *testing.T) {
	cases := []struct {
		name     string
		has      bool
		lat, lon float64
	}{
		{"no fix", false, 14.5995, 120.9842},
		{"latitude out of range", true, 91, 120},
		{"longitude out of range", true, 14, 181},
		{"NaN", true, math.NaN(), 120},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := sampleAlert()
			d.HasLocation, d.Lat, d.Lon = c.has, c.lat, c.lon
			_, en := RenderAlert(English, d)
			_, fil := RenderAlert(Filipino, d)
			_, email := RenderAlertEmail(English, d)
			assertContainsAll(t, "en SMS", en, []string{"Location unknown."})
			assertContainsAll(t, "fil SMS", fil, []string{"Hindi alam ang lokasyon."})
			assertContainsAll(t, "en email", email, []string{"location unknown"})
			for _, s := range []string{en, fil, email} {
				if strings.Contains(s, "maps.google.com") {
					t.Errorf("text without a position has a map link: %q", s)
				}
			}
		})
	}
}

func TestRenderAlertWithoutIncident(t *testing.T) {
	// An agent alerting during a hub outage has only the SOS id.
	d := sampleAlert()
	d.IncidentID = ""
	subject, text := RenderAlert(English, d)
	assertContainsAll(t, "SMS", text, []string{"SOS sos-1."})
	assertContainsNone(t, "SMS", text, []string{"Incident"})
	assertContainsNone(t, "subject", subject, []string{"incident"})
	_, body := RenderAlertEmail(English, d)
	assertContainsNone(t, "email", body, []string{"Incident:"})
	assertContainsAll(t, "email", body, []string{"SOS id:      sos-1"})
}

func TestRenderAlertUnknownLanguageIsEnglish(t *testing.T) {
	d := sampleAlert()
	s1, t1 := RenderAlert("ceb", d)
	s2, t2 := RenderAlert(English, d)
	if s1 != s2 || t1 != t2 {
		t.Errorf("language %q rendered %q / %q, want the English %q / %q", "ceb", s1, t1, s2, t2)
	}
	if DriverStateMessage("xx", DriverStateReceived) != DriverStateMessage(English, DriverStateReceived) {
		t.Error("DriverStateMessage with an unknown language is not English")
	}
}

func TestRenderAlertCleansFields(t *testing.T) {
	d := sampleAlert()
	d.VehicleID = "taxi\r\nBcc: x@example.com"
	d.Region = "NCR\tManila"
	d.Kind = "meteor\nstrike"
	subject, text := RenderAlert(English, d)
	for _, s := range []string{subject, text} {
		if strings.ContainsAny(s, "\r\n\t") {
			t.Errorf("rendered text keeps a control character: %q", s)
		}
	}
	assertContainsAll(t, "SMS", text, []string{"NCR Manila", "meteor strike"})
}

func TestRenderAlertFitsTwoSegments(t *testing.T) {
	long := strings.Repeat("V", 64)
	for _, lang := range []Language{English, Filipino} {
		for _, audience := range []Audience{AudienceResponders, AudienceContacts} {
			d := sampleAlert()
			d.Audience = audience
			d.IncidentID = "9223372036854775807"
			d.SOSID = long
			d.VehicleID = long
			d.Region = strings.Repeat("R", 40)
			d.Kind = "harassment"
			d.Lat, d.Lon = -89.99999, -179.99999
			d.Unacknowledged = 100000 * time.Second
			renders := map[string]string{}
			_, renders["alert"] = RenderAlert(lang, d)
			_, renders["escalation"] = RenderEscalation(lang, d)
			for name, text := range renders {
				if n := SMSSegments(text); n > 2 {
					t.Errorf("%s %s %s with 24-character fields needs %d segments (%d characters): %q", lang, audience, name, n, len(text), text)
				}
				if _, gsm := gsm7Length(text); !gsm {
					t.Errorf("%s %s %s is not GSM-7, so it costs UCS-2 segments: %q", lang, audience, name, text)
				}
			}
		}
	}
}

func TestRenderAlertEmail(t *testing.T) {
	d := sampleAlert()
	subject, body := RenderAlertEmail(English, d)
	assertContainsAll(t, "en subject", subject, []string{"SOS", "taxi-0917", "incident 12"})
	assertContainsAll(t, "en body", body, []string{
		"Incident:    12", "SOS id:      sos-1", "Vehicle:     taxi-0917", "Kind:        medical emergency",
		"Region:      NCR-Manila", "Time:        4 Dec 2026 10:03 PM PHT", "Location:    14.59950, 120.98420",
		"Map:         " + sampleLink, "Note:        Passenger collapsed", "Reference:   " + d.Ref,
		"Acknowledge the incident on the operations dashboard.",
	})

	_, body = RenderAlertEmail(Filipino, d)
	assertContainsAll(t, "fil body", body, []string{
		"SOS mula sa sasakyang taxi-0917.", "Sasakyan:    taxi-0917", "Uri:         medical emergency",
		"Rehiyon:     NCR-Manila", "Oras:        4 Dec 2026 10:03 PM PHT", "Lokasyon:", "Mapa:        " + sampleLink,
		"Tala:        Passenger collapsed", "Paki-acknowledge ang incident",
	})

	d.Audience = AudienceContacts
	subject, body = RenderAlertEmail(Filipino, d)
	assertContainsAll(t, "fil contacts subject", subject, []string{"SOS mula sa sasakyang taxi-0917"})
	assertContainsAll(t, "fil contacts body", body, []string{"Nagpadala ng SOS ang sasakyang taxi-0917 noong 4 Dec 2026 10:03 PM PHT.", "Inaasikaso na ito", "hindi mo kailangang sumagot"})
	assertContainsNone(t, "fil contacts body", body, []string{"SOS id", "Incident:"})
}

func TestRenderEscalation(t *testing.T) {
	d := sampleAlert()
	d.Unacknowledged = 90 * time.Second

	subject, text := RenderEscalation(English, d)
	assertContainsAll(t, "en subject", subject, []string{"ESCALATION", "incident 12", "not acknowledged after 90 s"})
	assertContainsAll(t, "en SMS", text, []string{"XPRESS ESCALATION", "incident 12", "not acknowledged after 90 s", "Raised 4 Dec 2026 10:03 PM PHT", sampleLink, "Act now", d.Ref})

	subject, text = RenderEscalation(Filipino, d)
	assertContainsAll(t, "fil subject", subject, []string{"ESCALATION", "Wala pang nag-acknowledge sa incident 12", "90 segundo"})
	assertContainsAll(t, "fil SMS", text, []string{"matapos ang 90 segundo", "Oras ng SOS: 4 Dec 2026 10:03 PM PHT", "Mapa: " + sampleLink, "Paki-aksyunan agad"})

	subject, body := RenderEscalationEmail(English, d)
	assertContainsAll(t, "en email subject", subject, []string{"not acknowledged after 90 s"})
	assertContainsAll(t, "en email", body, []string{"No operator has acknowledged this SOS after 90 s.", "Waiting:     90 s", "assign a responder"})
}

func TestRenderVoice(t *testing.T) {
	d := sampleAlert()
	en := RenderVoice(English, d)
	assertContainsAll(t, "en voice", en, []string{"Emergency alert from Xpress Ops Tower.", "Vehicle taxi 0 9 1 7 in NCR-Manila sent an SOS.", "Kind: medical emergency.", "Time: 10:03 PM.", "Incident 12.", "The location is on the dashboard."})
	assertContainsNone(t, "en voice", en, []string{"http", "acknowledged after"})

	d.Unacknowledged = 2 * time.Minute
	fil := RenderVoice(Filipino, d)
	assertContainsAll(t, "fil voice", fil, []string{"Emergency alert mula sa Xpress Ops Tower.", "May SOS mula sa sasakyang taxi 0 9 1 7 sa NCR-Manila.", "Oras: 10:03 PM.", "Wala pang nag-acknowledge matapos ang 120 segundo.", "Pakibuksan ang operations dashboard"})
	assertContainsAll(t, "en escalation voice", RenderVoice(English, d), []string{"It has not been acknowledged after 120 seconds."})

	d.Audience = AudienceContacts
	d.HasLocation = false
	assertContainsAll(t, "en contacts voice", RenderVoice(English, d), []string{"This is a message from Xpress Ops Tower.", "Our operations team is responding."})
	assertContainsNone(t, "en contacts voice", RenderVoice(English, d), []string{"dashboard"})

	d.IncidentID = "INC-20261204-7"
	d.Audience = AudienceResponders
	assertContainsAll(t, "spelled incident id", RenderVoice(English, d), []string{"Incident INC 2 0 2 6 1 2 0 4 7."})
}

func TestDriverStateMessage(t *testing.T) {
	states := []string{DriverStateReceived, DriverStateAcknowledged, DriverStateDispatched, DriverStateResolved, DriverStateCancelled}
	seen := map[string]bool{}
	for _, lang := range []Language{English, Filipino} {
		for _, state := range states {
			msg := DriverStateMessage(lang, state)
			if msg == "" {
				t.Errorf("DriverStateMessage(%s, %s) is empty", lang, state)
			}
			if seen[msg] {
				t.Errorf("DriverStateMessage(%s, %s) = %q repeats another state's text", lang, state, msg)
			}
			seen[msg] = true
			if n := SMSSegments(msg); n != 1 {
				t.Errorf("DriverStateMessage(%s, %s) needs %d SMS segments, want 1", lang, state, n)
			}
		}
	}
	if got := DriverStateMessage(Filipino, "received"); got != "Natanggap ang iyong SOS. Tinutulungan ka na." {
		t.Errorf("Filipino received = %q", got)
	}
	if got := DriverStateMessage(English, " Dispatched "); !strings.Contains(got, "on the way") {
		t.Errorf("state names are not trimmed and case-folded: %q", got)
	}
	if got := DriverStateMessage(English, "assigned"); got != "" {
		t.Errorf("unknown state gave %q, want empty", got)
	}
}

func TestSMSSegments(t *testing.T) {
	cases := []struct {
		name string
		text string
		want int
	}{
		{"empty", "", 0},
		{"160 GSM-7", strings.Repeat("a", 160), 1},
		{"161 GSM-7", strings.Repeat("a", 161), 2},
		{"306 GSM-7", strings.Repeat("a", 306), 2},
		{"307 GSM-7", strings.Repeat("a", 307), 3},
		{"ñ and é are GSM-7", strings.Repeat("ñé", 80), 1},
		{"extension characters count twice", strings.Repeat("{", 80), 1},
		{"81 extension characters", strings.Repeat("{", 81), 2},
		{"70 UCS-2", strings.Repeat("ā", 70), 1},
		{"71 UCS-2", strings.Repeat("ā", 71), 2},
		{"emoji is two UCS-2 units", strings.Repeat("🚨", 35), 1},
		{"emoji past one segment", strings.Repeat("🚨", 36), 2},
	}
	for _, c := range cases {
		if got := SMSSegments(c.text); got != c.want {
			t.Errorf("%s: SMSSegments = %d, want %d", c.name, got, c.want)
		}
	}
}

func assertContainsAll(t *testing.T, what, text string, wants []string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(text, want) {
			t.Errorf("%s lacks %q:\n%s", what, want, text)
		}
	}
}

func assertContainsNone(t *testing.T, what, text string, unwanted []string) {
	t.Helper()
	for _, u := range unwanted {
		if strings.Contains(text, u) {
			t.Errorf("%s contains %q:\n%s", what, u, text)
		}
	}
}

// TestDriverStateMessageMatchesAgent checks that the hub's English driver
// texts are the agent's (protocol.DefaultSOSStateMessage), so a driver
// reads the same words whether the agent or the hub sends the state.
func TestDriverStateMessageMatchesAgent(t *testing.T) {
	for _, state := range []string{DriverStateReceived, DriverStateAcknowledged, DriverStateDispatched, DriverStateResolved, DriverStateCancelled} {
		if got, want := DriverStateMessage(English, state), protocol.DefaultSOSStateMessage(state); got != want || got == "" {
			t.Errorf("DriverStateMessage(en, %s) = %q, the agent sends %q", state, got, want)
		}
	}
}
