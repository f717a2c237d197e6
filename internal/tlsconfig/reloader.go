package tlsconfig

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// ReloadInterval is how often the Reloader reads its files again even
// when their size and modification time look unchanged.
const ReloadInterval = time.Minute

// Reloader serves a certificate and key read from PEM files and reads them
// again when either file's size or modification time changes, or when
// ReloadInterval has passed, so a rotated certificate is used without a
// restart. A reload that fails (a half-written file, a key that does not
// match, a key file readable by others) is logged and the previous
// certificate stays in use.
type Reloader struct {
	certFile, keyFile string
	log               *slog.Logger
	now               func() time.Time

	mu       sync.Mutex
	cert     *tls.Certificate
	stamp    [2]fileStamp
	loadedAt time.Time
}

// fileStamp is the size and modification time of a file, compared to
// notice a change.
type fileStamp struct {
	size    int64
	modTime time.Time
}

// NewReloader reads certFile and keyFile and returns a Reloader serving
// them. It fails when a file is missing or invalid, or when keyFile is
// readable by group or others. A nil log discards the reload logs.
func NewReloader(certFile, keyFile string, log *slog.Logger) (*Reloader, error) {
	return newReloader(certFile, keyFile, log, time.Now)
}

func newReloader(certFile, keyFile string, log *slog.Logger, now func() time.Time) (*Reloader, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{certFile: certFile, keyFile: keyFile, log: log, now: now}
	stamp := r.stat()
	cert, err := r.load()
	if err != nil {
		return nil, err
	}
	r.cert, r.stamp, r.loadedAt = cert, stamp, now()
	return r, nil
}

// GetCertificate returns the current certificate, reading the files again
// first when they changed. It is a tls.Config.GetCertificate function.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	stamp := r.stat()
	if stamp == r.stamp && now.Sub(r.loadedAt) < ReloadInterval {
		return r.cert, nil
	}
	// Failed reloads are retried on the next change or interval, not on
	// every handshake, so a broken file logs once per change.
	r.stamp, r.loadedAt = stamp, now
	cert, err := r.load()
	if err != nil {
		r.log.Error("TLS certificate reload failed; serving the previous certificate",
			"cert_file", r.certFile, "key_file", r.keyFile, "error", err)
		return r.cert, nil
	}
	if !sameCertificate(cert, r.cert) {
		r.log.Info("TLS certificate reloaded", "cert_file", r.certFile, "not_after", cert.Leaf.NotAfter)
	}
	r.cert = cert
	return r.cert, nil
}

// GetClientCertificate returns the current certificate like
// GetCertificate, for a client that presents it to a server requiring
// mutual TLS. It is a tls.Config.GetClientCertificate function.
func (r *Reloader) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return r.GetCertificate(nil)
}

// stat returns the stamps of the certificate and key files. A file that
// cannot be read gets a zero stamp, which differs from any loaded one.
func (r *Reloader) stat() [2]fileStamp {
	var s [2]fileStamp
	for i, path := range []string{r.certFile, r.keyFile} {
		if info, err := os.Stat(path); err == nil {
			s[i] = fileStamp{size: info.Size(), modTime: info.ModTime()}
		}
	}
	return s
}

func (r *Reloader) load() (*tls.Certificate, error) {
	if err := CheckKeyFile(r.keyFile); err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s and key %s: %w", r.certFile, r.keyFile, err)
	}
	return &cert, nil
}

func sameCertificate(a, b *tls.Certificate) bool {
	if a == nil || b == nil || len(a.Certificate) == 0 || len(b.Certificate) == 0 {
		return false
	}
	return string(a.Certificate[0]) == string(b.Certificate[0])
}
