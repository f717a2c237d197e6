//go:build e2e

package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/internal/passhash"
	"github.com/xpress-ops/tower/protocol"
)

// agentSnapshot is what agent_check.mjs reports about the regional page.
type agentSnapshot struct {
	Phase       string `json:"phase"`
	Title       string `json:"title"`
	Hub         string `json:"hub"`
	Outage      string `json:"outage"`
	Calm        string `json:"calm"`
	Notice      string `json:"notice"`
	Error       string `json:"error"`
	Login       bool   `json:"login"`
	LoginNotice string `json:"loginNotice"`
	LoginError  string `json:"loginError"`
	SignedIn    string `json:"signedIn"`
	PanelClass  string `json:"panelClass"`
	Rows        []struct {
		ClassName string   `json:"className"`
		Cells     []string `json:"cells"`
		MapLink   string   `json:"mapLink"`
	} `json:"rows"`
	Errors []string `json:"errors"`
}

// The agent's regional page, in a real browser during a hub outage: the
// outage banner, the SOS row with its map link and Manila time, a refused
// acknowledgement without a name, and a local acknowledgement that the
// driver hears.
func TestAgentPage_OutageAcknowledge(t *testing.T) {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "playwright-core")); err != nil {
		t.Fatalf("playwright-core is missing: run `npm ci` in %s (%v)", dir, err)
	}

	// No hub listens on this port: the agent starts in a hub outage.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hubURL := "tcp://" + ln.Addr().String()
	ln.Close()
	a, err := agent.New(agent.Config{
		ID: "ncr-page", Region: "NCR-Manila", MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		HubURL: hubURL, DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })

	const vehicle = "MNL-0420"
	states := make(chan protocol.SOSState, 8)
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + a.MQTTAddr().String()).
		SetClientID(vehicle).SetUsername(vehicle).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("vehicle connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	if tok := c.Subscribe(protocol.VehiclePrefix+vehicle+"/sos/+/state", 1, func(_ paho.Client, m paho.Message) {
		if st, err := protocol.DecodeSOSState(m.Payload()); err == nil {
			states <- st
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	sos := `{"id":"sos-page-1","kind":"crash","lat":14.5995,"lon":120.9842,"note":"rear-ended on EDSA"}`
	if tok := c.Publish(protocol.VehicleTopicFor(vehicle, protocol.TopicSOS), 1, false, sos); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish SOS: %v", tok.Error())
	}
	expect := func(want string) {
		t.Helper()
		select {
		case st := <-states:
			if st.State != want {
				t.Fatalf("driver heard %s, want %s", st.State, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("driver did not hear %s", want)
		}
	}
	expect(protocol.SOSStateReceived)

	shots := filepath.Join(dir, "screenshots")
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// The operator's password is made for this run; the hub would send
	// its argon2id hash in the agent's operator list.
	password := rand.Text()
	cmd := exec.CommandContext(ctx, "node", "agent_check.mjs", "http://"+a.HTTPAddr().String()+"/", shots, "maria", password)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node: %v", err)
	}
	lines := bufio.NewScanner(stdout)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	next := func(phase string) agentSnapshot {
		t.Helper()
		if !lines.Scan() {
			_ = cmd.Wait()
			t.Fatalf("agent_check.mjs ended before the %s snapshot: %v\n%s", phase, lines.Err(), stderr.String())
		}
		var s agentSnapshot
		if err := json.Unmarshal(lines.Bytes(), &s); err != nil {
			t.Fatalf("snapshot %s: %v", lines.Text(), err)
		}
		if s.Phase != phase {
			t.Fatalf("snapshot phase %q, want %q", s.Phase, phase)
		}
		for _, e := range s.Errors {
			t.Errorf("browser reported: %s", e)
		}
		return s
	}

	// The agent never reached the hub, so every sign-in fails for now.
	if none := next("no-operators"); !none.Login || !strings.Contains(none.LoginNotice, "No operator accounts received from the hub yet") || len(none.Rows) != 0 {
		t.Errorf("page without operator accounts: sign-in form %v, notice %q, rows %d", none.Login, none.LoginNotice, len(none.Rows))
	}
	hash, err := passhash.Hash(password, passhash.Password)
	if err != nil {
		t.Fatal(err)
	}
	list, err := protocol.EncodeOperatorList(&protocol.OperatorList{Agent: "ncr-page", Region: "NCR-Manila", IssuedAt: time.Now().UTC(),
		Operators: []protocol.OperatorCredential{{Username: "maria", DisplayName: "Maria Santos", Role: "operator", Hash: hash}}})
	if err != nil {
		t.Fatal(err)
	}
	a.LocalAuth().HubMessage(protocol.AgentOperatorsTopic("ncr-page"), list)

	if wrong := next("wrong-password"); !wrong.Login || wrong.LoginError != "wrong user name or password" || wrong.LoginNotice != "" {
		t.Errorf("wrong password: sign-in form %v, error %q, notice %q", wrong.Login, wrong.LoginError, wrong.LoginNotice)
	}

	loaded := next("loaded")
	if loaded.Login || !strings.Contains(loaded.SignedIn, "Maria Santos") || !strings.Contains(loaded.SignedIn, "operator") {
		t.Errorf("signed in: sign-in form %v, operator shown %q", loaded.Login, loaded.SignedIn)
	}
	if !strings.HasPrefix(loaded.Title, "HUB DOWN") || loaded.Hub != "Hub: UNREACHABLE" || !strings.Contains(loaded.Outage, "HUB UNREACHABLE for") {
		t.Errorf("outage display: title %q, hub %q, banner %q", loaded.Title, loaded.Hub, loaded.Outage)
	}
	if loaded.Calm != "" || !strings.Contains(loaded.PanelClass, "has-open") {
		t.Errorf("calm notice %q, panel class %q; want no calm notice and the panel marked", loaded.Calm, loaded.PanelClass)
	}
	if len(loaded.Rows) != 1 {
		t.Fatalf("%d SOS rows, want 1", len(loaded.Rows))
	}
	row := strings.Join(loaded.Rows[0].Cells, " | ")
	for _, part := range []string{vehicle, "sos-page-1", "crash", "PHT", "received", "not yet", "14.59950, 120.98420", "rear-ended on EDSA", "Acknowledge"} {
		if !strings.Contains(row, part) {
			t.Errorf("row %q does not show %q", row, part)
		}
	}
	if loaded.Rows[0].MapLink != "https://maps.google.com/?q=14.59950,120.98420" || loaded.Rows[0].ClassName != "state-open" {
		t.Errorf("row class %q, map link %q", loaded.Rows[0].ClassName, loaded.Rows[0].MapLink)
	}

	select {
	case st := <-states:
		t.Fatalf("driver heard %s before anyone acknowledged", st.State)
	default:
	}

	acked := next("acknowledged")
	if len(acked.Rows) != 1 || !strings.Contains(strings.Join(acked.Rows[0].Cells, " | "), "Acknowledged here by Maria Santos (maria)") {
		t.Errorf("rows after the acknowledgement = %+v", acked.Rows)
	}
	if !strings.Contains(acked.Notice, "the driver has been told") || acked.Error != "" {
		t.Errorf("notice %q, error %q", acked.Notice, acked.Error)
	}
	expect(protocol.SOSStateAcknowledged)
	if out := next("signed-out"); !out.Login || out.SignedIn != "" || !strings.Contains(out.LoginNotice, "signed out") {
		t.Errorf("after sign-out: sign-in form %v, operator shown %q, notice %q", out.Login, out.SignedIn, out.LoginNotice)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("agent_check.mjs: %v\n%s", err, stderr.String())
	}
}
