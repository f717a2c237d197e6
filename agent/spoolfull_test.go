package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

// fillSpoolWithSOS appends SOS records to the spool file in dataDir
// until less than headroom bytes of maxBytes are left, as an agent would
// have stored them during a long outage.
func fillSpoolWithSOS(t *testing.T, dataDir, agentID string, maxBytes, headroom int64) {
	t.Helper()
	sp := spool.New(spool.Config{Path: filepath.Join(dataDir, agent.SpoolFile), AgentID: agentID, MaxBytes: maxBytes})
	if err := sp.Open(); err != nil {
		t.Fatal(err)
	}
	note := strings.Repeat("stored during the outage ", 40)
	for n := 0; sp.Usage().LiveBytes < maxBytes-headroom; {
		size := 64
		if maxBytes-sp.Usage().LiveBytes < 256<<10 {
			size = 1 // close to the cap: one record at a time, so none is refused
		}
		batch := make([]protocol.Record, 0, size)
		for range size {
			n++
			batch = append(batch, protocol.Record{Kind: protocol.KindSOS, VehicleID: vehicle, ReceivedAt: time.Now().UTC(),
				SOS: &protocol.SOS{ID: fmt.Sprintf("sos-stored-%06d", n), Time: time.Now().UTC(), Kind: protocol.SOSPanic, Note: note}})
		}
		if err := sp.Append(context.Background(), batch); err != nil {
			t.Fatalf("fill the spool: %v", err)
		}
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestAgent_ReadyzReportsFullSpool(t *testing.T) {
	const maxBytes = agent.MinSpoolMaxBytes
	cfg := testConfig(t, unusedHubURL(t), t.TempDir())
	cfg.SpoolMaxBytes, cfg.SpoolSOSReserveBytes = maxBytes, agent.MinSpoolSOSReserveBytes
	fillSpoolWithSOS(t, cfg.DataDir, cfg.ID, maxBytes, 8<<10)
	a := openAgent(t, cfg)
	c := connectVehicle(t, a)

	// More SOS than the spool holds; the ones it refuses get no PUBACK, so
	// the test does not wait for the PUBACKs.
	for n := range 100 {
		c.Publish(protocol.VehicleTopicFor(vehicle, protocol.TopicSOS), 1, false,
			fmt.Sprintf(`{"id":"sos-full-%03d","lat":14.6,"lon":121.0}`, n))
	}
	var body struct {
		Ready      bool   `json:"ready"`
		Spool      string `json:"spool"`
		SpoolSpace struct {
			Full       bool   `json:"full"`
			FullReason string `json:"full_reason"`
			LiveBytes  int64  `json:"live_bytes"`
			MaxBytes   int64  `json:"max_bytes"`
			FileBytes  int64  `json:"file_bytes"`
		} `json:"spool_space"`
	}
	var code int
	eventually(t, "/readyz reporting a full spool", func() bool {
		var raw []byte
		code, raw = get(t, a, "/readyz")
		if err := json.Unmarshal(raw, &body); err != nil {
			t.Fatalf("decode /readyz body %s: %v", raw, err)
		}
		return body.SpoolSpace.Full
	})

	if code != http.StatusServiceUnavailable || body.Ready || body.Spool != "full" {
		t.Errorf("/readyz = %d, ready %v, spool %q; want 503, not ready, spool full", code, body.Ready, body.Spool)
	}
	space := body.SpoolSpace
	if space.FullReason != "max_bytes" || space.MaxBytes != maxBytes || space.LiveBytes == 0 || space.LiveBytes > space.MaxBytes || space.FileBytes == 0 {
		t.Errorf("/readyz spool_space = %+v, want full for max_bytes, 0 < live bytes <= max bytes %d, a file size", space, maxBytes)
	}
	_, metrics := get(t, a, "/metrics")
	for _, line := range []string{
		"xpress_agent_spool_full 1",
		`xpress_agent_rejects_total{reason="spool_full"}`,
		fmt.Sprintf("xpress_agent_spool_max_bytes %v", float64(maxBytes)),
	} {
		if !bytes.Contains(metrics, []byte(line)) {
			t.Errorf("/metrics lacks %s", line)
		}
	}
	if bytes.Contains(metrics, []byte(`xpress_agent_sos_store_failures_total{reason="spool_full"} 0`)) {
		t.Error(`/metrics shows xpress_agent_sos_store_failures_total{reason="spool_full"} 0, want the refused SOS counted`)
	}
}
