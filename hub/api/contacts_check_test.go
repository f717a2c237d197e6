package api_test

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/store"
)

// TestContactRegionNormalised saves "davao" as "Davao", the spelling the
// agents send, rejects an unknown region with the known ones listed, and
// accepts a region the hub allows with --allow-region.
func TestContactRegionNormalised(t *testing.T) {
	ds := newDispatchServer(t)
	code, body := ds.request(t, http.MethodPost, "/api/v1/contacts",
		`{"name":"Dan","role":"responder","region":" davao ","phone":"09171234567"}`, true)
	var saved struct{ Contact store.Contact }
	if err := json.Unmarshal(body, &saved); err != nil || code != http.StatusCreated {
		t.Fatalf("POST davao responder = %d %s", code, body)
	}
	if saved.Contact.Region != "Davao" {
		t.Errorf("saved region %q, want Davao", saved.Contact.Region)
	}
	code, body = ds.request(t, http.MethodGet, "/api/v1/contacts?region=Davao", "", false)
	if code != http.StatusOK || !strings.Contains(string(body), `"Dan"`) {
		t.Errorf("contacts of Davao = %d %s, want Dan", code, body)
	}

	code, body = ds.request(t, http.MethodPost, "/api/v1/contacts",
		`{"name":"Marvin","role":"supervisor","region":"Mars","phone":"09171234567"}`, true)
	if code != http.StatusBadRequest || !strings.Contains(string(body), `unknown region \"Mars\"`) ||
		!strings.Contains(string(body), "NCR-Manila, Cebu, Davao, Iloilo") || !strings.Contains(string(body), "--allow-region") {
		t.Errorf("POST Mars supervisor = %d %s, want 400 listing the known regions", code, body)
	}

	allowed := newDispatchServer(t, func(c *api.Config) { c.ExtraRegions = []string{"Bohol"} })
	code, body = allowed.request(t, http.MethodPost, "/api/v1/contacts",
		`{"name":"Bea","role":"responder","region":"BOHOL","phone":"09171234567"}`, true)
	if code != http.StatusCreated || !strings.Contains(string(body), `"region":"Bohol"`) {
		t.Errorf("POST BOHOL responder on a hub allowing Bohol = %d %s, want 201 with region Bohol", code, body)
	}
}

// TestContactLandlineWarning keeps a Manila landline for a supervisor
// but warns that SMS may not reach it. A mobile number gets no warning,
// and neither does a driver, who gets no SMS.
func TestContactLandlineWarning(t *testing.T) {
	ds := newDispatchServer(t)
	code, body := ds.request(t, http.MethodPost, "/api/v1/contacts",
		`{"name":"Sol","role":"supervisor","region":"NCR-Manila","phone":"+63 2 8123 4567"}`, true)
	var res struct {
		Contact  store.Contact
		Warnings []string
	}
	if err := json.Unmarshal(body, &res); err != nil || code != http.StatusCreated {
		t.Fatalf("POST landline supervisor = %d %s", code, body)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "not a mobile number") || !strings.Contains(res.Warnings[0], res.Contact.Phone) {
		t.Errorf("warnings %q, want one naming the landline %s", res.Warnings, res.Contact.Phone)
	}
	id := strconv.FormatInt(res.Contact.ID, 10)
	code, body = ds.request(t, http.MethodPut, "/api/v1/contacts/"+id,
		`{"name":"Sol","role":"supervisor","region":"NCR-Manila","phone":"09171234567"}`, true)
	if code != http.StatusOK || strings.Contains(string(body), "warnings") {
		t.Errorf("PUT mobile supervisor = %d %s, want 200 without warnings", code, body)
	}
	code, body = ds.request(t, http.MethodPost, "/api/v1/contacts",
		`{"name":"Dino","role":"driver","vehicle_id":"taxi-0917","phone":"+63 2 8123 4567"}`, true)
	if code != http.StatusCreated || strings.Contains(string(body), "warnings") {
		t.Errorf("POST landline driver = %d %s, want 201 without warnings", code, body)
	}
}

// TestInvalidUTF8Rejected sends a contact name and an operator note with
// an invalid byte and with an escaped lone surrogate. Each gets a 400
// naming the problem, and nothing is stored with U+FFFD in its place.
func TestInvalidUTF8Rejected(t *testing.T) {
	ds := newDispatchServer(t)
	inc := ds.openIncident(t, "sos-utf8")
	notes := "/api/v1/incidents/" + strconv.FormatInt(inc.ID, 10) + "/notes"
	cases := []struct{ name, path, body, message string }{
		{"contact name byte", "/api/v1/contacts", "{\"name\":\"Ana \xff\",\"role\":\"responder\",\"region\":\"NCR-Manila\",\"phone\":\"09171234567\"}", "not valid UTF-8"},
		{"contact name surrogate", "/api/v1/contacts", `{"name":"Ana \ud800","role":"responder","region":"NCR-Manila","phone":"09171234567"}`, `invalid field \"name\"`},
		{"note byte", notes, "{\"text\":\"road \xc3 blocked\"}", "not valid UTF-8"},
		{"note surrogate", notes, `{"text":"road \udc00 blocked"}`, `invalid field \"text\"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := ds.request(t, http.MethodPost, c.path, c.body, true)
			if code != http.StatusBadRequest || !strings.Contains(string(body), c.message) {
				t.Errorf("POST %s = %d %s, want 400 with %q", c.path, code, body, c.message)
			}
		})
	}
	code, body := ds.request(t, http.MethodGet, "/api/v1/contacts", "", false)
	if code != http.StatusOK || strings.Contains(string(body), "Ana") {
		t.Errorf("contacts after the rejected posts = %d %s, want none", code, body)
	}
	// A real U+FFFD written by the operator is text, and is kept.
	code, body = ds.request(t, http.MethodPost, notes, `{"text":"sign reads \ufffd"}`, true)
	if code != http.StatusOK {
		t.Errorf("note with an escaped U+FFFD = %d %s, want 200", code, body)
	}
}
