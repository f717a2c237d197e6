package api

import (
	"context"
	"slices"
)

// Role is what an authenticated caller may do. Each role includes the
// rights of the roles before it.
type Role string

// The roles, from least to most rights.
const (
	// RoleOperator reads vehicles, incidents and the event stream of its
	// regions and acts on those incidents.
	RoleOperator Role = "operator"
	// RoleSupervisor also manages contacts and retries notifications in
	// its regions.
	RoleSupervisor Role = "supervisor"
	// RoleAdmin also manages operators, vehicles and agents, and reads
	// the audit log. An admin sees every region.
	RoleAdmin Role = "admin"
)

// rank orders the roles; an unknown role ranks below every known one.
func (r Role) rank() int {
	switch r {
	case RoleOperator:
		return 1
	case RoleSupervisor:
		return 2
	case RoleAdmin:
		return 3
	}
	return 0
}

// Valid reports whether r is one of the known roles.
func (r Role) Valid() bool { return r.rank() > 0 }

// AtLeast reports whether r has every right of min.
func (r Role) AtLeast(min Role) bool { return r.rank() >= min.rank() && r.Valid() }

// AllRegions is the region list entry that grants every region.
const AllRegions = "*"

// Principal is who sent a request: an operator signed in with a session
// cookie, an integration with an API token, or the admin token.
type Principal struct {
	// Operator is the operator's user name; actions are recorded as
	// "operator:<Operator>".
	Operator string
	// Role is what the principal may do.
	Role Role
	// Regions are the regions whose vehicles, incidents and events the
	// principal sees. AllRegions grants every region; admins see every
	// region whatever the list says.
	Regions []string
	// SessionID identifies the session of a cookie sign-in, so logout can
	// end that session's WebSockets. Empty for API and admin tokens.
	SessionID string
	// TokenID identifies the API token of an integration; 0 otherwise.
	TokenID int64
}

// CanSee reports whether the principal may see data of region.
func (p Principal) CanSee(region string) bool {
	if p.Role == RoleAdmin {
		return true
	}
	return slices.Contains(p.Regions, AllRegions) || slices.Contains(p.Regions, region)
}

// AllRegionsVisible reports whether the principal sees every region, so
// responses need no filtering.
func (p Principal) AllRegionsVisible() bool {
	return p.Role == RoleAdmin || slices.Contains(p.Regions, AllRegions)
}

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the principal the authentication middleware put
// in ctx, and false for a request that was not authenticated.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}
