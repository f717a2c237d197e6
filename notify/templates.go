package notify

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // Asia/Manila on hosts without a zoneinfo database
	"unicode"
	"unicode/utf8"

	"github.com/xpress-ops/tower/protocol"
)

// Audience is who receives an SOS alert.
type Audience string

// Audiences.
const (
	// AudienceResponders are operators and responders who act on the SOS.
	AudienceResponders Audience = "responders"
	// AudienceContacts are a vehicle's emergency contacts, usually the
	// driver's family, who are informed but not expected to act.
	AudienceContacts Audience = "contacts"
)

// AlertData is the content of the notifications about one SOS.
type AlertData struct {
	// Audience selects the wording of RenderAlert, RenderAlertEmail and
	// RenderVoice. Empty means AudienceResponders.
	Audience Audience
	// IncidentID is the hub's incident id, e.g. "12". Empty (an agent
	// alerting during an outage) names the SOS by SOSID instead.
	IncidentID string
	// SOSID is the id the vehicle gave the SOS.
	SOSID string
	// VehicleID is the vehicle's id.
	VehicleID string
	// Kind is the SOS kind: panic, crash, medical, fire, harassment or
	// other. Another value is shown as it is.
	Kind string
	// Region is the agent's region, e.g. "NCR-Manila".
	Region string
	// HasLocation is false when the SOS carried no usable position. Lat
	// and Lon are then ignored, as are values out of range.
	HasLocation bool
	Lat, Lon    float64
	// Time is the moment the SOS was raised, shown in Philippine time.
	// Zero shows "time unknown".
	Time time.Time
	// Note is the driver's note, shown in emails only.
	Note string
	// Ref is the reference marker, usually Reference(Message.Key). Empty
	// omits it.
	Ref string
	// Unacknowledged is how long the incident has waited for an operator,
	// used by RenderEscalation and, when positive, by RenderVoice.
	Unacknowledged time.Duration
}

// Driver states of DriverStateMessage.
const (
	DriverStateReceived     = "received"
	DriverStateAcknowledged = "acknowledged"
	DriverStateDispatched   = "dispatched"
	DriverStateResolved     = "resolved"
	DriverStateCancelled    = "cancelled"
)

// Field limits, in characters, so that an alert fits two SMS segments.
const (
	maxIDField     = 24
	maxRegionField = 24
	maxKindField   = 24
	maxNoteField   = 500
)

// manila is the Asia/Manila zone, from the embedded tzdata when the host
// has none.
var manila = loadManila()

func loadManila() *time.Location {
	loc, err := time.LoadLocation("Asia/Manila")
	if err != nil {
		// time/tzdata is embedded, so only a broken build gets here. The
		// zone database has Manila on UTC+8 without daylight saving since
		// 1991.
		return time.FixedZone("PHT", 8*60*60)
	}
	return loc
}

// ManilaTime formats t in Philippine time, e.g. "4 Dec 2026 10:03 PM PHT".
// The zone is written PHT, the abbreviation Philippine operations use,
// although the zone database abbreviates it PST.
func ManilaTime(t time.Time) string {
	return t.In(manila).Format("2 Jan 2006 3:04 PM") + " PHT"
}

// MapLink returns a Google Maps link to a position with 5 decimals (about
// 1 m), e.g. "https://maps.google.com/?q=14.59950,120.98420".
func MapLink(lat, lon float64) string {
	return fmt.Sprintf("https://maps.google.com/?q=%.5f,%.5f", lat, lon)
}

// view is AlertData cleaned and formatted for one language.
type view struct {
	lang     Language
	audience Audience
	// incidentWord and incidentID name the incident ("incident", "12"),
	// or the SOS when there is no incident yet ("SOS", "sos-1").
	incidentWord string
	incidentID   string
	sosID        string
	vehicle      string
	kind         string
	region       string
	when         string // "4 Dec 2026 10:03 PM PHT" or "time unknown"
	clock        string // "10:03 PM" for voice, empty when unknown
	hasLoc       bool
	latLon       string // "14.59950, 120.98420"
	link         string
	note         string
	ref          string
	waitedSec    int64
}

