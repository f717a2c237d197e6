package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/hub/store/storetest"
	"github.com/xpress-ops/tower/internal/passhash"
)

// vehicleAdminServer serves the API with a real embedded store for the
// vehicle credentials, and counts the change notifications.
func vehicleAdminServer(t *testing.T, adminToken string) (*httptest.Server, *embedded.Store, *atomic.Int32) {
	t.Helper()
	st := embedded.New(embedded.Config{Path: filepath.Join(t.TempDir(), "hub.db"), Now: storetest.NewClock(storetest.Epoch).Now})
	if err := st.Open(context.Background()); err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	bus := events.NewBus(events.Config{})
	t.Cleanup(func() { bus.Close() })
	var changes atomic.Int32
	srv := api.New(api.Config{
		Store: st, Bus: bus, Credentials: st, AdminToken: adminToken,
		VehicleCredentials: st, OnVehicleCredentialChange: func() { changes.Add(1) },
	})
	t.Cleanup(func() { srv.Close() })
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return ts, st, &changes
}

type vehicleAnswer struct {
	ID      string `json:"id"`
	Token   string `json:"token"`
	Revoked bool   `json:"revoked"`
	Version uint64 `json:"version"`
}

func TestAdminVehicles_Lifecycle(t *testing.T) {
	t.Parallel()
	const admin = "admin-secret-for-test"
	ts, st, changes := vehicleAdminServer(t, admin)
	ctx := context.Background()

	for _, r := range []struct{ method, path, body string }{
		{http.MethodGet, "/api/v1/admin/vehicles", ""},
		{http.MethodPost, "/api/v1/admin/vehicles", `{"id":"veh-1"}`},
		{http.MethodPost, "/api/v1/admin/vehicles/veh-1/rotate", ""},
		{http.MethodDelete, "/api/v1/admin/vehicles/veh-1", ""},
	} {
		if code, body := adminDo(t, ts, r.method, r.path, "wrong", r.body); code != http.StatusUnauthorized {
			t.Errorf("%s %s with a wrong token: %d %s, want 401", r.method, r.path, code, body)
		}
	}

	// One id, then a list.
	code, body := adminDo(t, ts, http.MethodPost, "/api/v1/admin/vehicles", admin, `{"id":"veh-1"}`)
	if code != http.StatusCreated {
		t.Fatalf("create one: %d %s", code, body)
	}
	code, body = adminDo(t, ts, http.MethodPost, "/api/v1/admin/vehicles", admin, `{"ids":["veh-2","veh-3"]}`)
	if code != http.StatusCreated {
		t.Fatalf("create a list: %d %s", code, body)
	}
	var created struct{ Vehicles []vehicleAnswer }
	if err := json.Unmarshal(body, &created); err != nil || len(created.Vehicles) != 2 || created.Vehicles[1].ID != "veh-3" || created.Vehicles[1].Token == "" {
		t.Fatalf("create answer %s (%v), want veh-2 and veh-3 with tokens", body, err)
	}
	stored, err := st.VehicleCredentialsSince(ctx, 0)
	if err != nil || len(stored) != 3 {
		t.Fatalf("stored credentials %v, %v", stored, err)
	}
	if err := passhash.Verify(stored[2].TokenHash, created.Vehicles[1].Token); err != nil {
		t.Errorf("veh-3's token does not verify against its stored hash: %v", err)
	}

	for _, c := range []struct {
		body, want string
		code       int
	}{
		{`{"ids":["veh-4","veh-1"]}`, "veh-1 already has a credential", http.StatusConflict},
		{`{"ids":["veh-5","bad id"]}`, "vehicle id", http.StatusBadRequest},
		{`{}`, "no vehicle", http.StatusBadRequest},
		{`{"ids":["veh-6"],"region":"x"}`, "unknown field", http.StatusBadRequest},
		{fmt.Sprintf(`{"ids":[%s"veh-x"]}`, strings.Repeat(`"veh-y",`, api.MaxVehiclesPerRequest)), "at most", http.StatusBadRequest},
	} {
		if code, body := adminDo(t, ts, http.MethodPost, "/api/v1/admin/vehicles", admin, c.body); code != c.code || !strings.Contains(string(body), c.want) {
			t.Errorf("POST %.60s: %d %s, want %d naming %q", c.body, code, body, c.code, c.want)
		}
	}

	code, body = adminDo(t, ts, http.MethodPost, "/api/v1/admin/vehicles/veh-1/rotate", admin, `{"grace":"2h"}`)
	var rotated vehicleAnswer
	if code != http.StatusOK || json.Unmarshal(body, &rotated) != nil || rotated.Token == "" || rotated.ID != "veh-1" {
		t.Fatalf("rotate: %d %s", code, body)
	}
	if code, body := adminDo(t, ts, http.MethodPost, "/api/v1/admin/vehicles/veh-1/rotate", admin, `{"grace":"forever"}`); code != http.StatusBadRequest {
		t.Errorf("rotate with a bad grace: %d %s, want 400", code, body)
	}
	if code, body := adminDo(t, ts, http.MethodDelete, "/api/v1/admin/vehicles/veh-2", admin, ""); code != http.StatusNoContent {
		t.Errorf("revoke: %d %s, want 204", code, body)
	}
	if code, body := adminDo(t, ts, http.MethodDelete, "/api/v1/admin/vehicles/veh-2", admin, ""); code != http.StatusNotFound {
		t.Errorf("revoke again: %d %s, want 404", code, body)
	}
	if code, body := adminDo(t, ts, http.MethodPost, "/api/v1/admin/vehicles/veh-404/rotate", admin, ""); code != http.StatusNotFound {
		t.Errorf("rotate an unknown vehicle: %d %s, want 404", code, body)
	}

	code, body = adminDo(t, ts, http.MethodGet, "/api/v1/admin/vehicles", admin, "")
	if code != http.StatusOK || strings.Contains(string(body), rotated.Token) || strings.Contains(string(body), "argon2id") {
		t.Errorf("list: %d %s, want 200 without tokens or hashes", code, body)
	}
	var list struct{ Vehicles []vehicleAnswer }
	if err := json.Unmarshal(body, &list); err != nil || len(list.Vehicles) != 3 || !list.Vehicles[1].Revoked || list.Vehicles[0].Revoked {
		t.Errorf("list answer %s (%v), want veh-1 live and veh-2 revoked", body, err)
	}
	// Two creates, a rotation and a revocation; refused requests change nothing.
	if got := changes.Load(); got != 4 {
		t.Errorf("change notifications = %d, want 4", got)
	}
}

func TestAdminVehicles_UnavailableWithoutStore(t *testing.T) {
	t.Parallel()
	const admin = "admin-secret-for-test"
	ts, _, _ := adminServer(t, admin) // no vehicle credential store
	if code, body := adminDo(t, ts, http.MethodGet, "/api/v1/admin/vehicles", admin, ""); code != http.StatusServiceUnavailable {
		t.Errorf("vehicle routes without a store: %d %s, want 503", code, body)
	}
}
