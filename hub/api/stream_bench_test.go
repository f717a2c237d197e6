package api_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/hub/api"
	"github.com/xpress-ops/tower/hub/events"
	"github.com/xpress-ops/tower/hub/store"
)

// benchIncident is an incident.opened payload of about the size the hub
// publishes.
var benchIncident = map[string]any{
	"incident": map[string]any{
		"id": 4711, "sos_id": "01JEXAMPLE0000000000000000", "vehicle_id": "MNL-0001", "region": "NCR-Manila",
		"state": "open", "opened_at": "2026-12-04T02:00:00.123456Z", "lat": 14.5995, "lon": 120.9842,
		"driver": map[string]any{"name": "Juan dela Cruz", "phone": "+639171234567"},
	},
	"opened": true,
	"event":  map[string]any{"type": "opened", "actor": "system", "detail": "SOS pressed", "at": "2026-12-04T02:00:00.123456Z"},
}

// BenchmarkStream_Fanout measures one event's delivery from Publish to
// every connected WebSocket client: one op is one Publish and the wait
// until each client has read the frame. The clients run in the same
// process, so allocations include their reads.
func BenchmarkStream_Fanout(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			benchmarkStreamFanout(b, n, "admin")
		})
	}
}

// BenchmarkStream_FanoutRegional is BenchmarkStream_Fanout with clients
// that see one region: one op publishes an event of another region,
// which every client reads past without sending it, then one of theirs.
func BenchmarkStream_FanoutRegional(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			benchmarkStreamFanout(b, n, "manila")
		})
	}
}

// benchmarkStreamFanout connects clients streams as the test principal
// who and measures the delivery of incidents in NCR-Manila. For clients
// other than the admin, each follows one in Cebu.
func benchmarkStreamFanout(b *testing.B, clients int, who string) {
	ts := newBenchServer(b)

	var remaining atomic.Int64
	delivered := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range clients {
		conn, _, err := websocket.Dial(ctx, ts.streamURL(""), &websocket.DialOptions{HTTPHeader: http.Header{testPrincipalHeader: {who}}})
		if err != nil {
			b.Fatalf("dial client %d: %v", i, err)
		}
		defer conn.CloseNow()
		conn.SetReadLimit(1 << 20)
		if _, _, err := conn.Read(ctx); err != nil {
			b.Fatalf("read hello of client %d: %v", i, err)
		}
		wg.Go(func() {
			for {
				if _, _, err := conn.Read(ctx); err != nil {
					return
				}
				if remaining.Add(-1) == 0 {
					delivered <- struct{}{}
				}
			}
		})
	}

	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		remaining.Store(int64(clients))
		if who != "admin" {
			if _, err := ts.bus.PublishIn("Cebu", events.TypeIncidentOpened, benchIncident); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := ts.bus.PublishIn("NCR-Manila", events.TypeIncidentOpened, benchIncident); err != nil {
			b.Fatal(err)
		}
		<-delivered
	}
	b.StopTimer()
	cancel()
}

// newBenchServer starts an API server on a loopback port for a benchmark,
// as newTestServer does for a test.
func newBenchServer(b *testing.B) *testServer {
	b.Helper()
	reg := prometheus.NewRegistry()
	bus := events.NewBus(events.Config{Registerer: reg})
	fs := &fakeStore{events: map[int64][]store.IncidentEvent{}, now: testNow}
	srv := api.New(api.Config{Store: fs, Bus: bus, Registerer: reg, Now: func() time.Time { return testNow }})
	ts := httptest.NewServer(withTestPrincipal(srv.Handler()))
	b.Cleanup(func() {
		if err := srv.Close(); err != nil {
			b.Errorf("close api: %v", err)
		}
		ts.Close()
		if err := bus.Close(); err != nil {
			b.Errorf("close bus: %v", err)
		}
	})
	return &testServer{Server: ts, api: srv, bus: bus, store: fs, reg: reg}
}