func newView(lang Language, d AlertData) view {
	if lang != Filipino {
		lang = English
	}
	v := view{
		lang:     lang,
		audience: d.Audience,
		sosID:    cleanField(d.SOSID, maxIDField),
		vehicle:  cleanField(d.VehicleID, maxIDField),
		region:   cleanField(d.Region, maxRegionField),
		kind:     kindLabel(lang, d.Kind),
		note:     cleanField(d.Note, maxNoteField),
		ref:      cleanField(d.Ref, maxIDField),
	}
	if v.audience != AudienceContacts {
		v.audience = AudienceResponders
	}
	if v.vehicle == "" {
		v.vehicle = pick(lang, "unknown", "hindi kilala")
	}
	if id := cleanField(d.IncidentID, maxIDField); id != "" {
		v.incidentWord, v.incidentID = "incident", id
	} else if v.sosID != "" {
		v.incidentWord, v.incidentID = "SOS", v.sosID
	}
	if d.Time.IsZero() {
		v.when = pick(lang, "time unknown", "hindi alam ang oras")
	} else {
		v.when = ManilaTime(d.Time)
		v.clock = d.Time.In(manila).Format("3:04 PM")
	}
	if validPosition(d.HasLocation, d.Lat, d.Lon) {
		v.hasLoc = true
		v.latLon = fmt.Sprintf("%.5f, %.5f", d.Lat, d.Lon)
		v.link = MapLink(d.Lat, d.Lon)
	}
	if d.Unacknowledged > 0 {
		v.waitedSec = int64(d.Unacknowledged.Round(time.Second) / time.Second)
	}
	return v
}

func validPosition(has bool, lat, lon float64) bool {
	if !has || math.IsNaN(lat) || math.IsNaN(lon) {
		return false
	}
	return lat >= -90 && lat <= 90 && lon >= -180 && lon <= 180
}

func pick(lang Language, english, filipino string) string {
	if lang == Filipino {
		return filipino
	}
	return english
}

// kindLabel names an SOS kind in lang.
func kindLabel(lang Language, kind string) string {
	labels := map[string][2]string{
		"panic":      {"panic button", "panic button"},
		"crash":      {"crash", "aksidente sa kalsada"},
		"medical":    {"medical emergency", "medical emergency"},
		"fire":       {"fire", "sunog"},
		"harassment": {"harassment", "harassment"},
		"other":      {"emergency", "emergency"},
	}
	label, ok := labels[strings.ToLower(strings.TrimSpace(kind))]
	if !ok {
		if k := cleanField(kind, maxKindField); k != "" {
			return k
		}
		label = labels["other"]
	}
	if lang == Filipino {
		return label[1]
	}
	return label[0]
}

// cleanField makes a data value safe for a one-line text: control
// characters become spaces, spaces collapse, and a value longer than max
// characters is cut with "...".
func cleanField(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) > max {
		runes := []rune(s)
		s = string(runes[:max-3]) + "..."
	}
	return s
}

// join joins the non-empty parts with sep.
func join(sep string, parts ...string) string {
	nonEmpty := parts[:0:0]
	for _, p := range parts {
		if p != "" {
			nonEmpty = append(nonEmpty, p)
		}
	}
	return strings.Join(nonEmpty, sep)
}

// incident names the incident in a sentence, e.g. "incident 12".
func (v view) incident() string {
	return join(" ", v.incidentWord, v.incidentID)
}

// incidentSentence is the incident as a sentence, e.g. "Incident 12.".
func (v view) incidentSentence() string {
	if v.incidentID == "" {
		return ""
	}
	return strings.ToUpper(v.incidentWord[:1]) + v.incidentWord[1:] + " " + v.incidentID + "."
}

func (v view) refSuffix() string {
	if v.ref == "" {
		return ""
	}
	return " Ref " + v.ref
}

