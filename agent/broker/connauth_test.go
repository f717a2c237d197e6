package broker_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/xpress-ops/tower/agent/broker"
)

// tokenAuth accepts each vehicle's one password, refuses unknown vehicles
// as not authorized, and remembers the vehicles it accepted.
type tokenAuth struct {
	tokens map[string]string
	mu     sync.Mutex
	seen   map[string]bool
}

func (a *tokenAuth) Authenticate(id string, password []byte) error {
	want, ok := a.tokens[id]
	switch {
	case !ok:
		return fmt.Errorf("%w: vehicle %s is unknown", broker.ErrVehicleNotAuthorized, id)
	case string(password) != want:
		return broker.ErrBadPassword
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.seen == nil {
		a.seen = map[string]bool{}
	}
	a.seen[id+"\x00"+want] = true
	return nil
}

func (a *tokenAuth) Remembers(id string, password []byte) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[id+"\x00"+string(password)]
}

func TestBroker_RefusalCodesByProtocolVersion(t *testing.T) {
	auth := &tokenAuth{tokens: map[string]string{vehicle: "pw-7f3a"}}
	tb := startBroker(t, func(cfg *broker.Config) { cfg.Authenticator = auth })
	addr := tb.broker.Addr()

	for _, c := range []struct {
		name     string
		version  byte
		username string
		password string
		want     byte
	}{
		{"right token MQTT 5", 5, vehicle, "pw-7f3a", 0},
		{"right token MQTT 3.1.1", 4, vehicle, "pw-7f3a", 0},
		{"wrong token MQTT 5", 5, vehicle, "pw-19c2", 0x86},
		{"wrong token MQTT 3.1.1", 4, vehicle, "pw-19c2", 0x04},
		{"unknown vehicle MQTT 5", 5, "veh-unknown", "pw-7f3a", 0x87},
		{"unknown vehicle MQTT 3.1.1", 4, "veh-unknown", "pw-7f3a", 0x05},
	} {
		_, connack := dialRaw(t, addr, rawConnect{version: c.version, clientID: "c-" + strings.ReplaceAll(c.name, " ", "-"),
			username: c.username, password: c.password})
		if connack.FixedHeader.Type != packets.Connack || connack.ReasonCode != c.want {
			t.Errorf("%s: CONNACK type %d code 0x%02x, want code 0x%02x", c.name, connack.FixedHeader.Type, connack.ReasonCode, c.want)
		}
	}
	if got := counterValue(t, tb.reg, "xpress_agent_rejects_total", "reason", "bad_password"); got != 2 {
		t.Errorf("bad_password rejects = %v, want 2", got)
	}
	if got := counterValue(t, tb.reg, "xpress_agent_rejects_total", "reason", "vehicle_not_authorized"); got != 2 {
		t.Errorf("vehicle_not_authorized rejects = %v, want 2", got)
	}
	line, ok := tb.logs.find(map[string]string{"vehicle": "veh-unknown", "reason": "vehicle_not_authorized"})
	if !ok {
		t.Fatal("no log line names the unknown vehicle and the reason")
	}
	if !strings.HasPrefix(fmt.Sprint(line["remote"]), "127.0.0.1:") {
		t.Errorf("refusal log remote = %v, want the client's address", line["remote"])
	}
	if text := tb.logs.text(); strings.Contains(text, "pw-19c2") || strings.Contains(text, "pw-7f3a") {
		t.Error("a password appears in the log")
	}
}

func TestBroker_ConnectRateLimitPerAddress(t *testing.T) {
	tb := startBroker(t, func(cfg *broker.Config) {
		cfg.ConnectRate, cfg.ConnectBurst = 1, 5
	})
	addr := tb.broker.Addr()

	rejected := 0
	for i := range 20 {
		version := byte(5)
		if i%2 == 1 {
			version = 4
		}
		_, connack := dialRaw(t, addr, rawConnect{version: version, clientID: fmt.Sprintf("flood-%d", i), username: vehicle})
		switch {
		case connack.ReasonCode == 0:
		case version == 5 && connack.ReasonCode == packets.ErrConnectionRateExceeded.Code,
			version == 4 && connack.ReasonCode == packets.Err3ServerUnavailable.Code:
			rejected++
		default:
			t.Fatalf("attempt %d (MQTT version %d): CONNACK 0x%02x, want success or the rate refusal", i, version, connack.ReasonCode)
		}
	}
	// 5 of burst, and at most one more per second of the loop.
	if rejected < 10 {
		t.Errorf("%d of 20 attempts rejected, want most of those past the burst of 5", rejected)
	}
	if got := counterValue(t, tb.reg, "xpress_agent_rejects_total", "reason", "connect_rate"); got != float64(rejected) {
		t.Errorf("connect_rate rejects = %v, want %d", got, rejected)
	}
	if n := tb.logs.count(map[string]string{"reason": "connect_rate"}); n != 1 {
		t.Errorf("%d log lines about the rate refusals of one address, want 1", n)
	}

	// Another address is not affected.
	_, connack := dialRaw(t, addr, rawConnect{version: 5, clientID: "other-address", username: vehicle, localIP: "127.0.0.2"})
	if connack.ReasonCode != 0 {
		t.Errorf("CONNECT from 127.0.0.2: CONNACK 0x%02x, want success", connack.ReasonCode)
	}
}

