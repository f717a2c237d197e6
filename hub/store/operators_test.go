package store_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/store"
)

// fixedClock returns a now function that returns at and counts its calls.
func fixedClock(at time.Time, calls *int) func() time.Time {
	return func() time.Time {
		*calls++
		return at
	}
}

func TestNewOperator_NormalizesAndStamps(t *testing.T) {
	at := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	var calls int
	o, err := store.NewOperator(store.Operator{
		Username: "ana", DisplayName: "Ana", Role: store.OperatorRoleOperator,
		Regions:     []string{"Cebu", "NCR-Manila", "Cebu"},
		LockedUntil: time.Date(2026, 3, 1, 9, 0, 0, 1500, time.FixedZone("PHT", 8*3600)),
	}, "hash", fixedClock(at, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.Regions, []string{"Cebu", "NCR-Manila"}) {
		t.Errorf("regions %q, want sorted without duplicates", o.Regions)
	}
	if !o.CreatedAt.Equal(at) || !o.UpdatedAt.Equal(at) || !o.PasswordChangedAt.Equal(at) {
		t.Errorf("times %v %v %v, want all %v", o.CreatedAt, o.UpdatedAt, o.PasswordChangedAt, at)
	}
	if want := time.Date(2026, 3, 1, 1, 0, 0, 1000, time.UTC); !o.LockedUntil.Equal(want) || o.LockedUntil.Location() != time.UTC {
		t.Errorf("LockedUntil %v, want %v (UTC, microseconds)", o.LockedUntil, want)
	}

	calls = 0
	for name, tc := range map[string]struct {
		o    store.Operator
		hash string
	}{
		"bad role":   {store.Operator{Username: "ana", Role: "chief", Regions: []string{"Cebu"}}, "hash"},
		"no regions": {store.Operator{Username: "ana", Role: store.OperatorRoleOperator}, "hash"},
		"no hash":    {store.Operator{Username: "ana", Role: store.OperatorRoleOperator, Regions: []string{"Cebu"}}, ""},
	} {
		if _, err := store.NewOperator(tc.o, tc.hash, fixedClock(at, &calls)); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: error %v, want ErrInvalid", name, err)
		}
	}
	if calls != 0 {
		t.Errorf("the clock was read %d times for invalid operators, want 0", calls)
	}
}

func TestChangeOperator_KeepsIdentityAndValidates(t *testing.T) {
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	old := store.StoredOperator{
		Operator: store.Operator{
			Username: "ana", DisplayName: "Ana", Role: store.OperatorRoleOperator,
			Regions: []string{"Cebu"}, CreatedAt: created, UpdatedAt: created,
		},
		PasswordHash: "hash",
	}
	at := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	var calls int
	got, err := store.ChangeOperator(old, func(o *store.StoredOperator) error {
		o.Username = "bea"
		o.CreatedAt = at
		o.Regions[0] = "NCR-Manila"
		o.Regions = append(o.Regions, "Cebu", "NCR-Manila")
		o.Role = store.OperatorRoleSupervisor
		return nil
	}, fixedClock(at, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if got.Username != "ana" || !got.CreatedAt.Equal(created) {
		t.Errorf("username %q created %v, want the old ones", got.Username, got.CreatedAt)
	}
	if got.Role != store.OperatorRoleSupervisor || !got.UpdatedAt.Equal(at) {
		t.Errorf("role %q updated %v, want supervisor at %v", got.Role, got.UpdatedAt, at)
	}
	if !slices.Equal(got.Regions, []string{"Cebu", "NCR-Manila"}) {
		t.Errorf("regions %q, want sorted without duplicates", got.Regions)
	}
	if !slices.Equal(old.Regions, []string{"Cebu"}) {
		t.Errorf("the change edited the old operator's regions: %q", old.Regions)
	}

	refused := errors.New("refused")
	if _, err := store.ChangeOperator(old, func(*store.StoredOperator) error { return refused }, fixedClock(at, &calls)); err != refused {
		t.Errorf("error %v, want the change's own error", err)
	}
	for name, change := range map[string]func(o *store.StoredOperator) error{
		"bad role": func(o *store.StoredOperator) error { o.Role = "chief"; return nil },
		"no hash":  func(o *store.StoredOperator) error { o.PasswordHash = ""; return nil },
	} {
		if _, err := store.ChangeOperator(old, change, fixedClock(at, &calls)); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: error %v, want ErrInvalid", name, err)
		}
	}
}
