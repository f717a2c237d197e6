package retainguard

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"go.uber.org/goleak"

	"github.com/xpress-ops/tower/internal/mqttlistener"
)

// unguardedEnv makes the test binary run the subscribe and publish loop
// without the guard and exit, for TestGuard_RaceDetectedWithoutGuard.
const unguardedEnv = "XPRESS_RETAINGUARD_UNGUARDED"

func TestMain(m *testing.M) {
	if os.Getenv(unguardedEnv) == "1" {
		if err := runLoop(false); err != nil {
			fmt.Fprintln(os.Stderr, "loop failed:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for the broker.
const waitTimeout = 10 * time.Second

// broker is a mochi server on a loopback port, with the guard when it
// has one.
type broker struct {
	server *mqtt.Server
	guard  *Guard
	addr   string
}

func startBroker(guarded bool) (*broker, error) {
	server := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler), InlineClient: true})
	b := &broker{server: server}
	if err := server.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, err
	}
	if guarded {
		b.guard = New()
		if err := server.AddHook(b.guard, nil); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := mqttlistener.New("test", ln, server, slog.New(slog.DiscardHandler))
	if err := server.AddListener(l); err != nil {
		return nil, errors.Join(err, ln.Close())
	}
	if err := server.Serve(); err != nil {
		return nil, errors.Join(err, server.Close())
	}
	b.addr = l.Address()
	return b, nil
}

// publishRetained publishes through the guard, or straight to mochi
// without one.
func (b *broker) publishRetained(topic string, payload []byte) error {
	if b.guard != nil {
		return b.guard.Publish(b.server, topic, payload, true, 1)
	}
	return b.server.Publish(topic, payload, true, 1)
}

func connect(addr, clientID string, handler paho.MessageHandler) (paho.Client, error) {
	opts := paho.NewClientOptions().
		AddBroker("tcp://" + addr).
		SetClientID(clientID).
		SetAutoReconnect(false).
		SetConnectTimeout(waitTimeout).
		SetDefaultPublishHandler(handler)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		return nil, fmt.Errorf("connect %s: %v", clientID, tok.Error())
	}
	return c, nil
}

// Sizes of the loop: enough rounds for the race detector to catch the
// unguarded race on a 2-core machine.
const (
	loopClients = 4
	loopRounds  = 150
	loopTopics  = 8
)

// runLoop subscribes and unsubscribes wildcard filters on several
// clients while retained messages are published and cleared on matching
// topics, through the guard when guarded is set.
func runLoop(guarded bool) error {
	b, err := startBroker(guarded)
	if err != nil {
		return err
	}
	defer b.server.Close()

	stop := make(chan struct{})
	publishErr := make(chan error, 1)
	go func() {
		defer close(publishErr)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			var payload []byte
			if i%3 != 2 {
				payload = fmt.Appendf(nil, `{"state":"received","n":%d}`, i)
			}
			if err := b.publishRetained(fmt.Sprintf("guard/v%d/sos/s%d/state", i%loopTopics, i%2), payload); err != nil {
				publishErr <- err
				return
			}
		}
	}()

	var wg sync.WaitGroup
	errs := make(chan error, loopClients)
	for c := range loopClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client, err := connect(b.addr, fmt.Sprintf("sub-%d", c), func(paho.Client, paho.Message) {})
			if err != nil {
				errs <- err
				return
			}
			defer client.Disconnect(50)
			filters := []string{"guard/+/sos/+/state", "guard/#", fmt.Sprintf("guard/v%d/sos/+/state", c)}
			for round := range loopRounds {
				filter := filters[round%len(filters)]
				if tok := client.Subscribe(filter, 1, nil); !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
					errs <- fmt.Errorf("client %d: subscribe to %s: %v", c, filter, tok.Error())
					return
				}
				if tok := client.Unsubscribe(filter); !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
					errs <- fmt.Errorf("client %d: unsubscribe from %s: %v", c, filter, tok.Error())
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	close(errs)
	err = <-publishErr
	for e := range errs {
		err = errors.Join(err, e)
	}
	return err
}

