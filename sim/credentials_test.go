package sim

import (
	"errors"
	"strings"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

func TestReadCredentials(t *testing.T) {
	got, err := ReadCredentials(strings.NewReader("# fleet\nsim-0001,tok-a\n\n sim-0002 , tok-b \n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["sim-0001"] != "tok-a" || got["sim-0002"] != "tok-b" {
		t.Errorf("ReadCredentials = %v", got)
	}
	for name, text := range map[string]string{
		"no comma":    "sim-0001 tok-a\n",
		"empty token": "sim-0001,\n",
		"bad id":      "sim/1,tok\n",
		"twice":       "sim-0001,a\nsim-0001,b\n",
		"empty":       "# nothing\n",
	} {
		_, err := ReadCredentials(strings.NewReader(text))
		if err == nil {
			t.Errorf("%s: accepted %q", name, text)
			continue
		}
		if strings.Contains(err.Error(), "tok-a") {
			t.Errorf("%s: error %q shows a token", name, err)
		}
	}
}

func TestRun_SendsEachVehiclesPassword(t *testing.T) {
	broker := startBroker(t, &passwordsHook{passwords: map[string]string{"sim-0001": "pw-one", "sim-0002": "pw-two"}})
	st, err := Run(t.Context(), Config{
		Broker: broker.url, Vehicles: 2, Rate: 50, Duration: 100 * time.Millisecond,
		Passwords: map[string]string{"sim-0001": "pw-one", "sim-0002": "pw-two"},
	})
	if err != nil || st.VehiclesConnected != 2 || st.ConnectFailures != 0 {
		t.Fatalf("Run with per-vehicle passwords: %+v, %v; want both connected", st, err)
	}
	err = Config{Vehicles: 3, Passwords: map[string]string{"sim-0001": "a", "sim-0002": "b"}}.Validate()
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "sim-0003") {
		t.Errorf("Validate with a vehicle missing from Passwords = %v, want ErrInvalidConfig naming sim-0003", err)
	}
}

// passwordsHook accepts each user's own password and allows every topic.
type passwordsHook struct {
	mochi.HookBase
	passwords map[string]string
}

func (h *passwordsHook) ID() string { return "passwords" }

func (h *passwordsHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (h *passwordsHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	want, ok := h.passwords[string(pk.Connect.Username)]
	return ok && string(pk.Connect.Password) == want
}

func (h *passwordsHook) OnACLCheck(*mochi.Client, string, bool) bool { return true }