// smsLocation is the location sentence of an SMS.
func (v view) smsLocation() string {
	if v.hasLoc {
		return pick(v.lang, "Map: ", "Mapa: ") + v.link
	}
	return pick(v.lang, "Location unknown.", "Hindi alam ang lokasyon.")
}

// RenderAlert returns the first SOS alert for d.Audience: an email
// subject and an SMS text that fits two SMS segments for ids of up to 24
// characters.
func RenderAlert(lang Language, d AlertData) (subject, text string) {
	v := newView(lang, d)
	if v.audience == AudienceContacts {
		return v.contactSubject(), v.contactSMS()
	}
	return v.responderSubject(), v.responderSMS()
}

func (v view) responderSubject() string {
	subject := join(", ", "SOS: "+v.kind, pick(v.lang, "vehicle ", "sasakyang ")+v.vehicle, v.region)
	if v.incidentID != "" {
		subject += " (" + v.incident() + ")"
	}
	return subject
}

func (v view) responderSMS() string {
	if v.lang == Filipino {
		return join(" ",
			"XPRESS SOS: "+join(", ", v.kind+" mula sa sasakyang "+v.vehicle, v.region, v.when)+".",
			v.smsLocation(),
			v.incidentSentence(),
			"Paki-acknowledge sa dashboard.",
		) + v.refSuffix()
	}
	return join(" ",
		"XPRESS SOS: "+join(", ", v.kind+", vehicle "+v.vehicle, v.region, v.when)+".",
		v.smsLocation(),
		v.incidentSentence(),
		"Acknowledge on the dashboard.",
	) + v.refSuffix()
}

func (v view) contactSubject() string {
	return pick(v.lang, "Xpress: SOS from vehicle ", "Xpress: SOS mula sa sasakyang ") + v.vehicle
}

func (v view) contactSMS() string {
	if v.lang == Filipino {
		location := "Hindi pa alam ang lokasyon."
		if v.hasLoc {
			location = "Huling lokasyon: " + v.link
		}
		return join(" ",
			"XPRESS: Nagpadala ng SOS ("+v.kind+") ang sasakyang "+v.vehicle+" noong "+v.when+".",
			location,
			"Inaasikaso na ito ng aming operations team.",
		) + v.refSuffix()
	}
	location := "Location not yet known."
	if v.hasLoc {
		location = "Last location: " + v.link
	}
	return join(" ",
		"XPRESS: Vehicle "+v.vehicle+" sent an SOS ("+v.kind+") on "+v.when+".",
		location,
		"Our operations team is responding.",
	) + v.refSuffix()
}

// RenderAlertEmail returns the subject and plain-text body of the first
// SOS alert email for d.Audience, with every detail of the SOS.
func RenderAlertEmail(lang Language, d AlertData) (subject, body string) {
	v := newView(lang, d)
	var b strings.Builder
	if v.audience == AudienceContacts {
		subject = v.contactSubject()
		if v.lang == Filipino {
			fmt.Fprintf(&b, "Nagpadala ng SOS ang sasakyang %s noong %s.\n\n", v.vehicle, v.when)
		} else {
			fmt.Fprintf(&b, "Vehicle %s sent an SOS on %s.\n\n", v.vehicle, v.when)
		}
		v.writeDetails(&b, false)
		b.WriteString("\n")
		b.WriteString(pick(v.lang,
			"Our operations team is responding. This is an automatic message; you do not need to reply.\n",
			"Inaasikaso na ito ng aming operations team. Awtomatiko ang mensaheng ito; hindi mo kailangang sumagot.\n"))
		return subject, b.String()
	}

	subject = v.responderSubject()
	if v.lang == Filipino {
		fmt.Fprintf(&b, "SOS mula sa sasakyang %s.\n\n", v.vehicle)
	} else {
		fmt.Fprintf(&b, "SOS from vehicle %s.\n\n", v.vehicle)
	}
	v.writeDetails(&b, true)
	b.WriteString("\n")
	b.WriteString(pick(v.lang,
		"Acknowledge the incident on the operations dashboard.\n",
		"Paki-acknowledge ang incident sa operations dashboard.\n"))
	return subject, b.String()
}

