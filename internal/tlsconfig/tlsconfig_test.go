package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/xpress-ops/tower/internal/tlsconfig/tlstest"
)

func TestCheckPlainHTTP(t *testing.T) {
	cases := []struct {
		addr     string
		insecure bool
		wantErr  bool
	}{
		{"192.0.2.1:8080", false, true},
		{":8080", false, true},
		{"0.0.0.0:8080", false, true},
		{"[2001:db8::1]:8080", false, true},
		{"example.com:8080", false, true},
		{"192.0.2.1:8080", true, false},
		{"127.0.0.1:8080", false, false},
		{"127.0.0.2:8080", false, false},
		{"[::1]:8080", false, false},
		{"localhost:8080", false, false},
	}
	for _, c := range cases {
		err := CheckPlainHTTP("--http-addr", c.addr, c.insecure)
		if c.wantErr {
			if !errors.Is(err, ErrPlainHTTP) {
				t.Errorf("CheckPlainHTTP(%q, insecure=%v) = %v, want ErrPlainHTTP", c.addr, c.insecure, err)
				continue
			}
			for _, want := range []string{"--http-addr", c.addr, "--tls-cert-file", "--insecure-http"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		} else if err != nil {
			t.Errorf("CheckPlainHTTP(%q, insecure=%v) = %v, want nil", c.addr, c.insecure, err)
		}
	}
}

func TestReloaderRejectsReadableKey(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, _ := tlstest.NewCA(t, "test CA").WriteServerFiles(t, dir)
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := NewReloader(certFile, keyFile, nil)
	if err == nil {
		t.Fatal("NewReloader accepted a key file with mode 0644")
	}
	if !strings.Contains(err.Error(), "chmod 600 "+keyFile) {
		t.Errorf("error %q does not give the fix chmod 600 %s", err, keyFile)
	}
}

// serveTLS serves cfg on a loopback port and returns its address.
func serveTLS(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// peerSerial connects to addr trusting ca and returns the serial number
// of the server certificate.
func peerSerial(t *testing.T, addr string, ca *tlstest.CA) *big.Int {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), MinVersion: MinVersion})
	if err != nil {
		t.Fatalf("TLS dial %s: %v", addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

func TestReloaderPicksUpRotation(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "test CA")
	certFile, keyFile, first := ca.WriteServerFiles(t, dir)
	now := time.Now()
	r, err := newReloader(certFile, keyFile, nil, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, ServerConfig(r))
	if got := peerSerial(t, addr, ca); got.Cmp(first) != 0 {
		t.Fatalf("serial before rotation = %s, want %s", got, first)
	}

	// A rotation writes new files; a distinct modification time marks
	// them changed even on a file system with coarse timestamps.
	_, _, second := ca.WriteServerFiles(t, dir)
	later := time.Now().Add(time.Hour)
	for _, f := range []string{certFile, keyFile} {
		if err := os.Chtimes(f, later, later); err != nil {
			t.Fatal(err)
		}
	}
	if got := peerSerial(t, addr, ca); got.Cmp(second) != 0 {
		t.Errorf("serial after rotation = %s, want the new certificate's %s", got, second)
	}
}

func TestReloaderReadsAgainEveryInterval(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "test CA")
	certFile, keyFile, _ := ca.WriteServerFiles(t, dir)
	info, err := os.Stat(certFile)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r, err := newReloader(certFile, keyFile, nil, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	// New files with the old modification time look unchanged until the
	// reload interval has passed.
	_, _, second := ca.WriteServerFiles(t, dir)
	for _, f := range []string{certFile, keyFile} {
		if err := os.Chtimes(f, info.ModTime(), info.ModTime()); err != nil {
			t.Fatal(err)
		}
	}
	now = now.Add(ReloadInterval)
	cert, err := r.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf.SerialNumber.Cmp(second) != 0 {
		t.Errorf("serial after the reload interval = %s, want %s", cert.Leaf.SerialNumber, second)
	}
}

func TestReloaderKeepsCertificateOnBadFiles(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "test CA")
	certFile, keyFile, first := ca.WriteServerFiles(t, dir)
	r, err := NewReloader(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, []byte("half-written"), 0o644); err != nil {
		t.Fatal(err)
	}
	cert, err := r.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf.SerialNumber.Cmp(first) != 0 {
		t.Errorf("serial after a bad reload = %s, want the previous %s", cert.Leaf.SerialNumber, first)
	}
}

func TestServerConfigRejectsTLS11(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "test CA")
	certFile, keyFile, _ := ca.WriteServerFiles(t, dir)
	r, err := NewReloader(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, ServerConfig(r))
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
	if err == nil {
		conn.Close()
		t.Fatal("a TLS 1.1 client completed the handshake")
	}
}

func TestClientConfigRejectsWrongCA(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "server CA")
	certFile, keyFile, _ := ca.WriteServerFiles(t, dir)
	r, err := NewReloader(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, ServerConfig(r))

	right, err := ClientConfig(ca.WriteCAFile(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", addr, right)
	if err != nil {
		t.Fatalf("dial trusting the server's CA: %v", err)
	}
	conn.Close()

	wrong, err := ClientConfig(tlstest.NewCA(t, "other CA").WriteCAFile(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	conn, err = tls.Dial("tcp", addr, wrong)
	if err == nil {
		conn.Close()
		t.Fatal("dial trusting another CA succeeded")
	}
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("dial error = %v, want an unknown authority error", err)
	}
}

func TestClientConfigRejectsFileWithoutPEM(t *testing.T) {
	path := t.TempDir() + "/ca.pem"
	if err := os.WriteFile(path, []byte("not PEM"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ClientConfig(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("ClientConfig(%s) = %v, want an error naming the file", path, err)
	}
}

func TestRedirectServer(t *testing.T) {
	rs, err := ListenRedirect("127.0.0.1:0", "127.0.0.1:8443", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	_, port, _ := net.SplitHostPort(rs.Addr().String())
	resp, err := client.Get("http://localhost:" + port + "/api/v1/incidents?status=open")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusPermanentRedirect {
		t.Errorf("status = %d, want 308", resp.StatusCode)
	}
	if got, want := resp.Header.Get("Location"), "https://localhost:8443/api/v1/incidents?status=open"; got != want {
		t.Errorf("Location = %q, want %q", got, want)
	}
}
