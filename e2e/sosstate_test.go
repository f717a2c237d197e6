package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/xpress-ops/tower/internal/pgtest"
	"github.com/xpress-ops/tower/protocol"
)

// stateListener is a vehicle connection subscribed to its SOS state topics.
type stateListener struct {
	t      *testing.T
	name   string
	client mqtt.Client
	msgs   chan stateMessage
}

// stateMessage is one message on a state topic: its state, or "" for the
// empty payload that clears a retained state.
type stateMessage struct {
	topic string
	state protocol.SOSState
	empty bool
}

// listenStates connects as vehicle with its own client id and subscribes
// to the vehicle's SOS state topics with QoS 1.
func listenStates(t *testing.T, brokerAddr, vehicle, clientID string) *stateListener {
	t.Helper()
	l := &stateListener{t: t, name: clientID, msgs: make(chan stateMessage, 64)}
	opts := mqtt.NewClientOptions().
		AddBroker("tcp://" + brokerAddr).
		SetClientID(clientID).
		SetUsername(vehicle).
		SetPassword("dev").
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			msg := stateMessage{topic: m.Topic(), empty: len(m.Payload()) == 0}
			if !msg.empty {
				st, err := protocol.DecodeSOSState(m.Payload())
				if err != nil {
					t.Errorf("%s: undecodable message on %s: %v: %q", clientID, m.Topic(), err, m.Payload())
					return
				}
				msg.state = st
			}
			l.msgs <- msg
		})
	l.client = mqtt.NewClient(opts)
	if tok := l.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s to %s: %v", clientID, brokerAddr, tok.Error())
	}
	t.Cleanup(func() { l.client.Disconnect(100) })
	l.subscribe(protocol.VehiclePrefix + vehicle + "/sos/+/state")
	return l
}

func (l *stateListener) subscribe(filter string) {
	l.t.Helper()
	tok := l.client.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		l.t.Fatalf("%s: subscribe to %s: %v", l.name, filter, tok.Error())
	}
}

// next returns the next message, failing the test after 60 s.
func (l *stateListener) next(waitingFor string) stateMessage {
	l.t.Helper()
	select {
	case m := <-l.msgs:
		return m
	case <-time.After(60 * time.Second):
		l.t.Fatalf("%s: no message within 60 s while waiting for %s", l.name, waitingFor)
		return stateMessage{}
	}
}

// expectState fails unless the next message is state on the state topic of sosID.
func (l *stateListener) expectState(vehicle, sosID, state string) protocol.SOSState {
	l.t.Helper()
	m := l.next(state)
	if m.topic != protocol.SOSStateTopic(vehicle, sosID) || m.empty || m.state.State != state {
		l.t.Fatalf("%s: got %+v, want %s on %s", l.name, m, state, protocol.SOSStateTopic(vehicle, sosID))
	}
	if m.state.TS.IsZero() || m.state.Message == "" {
		l.t.Errorf("%s: %s state without ts or message: %+v", l.name, state, m.state)
	}
	return m.state
}

// operatorAction posts an incident action to the hub's API with the admin
// token.
func operatorAction(t *testing.T, httpAddr string, incidentID int64, action, body string) {
	t.Helper()
	url := fmt.Sprintf("http://%s/api/v1/incidents/%d/%s", httpAddr, incidentID, action)
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, url, bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	authorize(req)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST %s: %s: %s", url, resp.Status, data)
	}
}

// The driver hears every state of an SOS, from "received" while the hub
// is down to "resolved", and a later connection gets the retained state,
// also after the agent and the hub restart.
func TestSOSState_DriverHearsBack(t *testing.T) {
	for _, backend := range []string{"embedded", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			dbURL := "" // an empty URL selects the embedded store in --data-dir
			if backend == "postgres" {
				dbURL = pgtest.NewDatabase(t)
			}
			testDriverHearsBack(t, dbURL)
		})
	}
}

