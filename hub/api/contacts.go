package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/notify"
	"github.com/xpress-ops/tower/protocol"
)

// ContactStore is the part of store.Store behind the contact routes and
// an incident's notifications.
type ContactStore interface {
	SaveContact(ctx context.Context, c store.Contact) (store.Contact, error)
	DeleteContact(ctx context.Context, id int64) error
	Contacts(ctx context.Context, f store.ContactFilter) ([]store.Contact, error)
	Notifications(ctx context.Context, incidentID int64) ([]store.Notification, error)
}

var _ ContactStore = (store.Store)(nil)

// contactBody is the JSON body of POST /api/v1/contacts and PUT
// /api/v1/contacts/{id}: the whole contact.
type contactBody struct {
	Name      string            `json:"name"`
	Role      store.ContactRole `json:"role"`
	Region    string            `json:"region"`
	VehicleID string            `json:"vehicle_id"`
	// Phone is normalised with notify.NormalizePhone: 0917 123 4567 and
	// +63 917 123 4567 both become +639171234567.
	Phone    string         `json:"phone"`
	Email    string         `json:"email"`
	Language store.Language `json:"language"`
}

// contactResponse is the body of a saved contact.
type contactResponse struct {
	Contact store.Contact `json:"contact"`
	// Warnings lists what was saved but may not work as the operator
	// expects, such as a landline for a role that gets SMS.
	Warnings []string `json:"warnings,omitempty"`
}

// contactWarnings returns the warnings of a saved contact: a phone that
// is not a mobile number although the contact's role gets SMS. Such a
// phone is kept, since a supervisor may take the voice calls on it.
func contactWarnings(c store.Contact) []string {
	if c.Phone == "" || c.Role == store.RoleDriver || notify.IsMobilePhone(c.Phone) {
		return nil
	}
	return []string{fmt.Sprintf("phone %s is not a mobile number, so the SMS alerts a %s gets may not arrive; add a mobile number or an email address", c.Phone, c.Role)}
}

// contactRoutes mounts an incident's notification list and, when a
// contact store is configured, the contact routes.
func (s *Server) contactRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/incidents/{id}/notifications", s.handleNotifications)
	if s.cfg.Contacts == nil {
		return
	}
	mux.HandleFunc("GET /api/v1/contacts", s.handleContacts)
	mux.HandleFunc("POST /api/v1/contacts", s.handleSaveContact)
	mux.HandleFunc("PUT /api/v1/contacts/{id}", s.handleSaveContact)
	mux.HandleFunc("DELETE /api/v1/contacts/{id}", s.handleDeleteContact)
}

