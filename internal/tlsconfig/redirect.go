package tlsconfig

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// RedirectHandler returns a handler that responds to every request with a
// permanent redirect to the same host and path over HTTPS on the port of
// httpsAddr, the HTTPS server's listen address. It serves nothing else.
func RedirectHandler(httpsAddr string) http.Handler {
	_, port, _ := net.SplitHostPort(httpsAddr)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(r.Host); err == nil {
			host = h
		}
		if host == "" {
			http.Error(w, "missing Host header: use HTTPS", http.StatusBadRequest)
			return
		}
		if port != "" && port != "443" {
			host = net.JoinHostPort(host, port)
		} else if net.ParseIP(host) != nil && net.ParseIP(host).To4() == nil {
			host = "[" + host + "]"
		}
		w.Header().Set("Connection", "close")
		http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusPermanentRedirect)
	})
}

// RedirectServer is a plain HTTP server that only redirects to HTTPS.
type RedirectServer struct {
	ln   net.Listener
	srv  *http.Server
	done chan error
}

// ListenRedirect starts a RedirectServer on addr that redirects to the
// HTTPS server listening on httpsAddr.
func ListenRedirect(addr, httpsAddr string, log *slog.Logger) (*RedirectServer, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for the HTTPS redirect on %s: %w", addr, err)
	}
	s := &RedirectServer{
		ln: ln,
		srv: &http.Server{
			Handler:           RedirectHandler(httpsAddr),
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		done: make(chan error, 1),
	}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	log.Info("HTTPS redirect listening", "addr", ln.Addr().String(), "https_addr", httpsAddr)
	return s, nil
}

// Addr returns the bound address.
func (s *RedirectServer) Addr() net.Addr { return s.ln.Addr() }

// Close stops the server and returns the error that stopped it, if any.
func (s *RedirectServer) Close() error {
	return errors.Join(s.srv.Close(), <-s.done)
}