// The guarded loop runs clean under -race; the test binary fails when the
// race detector reports a race.
func TestGuard_WildcardSubscribesDuringRetainedPublishes(t *testing.T) {
	if err := runLoop(true); err != nil {
		t.Fatal(err)
	}
}

// The same loop without the guard is a data race that the race detector
// reports, so the test above would fail without the guard.
func TestGuard_RaceDetectedWithoutGuard(t *testing.T) {
	if !raceEnabled {
		t.Skip("needs the race detector: run go test -race")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), unguardedEnv+"=1")
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "WARNING: DATA RACE") || !strings.Contains(string(out), "scanMessages") {
		t.Fatalf("the unguarded loop reported no race in TopicsIndex.scanMessages; output:\n%s", out)
	}
}

func TestGuard_SubscriberGetsRetainedMessages(t *testing.T) {
	b, err := startBroker(true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.server.Close() })
	for i := range 3 {
		if err := b.publishRetained(fmt.Sprintf("guard/v%d/state", i), []byte("on")); err != nil {
			t.Fatal(err)
		}
	}
	// A clear removes one of them.
	if err := b.publishRetained("guard/v1/state", nil); err != nil {
		t.Fatal(err)
	}

	got := make(chan string, 8)
	client, err := connect(b.addr, "reader", func(_ paho.Client, m paho.Message) { got <- m.Topic() })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Disconnect(50) })
	if tok := client.Subscribe("guard/+/state", 1, nil); !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	seen := map[string]bool{}
	for len(seen) < 2 {
		select {
		case topic := <-got:
			seen[topic] = true
		case <-time.After(waitTimeout):
			t.Fatalf("retained messages received: %v, want guard/v0/state and guard/v2/state", seen)
		}
	}
	if seen["guard/v1/state"] || !seen["guard/v0/state"] || !seen["guard/v2/state"] {
		t.Errorf("retained messages received: %v, want guard/v0/state and guard/v2/state only", seen)
	}

	// The read lock of the SUBSCRIBE was released: a retained publish
	// completes and reaches the subscriber.
	done := make(chan error, 1)
	go func() { done <- b.publishRetained("guard/v3/state", []byte("on")) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("a retained publish after the subscribe is still blocked: the SUBSCRIBE kept its read lock")
	}
	select {
	case topic := <-got:
		if topic != "guard/v3/state" {
			t.Errorf("live message on %s, want guard/v3/state", topic)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the live retained message did not reach the subscriber")
	}
}

// A SUBSCRIBE that fails mochi's validation (packet id 0) gets no SUBACK
// and must not leave a read lock behind.
func TestGuard_InvalidSubscribeLeavesNoLock(t *testing.T) {
	b, err := startBroker(true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.server.Close() })

	conn, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// CONNECT, MQTT 3.1.1, clean session, keep-alive 60 s, client id "raw".
	connect := []byte{0x10, 15, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 3, 'r', 'a', 'w'}
	// SUBSCRIBE with packet id 0 to "guard/#" at QoS 1.
	subscribe := []byte{0x82, 12, 0, 0, 0, 7, 'g', 'u', 'a', 'r', 'd', '/', '#', 1}
	if _, err := conn.Write(append(connect, subscribe...)); err != nil {
		t.Fatal(err)
	}
	// mochi closes the connection for the protocol violation.
	if err := conn.SetReadDeadline(time.Now().Add(waitTimeout)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	for {
		if _, err := conn.Read(buf); err != nil {
			break
		}
	}

	done := make(chan error, 1)
	go func() { done <- b.publishRetained("guard/v0/state", []byte("on")) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("a retained publish is blocked after an invalid SUBSCRIBE: the guard kept a read lock")
	}
}
