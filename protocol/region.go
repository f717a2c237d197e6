package protocol

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// KnownRegions are the regions the tower serves, in their canonical
// spelling. Agents and the hub accept these names in any case, and other
// names only when the operator allows them explicitly.
var KnownRegions = []string{"NCR-Manila", "Cebu", "Davao", "Iloilo"}

// MaxRegionName is the longest region name, in bytes.
const MaxRegionName = 64

// CanonicalRegion returns the canonical spelling of region: the known
// region (see KnownRegions) or the name in extra that region matches,
// ignoring case and surrounding spaces. It returns false for any other
// name. Names in extra are not checked here: check them once with
// ValidateRegionName when they are configured.
func CanonicalRegion(region string, extra []string) (string, bool) {
	name := strings.TrimSpace(region)
	if name == "" {
		return "", false
	}
	for _, known := range KnownRegions {
		if strings.EqualFold(name, known) {
			return known, true
		}
	}
	for _, allowed := range extra {
		if trimmed := strings.TrimSpace(allowed); strings.EqualFold(name, trimmed) {
			return trimmed, true
		}
	}
	return "", false
}

// ValidateRegionName checks a region name allowed besides KnownRegions:
// 1 to MaxRegionName bytes of letters, digits, spaces, '-', '_' and '.',
// after surrounding spaces are trimmed.
func ValidateRegionName(raw string) error {
	name := strings.TrimSpace(raw)
	if name == "" || len(name) > MaxRegionName {
		return fmt.Errorf("region names must be 1 to %d bytes, got %q", MaxRegionName, TruncateRegionName(raw))
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("region name %q is not valid UTF-8", TruncateRegionName(name))
	}
	for _, c := range name {
		if !unicode.IsLetter(c) && !unicode.IsDigit(c) && !strings.ContainsRune(" -_.", c) {
			return fmt.Errorf("region name %q contains %q; allowed are letters, digits, spaces, '-', '_' and '.'", TruncateRegionName(name), c)
		}
	}
	return nil
}

// TruncateRegionName shortens a name for an error message, to 80 bytes
// of valid UTF-8 followed by "…".
func TruncateRegionName(name string) string {
	const limit = 80
	if len(name) <= limit {
		return name
	}
	return strings.ToValidUTF8(name[:limit], "") + "…"
}
