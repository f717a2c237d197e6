package agent

import (
	"fmt"
	"strings"

	"github.com/xpress-ops/tower/internal/configcheck"
	"github.com/xpress-ops/tower/protocol"
)

// KnownRegions are the regions the tower serves, in their canonical
// spelling (protocol.KnownRegions, which the hub shares). Config.Region
// must name one of them, in any case, unless Config.ExtraRegions allows
// another name.
var KnownRegions = protocol.KnownRegions

// NormalizeRegion returns the canonical spelling of region: the known
// region (see KnownRegions) or the name in extra that region matches,
// ignoring case and surrounding spaces (protocol.CanonicalRegion). Any
// other name is an error that lists the known regions, and so is a match
// in extra that is not a valid region name (see Config.ExtraRegions). The
// errors are configcheck.FieldErrors on the Config fields Region and
// ExtraRegions.
func NormalizeRegion(region string, extra []string) (string, error) {
	name := strings.TrimSpace(region)
	if name == "" {
		return "", configcheck.Newf("Region", "is empty: use one of %s", strings.Join(KnownRegions, ", "))
	}
	if canonical, ok := protocol.CanonicalRegion(name, extra); ok {
		if errs := validateExtraRegions([]string{canonical}); len(errs) > 0 && !isKnownRegion(canonical) {
			return "", errs[0]
		}
		return canonical, nil
	}
	return "", configcheck.Compare("Region", "ExtraRegions", func(related string) string {
		return fmt.Sprintf("%q is not a known region: use one of %s (in any case), or allow the name explicitly with %s",
			truncateName(name), strings.Join(KnownRegions, ", "), related)
	})
}

// isKnownRegion reports whether name is one of KnownRegions as spelled there.
func isKnownRegion(name string) bool {
	for _, known := range KnownRegions {
		if name == known {
			return true
		}
	}
	return false
}

// validateExtraRegions checks the names Config.ExtraRegions allows with
// protocol.ValidateRegionName.
func validateExtraRegions(extra []string) []error {
	var errs []error
	for _, raw := range extra {
		if err := protocol.ValidateRegionName(raw); err != nil {
			errs = append(errs, configcheck.Newf("ExtraRegions", "%v", err))
		}
	}
	return errs
}

// truncateName shortens a name for an error message.
func truncateName(name string) string { return protocol.TruncateRegionName(name) }
