package store_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
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
		err := store.ValidateOperatorName(name)
		if (err == nil) != wantOK {
			t.Errorf("ValidateOperatorName(%q) = %v, want ok %v", name, err, wantOK)
		}
		if err != nil && !errors.Is(err, store.ErrInvalid) {
			t.Errorf("ValidateOperatorName(%q) error %v does not wrap store.ErrInvalid", name, err)
		}
	}
}

func TestValidateAction_TrimsAndRejects(t *testing.T) {
	text, err := store.ValidateAction(store.ActionNote, "operator:alice", "\n  called the driver \t")
	if err != nil || text != "called the driver" {
		t.Errorf("note = %q, %v, want the trimmed text", text, err)
	}
	if text, err := store.ValidateAction(store.ActionAcknowledge, "operator:alice", "ignored"); err != nil || text != "" {
		t.Errorf("acknowledge text = %q, %v, want it ignored", text, err)
	}
	if _, err := store.ValidateAction("reopen", "operator:alice", "x"); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("unknown action: error %v, want store.ErrInvalid", err)
	}
	if _, err := store.ValidateAction(store.ActionResolve, "operator:alice", "nul\x00"); err == nil || !strings.Contains(err.Error(), "U+0000") {
		t.Errorf("resolution with NUL: error %v, want it to name the character", err)
	}
}

func TestApplyAction_RefusalLeavesIncident(t *testing.T) {
	now := time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)
	inc := store.Incident{ID: 7, State: store.StateResolved, UpdatedAt: now.Add(-time.Hour), ResolvedAt: now.Add(-time.Hour)}
	before := inc
	_, err := store.ApplyAction(&inc, store.ActionCancel, "operator:alice", "false alarm", now)
	var stateErr *store.StateError
	if !errors.As(err, &stateErr) || !errors.Is(err, store.ErrConflict) {
		t.Fatalf("cancel of a resolved incident: error %v, want a *StateError wrapping ErrConflict", err)
	}
	if got := err.Error(); got != "cannot cancel incident 7: it is resolved" {
		t.Errorf("message = %q", got)
	}
	if inc != before {
		t.Errorf("refused action changed the incident to %+v", inc)
	}
}
