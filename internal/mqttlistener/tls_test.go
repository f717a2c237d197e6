package mqttlistener

import (
	"crypto/tls"
	"log/slog"
	"net"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"

	"github.com/xpress-ops/tower/internal/tlsconfig"
	"github.com/xpress-ops/tower/internal/tlsconfig/tlstest"
)

// startTLSServer runs a mochi server with one TLS Listener on port 0
// whose certificate is signed by ca.
func startTLSServer(t *testing.T, ca *tlstest.CA) *Listener {
	t.Helper()
	certFile, keyFile, _ := ca.WriteServerFiles(t, t.TempDir())
	r, err := tlsconfig.NewReloader(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	server := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := server.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewTLS("test-tls", ln, tlsconfig.ServerConfig(r), server, slog.New(slog.DiscardHandler))
	if err := server.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := server.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return l
}

// connectTLS connects a paho client over tls:// trusting ca and returns
// the connect error.
func connectTLS(t *testing.T, addr string, ca *tlstest.CA) error {
	t.Helper()
	opts := paho.NewClientOptions().
		AddBroker("tls://" + addr).
		SetClientID("vehicle-1").
		SetTLSConfig(&tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second)
	client := paho.NewClient(opts)
	tok := client.Connect()
	if !tok.WaitTimeout(30 * time.Second) {
		t.Fatal("paho connect did not finish within 30 s")
	}
	if tok.Error() == nil {
		client.Disconnect(250)
	}
	return tok.Error()
}

func TestListenerTLS_PahoTrustingCAConnects(t *testing.T) {
	ca := tlstest.NewCA(t, "vehicles CA")
	l := startTLSServer(t, ca)
	if err := connectTLS(t, l.Address(), ca); err != nil {
		t.Fatalf("connect over TLS trusting the CA: %v", err)
	}
}

func TestListenerTLS_WrongCARejected(t *testing.T) {
	l := startTLSServer(t, tlstest.NewCA(t, "vehicles CA"))
	if err := connectTLS(t, l.Address(), tlstest.NewCA(t, "other CA")); err == nil {
		t.Fatal("a client trusting another CA connected")
	}
}

func TestListenerTLS_PlainMQTTRejected(t *testing.T) {
	l := startTLSServer(t, tlstest.NewCA(t, "vehicles CA"))
	opts := paho.NewClientOptions().AddBroker("tcp://" + l.Address()).SetClientID("vehicle-2").
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	client := paho.NewClient(opts)
	tok := client.Connect()
	if !tok.WaitTimeout(30 * time.Second) {
		t.Fatal("paho connect did not finish within 30 s")
	}
	if tok.Error() == nil {
		client.Disconnect(0)
		t.Fatal("a plain MQTT client connected to the TLS listener")
	}
}