// writeDetails writes the labelled lines of an email. ids adds the
// incident and SOS ids, which only responders need.
func (v view) writeDetails(b *strings.Builder, ids bool) {
	line := func(english, filipino, value string) {
		if value != "" {
			fmt.Fprintf(b, "%-13s%s\n", pick(v.lang, english, filipino)+":", value)
		}
	}
	if ids {
		if v.incidentWord == "incident" {
			line("Incident", "Incident", v.incidentID)
		}
		line("SOS id", "SOS id", v.sosID)
	}
	line("Vehicle", "Sasakyan", v.vehicle)
	line("Kind", "Uri", v.kind)
	line("Region", "Rehiyon", v.region)
	line("Time", "Oras", v.when)
	if v.hasLoc {
		line("Location", "Lokasyon", v.latLon)
		line("Map", "Mapa", v.link)
	} else {
		line("Location", "Lokasyon", pick(v.lang, "location unknown", "hindi alam ang lokasyon"))
	}
	if v.waitedSec > 0 {
		line("Waiting", "Naghihintay", v.waited())
	}
	line("Note", "Tala", v.note)
	line("Reference", "Reference", v.ref)
}

// waited is the unacknowledged time, e.g. "90 s" or "90 segundo".
func (v view) waited() string {
	return strconv.FormatInt(v.waitedSec, 10) + pick(v.lang, " s", " segundo")
}

// RenderEscalation returns the escalation alert to supervisors for an
// incident that no operator acknowledged within d.Unacknowledged: an email
// subject and an SMS text that fits two segments.
func RenderEscalation(lang Language, d AlertData) (subject, text string) {
	v := newView(lang, d)
	summary := join(", ", v.kind, v.vehicle, v.region)
	name := v.incident()
	if name == "" {
		name = "SOS"
	}
	if v.lang == Filipino {
		subject = "ESCALATION: Wala pang nag-acknowledge sa " + name + " matapos ang " + v.waited()
		text = join(" ",
			"XPRESS ESCALATION: Wala pang nag-acknowledge sa "+name+" ("+summary+") matapos ang "+v.waited()+".",
			"Oras ng SOS: "+v.when+".",
			v.smsLocation(),
			"Paki-aksyunan agad.",
		) + v.refSuffix()
		return subject, text
	}
	subject = "ESCALATION: " + name + " not acknowledged after " + v.waited()
	text = join(" ",
		"XPRESS ESCALATION: "+name+" ("+summary+") not acknowledged after "+v.waited()+".",
		"Raised "+v.when+".",
		v.smsLocation(),
		"Act now on the dashboard.",
	) + v.refSuffix()
	return subject, text
}

// RenderEscalationEmail returns the subject and plain-text body of the
// escalation email.
func RenderEscalationEmail(lang Language, d AlertData) (subject, body string) {
	v := newView(lang, d)
	subject, _ = RenderEscalation(lang, d)
	var b strings.Builder
	if v.lang == Filipino {
		fmt.Fprintf(&b, "Wala pang operator na nag-acknowledge sa SOS na ito matapos ang %s.\n\n", v.waited())
	} else {
		fmt.Fprintf(&b, "No operator has acknowledged this SOS after %s.\n\n", v.waited())
	}
	v.writeDetails(&b, true)
	b.WriteString("\n")
	b.WriteString(pick(v.lang,
		"Open the operations dashboard and assign a responder now.\n",
		"Buksan ang operations dashboard at magtalaga agad ng responder.\n"))
	return subject, b.String()
}

