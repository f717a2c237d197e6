package agent_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/xpress-ops/tower/agent/localsos"
	"github.com/xpress-ops/tower/protocol"
)

// subscribeStates subscribes c to the vehicle's SOS state topics and
// returns the channel of payloads received.
func subscribeStates(t *testing.T, c paho.Client) <-chan []byte {
	t.Helper()
	states := make(chan []byte, 8)
	filter := protocol.VehiclePrefix + vehicle + "/sos/+/state"
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { states <- m.Payload() })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe to %s: %v", filter, tok.Error())
	}
	return states
}

func expectReceived(t *testing.T, states <-chan []byte) {
	t.Helper()
	select {
	case payload := <-states:
		st, err := protocol.DecodeSOSState(payload)
		if err != nil || st.State != protocol.SOSStateReceived {
			t.Errorf("state payload %q (%v), want received", payload, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the vehicle did not hear that its SOS was received")
	}
}

func TestAgent_SOSReceivedWhileHubDown(t *testing.T) {
	a := openAgent(t, testConfig(t, unusedHubURL(t), t.TempDir()))
	c := connectVehicle(t, a)
	states := subscribeStates(t, c)

	publish(t, c, protocol.TopicSOS, `{"id":"sos-7","kind":"harassment"}`)
	expectReceived(t, states)

	active, err := a.LocalSOS().Store().ListActive()
	if err != nil {
		t.Fatal(err)
	}
	if len(active) != 1 || active[0].SOSID != "sos-7" || active[0].Kind != protocol.SOSHarassment {
		t.Errorf("local SOS store lists %+v, want sos-7", active)
	}
}

func TestAgent_StartsWithDamagedLocalSOSStore(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, localsos.File), bytes.Repeat([]byte{0xa5}, 16<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	a := openAgent(t, testConfig(t, unusedHubURL(t), dir))

	// The SOS is still stored and the vehicle still hears "received".
	c := connectVehicle(t, a)
	states := subscribeStates(t, c)
	publish(t, c, protocol.TopicSOS, `{"id":"sos-8","kind":"crash"}`)
	expectReceived(t, states)
	if code, body := readyz(t, a); code != 200 || body.Lanes[protocol.LaneSOS].Records != 1 {
		t.Errorf("readyz = %d with %d SOS records, want 200 with the SOS in the spool", code, body.Lanes[protocol.LaneSOS].Records)
	}
}
