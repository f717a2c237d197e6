package broker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/agent/broker"
	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

// startBrokerWithSmallSpool starts a broker over a spool capped at
// maxBytes with an SOS reserve of reserve bytes.
func startBrokerWithSmallSpool(t *testing.T, maxBytes, reserve int64) *testBroker {
	t.Helper()
	logs := &logBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	sp := spool.New(spool.Config{Path: filepath.Join(t.TempDir(), "spool.db"), Logger: logger, Registerer: reg,
		MaxBytes: maxBytes, SOSReserveBytes: reserve})
	if err := sp.Open(); err != nil {
		t.Fatalf("open spool: %v", err)
	}
	t.Cleanup(func() {
		if err := sp.Close(); err != nil {
			t.Errorf("close spool: %v", err)
		}
	})
	b := broker.New(broker.Config{Addr: "127.0.0.1:0", Spool: sp, Logger: logger, Registerer: reg,
		Now: func() time.Time { return agentNow }})
	if err := b.Open(); err != nil {
		t.Fatalf("open broker: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close broker: %v", err)
		}
	})
	return &testBroker{broker: b, spool: sp, reg: reg, logs: logs}
}

// fillWithSOS appends SOS records straight to the spool until it refuses
// one, and returns how many it stored.
func fillWithSOS(t *testing.T, sp *spool.Spool) int {
	t.Helper()
	for n := 1; n < 10000; n++ {
		rec := protocol.Record{Kind: protocol.KindSOS, VehicleID: "veh-filler", ReceivedAt: agentNow,
			SOS: &protocol.SOS{ID: fmt.Sprintf("filler-%04d", n), Time: agentNow, Kind: protocol.SOSPanic}}
		err := sp.Append(context.Background(), []protocol.Record{rec})
		if errors.Is(err, spool.ErrFull) {
			return n - 1
		}
		if err != nil {
			t.Fatalf("fill spool: %v", err)
		}
	}
	t.Fatal("spool still not full after 10000 SOS records")
	return 0
}

