package agent_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/xpress-ops/tower/protocol"
)

func TestAgent_ReadyzReportsFullSpool(t *testing.T) {
	cfg := testConfig(t, unusedHubURL(t), t.TempDir())
	cfg.SpoolMaxBytes, cfg.SpoolSOSReserveBytes = 8<<10, 2<<10
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
	if space.FullReason != "max_bytes" || space.MaxBytes != 8<<10 || space.LiveBytes == 0 || space.LiveBytes > space.MaxBytes || space.FileBytes == 0 {
		t.Errorf("/readyz spool_space = %+v, want full for max_bytes, 0 < live bytes <= max bytes 8192, a file size", space)
	}
	_, metrics := get(t, a, "/metrics")
	for _, line := range []string{
		"xpress_agent_spool_full 1",
		`xpress_agent_rejects_total{reason="spool_full"}`,
		"xpress_agent_spool_max_bytes 8192",
	} {
		if !bytes.Contains(metrics, []byte(line)) {
			t.Errorf("/metrics lacks %s", line)
		}
	}
	if bytes.Contains(metrics, []byte(`xpress_agent_sos_store_failures_total{reason="spool_full"} 0`)) {
		t.Error(`/metrics shows xpress_agent_sos_store_failures_total{reason="spool_full"} 0, want the refused SOS counted`)
	}
}