// RenderVoice returns the words a voice call speaks about the SOS, in
// short sentences for a phone line. Ids are spelled digit by digit,
// except short numeric incident ids. The map link is left out. The
// unacknowledged time is included when d.Unacknowledged is positive.
func RenderVoice(lang Language, d AlertData) string {
	v := newView(lang, d)
	vehicle := spokenID(v.vehicle)
	incident := ""
	if v.incidentID != "" {
		id := v.incidentID
		if !isShortNumber(id) {
			id = spokenID(id)
		}
		incident = strings.ToUpper(v.incidentWord[:1]) + v.incidentWord[1:] + " " + id + "."
	}
	at := ""
	if v.clock != "" {
		at = pick(v.lang, "Time: ", "Oras: ") + v.clock + "."
	}

	if v.lang == Filipino {
		if v.audience == AudienceContacts {
			return join(" ",
				"Ito ay mensahe mula sa Xpress Ops Tower.",
				"May SOS mula sa sasakyang "+vehicle+".",
				"Uri: "+v.kind+".",
				at,
				"Inaasikaso na ito ng aming operations team.",
			)
		}
		waited := ""
		if v.waitedSec > 0 {
			waited = "Wala pang nag-acknowledge matapos ang " + v.waited() + "."
		}
		where := "Hindi alam ang lokasyon."
		if v.hasLoc {
			where = "Nasa dashboard ang lokasyon."
		}
		return join(" ",
			"Emergency alert mula sa Xpress Ops Tower.",
			"May SOS mula sa sasakyang "+join(" sa ", vehicle, v.region)+".",
			"Uri: "+v.kind+".",
			at,
			incident,
			waited,
			where,
			"Pakibuksan ang operations dashboard at tumugon agad.",
		)
	}

	if v.audience == AudienceContacts {
		return join(" ",
			"This is a message from Xpress Ops Tower.",
			"Vehicle "+vehicle+" sent an SOS.",
			"Kind: "+v.kind+".",
			at,
			"Our operations team is responding.",
		)
	}
	waited := ""
	if v.waitedSec > 0 {
		waited = "It has not been acknowledged after " + strconv.FormatInt(v.waitedSec, 10) + " seconds."
	}
	where := "Location unknown."
	if v.hasLoc {
		where = "The location is on the dashboard."
	}
	return join(" ",
		"Emergency alert from Xpress Ops Tower.",
		"Vehicle "+join(" in ", vehicle, v.region)+" sent an SOS.",
		"Kind: "+v.kind+".",
		at,
		incident,
		waited,
		where,
		"Please open the operations dashboard and respond now.",
	)
}