func sosPayload(id string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"lat":14.6,"lon":121.0}`, id)
}

func TestBroker_SpoolFullSOSQuotaExceededMQTT5(t *testing.T) {
	tb := startBrokerWithSmallSpool(t, 8<<10, 2<<10)
	rc, _ := dialRaw(t, tb.broker.Addr(), rawConnect{version: 5, clientID: "raw-v5", username: vehicle})

	// SOS records through the broker fill the spool, then one is refused.
	stored := 0
	var code byte
	for n := 1; n < 1000; n++ {
		code = rc.expectPuback(rc.publish(sosTopic, sosPayload(fmt.Sprintf("sos-v5-%03d", n)), 1))
		if code != 0 {
			break
		}
		stored++
	}

	if code != 0x97 {
		t.Fatalf("PUBACK reason 0x%02x for an SOS the full spool cannot store, want 0x97 (quota exceeded)", code)
	}
	if got := len(readLane(t, tb.spool, protocol.LaneSOS)); got != stored || stored == 0 {
		t.Errorf("sos lane holds %d records, want the %d acknowledged (and some)", got, stored)
	}
	refused := fmt.Sprintf("sos-v5-%03d", stored+1)
	if _, ok := tb.logs.find(map[string]string{"level": "ERROR", "vehicle": vehicle, "sos": refused, "reason": "spool_full"}); !ok {
		t.Errorf("no error logged with the vehicle and SOS id %s", refused)
	}
	if got := counterValue(t, tb.reg, "xpress_agent_sos_store_failures_total", "reason", "spool_full"); got != 1 {
		t.Errorf("xpress_agent_sos_store_failures_total{reason=\"spool_full\"} = %v, want 1", got)
	}
	if got := counterValue(t, tb.reg, "xpress_agent_rejects_total", "reason", "spool_full"); got != 1 {
		t.Errorf("xpress_agent_rejects_total{reason=\"spool_full\"} = %v, want 1", got)
	}

	// A fix is refused too, with the same code, but it is no SOS failure.
	if code := rc.expectPuback(rc.publish(fixTopic, fixJSON(14.6, 121, fixTime), 1)); code != 0x97 {
		t.Errorf("PUBACK reason 0x%02x for a fix to a full spool, want 0x97", code)
	}
	if got := counterValue(t, tb.reg, "xpress_agent_sos_store_failures_total", "reason", "spool_full"); got != 1 {
		t.Errorf("xpress_agent_sos_store_failures_total{reason=\"spool_full\"} = %v after a refused fix, want still 1", got)
	}
}

func TestBroker_SpoolFullSOSNoPubackMQTT311(t *testing.T) {
	tb := startBrokerWithSmallSpool(t, 8<<10, 2<<10)
	filled := fillWithSOS(t, tb.spool)
	store := paho.NewFileStore(t.TempDir())
	opts := func() *paho.ClientOptions {
		return paho.NewClientOptions().
			AddBroker("tcp://" + tb.broker.Addr().String()).
			SetClientID("client-" + vehicle).
			SetUsername(vehicle).
			SetPassword("device-token").
			SetProtocolVersion(4).
			SetCleanSession(false).
			SetStore(store).
			SetAutoReconnect(false).
			SetConnectTimeout(5 * time.Second)
	}
	c := paho.NewClient(opts())
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("paho connect: %v", tok.Error())
	}

	sos := c.Publish(sosTopic, 1, false, sosPayload("sos-unstored-1"))
	eventually(t, "the refused SOS counted", func() bool {
		return counterValue(t, tb.reg, "xpress_agent_sos_store_failures_total", "reason", "spool_full") == 1
	})
	// MQTT 3.1.1 has no negative PUBACK: the agent closes the connection
	// so the device resends when it reconnects.
	eventually(t, "the agent to close the connection", func() bool { return !c.IsConnectionOpen() })
	if sos.WaitTimeout(100*time.Millisecond) && sos.Error() == nil {
		t.Fatal("the SOS the full spool refused was acknowledged; MQTT 3.1.1 must get no PUBACK")
	}
	// The hub acknowledges the filler records, which frees the spool.
	if err := tb.spool.DeleteThrough(protocol.LaneSOS, uint64(filled)); err != nil {
		t.Fatal(err)
	}
	if _, ok := tb.logs.find(map[string]string{"level": "ERROR", "vehicle": vehicle, "sos": "sos-unstored-1"}); !ok {
		t.Error("no error logged with the vehicle and SOS id of the refused SOS")
	}
	for _, rec := range readLane(t, tb.spool, protocol.LaneSOS) {
		if rec.SOS.ID == "sos-unstored-1" {
			t.Fatal("the refused SOS is in the spool")
		}
	}

	// The device keeps the unacknowledged SOS and sends it again when it reconnects.
	c.Disconnect(100)
	again := paho.NewClient(opts())
	if tok := again.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("paho reconnect: %v", tok.Error())
	}
	t.Cleanup(func() { again.Disconnect(100) })
	eventually(t, "the resent SOS stored", func() bool {
		for _, rec := range readLane(t, tb.spool, protocol.LaneSOS) {
			if rec.SOS.ID == "sos-unstored-1" {
				return true
			}
		}
		return false
	})
	// The hook counts the SOS after the spool's commit returns, so the
	// count may follow the record by a moment.
	eventually(t, "the resent SOS counted as accepted", func() bool {
		return counterValue(t, tb.reg, "xpress_agent_messages_accepted_total", "kind", "sos") >= 1
	})
	if got := counterValue(t, tb.reg, "xpress_agent_messages_accepted_total", "kind", "sos"); got != 1 {
		t.Errorf("accepted SOS messages = %v, want 1 (the resent one)", got)
	}
}
