package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
	"github.com/xpress-ops/tower/hub/store/embedded"
	"github.com/xpress-ops/tower/hub/store/storetest"
)

// adminServer serves the API with a real embedded store for the
// credentials and the given admin token, and returns the store and the
// agents whose credentials changed.
func adminServer(t *testing.T, adminToken string) (*httptest.Server, *embedded.Store, chan string) {
	t.Helper()
	st := embedded.New(embedded.Config{Path: filepath.Join(t.TempDir(), "hub.db"), Now: storetest.NewClock(storetest.Epoch).Now})
	if err := st.Open(context.Background()); err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	bus := events.NewBus(events.Config{})
	t.Cleanup(func() { bus.Close() })
	changed := make(chan string, 8)
	srv := api.New(api.Config{
		Store: st, Bus: bus, Credentials: st, AdminToken: adminToken,
		OnCredentialChange: func(id string) { changed <- id },
	})
	t.Cleanup(func() { srv.Close() })
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return ts, st, changed
}

func adminDo(t *testing.T, ts *httptest.Server, method, path, bearer, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	// The authentication middleware checks the bearer token itself.
	req.Header.Set(testPrincipalHeader, "none")
	req.Header.Set("Content-Type", "application/json")
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, raw
}

func TestAdmin_RefusesMissingOrWrongToken(t *testing.T) {
	t.Parallel()
	ts, st, _ := adminServer(t, "admin-secret-for-test")
	routes := []struct{ method, path, body string }{
		{http.MethodGet, "/api/v1/admin/agents", ""},
		{http.MethodPost, "/api/v1/admin/agents", `{"id":"ncr-1","region":"NCR-Manila"}`},
		{http.MethodPost, "/api/v1/admin/agents/ncr-1/rotate", `{"grace":"1h"}`},
		{http.MethodDelete, "/api/v1/admin/agents/ncr-1", ""},
	}
	for _, r := range routes {
		for _, bearer := range []string{"", "wrong", "admin-secret-for-tes", "admin-secret-for-test2"} {
			if code, body := adminDo(t, ts, r.method, r.path, bearer, r.body); code != http.StatusUnauthorized {
				t.Errorf("%s %s with bearer %q: %d %s, want 401", r.method, r.path, bearer, code, body)
			}
		}
	}
	if list, err := st.AgentCredentials(context.Background()); err != nil || len(list) != 0 {
		t.Errorf("credentials after refused requests = %v, %v; want none", list, err)
	}
}

func TestAdmin_NoTokenWithoutAdminToken(t *testing.T) {
	t.Parallel()
	ts, _, _ := adminServer(t, "")
	for _, bearer := range []string{"", "anything"} {
		code, body := adminDo(t, ts, http.MethodGet, "/api/v1/admin/agents", bearer, "")
		if code != http.StatusUnauthorized {
			t.Errorf("admin API of a hub without an admin token, bearer %q: %d %s, want 401", bearer, code, body)
		}
	}
}

func TestAdmin_CredentialLifecycle(t *testing.T) {
	t.Parallel()
	const admin = "admin-secret-for-test"
	ts, st, changed := adminServer(t, admin)
	ctx := context.Background()

	code, body := adminDo(t, ts, http.MethodPost, "/api/v1/admin/agents", admin, `{"id":"ncr-1","region":"NCR-Manila"}`)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	var created struct {
		ID, Region, Token string
	}
	if err := json.Unmarshal(body, &created); err != nil || created.Token == "" || created.ID != "ncr-1" {
		t.Fatalf("create answer %s (%v), want id and token", body, err)
	}
	if _, err := st.VerifyAgentToken(ctx, "ncr-1", created.Token); err != nil {
		t.Errorf("created token does not verify: %v", err)
	}
	// A new agent is reported too, so its operator list goes out at once.
	if id := <-changed; id != "ncr-1" {
		t.Errorf("change reported after create for %q, want ncr-1", id)
	}
	if code, body := adminDo(t, ts, http.MethodPost, "/api/v1/admin/agents", admin, `{"id":"ncr-1","region":"NCR-Manila"}`); code != http.StatusConflict {
		t.Errorf("second create: %d %s, want 409", code, body)
	}
	if code, body := adminDo(t, ts, http.MethodPost, "/api/v1/admin/agents", admin, `{"id":"bad id","region":"NCR-Manila"}`); code != http.StatusBadRequest || !strings.Contains(string(body), "agent id") {
		t.Errorf("invalid id: %d %s, want 400 naming the agent id", code, body)
	}

	code, body = adminDo(t, ts, http.MethodGet, "/api/v1/admin/agents", admin, "")
	if code != http.StatusOK || strings.Contains(string(body), created.Token) || strings.Contains(string(body), "hash") {
		t.Errorf("list: %d %s, want 200 without tokens or hashes", code, body)
	}
	var list struct{ Agents []store.AgentCredential }
	if err := json.Unmarshal(body, &list); err != nil || len(list.Agents) != 1 || list.Agents[0].AgentID != "ncr-1" {
		t.Errorf("list answer %s (%v), want ncr-1", body, err)
	}

	code, body = adminDo(t, ts, http.MethodPost, "/api/v1/admin/agents/ncr-1/rotate", admin, `{"grace":"2h"}`)
	if code != http.StatusOK {
		t.Fatalf("rotate: %d %s", code, body)
	}
	var rotated struct {
		Token              string
		PreviousValidUntil time.Time `json:"previous_valid_until"`
	}
	if err := json.Unmarshal(body, &rotated); err != nil || rotated.Token == "" || rotated.Token == created.Token {
		t.Fatalf("rotate answer %s (%v), want a new token", body, err)
	}
	if !rotated.PreviousValidUntil.Equal(storetest.Epoch.Add(2 * time.Hour)) {
		t.Errorf("previous token valid until %s, want %s", rotated.PreviousValidUntil, storetest.Epoch.Add(2*time.Hour))
	}
	for _, tok := range []string{created.Token, rotated.Token} {
		if _, err := st.VerifyAgentToken(ctx, "ncr-1", tok); err != nil {
			t.Errorf("token during grace does not verify: %v", err)
		}
	}
	if id := <-changed; id != "ncr-1" {
		t.Errorf("credential change reported for %q, want ncr-1", id)
	}
	if code, body := adminDo(t, ts, http.MethodPost, "/api/v1/admin/agents/ncr-1/rotate", admin, `{"grace":"soon"}`); code != http.StatusBadRequest {
		t.Errorf("rotate with a bad grace: %d %s, want 400", code, body)
	}
	if code, body := adminDo(t, ts, http.MethodPost, "/api/v1/admin/agents/ncr-9/rotate", admin, `{"grace":"1h"}`); code != http.StatusNotFound {
		t.Errorf("rotate unknown agent: %d %s, want 404", code, body)
	}

	if code, body := adminDo(t, ts, http.MethodDelete, "/api/v1/admin/agents/ncr-1", admin, ""); code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", code, body)
	}
	if _, err := st.VerifyAgentToken(ctx, "ncr-1", rotated.Token); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("token after delete = %v, want ErrNotFound", err)
	}
	if code, _ := adminDo(t, ts, http.MethodDelete, "/api/v1/admin/agents/ncr-1", admin, ""); code != http.StatusNotFound {
		t.Errorf("second delete: %d, want 404", code)
	}
}
