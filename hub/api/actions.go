package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/xpress-ops/tower/hub/store"
)

// MaxActionBody is the largest request body an incident action accepts,
// in bytes.
const MaxActionBody = 16 << 10

// actionRoute is one POST /api/v1/incidents/{id}/<path> route.
type actionRoute struct {
	action store.Action
	path   string
	// field is the JSON body's one required string field, empty for
	// acknowledge, whose body may be empty or {}.
	field string
}

// actionRoutes are the incident lifecycle routes.
var actionRoutes = []actionRoute{
	{store.ActionAcknowledge, "acknowledge", ""},
	{store.ActionAssign, "assign", "assignee"},
	{store.ActionDispatch, "dispatch", "detail"},
	{store.ActionNote, "notes", "text"},
	{store.ActionResolve, "resolve", "resolution"},
	{store.ActionCancel, "cancel", "reason"},
}

// actionResponse is the body of a successful incident action.
type actionResponse struct {
	Incident store.Incident      `json:"incident"`
	Event    store.IncidentEvent `json:"event"`
}

// unsupportedMediaTypeError is a request body that is not JSON.
type unsupportedMediaTypeError struct{ contentType string }

func (e *unsupportedMediaTypeError) Error() string {
	return "unsupported Content-Type " + strconv.Quote(truncate(e.contentType, 60)) + ": send application/json"
}

// handleAction returns the handler of one incident action. It checks, in
// order, the Content-Type (415), the incident id and the JSON body (400,
// or 413 past MaxActionBody), then calls the store and reports the
// change to Config.OnIncidentChange.
func (s *Server) handleAction(route actionRoute) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// Requiring application/json adds to the CSRF token check: an
		// HTML form cannot send that type, and a script on another origin
		// can send it only after a CORS preflight, which the hub does not
		// approve. The actor is the principal the middleware authenticated.
		if err := checkJSONContentType(r.Header.Get("Content-Type")); err != nil {
			s.writeError(w, r, err)
			return
		}
		if _, err := operatorName(r); err != nil {
			s.writeError(w, r, err)
			return
		}
		id, err := incidentID(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		text, err := decodeActionBody(w, r, route.field)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		actor := actorFor(r)
		if text, err = store.ValidateAction(route.action, actor, text); err != nil {
			s.writeError(w, r, badRequest("%v", err))
			return
		}

		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.QueryTimeout)
		defer cancel()
		// An incident's region never changes, so checking it first is
		// enough.
		inc, _, err := s.visibleIncident(ctx, r, id)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if route.action == store.ActionAssign {
			if err := s.checkAssignee(ctx, text, inc.Region); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
		change, err := s.act(ctx, route.action, id, actor, text)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if s.cfg.OnIncidentChange != nil {
			s.cfg.OnIncidentChange(change)
		}
		s.writeJSON(w, r, http.StatusOK, actionResponse{Incident: change.Incident, Event: change.Event})
	}
}

// checkAssignee checks, on a hub with operator accounts, that assignee
// is the user name of an enabled operator who can see region, so every
// assignment names an account that can act on the incident. Without
// accounts any name is accepted.
func (s *Server) checkAssignee(ctx context.Context, assignee, region string) error {
	if s.cfg.Accounts == nil {
		return nil
	}
	o, err := s.cfg.Accounts.Operator(ctx, assignee)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return badRequest("assignee %q is not an operator's user name: assign the incident to an operator account", assignee)
	case err != nil:
		return err
	case o.Disabled:
		return badRequest("assignee %q is a disabled account: assign the incident to an enabled operator", assignee)
	}
	p := Principal{Operator: o.Username, Role: Role(o.Role), Regions: o.Regions}
	if !p.CanSee(region) {
		return badRequest("assignee %q cannot see region %s: assign the incident to an operator of that region", assignee, region)
	}
	return nil
}

