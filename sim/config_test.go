package sim

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestConfig_ZeroValueIsValid(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("zero Config: %v", err)
	}
}

func TestConfig_DefaultsFilled(t *testing.T) {
	c := Config{}.withDefaults()
	if c.Broker != DefaultBroker || c.Vehicles != DefaultVehicles || c.Speedup != 1 ||
		c.VehiclePrefix != "sim-" || c.QoS != QoSAtLeastOnce || c.Batch != 1 ||
		c.PublishTimeout != DefaultPublishTimeout || c.MaxInflight != DefaultMaxInflight || c.Now == nil {
		t.Errorf("defaults not filled: %+v", c)
	}
	if got := vehicleID(c.VehiclePrefix, 1); got != "sim-0001" {
		t.Errorf("first vehicle id %q, want sim-0001", got)
	}
}

func TestConfig_RejectsBadFields(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    Config
		phrase string
	}{
		{"broker scheme", Config{Broker: "http://127.0.0.1:1883"}, "tcp://"},
		{"broker port", Config{Broker: "tcp://127.0.0.1"}, "port"},
		{"vehicles", Config{Vehicles: -1}, "vehicles"},
		{"too many vehicles", Config{Vehicles: MaxVehicles + 1}, "vehicles"},
		{"rate", Config{Rate: -1}, "rate"},
		{"rate NaN", Config{Rate: math.NaN()}, "rate"},
		{"speedup", Config{Speedup: -2}, "speedup"},
		{"sos", Config{SOSEvery: -time.Second}, "sos-every"},
		{"duration", Config{Duration: -time.Second}, "duration"},
		{"prefix", Config{VehiclePrefix: "sim/"}, "prefix"},
		{"long prefix", Config{VehiclePrefix: strings.Repeat("x", 61)}, "prefix"},
		{"qos", Config{QoS: 7}, "QoS"},
		{"batch", Config{Batch: 1001}, "batch"},
		{"keep-alive", Config{KeepAlive: time.Millisecond}, "keep-alive"},
		{"inflight", Config{MaxInflight: 70000}, "inflight"},
	} {
		err := tc.cfg.Validate()
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: error %v, want ErrInvalidConfig", tc.name, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.phrase) {
			t.Errorf("%s: error %q does not mention %q", tc.name, err, tc.phrase)
		}
	}
}

func TestParseQoS(t *testing.T) {
	for n, want := range map[int]QoS{0: QoSAtMostOnce, 1: QoSAtLeastOnce} {
		got, err := ParseQoS(n)
		if err != nil || got != want || got.level() != byte(n) {
			t.Errorf("ParseQoS(%d) = %v, %v; want level %d", n, got, err, n)
		}
	}
	if _, err := ParseQoS(2); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("ParseQoS(2) error %v, want ErrInvalidConfig", err)
	}
}
