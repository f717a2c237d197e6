// Package tlsconfig builds the TLS configurations of the hub and the
// agent: server certificates read from files and reloaded when they
// change, client trust of a private CA, the rule that plain HTTP listens
// only on loopback addresses, and the HTTP listener that redirects to HTTPS.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
)

// MinVersion is the oldest TLS version the hub and the agent accept and offer.
const MinVersion = tls.VersionTLS12

// HSTS is the Strict-Transport-Security value of every HTTPS response:
// browsers use only HTTPS for the host and its subdomains for a year.
const HSTS = "max-age=31536000; includeSubDomains"

// CheckKeyFile returns an error when the private key file at path cannot
// be read or is readable by group or others, as the XPRESS_*_FILE
// secrets are checked.
func CheckKeyFile(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("read TLS key file: %w", err)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("TLS key file %s has mode %04o, readable by group or others: run chmod 600 %s", path, perm, path)
	}
	return nil
}

// ServerConfig returns a server configuration that takes its certificate
// from r on every handshake, so a rotated certificate needs no restart.
func ServerConfig(r *Reloader) *tls.Config {
	return &tls.Config{MinVersion: MinVersion, GetCertificate: r.GetCertificate}
}

// ClientConfig returns a client configuration that trusts the PEM
// certificates in caFile instead of the system roots. An empty caFile
// means the system roots.
func ClientConfig(caFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: MinVersion}
	if caFile == "" {
		return cfg, nil
	}
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("CA file %s contains no PEM certificate", caFile)
	}
	cfg.RootCAs = pool
	return cfg, nil
}

// ClientCAPool returns a pool of the PEM certificates in caFile, the CAs
// whose client certificates a server with mutual TLS accepts.
func ClientCAPool(caFile string) (*x509.CertPool, error) {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read client CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("client CA file %s contains no PEM certificate", caFile)
	}
	return pool, nil
}

// RequireClientCertificates returns a copy of cfg that makes every client
// present a certificate signed by one of pool's CAs, so the handshake
// fails for a client without one.
func RequireClientCertificates(cfg *tls.Config, pool *x509.CertPool) *tls.Config {
	c := cfg.Clone()
	c.ClientAuth = tls.RequireAndVerifyClientCert
	c.ClientCAs = pool
	return c
}

// PeerNames returns the names a verified client certificate of conn
// carries, its subject common name and DNS names, and false when conn is
// not a TLS connection or its peer presented no verified certificate. A
// connection that wraps another, with a NetConn method as *tls.Conn has,
// is unwrapped until a *tls.Conn is found.
func PeerNames(conn net.Conn) ([]string, bool) {
	tc, ok := conn.(*tls.Conn)
	for !ok {
		w, isWrapper := conn.(interface{ NetConn() net.Conn })
		if !isWrapper {
			return nil, false
		}
		conn = w.NetConn()
		tc, ok = conn.(*tls.Conn)
	}
	st := tc.ConnectionState()
	if !st.HandshakeComplete || len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return nil, false
	}
	leaf := st.VerifiedChains[0][0]
	names := append([]string{leaf.Subject.CommonName}, leaf.DNSNames...)
	return names, true
}

// IsLoopback reports whether the listen address addr ("host:port") binds
// only a loopback interface: 127.0.0.0/8, ::1 or localhost. An empty host
// binds every interface, so it is not loopback.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ErrPlainHTTP is wrapped by CheckPlainHTTP's error.
var ErrPlainHTTP = errors.New("plain HTTP on a non-loopback address")

// CheckPlainHTTP returns an error when a server without TLS would listen
// on addr, which is not a loopback address, and insecure is false.
// flagName names the address flag in the message, e.g. "--http-addr".
// insecure is for a TLS-terminating proxy in front of the server.
func CheckPlainHTTP(flagName, addr string, insecure bool) error {
	if insecure || IsLoopback(addr) {
		return nil
	}
	return fmt.Errorf("%w: %s %q is not a loopback address; give --tls-cert-file and --tls-key-file to serve HTTPS, "+
		"listen on 127.0.0.1 for development, or give --insecure-http when a TLS-terminating proxy is in front", ErrPlainHTTP, flagName, addr)
}