// act calls the store's lifecycle method of action a.
func (s *Server) act(ctx context.Context, a store.Action, id int64, actor, text string) (store.IncidentChange, error) {
	st := s.cfg.Store
	switch a {
	case store.ActionAcknowledge:
		return st.AcknowledgeIncident(ctx, id, actor)
	case store.ActionAssign:
		return st.AssignIncident(ctx, id, actor, text)
	case store.ActionDispatch:
		return st.DispatchIncident(ctx, id, actor, text)
	case store.ActionNote:
		return st.AddIncidentNote(ctx, id, actor, text)
	case store.ActionResolve:
		return st.ResolveIncident(ctx, id, actor, text)
	case store.ActionCancel:
		return st.CancelIncident(ctx, id, actor, text)
	}
	return store.IncidentChange{}, errors.New("unknown incident action " + string(a))
}

// checkJSONContentType accepts application/json, optionally with
// charset=utf-8.
func checkJSONContentType(value string) error {
	mediaType, params, err := mime.ParseMediaType(value)
	if err != nil || mediaType != "application/json" {
		return &unsupportedMediaTypeError{contentType: value}
	}
	for name, v := range params {
		if name != "charset" || !strings.EqualFold(v, "utf-8") {
			return &unsupportedMediaTypeError{contentType: value}
		}
	}
	return nil
}

// operatorName returns the user name of the request's principal, which
// the authentication middleware put in its context.
func operatorName(r *http.Request) (string, error) {
	p, ok := PrincipalFrom(r.Context())
	if !ok || p.Operator == "" {
		return "", errors.New("request reached a handler without a principal")
	}
	return p.Operator, nil
}

// actorFor returns the name of the request's principal on incident events
// and audit entries: "operator:<username>", or AdminTokenOperator.
func actorFor(r *http.Request) string {
	p, _ := PrincipalFrom(r.Context())
	return actorOf(p)
}

// incidentID reads the {id} path value: a positive integer.
func incidentID(r *http.Request) (int64, error) {
	raw := r.PathValue("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id <= 0 {
		return 0, badRequest("invalid incident id %q: use a positive integer", truncate(raw, 40))
	}
	return id, nil
}

// decodeActionBody reads a JSON object whose only member is field, a
// string, and returns its value. With field empty the body must be
// empty, null or {}. Unknown members, a second JSON value and a body over
// MaxActionBody bytes are rejected.
func decodeActionBody(w http.ResponseWriter, r *http.Request, field string) (string, error) {
	rawBody, err := readTextBody(w, r)
	if err != nil {
		return "", err
	}
	dec := json.NewDecoder(bytes.NewReader(rawBody))
	var body map[string]json.RawMessage
	err = dec.Decode(&body)
	switch {
	case errors.Is(err, io.EOF) && field == "":
		return "", nil
	case errors.Is(err, io.EOF):
		return "", badRequest("empty request body: send a JSON object with a %q string", field)
	case err != nil:
		return "", bodyError(err, field)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		if err == nil {
			return "", badRequest("invalid request body: send exactly one JSON object")
		}
		return "", bodyError(err, field)
	}

	for name := range body {
		if name == field {
			continue
		}
		if field == "" {
			return "", badRequest("unknown field %q: this action takes an empty object", truncate(name, 40))
		}
		return "", badRequest("unknown field %q: send only %q", truncate(name, 40), field)
	}
	if field == "" {
		return "", nil
	}
	raw, ok := body[field]
	if !ok || string(raw) == "null" {
		return "", badRequest("missing field %q: send it as a JSON string", field)
	}
	var value string
	if err := json.Unmarshal(raw, &value); err != nil {
		return "", badRequest("invalid field %q: send it as a JSON string", field)
	}
	if err := checkReplacement(raw, field, value); err != nil {
		return "", err
	}
	return value, nil
}

// bodyError turns a JSON decoding error into a client error, keeping the
// *http.MaxBytesError for the 413 status.
func bodyError(err error, field string) error {
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return tooLarge
	}
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		if field == "" {
			return badRequest("invalid request body: send an empty JSON object")
		}
		return badRequest("invalid request body: send a JSON object with a %q string", field)
	}
	return badRequest("invalid JSON in request body: %s", truncate(err.Error(), 120))
}
