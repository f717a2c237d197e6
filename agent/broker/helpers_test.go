package broker_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xpress-ops/tower/agent/broker"
	"github.com/xpress-ops/tower/agent/spool"
	"github.com/xpress-ops/tower/protocol"
)

// agentNow is the agent clock in these tests.
var agentNow = time.Date(2026, 12, 4, 2, 0, 0, 0, time.UTC)

type testBroker struct {
	broker *broker.Broker
	spool  *spool.Spool
	reg    *prometheus.Registry
	logs   *logBuffer
}

// startBroker starts a broker on 127.0.0.1:0 over a real spool in a temp
// dir; mutate may change the config first. Both stop on cleanup.
func startBroker(t *testing.T, mutate func(*broker.Config)) *testBroker {
	t.Helper()
	logs := &logBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()

	sp := spool.New(spool.Config{Path: filepath.Join(t.TempDir(), "spool.db"), Logger: logger, Registerer: reg})
	if err := sp.Open(); err != nil {
		t.Fatalf("open spool: %v", err)
	}
	t.Cleanup(func() {
		if err := sp.Close(); err != nil {
			t.Errorf("close spool: %v", err)
		}
	})

	cfg := broker.Config{
		Addr:       "127.0.0.1:0",
		Spool:      sp,
		Logger:     logger,
		Registerer: reg,
		Now:        func() time.Time { return agentNow },
	}
	if mutate != nil {
		mutate(&cfg)
	}
	b := broker.New(cfg)
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

// logBuffer collects JSON log lines from many goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// find returns the first log line whose fields include every key/value of want.
func (l *logBuffer) find(want map[string]string) (map[string]any, bool) {
	l.mu.Lock()
	text := l.buf.String()
	l.mu.Unlock()
	for _, line := range strings.Split(text, "\n") {
		if line == "" {
			continue
		}
		var fields map[string]any
		if err := json.Unmarshal([]byte(line), &fields); err != nil {
			continue
		}
		match := true
		for k, v := range want {
			if fmt.Sprint(fields[k]) != v {
				match = false
				break
			}
		}
		if match {
			return fields, true
		}
	}
	return nil, false
}

// connectPaho connects a paho MQTT 3.1.1 client as vehicle.
func connectPaho(t *testing.T, addr net.Addr, vehicle string) paho.Client {
	t.Helper()
	opts := paho.NewClientOptions().
		AddBroker("tcp://" + addr.String()).
		SetClientID("client-" + vehicle).
		SetUsername(vehicle).
		SetPassword("device-token").
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second)
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("paho connect as %s timed out", vehicle)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("paho connect as %s: %v", vehicle, err)
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// publishPaho publishes with QoS 1 and waits for the PUBACK.
func publishPaho(t *testing.T, c paho.Client, topic string, payload []byte) {
	t.Helper()
	tok := c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("no PUBACK within 10 s for %s", topic)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("publish to %s: %v", topic, err)
	}
}

func fixJSON(lat, lon float64, ts time.Time) []byte {
	return fmt.Appendf(nil, `{"ts":%q,"lat":%v,"lon":%v,"speed_kmh":32.5}`, ts.Format(time.RFC3339Nano), lat, lon)
}

func readLane(t *testing.T, sp *spool.Spool, lane protocol.Lane) []protocol.Record {
	t.Helper()
	recs, err := sp.Read(lane, 0, 0, 0)
	if err != nil {
		t.Fatalf("read %s lane: %v", lane, err)
	}
	return recs
}

// counterValue returns the value of name{label=value} in reg, 0 if absent.
func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// eventually polls cond every 10 ms until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 10 s waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// text returns everything logged so far.
func (l *logBuffer) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// count returns how many log lines include every key/value of want.
func (l *logBuffer) count(want map[string]string) int {
	n := 0
	for _, line := range strings.Split(l.text(), "\n") {
		var fields map[string]any
		if json.Unmarshal([]byte(line), &fields) != nil {
			continue
		}
		match := true
		for k, v := range want {
			if fmt.Sprint(fields[k]) != v {
				match = false
				break
			}
		}
		if match {
			n++
		}
	}
	return n
}
