package api_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/hub/store/storetest"
)

// Creating, changing and deleting an operator through the admin API each
// call OnOperatorChange, so the hub sends the agents their new lists. A
// rejected request does not call it.
func TestAdmin_OperatorChangesNotify(t *testing.T) {
	t.Parallel()
	st := embedded.New(embedded.Config{Path: filepath.Join(t.TempDir(), "hub.db"), Now: storetest.NewClock(storetest.Epoch).Now})
	if err := st.Open(context.Background()); err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	bus := events.NewBus(events.Config{})
	t.Cleanup(func() { bus.Close() })
	const token = "operator-sync-admin-token-0123456789"
	changes := make(chan struct{}, 8)
	srv := api.New(api.Config{
		Store: st, Bus: bus, Accounts: st, AdminToken: token,
		OnOperatorChange: func() { changes <- struct{}{} },
	})
	t.Cleanup(func() { srv.Close() })
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)

	count := func() int {
		n := 0
		for {
			select {
			case <-changes:
				n++
			default:
				return n
			}
		}
	}
	for _, step := range []struct {
		method, path, body string
		status, calls      int
	}{
		{http.MethodPost, "/api/v1/admin/operators", `{"username":"root","display_name":"Root","role":"admin","regions":["*"],"password":"a long enough password 1"}`, http.StatusCreated, 1},
		{http.MethodPost, "/api/v1/admin/operators", `{"username":"maria","display_name":"Maria Santos","role":"operator","regions":["Cebu"],"password":"a long enough password 2"}`, http.StatusCreated, 1},
		{http.MethodPost, "/api/v1/admin/operators", `{"username":"maria","display_name":"Maria Santos","role":"operator","regions":["Cebu"],"password":"a long enough password 2"}`, http.StatusConflict, 0},
		{http.MethodPatch, "/api/v1/admin/operators/maria", `{"disabled":true}`, http.StatusOK, 1},
		{http.MethodDelete, "/api/v1/admin/operators/maria", ``, http.StatusNoContent, 1},
	} {
		code, body := adminDo(t, ts, step.method, step.path, token, step.body)
		if code != step.status {
			t.Fatalf("%s %s = %d %s, want %d", step.method, step.path, code, body, step.status)
		}
		if n := count(); n != step.calls {
			t.Errorf("%s %s called OnOperatorChange %d times, want %d", step.method, step.path, n, step.calls)
		}
	}
}
