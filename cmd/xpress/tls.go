package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"

	"github.com/xpress-ops/tower/agent"
	"github.com/xpress-ops/tower/hub"

	"github.com/xpress-ops/tower/internal/tlsconfig"
)

// httpTLSFlags are the HTTPS flags of xpress hub and xpress agent for
// their --http-addr.
type httpTLSFlags struct {
	certFile     string
	keyFile      string
	redirectAddr string
	insecureHTTP bool
}

func (f *httpTLSFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.certFile, "tls-cert-file", "", "PEM certificate chain for HTTPS on --http-addr; read again when it changes, so rotation needs no restart")
	fs.StringVar(&f.keyFile, "tls-key-file", "", "PEM private key of --tls-cert-file; the file must have mode 0600")
	fs.StringVar(&f.redirectAddr, "http-redirect-addr", "", "address of a plain HTTP listener that only redirects to HTTPS, e.g. :80 (needs --tls-cert-file)")
	fs.BoolVar(&f.insecureHTTP, "insecure-http", false, "serve plain HTTP on a non-loopback --http-addr, only behind a TLS-terminating proxy")
}

// config returns the HTTPS configuration, or nil for plain HTTP, which is
// allowed only on a loopback httpAddr unless --insecure-http is given.
func (f *httpTLSFlags) config(httpAddr string, log *slog.Logger) (*tls.Config, error) {
	cfg, err := serverTLS("tls-cert-file", "tls-key-file", f.certFile, f.keyFile, log)
	if err != nil {
		return nil, err
	}
	if cfg != nil {
		return cfg, nil
	}
	if f.redirectAddr != "" {
		return nil, fmt.Errorf("%s needs %s and %s: it redirects to HTTPS", flagLabel("http-redirect-addr"),
			flagLabel("tls-cert-file"), flagLabel("tls-key-file"))
	}
	return nil, tlsconfig.CheckPlainHTTP("--http-addr", httpAddr, f.insecureHTTP)
}

// startRedirect starts the --http-redirect-addr listener, if any, that
// redirects to the HTTPS server on httpsAddr. The returned function stops it.
func (f *httpTLSFlags) startRedirect(httpsAddr string, log *slog.Logger) (func() error, error) {
	if f.redirectAddr == "" {
		return func() error { return nil }, nil
	}
	rs, err := tlsconfig.ListenRedirect(f.redirectAddr, httpsAddr, log)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flagLabel("http-redirect-addr"), err)
	}
	return rs.Close, nil
}

// serverTLS returns a server configuration from a certificate and key
// file pair given by the flags certFlag and keyFlag, or nil when neither
// is given. The key file must not be readable by group or others.
func serverTLS(certFlag, keyFlag, certFile, keyFile string, log *slog.Logger) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("%s and %s must be given together", flagLabel(certFlag), flagLabel(keyFlag))
	}
	r, err := tlsconfig.NewReloader(certFile, keyFile, log)
	if err != nil {
		return nil, fmt.Errorf("%s, %s: %w", flagLabel(certFlag), flagLabel(keyFlag), err)
	}
	return tlsconfig.ServerConfig(r), nil
}

// mqttTLS returns the configuration of a TLS MQTT listener on the address
// of addrFlag, or nil when addr is empty. The certificate flags are
// required with the address and rejected without it.
func mqttTLS(addrFlag, addr, certFlag, certFile, keyFlag, keyFile string, log *slog.Logger) (*tls.Config, error) {
	if addr == "" {
		if certFile != "" || keyFile != "" {
			return nil, fmt.Errorf("%s and %s need %s", flagLabel(certFlag), flagLabel(keyFlag), flagLabel(addrFlag))
		}
		return nil, nil
	}
	cfg, err := serverTLS(certFlag, keyFlag, certFile, keyFile, log)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return nil, errors.New(flagLabel(addrFlag) + " needs " + flagLabel(certFlag) + " and " + flagLabel(keyFlag))
	}
	return cfg, nil
}

// hubTLSFlags are the TLS flags of xpress hub.
type hubTLSFlags struct {
	http             httpTLSFlags
	agentMQTTTLSAddr string
	agentMQTTTLSCert string
	agentMQTTTLSKey  string
	agentClientCA    string
}

func (f *hubTLSFlags) register(fs *flag.FlagSet) {
	f.http.register(fs)
	fs.StringVar(&f.agentMQTTTLSAddr, "agent-mqtt-tls-addr", "", "address where agents connect over MQTT over TLS, next to --agent-mqtt-addr, e.g. :8884 (needs --agent-mqtt-tls-cert-file)")
	fs.StringVar(&f.agentMQTTTLSCert, "agent-mqtt-tls-cert-file", "", "PEM certificate chain of --agent-mqtt-tls-addr; read again when it changes")
	fs.StringVar(&f.agentMQTTTLSKey, "agent-mqtt-tls-key-file", "", "PEM private key of --agent-mqtt-tls-cert-file; the file must have mode 0600")
	fs.StringVar(&f.agentClientCA, "agent-mqtt-tls-client-ca-file", "", "PEM CA certificates for mutual TLS: every agent must then connect to --agent-mqtt-tls-addr with a client certificate from these CAs whose common name or a DNS name is its agent id, besides its token")
}

