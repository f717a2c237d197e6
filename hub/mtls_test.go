package hub_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/xpress-ops/tower/hub"
	"github.com/xpress-ops/tower/internal/tlsconfig/tlstest"
)

// openMutualTLSHub opens a hub whose agent listeners require client
// certificates signed by clientCA, with a server certificate from
// serverCA, and closes it on cleanup.
func openMutualTLSHub(t *testing.T, serverCA, clientCA *tlstest.CA) *hub.Hub {
	t.Helper()
	h, err := hub.New(hub.Config{
		HTTPAddr: "127.0.0.1:0", AgentMQTTAddr: "127.0.0.1:0", DataDir: t.TempDir(),
		AgentMQTTTLSAddr: "127.0.0.1:0",
		AgentMQTTTLS:     serverTLS(t, serverCA),
		AgentClientCAs:   clientCA.Pool(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Open(context.Background()); err != nil {
		t.Fatalf("open hub: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("close hub: %v", err)
		}
	})
	return h
}

// connectAgent connects to broker ("tls://..." or "tcp://...") as agent
// agentID with token, presenting cert when it is not nil, and returns the
// connect error.
func connectAgent(t *testing.T, broker string, serverCA *tlstest.CA, cert *tls.Certificate, agentID, token string) error {
	t.Helper()
	cfg := &tls.Config{RootCAs: serverCA.Pool(), MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	opts := paho.NewClientOptions().AddBroker(broker).
		SetClientID(agentID).SetUsername(agentID).SetPassword(token).
		SetTLSConfig(cfg).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second)
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(30 * time.Second) {
		t.Fatalf("connect as %s did not finish within 30 s", agentID)
	}
	if err := tok.Error(); err != nil {
		return err
	}
	c.Disconnect(100)
	return nil
}

// clientCert returns a client certificate for name signed by ca.
func clientCert(t *testing.T, ca *tlstest.CA, name string) *tls.Certificate {
	t.Helper()
	certPEM, keyPEM := ca.IssueClient(t, name)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &cert
}

func TestHub_MutualTLSAdmitsOnlyTheAgentItsCertificateNames(t *testing.T) {
	serverCA, clientCA, otherCA := tlstest.NewCA(t, "hub CA"), tlstest.NewCA(t, "agent CA"), tlstest.NewCA(t, "other CA")
	h := openMutualTLSHub(t, serverCA, clientCA)
	ctx := context.Background()
	cebuToken, err := h.ProvisionAgent(ctx, "cebu-1", "Cebu")
	if err != nil {
		t.Fatal(err)
	}
	davaoToken, err := h.ProvisionAgent(ctx, "davao-1", "Davao")
	if err != nil {
		t.Fatal(err)
	}
	tlsURL := "tls://" + h.AgentMQTTTLSAddr().String()
	cebuCert := clientCert(t, clientCA, "cebu-1")

	if err := connectAgent(t, tlsURL, serverCA, cebuCert, "cebu-1", cebuToken); err != nil {
		t.Fatalf("agent with its certificate and token: %v", err)
	}
	for _, c := range []struct {
		name         string
		broker       string
		cert         *tls.Certificate
		agent, token string
		// wantErr is a part of the connect error when the hub itself
		// refuses the CONNECT; empty when the TLS handshake fails first.
		wantErr string
	}{
		{"certificate of another agent", tlsURL, cebuCert, "davao-1", davaoToken, "bad user name or password"},
		{"right certificate, wrong token", tlsURL, cebuCert, "cebu-1", davaoToken, "bad user name or password"},
		{"no certificate", tlsURL, nil, "cebu-1", cebuToken, ""},
		{"certificate of another CA", tlsURL, clientCert(t, otherCA, "cebu-1"), "cebu-1", cebuToken, ""},
		{"plain listener", "tcp://" + h.AgentMQTTAddr().String(), nil, "cebu-1", cebuToken, "bad user name or password"},
	} {
		err := connectAgent(t, c.broker, serverCA, c.cert, c.agent, c.token)
		if err == nil {
			t.Errorf("%s: connected, want refused", c.name)
			continue
		}
		if c.wantErr != "" && !strings.Contains(strings.ToLower(err.Error()), c.wantErr) {
			t.Errorf("%s: error %q, want it to contain %q", c.name, err, c.wantErr)
		}
	}
}

func TestHub_MutualTLSNeedsTheTLSListener(t *testing.T) {
	cfg := hub.Config{HTTPAddr: "127.0.0.1:0", AgentMQTTAddr: "127.0.0.1:0", DataDir: t.TempDir(),
		AgentClientCAs: tlstest.NewCA(t, "agent CA").Pool()}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--agent-mqtt-tls-addr") {
		t.Fatalf("Validate = %v, want an error naming --agent-mqtt-tls-addr", err)
	}
}
