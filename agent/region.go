package agent

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/xpress-ops/tower/internal/configcheck"
)

// KnownRegions are the regions the tower serves, in their canonical
// spelling. Config.Region must name one of them, in any case, unless
// Config.ExtraRegions allows another name.
var KnownRegions = []string{"NCR-Manila", "Cebu", "Davao", "Iloilo"}

// maxRegionBytes bounds a region name.
const maxRegionBytes = 64

// NormalizeRegion returns the canonical spelling of region: the known
// region (see KnownRegions) or the name in extra that region matches,
// ignoring case and surrounding spaces. Any other name is an error that
// lists the known regions, and so is a match in extra that is not a valid
// region name (see Config.ExtraRegions). The errors are
// configcheck.FieldErrors on the Config fields Region and ExtraRegions.
func NormalizeRegion(region string, extra []string) (string, error) {
	name := strings.TrimSpace(region)
	if name == "" {
		return "", configcheck.Newf("Region", "is empty: use one of %s", strings.Join(KnownRegions, ", "))
	}
	for _, known := range KnownRegions {
		if strings.EqualFold(name, known) {
			return known, nil
		}
	}
	for _, allowed := range extra {
		if strings.EqualFold(name, strings.TrimSpace(allowed)) {
			if errs := validateExtraRegions([]string{allowed}); len(errs) > 0 {
				return "", errs[0]
			}
			return strings.TrimSpace(allowed), nil
		}
	}
	return "", configcheck.Compare("Region", "ExtraRegions", func(related string) string {
		return fmt.Sprintf("%q is not a known region: use one of %s (in any case), or allow the name explicitly with %s",
			truncateName(name), strings.Join(KnownRegions, ", "), related)
	})
}

// validateExtraRegions checks the names Config.ExtraRegions allows: each
// must be 1 to 64 bytes of letters, digits, spaces, '-', '_' and '.'.
func validateExtraRegions(extra []string) []error {
	var errs []error
	for _, raw := range extra {
		name := strings.TrimSpace(raw)
		if name == "" || len(name) > maxRegionBytes {
			errs = append(errs, configcheck.Newf("ExtraRegions", "names must be 1 to %d bytes, got %q", maxRegionBytes, truncateName(raw)))
			continue
		}
		if !utf8.ValidString(name) {
			errs = append(errs, configcheck.Newf("ExtraRegions", "name %q is not valid UTF-8", truncateName(name)))
			continue
		}
		for _, c := range name {
			if !unicode.IsLetter(c) && !unicode.IsDigit(c) && !strings.ContainsRune(" -_.", c) {
				errs = append(errs, configcheck.Newf("ExtraRegions", "name %q contains %q; allowed are letters, digits, spaces, '-', '_' and '.'",
					truncateName(name), c))
				break
			}
		}
	}
	return errs
}

// truncateName shortens a name for an error message.
func truncateName(name string) string {
	const limit = 80
	if len(name) <= limit {
		return name
	}
	return strings.ToValidUTF8(name[:limit], "") + "…"
}