// apply sets the TLS fields of cfg from the flags.
func (f *hubTLSFlags) apply(cfg *hub.Config, log *slog.Logger) error {
	var errs []error
	var err error
	if cfg.HTTPTLS, err = f.http.config(cfg.HTTPAddr, log); err != nil {
		errs = append(errs, err)
	}
	cfg.AgentMQTTTLSAddr = f.agentMQTTTLSAddr
	if cfg.AgentMQTTTLS, err = mqttTLS("agent-mqtt-tls-addr", f.agentMQTTTLSAddr,
		"agent-mqtt-tls-cert-file", f.agentMQTTTLSCert, "agent-mqtt-tls-key-file", f.agentMQTTTLSKey, log); err != nil {
		errs = append(errs, err)
	}
	if f.agentClientCA != "" {
		if f.agentMQTTTLSAddr == "" {
			errs = append(errs, fmt.Errorf("%s needs %s: mutual TLS is only possible over TLS", flagLabel("agent-mqtt-tls-client-ca-file"), flagLabel("agent-mqtt-tls-addr")))
		} else if cfg.AgentClientCAs, err = tlsconfig.ClientCAPool(f.agentClientCA); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", flagLabel("agent-mqtt-tls-client-ca-file"), err))
		}
	}
	return errors.Join(errs...)
}

// agentTLSFlags are the TLS flags of xpress agent.
type agentTLSFlags struct {
	http        httpTLSFlags
	mqttTLSAddr string
	mqttTLSCert string
	mqttTLSKey  string
	hubCAFile   string
	hubCert     string
	hubKey      string
}

func (f *agentTLSFlags) register(fs *flag.FlagSet) {
	f.http.register(fs)
	fs.StringVar(&f.mqttTLSAddr, "mqtt-tls-addr", "", "address where vehicles connect over MQTT over TLS, next to --mqtt-addr, e.g. :8883 (needs --mqtt-tls-cert-file)")
	fs.StringVar(&f.mqttTLSCert, "mqtt-tls-cert-file", "", "PEM certificate chain of --mqtt-tls-addr; read again when it changes")
	fs.StringVar(&f.mqttTLSKey, "mqtt-tls-key-file", "", "PEM private key of --mqtt-tls-cert-file; the file must have mode 0600")
	fs.StringVar(&f.hubCAFile, "hub-ca-file", "", "PEM CA certificates that sign the hub's certificate, for a tls:// or ssl:// --hub-url; empty trusts the system roots")
	fs.StringVar(&f.hubCert, "hub-client-cert-file", "", "PEM client certificate for a hub that requires mutual TLS, naming this agent's --id; read again when it changes")
	fs.StringVar(&f.hubKey, "hub-client-key-file", "", "PEM private key of --hub-client-cert-file; the file must have mode 0600")
}

// apply sets the TLS fields of cfg from the flags.
func (f *agentTLSFlags) apply(cfg *agent.Config, log *slog.Logger) error {
	var errs []error
	var err error
	if cfg.HTTPTLS, err = f.http.config(cfg.HTTPAddr, log); err != nil {
		errs = append(errs, err)
	}
	cfg.MQTTTLSAddr = f.mqttTLSAddr
	if cfg.MQTTTLS, err = mqttTLS("mqtt-tls-addr", f.mqttTLSAddr,
		"mqtt-tls-cert-file", f.mqttTLSCert, "mqtt-tls-key-file", f.mqttTLSKey, log); err != nil {
		errs = append(errs, err)
	}
	hubURL := cfg.HubURL
	if hubURL == "" {
		hubURL = agent.DefaultHubURL
	}
	u, err := url.Parse(hubURL)
	// An unparsable URL is reported by agent.Config.Validate.
	if err == nil && (u.Scheme == "tls" || u.Scheme == "ssl") {
		if cfg.HubTLS, err = tlsconfig.ClientConfig(f.hubCAFile); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", flagLabel("hub-ca-file"), err))
		}
		if f.hubCert != "" || f.hubKey != "" {
			if f.hubCert == "" || f.hubKey == "" {
				errs = append(errs, fmt.Errorf("%s and %s must be given together", flagLabel("hub-client-cert-file"), flagLabel("hub-client-key-file")))
			} else if r, err := tlsconfig.NewReloader(f.hubCert, f.hubKey, log); err != nil {
				errs = append(errs, fmt.Errorf("%s, %s: %w", flagLabel("hub-client-cert-file"), flagLabel("hub-client-key-file"), err))
			} else if cfg.HubTLS != nil {
				cfg.HubTLS.GetClientCertificate = r.GetClientCertificate
			}
		}
	} else {
		for _, fl := range []struct{ name, value string }{
			{"hub-ca-file", f.hubCAFile}, {"hub-client-cert-file", f.hubCert}, {"hub-client-key-file", f.hubKey},
		} {
			if fl.value != "" {
				errs = append(errs, fmt.Errorf("%s needs a tls:// or ssl:// %s, not %q", flagLabel(fl.name), flagLabel("hub-url"), hubURL))
			}
		}
	}
	return errors.Join(errs...)
}