// isShortNumber reports whether id is a number of up to six digits, which
// text-to-speech reads well as a number.
func isShortNumber(id string) bool {
	if id == "" || len(id) > 6 {
		return false
	}
	for _, r := range id {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// spokenID spells the digits of an id one by one and turns '-', '_', '.'
// and ':' into pauses, so that "taxi-0917" is read "taxi, 0 9 1 7".
func spokenID(id string) string {
	var words []string
	var current strings.Builder
	flush := func() {
		if current.Len() > 0 {
			words = append(words, current.String())
			current.Reset()
		}
	}
	for _, r := range id {
		switch {
		case r >= '0' && r <= '9':
			flush()
			words = append(words, string(r))
		case r == '-' || r == '_' || r == '.' || r == ':' || unicode.IsSpace(r):
			flush()
		default:
			current.WriteRune(r)
		}
	}
	flush()
	return strings.Join(words, " ")
}

// driverMessagesFilipino are the Filipino texts a driver receives as the
// SOS moves on. The English texts are protocol.DefaultSOSStateMessage's,
// which the agent sends too.
var driverMessagesFilipino = map[string]string{
	DriverStateReceived:     "Natanggap ang iyong SOS. Tinutulungan ka na.",
	DriverStateAcknowledged: "May operator nang umaasikaso sa iyong SOS. Manatili sa ligtas na lugar kung kaya mo.",
	DriverStateDispatched:   "Papunta na ang tulong sa iyong lokasyon. Huwag patayin ang iyong telepono.",
	DriverStateResolved:     "Naresolba na ang iyong SOS. Salamat, at mag-ingat ka palagi.",
	DriverStateCancelled:    "Kinansela na ang iyong SOS. Kung kailangan mo pa ng tulong, magpadala ulit ng SOS.",
}

// DriverStateMessage returns the short message a driver receives when the
// SOS reaches state (received, acknowledged, dispatched, resolved or
// cancelled), or "" for any other state so that the caller sends nothing.
// An unknown language falls back to English.
func DriverStateMessage(lang Language, state string) string {
	state = strings.ToLower(strings.TrimSpace(state))
	filipino, ok := driverMessagesFilipino[state]
	if !ok {
		return ""
	}
	if lang == Filipino {
		return filipino
	}
	return protocol.DefaultSOSStateMessage(state)
}

// OutageAlertData is the content RenderOutageAlert adds to AlertData: the
// agent that sends during a hub outage and where regional staff see the SOS.
type OutageAlertData struct {
	// AgentID names the agent; Region in AlertData names its office.
	AgentID string
	// PageURL is the agent's regional page. Empty names the agent and
	// region instead.
	PageURL string
	// Presses counts the SOS ids of the vehicle within the repeat window
	// that this SMS covers; below 2 it is not mentioned.
	Presses int
	// CancelRequested and CancelReason report that the driver asked to
	// cancel. A driver may be forced to cancel, so the SMS still goes.
	CancelRequested bool
	CancelReason    string
}

// RenderOutageAlert returns the SOS alert SMS that a regional office's
// agent sends itself while the hub is unreachable, for responders. The
// text states that the hub is down and links to the agent's page instead
// of the operators' dashboard, which staff cannot reach then.
func RenderOutageAlert(lang Language, d AlertData, o OutageAlertData) string {
	v := newView(lang, d)
	agent := cleanField(o.AgentID, maxIDField)
	presses, cancel, page := "", "", ""
	if o.Presses > 1 {
		presses = pick(v.lang, fmt.Sprintf("Pressed %d times.", o.Presses), fmt.Sprintf("Pinindot nang %d beses.", o.Presses))
	}
	if o.CancelRequested {
		reason := cleanField(o.CancelReason, 80)
		if reason == "" {
			reason = pick(v.lang, "no reason given", "walang dahilan")
		}
		cancel = pick(v.lang, "Driver asked to cancel ("+reason+"); may be forced, check.",
			"Humiling ang driver na i-cancel ("+reason+"); baka pinilit, suriin.")
	}
	if o.PageURL != "" {
		page = pick(v.lang, "Acknowledge on "+o.PageURL, "Paki-acknowledge sa "+o.PageURL)
	} else {
		page = pick(v.lang, "Acknowledge on the page of agent "+agent+", "+v.region+" office.",
			"Paki-acknowledge sa page ng agent "+agent+", opisina ng "+v.region+".")
	}
	if v.lang == Filipino {
		return join(" ",
			"XPRESS SOS mula sa agent ng "+v.region+" (hindi maabot ang hub): "+join(", ", v.kind+" mula sa sasakyang "+v.vehicle, v.when)+".",
			v.incidentSentence(), presses, v.smsLocation(), cancel, page,
		) + v.refSuffix()
	}
	return join(" ",
		"XPRESS SOS from the "+v.region+" office agent (hub unreachable): "+join(", ", v.kind+", vehicle "+v.vehicle, v.when)+".",
		v.incidentSentence(), presses, v.smsLocation(), cancel, page,
	) + v.refSuffix()
}

// RenderOutageSummary returns the one SMS an agent sends to a number in
// place of further SOS alerts once it reached its cap during a hub
// outage: pending SOS alerts it did not send.
func RenderOutageSummary(lang Language, region, agentID, pageURL string, pending int) string {
	region, agentID = cleanField(region, maxRegionField), cleanField(agentID, maxIDField)
	where := pageURL
	if where == "" {
		where = pick(lang, "the page of agent "+agentID, "ang page ng agent "+agentID)
	}
	if lang == Filipino {
		return fmt.Sprintf("XPRESS SOS mula sa agent ng %s (hindi maabot ang hub): %d pang SOS ang naghihintay, tingnan ang regional page: %s.", region, pending, where)
	}
	return fmt.Sprintf("XPRESS SOS from the %s office agent (hub unreachable): %d more SOS pending, see the regional page: %s.", region, pending, where)
}
