package api

import (
	"context"
	"net/http"
	"slices"

	"github.com/xpress-ops/tower/hub/store"
)

// Region scoping: an operator sees the vehicles, incidents, agents,
// contacts and events of the regions of its principal, and nothing of the
// others. Every handler that returns such data applies the rule through
// the helpers in this file. Data of a region the principal does not see is
// left out of lists, and a request for one item of such a region gets the
// same 404 as an unknown item, so that its existence does not leak. A
// request without a principal gets no data.

// scope is the set of regions one request may see.
type scope struct {
	p Principal
	// ok is false for a request without a principal, which gets no data.
	ok bool
	// all is true when the principal sees every region.
	all bool
}

// requestScope returns the scope of r's principal.
func requestScope(r *http.Request) scope {
	p, ok := PrincipalFrom(r.Context())
	return scope{p: p, ok: ok, all: ok && p.AllRegionsVisible()}
}

// sees reports whether the scope includes region. Data of no region is
// seen only by principals that see every region.
func (sc scope) sees(region string) bool {
	if !sc.ok {
		return false
	}
	return sc.all || sc.p.CanSee(region)
}

// regions returns the regions the scope names, without AllRegions, sorted
// and without duplicates. It is meaningful only when all is false.
func (sc scope) regions() []string {
	out := slices.DeleteFunc(slices.Clone(sc.p.Regions), func(r string) bool { return r == AllRegions || r == "" })
	slices.Sort(out)
	return slices.Compact(out)
}

// filterScope returns the items of list whose region the scope sees,
// reusing list's array.
func filterScope[T any](sc scope, list []T, region func(T) string) []T {
	if sc.all {
		return list
	}
	return slices.DeleteFunc(list, func(v T) bool { return !sc.sees(region(v)) })
}

// errNotVisible is the error of a request for one item of a region the
// principal does not see. It is store.ErrNotFound, so that the response is
// the same 404 as for an item that does not exist.
var errNotVisible = store.ErrNotFound

// visibleIncident reads incident id and its events, and returns
// store.ErrNotFound when the incident does not exist or its region is
// outside the scope of r's principal.
func (s *Server) visibleIncident(ctx context.Context, r *http.Request, id int64) (store.Incident, []store.IncidentEvent, error) {
	inc, evs, err := s.cfg.Store.Incident(ctx, id)
	if err != nil {
		return store.Incident{}, nil, err
	}
	if !requestScope(r).sees(inc.Region) {
		return store.Incident{}, nil, errNotVisible
	}
	return inc, evs, nil
}

// scopedIncidents lists the incidents f selects within the scope of r's
// principal, with f's offset and limit applied to that scope's incidents.
// A filter on a region the scope does not see selects nothing. A
// principal of several regions gets one store query per region, each for
// the first Offset+Limit incidents, merged newest first as the store
// orders them.
func (s *Server) scopedIncidents(ctx context.Context, r *http.Request, f store.IncidentFilter) ([]store.Incident, error) {
	sc := requestScope(r)
	switch {
	case !sc.ok:
		return nil, nil
	case f.Region != "":
		if !sc.sees(f.Region) {
			return nil, nil
		}
		return s.cfg.Store.Incidents(ctx, f)
	case sc.all:
		return s.cfg.Store.Incidents(ctx, f)
	}

	regions := sc.regions()
	switch len(regions) {
	case 0:
		return nil, nil
	case 1:
		f.Region = regions[0]
		return s.cfg.Store.Incidents(ctx, f)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultIncidentLimit
	}
	each := f
	each.Offset, each.Limit = 0, f.Offset+limit
	var merged []store.Incident
	for _, region := range regions {
		each.Region = region
		list, err := s.cfg.Store.Incidents(ctx, each)
		if err != nil {
			return nil, err
		}
		merged = append(merged, list...)
	}
	// The store's order: newest opening time first, then highest id.
	slices.SortFunc(merged, func(a, b store.Incident) int {
		if c := b.OpenedAt.Compare(a.OpenedAt); c != 0 {
			return c
		}
		return compareInt64(b.ID, a.ID)
	})
	if f.Offset >= len(merged) {
		return nil, nil
	}
	merged = merged[f.Offset:]
	return merged[:min(limit, len(merged))], nil
}

func compareInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// vehicleVisible reports whether the vehicle's region, the region of its
// latest position, is in the scope of r's principal. A vehicle with no
// position is visible only to principals that see every region, because
// its region is unknown.
func (s *Server) vehicleVisible(ctx context.Context, r *http.Request, vehicleID string) (bool, error) {
	sc := requestScope(r)
	if sc.all || !sc.ok {
		return sc.all, nil
	}
	positions, err := s.cfg.Store.LatestPositions(ctx)
	if err != nil {
		return false, err
	}
	for _, p := range positions {
		if p.VehicleID == vehicleID {
			return sc.sees(p.Region), nil
		}
	}
	return false, nil
}

// vehicleRegions returns each vehicle's region, the region of its latest
// position.
func (s *Server) vehicleRegions(ctx context.Context) (map[string]string, error) {
	positions, err := s.cfg.Store.LatestPositions(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(positions))
	for _, p := range positions {
		out[p.VehicleID] = p.Region
	}
	return out, nil
}

// scopedContacts returns the contacts of list in the scope of r's
// principal. A contact of a region is in the scope of that region; a
// contact of a vehicle (an emergency contact or a driver) is in the
// scope of the vehicle's region.
func (s *Server) scopedContacts(ctx context.Context, r *http.Request, list []store.Contact) ([]store.Contact, error) {
	sc := requestScope(r)
	if sc.all {
		return list, nil
	}
	var vehicles map[string]string
	if slices.ContainsFunc(list, func(c store.Contact) bool { return c.Region == "" && c.VehicleID != "" }) {
		var err error
		if vehicles, err = s.vehicleRegions(ctx); err != nil {
			return nil, err
		}
	}
	return filterScope(sc, list, func(c store.Contact) string {
		if c.Region == "" && c.VehicleID != "" {
			return vehicles[c.VehicleID]
		}
		return c.Region
	}), nil
}

// contactVisible reads contact id and returns store.ErrNotFound when it
// does not exist or is outside the scope of r's principal.
func (s *Server) contactVisible(ctx context.Context, r *http.Request, id int64) error {
	if requestScope(r).all {
		return nil
	}
	list, err := s.cfg.Contacts.Contacts(ctx, store.ContactFilter{})
	if err != nil {
		return err
	}
	i := slices.IndexFunc(list, func(c store.Contact) bool { return c.ID == id })
	if i < 0 {
		return store.ErrNotFound
	}
	visible, err := s.scopedContacts(ctx, r, list[i:i+1])
	if err != nil {
		return err
	}
	if len(visible) == 0 {
		return errNotVisible
	}
	return nil
}

// contactInScope reports whether a contact to be saved, with the region
// or vehicle it names, is in the scope of r's principal.
func (s *Server) contactInScope(ctx context.Context, r *http.Request, c store.Contact) (bool, error) {
	visible, err := s.scopedContacts(ctx, r, []store.Contact{c})
	return len(visible) == 1, err
}

// forbiddenError is a request for something outside the principal's
// regions that the request itself names, such as a contact of another
// region in a request body. It gets 403 with its message.
type forbiddenError struct{ msg string }

func (e *forbiddenError) Error() string { return e.msg }