// handleContacts lists contacts, filtered by role, region and vehicle.
func (s *Server) handleContacts(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var f store.ContactFilter
	if role := store.ContactRole(q.Get("role")); role != "" {
		if !role.Valid() {
			s.writeError(w, r, badRequest("invalid role %q: use responder, supervisor, emergency or driver", truncate(string(role), 40)))
			return
		}
		f.Role = role
	}
	f.Region = q.Get("region")
	if len(f.Region) > maxRegionLength || strings.IndexFunc(f.Region, unicode.IsControl) >= 0 {
		s.writeError(w, r, badRequest("invalid region %q: use at most %d printable bytes", truncate(f.Region, 80), maxRegionLength))
		return
	}
	if v := q.Get("vehicle"); v != "" {
		if err := protocol.ValidateVehicleID(v); err != nil {
			s.writeError(w, r, badRequest("invalid vehicle id %q: use 1 to 64 letters, digits, '-' or '_'", truncate(v, 80)))
			return
		}
		f.VehicleID = v
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	list, err := s.cfg.Contacts.Contacts(ctx, f)
	if err == nil {
		list, err = s.scopedContacts(ctx, r, list)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, map[string]any{"contacts": nonNil(list)})
}

// handleSaveContact creates a contact (POST, 201) or replaces one (PUT,
// 200). Like the incident actions it needs a JSON body, which keeps other
// sites' forms from posting here.
func (s *Server) handleSaveContact(w http.ResponseWriter, r *http.Request) {
	if err := checkJSONContentType(r.Header.Get("Content-Type")); err != nil {
		s.writeError(w, r, err)
		return
	}
	operator, err := operatorName(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var id int64
	if r.Method == http.MethodPut {
		if id, err = contactID(r); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	body, err := decodeContactBody(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	c, err := body.contact(id, s.cfg.ExtraRegions)
	if err != nil {
		s.writeError(w, r, err)
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	if id != 0 {
		// A contact outside the caller's regions is unknown to it.
		if err := s.contactVisible(ctx, r, id); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	if ok, err := s.contactInScope(ctx, r, c); err != nil || !ok {
		if err == nil {
			err = &forbiddenError{msg: "you may manage only the contacts of your regions and of their vehicles"}
		}
		s.writeError(w, r, err)
		return
	}
	saved, err := s.cfg.Contacts.SaveContact(ctx, c)
	if err != nil {
		if errors.Is(err, store.ErrInvalid) {
			err = badRequest("%v", err)
		}
		s.writeError(w, r, err)
		return
	}
	s.log.Info("contact saved", "operator", operator, "contact", saved.ID, "role", saved.Role,
		"region", saved.Region, "vehicle", saved.VehicleID, "created", id == 0)
	warnings := contactWarnings(saved)
	for _, warning := range warnings {
		s.log.Warn("contact saved with a warning", "operator", operator, "contact", saved.ID, "role", saved.Role, "warning", warning)
	}
	code := http.StatusOK
	if id == 0 {
		code = http.StatusCreated
	}
	s.writeJSON(w, r, code, contactResponse{Contact: saved, Warnings: warnings})
}

// handleDeleteContact removes a contact. It takes no body; the
// authentication middleware requires the CSRF token of a cookie request.
func (s *Server) handleDeleteContact(w http.ResponseWriter, r *http.Request) {
	operator, err := operatorName(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	id, err := contactID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	if err := s.contactVisible(ctx, r, id); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.cfg.Contacts.DeleteContact(ctx, id); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("contact deleted", "operator", operator, "contact", id)
	s.writeJSON(w, r, http.StatusOK, map[string]int64{"deleted": id})
}

// handleNotifications lists an incident's notifications, oldest first,
// with its escalation level. Webhook addresses are cut to scheme and host,
// because their path is often a secret. Without a contact store the list
// is empty, so the dashboard can ask any hub.
func (s *Server) handleNotifications(w http.ResponseWriter, r *http.Request) {
	id, err := incidentID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
	defer cancel()
	inc, _, err := s.visibleIncident(ctx, r, id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var list []store.Notification
	if s.cfg.Contacts != nil {
		if list, err = s.cfg.Contacts.Notifications(ctx, id); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	for i := range list {
		list[i].Address = store.DescribeAddress(list[i].Channel, list[i].Address)
	}
	s.writeJSON(w, r, http.StatusOK, map[string]any{
		"incident_id":      id,
		"escalation_level": inc.EscalationLevel,
		"notifications":    nonNil(list),
	})
}

// contactID reads the {id} path value: a positive integer.
func contactID(r *http.Request) (int64, error) {
	raw := r.PathValue("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id <= 0 {
		return 0, badRequest("invalid contact id %q: use a positive integer", truncate(raw, 40))
	}
	return id, nil
}

// decodeContactBody reads exactly one JSON object with only the fields
// of contactBody, at most MaxActionBody bytes.
func decodeContactBody(w http.ResponseWriter, r *http.Request) (contactBody, error) {
	var body contactBody
	raw, err := readTextBody(w, r)
	if err != nil {
		return body, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	err = dec.Decode(&body)
	switch {
	case errors.Is(err, io.EOF):
		return body, badRequest("empty request body: send a JSON object with name, role, region or vehicle_id, phone or email, and language")
	case err != nil:
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return body, tooLarge
		}
		return body, badRequest("invalid contact: %s", truncate(err.Error(), 160))
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		return body, badRequest("invalid request body: send exactly one JSON object")
	}
	for _, f := range []struct{ name, value string }{
		{"name", body.Name}, {"region", body.Region}, {"vehicle_id", body.VehicleID}, {"phone", body.Phone}, {"email", body.Email},
	} {
		if err := checkReplacement(raw, f.name, f.value); err != nil {
			return body, err
		}
	}
	return body, nil
}

// readTextBody reads a request body of at most MaxActionBody bytes and
// rejects one that is not valid UTF-8. encoding/json would silently
// replace each invalid byte with U+FFFD, so a contact's name or an
// operator's note would be stored altered.
func readTextBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	raw, err := readBody(w, r, MaxActionBody)
	if err != nil {
		return nil, err
	}
	if !utf8.Valid(raw) {
		return nil, badRequest("invalid request body: it is not valid UTF-8; send text fields as UTF-8")
	}
	return raw, nil
}

// readBody reads a request body of at most limit bytes. A larger body
// returns the *http.MaxBytesError, for which writeError sends 413.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, tooLarge
		}
		return nil, badRequest("reading the request body failed: %v", err)
	}
	return raw, nil
}

// checkReplacement rejects a decoded string field that contains U+FFFD
// although the body has no U+FFFD: encoding/json put it there for an
// escaped lone surrogate such as "\ud800", which is not valid text.
func checkReplacement(raw []byte, field, value string) error {
	if !strings.ContainsRune(value, utf8.RuneError) {
		return nil
	}
	lower := bytes.ToLower(raw)
	if bytes.ContainsRune(raw, utf8.RuneError) || bytes.Contains(lower, []byte(`\ufffd`)) {
		return nil
	}
	return badRequest("invalid field %q: it contains an escaped lone surrogate, which is not valid UTF-8 text", field)
}

// contact checks the body and returns the contact to save: the phone
// number normalised to E.164 and every rule of store.ValidateContact
// checked, so the client gets the exact reason for a 400.
//
// A responder's or supervisor's region is normalised as the agents
// normalise theirs (protocol.CanonicalRegion), so "davao" is saved as
// "Davao" and matches the incidents of that region. An unknown region is
// rejected with the list of known ones unless extra allows it.
func (b contactBody) contact(id int64, extra []string) (store.Contact, error) {
	c := store.Contact{
		ID:        id,
		Name:      b.Name,
		Role:      b.Role,
		Region:    strings.TrimSpace(b.Region),
		VehicleID: strings.TrimSpace(b.VehicleID),
		Email:     strings.TrimSpace(b.Email),
		Language:  b.Language,
	}
	if phone := strings.TrimSpace(b.Phone); phone != "" {
		normalized, err := notify.NormalizePhone(phone)
		if err != nil {
			return c, badRequest("invalid phone: %v", err)
		}
		c.Phone = normalized
	}
	if c.Region != "" && c.Role.Valid() && !c.Role.VehicleRole() {
		region, ok := protocol.CanonicalRegion(c.Region, extra)
		if !ok {
			return c, badRequest("unknown region %q: use one of %s (in any case), or start the hub with --allow-region %q",
				protocol.TruncateRegionName(c.Region), strings.Join(append(append([]string(nil), protocol.KnownRegions...), extra...), ", "),
				protocol.TruncateRegionName(c.Region))
		}
		c.Region = region
	}
	if err := store.ValidateContact(c); err != nil {
		return c, badRequest("%v", err)
	}
	return c, nil
}
