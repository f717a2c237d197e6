package protocol_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/protocol"
)

func TestValidateOperatorName_Rules(t *testing.T) {
	for name, wantOK := range map[string]bool{
		"Maria Santos":          true,
		"José Rizal":            true,
		"m":                     true,
		strings.Repeat("m", 64): true,
		strings.Repeat("ñ", 64): true,
		"":                      false,
		" Maria":                false,
		"Maria ":                false,
		strings.Repeat("m", 65): false,
		"Maria\tSantos":         false,
		"Maria\nSantos":         false,
		"Jos\xe9":               false,
		"zero\u200bwidth":       false,
		"Maria\u00a0Santos":     false,
	} {
		err := protocol.ValidateOperatorName(name)
		if (err == nil) != wantOK {
			t.Errorf("ValidateOperatorName(%q) = %v, want ok %v", name, err, wantOK)
		}
		if err != nil && !errors.Is(err, protocol.ErrInvalidOperatorName) {
			t.Errorf("ValidateOperatorName(%q) error %v does not wrap ErrInvalidOperatorName", name, err)
		}
		// The agent's rule must match the hub's, so a name accepted at the
		// agent is one the hub would accept too.
		if hubErr := store.ValidateOperatorName(name); (hubErr == nil) != (err == nil) {
			t.Errorf("name %q: agent rule %v, hub rule %v; want the same verdict", name, err, hubErr)
		}
	}
}