func testDriverHearsBack(t *testing.T, dbURL string) {
	const vehicle = "taxi-0917"
	hubAgentAddr, hubHTTPAddr := freeAddr(t), freeAddr(t)
	agentMQTTAddr, agentHTTPAddr := freeAddr(t), freeAddr(t)
	hubDir, agentDir := t.TempDir(), t.TempDir()
	agentArgs := []string{"agent", "--id", "ncr-1", "--region", "NCR-Manila",
		"--mqtt-addr", agentMQTTAddr, "--http-addr", agentHTTPAddr,
		"--hub-url", "tcp://" + hubAgentAddr, "--data-dir", agentDir,
		// The hub is down before it could send vehicle credentials.
		"--vehicle-auth", "off"}
	startHub := func(name string) *process {
		p := startProcess(t, name, []string{"XPRESS_DATABASE_URL=" + dbURL},
			"hub", "--agent-mqtt-addr", hubAgentAddr, "--http-addr", hubHTTPAddr, "--data-dir", hubDir)
		waitHTTP(t, p, "http://"+hubHTTPAddr+"/readyz")
		return p
	}

	// The hub is down: the agent alone sends the driver "received".
	agentEnv := []string{"XPRESS_AGENT_TOKEN=" + provisionAgent(t, dbURL, hubDir, "ncr-1")}
	agentProc := startProcess(t, "agent", agentEnv, agentArgs...)
	waitHTTP(t, agentProc, "http://"+agentHTTPAddr+"/readyz")
	first := listenStates(t, agentMQTTAddr, vehicle, "taxi-0917-app")
	sos := fmt.Sprintf(`{"id":"sos-1","ts":%q,"lat":14.5995,"lon":120.9842,"kind":"medical"}`, time.Now().Format(time.RFC3339))
	publish(t, first.client, protocol.VehicleTopicFor(vehicle, protocol.TopicSOS), sos)
	first.expectState(vehicle, "sos-1", protocol.SOSStateReceived)

	hubProc := startHub("hub")
	var incidents struct {
		Incidents []struct {
			ID    int64  `json:"id"`
			SOSID string `json:"sos_id"`
		} `json:"incidents"`
	}
	waitFor(t, 60*time.Second, "the incident at the hub", func() bool {
		getJSON(t, "http://"+hubHTTPAddr+"/api/v1/incidents?vehicle="+vehicle, &incidents)
		return len(incidents.Incidents) == 1
	})
	incidentID := incidents.Incidents[0].ID

	operatorAction(t, hubHTTPAddr, incidentID, "acknowledge", `{}`)
	// The hub's "received" repeats the agent's, so the next state the
	// driver gets is acknowledged.
	first.expectState(vehicle, "sos-1", protocol.SOSStateAcknowledged)

	// Another connection of the vehicle gets the retained state.
	second := listenStates(t, agentMQTTAddr, vehicle, "taxi-0917-second")
	second.expectState(vehicle, "sos-1", protocol.SOSStateAcknowledged)
	second.client.Disconnect(100)

	// With the hub stopped, a killed and restarted agent still serves the
	// state from its local SOS store.
	hubProc.kill(syscall.SIGTERM)
	agentProc.kill(syscall.SIGKILL)
	agentProc = startProcess(t, "agent restarted", agentEnv, agentArgs...)
	waitHTTP(t, agentProc, "http://"+agentHTTPAddr+"/readyz")
	third := listenStates(t, agentMQTTAddr, vehicle, "taxi-0917-app-2")
	third.expectState(vehicle, "sos-1", protocol.SOSStateAcknowledged)

	// The restarted hub resyncs from its store; the operator goes on.
	startHub("hub restarted")
	waitFor(t, 60*time.Second, "the agent to reconnect to the hub", func() bool {
		return metricValue(t, "http://"+agentHTTPAddr+"/metrics", "xpress_agent_uplink_connected") == 1
	})
	operatorAction(t, hubHTTPAddr, incidentID, "dispatch", `{"detail":"ambulance 12 from PGH"}`)
	third.expectState(vehicle, "sos-1", protocol.SOSStateDispatched)
	operatorAction(t, hubHTTPAddr, incidentID, "resolve", `{"resolution":"driver taken to hospital"}`)
	third.expectState(vehicle, "sos-1", protocol.SOSStateResolved)
	if m := third.next("the clear of the retained state"); !m.empty || m.topic != protocol.SOSStateTopic(vehicle, "sos-1") {
		t.Fatalf("after resolved: %+v, want the empty payload that clears the retained state", m)
	}

	// After resolved nothing is retained. The new connection publishes a
	// retained status and subscribes to it after the state topics: the
	// broker sends a subscription's retained messages before it reads the
	// next packet, so a retained state would arrive before the status.
	fourth := listenStates(t, agentMQTTAddr, vehicle, "taxi-0917-app-3")
	statusTopic := protocol.VehicleTopicFor(vehicle, protocol.TopicStatus)
	received := make(chan string, 1)
	tok := fourth.client.Publish(statusTopic, 1, true, `{"online":true}`)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish status: %v", tok.Error())
	}
	sub := fourth.client.Subscribe(statusTopic, 1, func(_ mqtt.Client, m mqtt.Message) { received <- m.Topic() })
	if !sub.WaitTimeout(10*time.Second) || sub.Error() != nil {
		t.Fatalf("subscribe to status: %v", sub.Error())
	}
	select {
	case m := <-fourth.msgs:
		t.Errorf("a new connection after resolved got %+v, want no retained state", m)
	case <-received:
	case <-time.After(60 * time.Second):
		t.Fatal("the vehicle's own retained status did not arrive")
	}

	agentMetrics := "http://" + agentHTTPAddr + "/metrics"
	for _, state := range []string{protocol.SOSStateDispatched, protocol.SOSStateResolved} {
		if n := metricValue(t, agentMetrics, "xpress_agent_sos_states_delivered_total", "state", state); n != 1 {
			t.Errorf("agent delivered %v %s states since its restart, want 1", n, state)
		}
	}
	if n := metricValue(t, "http://"+hubHTTPAddr+"/metrics", "xpress_downlink_states_published_total", "state", protocol.SOSStateResolved); n != 1 {
		t.Errorf("hub published %v resolved states, want 1", n)
	}
}