func TestBroker_BlocksAddressAfterAuthFailures(t *testing.T) {
	auth := &tokenAuth{tokens: map[string]string{vehicle: "right-token", "veh-2": "token-2"}}
	tb := startBroker(t, func(cfg *broker.Config) {
		cfg.Authenticator = auth
		cfg.AuthFailures, cfg.AuthBlock = 3, time.Hour
	})
	addr := tb.broker.Addr()

	// veh-2 connects once before the block, so the broker remembers it.
	_, ok := dialRaw(t, addr, rawConnect{version: 5, clientID: "veh-2-first", username: "veh-2", password: "token-2"})
	if ok.ReasonCode != 0 {
		t.Fatalf("veh-2 before the block: CONNACK 0x%02x", ok.ReasonCode)
	}
	for i := range 4 {
		_, connack := dialRaw(t, addr, rawConnect{version: 5, clientID: fmt.Sprintf("guess-%d", i), username: vehicle, password: fmt.Sprintf("guess-%d", i)})
		if connack.ReasonCode != 0x86 {
			t.Fatalf("guess %d: CONNACK 0x%02x, want 0x86", i, connack.ReasonCode)
		}
	}
	// The address is blocked now: even the right token gets 0x9F, and
	// the password check does not run.
	_, connack := dialRaw(t, addr, rawConnect{version: 5, clientID: "right", username: vehicle, password: "right-token"})
	if connack.ReasonCode != packets.ErrConnectionRateExceeded.Code {
		t.Errorf("right token from a blocked address: CONNACK 0x%02x, want 0x9f", connack.ReasonCode)
	}
	_, connack = dialRaw(t, addr, rawConnect{version: 4, clientID: "right-311", username: vehicle, password: "right-token"})
	if connack.ReasonCode != packets.Err3ServerUnavailable.Code {
		t.Errorf("right token from a blocked address, MQTT 3.1.1: CONNACK 0x%02x, want 0x03", connack.ReasonCode)
	}
	if got := counterValue(t, tb.reg, "xpress_agent_rejects_total", "reason", "auth_failures_blocked"); got != 2 {
		t.Errorf("auth_failures_blocked rejects = %v, want 2", got)
	}
	if _, ok := tb.logs.find(map[string]string{"msg": "address blocked after too many failed vehicle authentications", "address": "127.0.0.1"}); !ok {
		t.Error("the block is not logged with the address")
	}
	// A vehicle the authenticator remembers still gets in.
	_, connack = dialRaw(t, addr, rawConnect{version: 5, clientID: "veh-2-again", username: "veh-2", password: "token-2"})
	if connack.ReasonCode != 0 {
		t.Errorf("remembered vehicle from a blocked address: CONNACK 0x%02x, want success", connack.ReasonCode)
	}
	// Other addresses are not blocked.
	_, connack = dialRaw(t, addr, rawConnect{version: 5, clientID: "elsewhere", username: vehicle, password: "right-token", localIP: "127.0.0.2"})
	if connack.ReasonCode != 0 {
		t.Errorf("right token from 127.0.0.2: CONNACK 0x%02x, want success", connack.ReasonCode)
	}
}

func TestConfig_ValidateLimits(t *testing.T) {
	good := broker.Config{ConnectRate: 20, ConnectBurst: 100, AuthFailures: 10, AuthBlock: time.Minute}
	if err := good.ValidateLimits(); err != nil {
		t.Fatalf("ValidateLimits(%+v) = %v", good, err)
	}
	if err := (&broker.Config{}).ValidateLimits(); err != nil {
		t.Fatalf("zero limits (the defaults) = %v", err)
	}
	bad := broker.Config{ConnectRate: -1, ConnectBurst: broker.MaxConnectBurst + 1, AuthFailures: -5, AuthBlock: time.Millisecond}
	err := bad.ValidateLimits()
	for _, field := range []string{"ConnectRate", "ConnectBurst", "AuthFailures", "AuthBlock"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("ValidateLimits(%+v) = %v, want an error naming %s", bad, err, field)
		}
	}
}
