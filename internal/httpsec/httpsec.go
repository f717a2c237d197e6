// Package httpsec holds what the hub's and the agent's HTTP servers share:
// the security headers on every response and a status recorder for
// request metrics.
package httpsec

import (
	"net/http"

	"github.com/xpress-ops/tower/internal/tlsconfig"
)

// ContentSecurityPolicy allows only same-origin resources and no inline
// script or style, and forbids framing.
const ContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'"

// Headers sets the headers every response carries, error pages
// included, and HSTS on every HTTPS response.
func Headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Content-Security-Policy", ContentSecurityPolicy)
		h.Set("X-Frame-Options", "DENY")
		if r.TLS != nil {
			h.Set("Strict-Transport-Security", tlsconfig.HSTS)
		}
		next.ServeHTTP(w, r)
	})
}

// StatusRecorder is a ResponseWriter that remembers the status code
// written, 0 until the handler writes. Unwrap lets
// http.ResponseController and a WebSocket upgrade reach the underlying
// writer's Hijacker and Flusher.
type StatusRecorder struct {
	http.ResponseWriter
	Status int
}

// WriteHeader records the first status code and passes it on.
func (r *StatusRecorder) WriteHeader(code int) {
	if r.Status == 0 {
		r.Status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

// Write records 200 when no status was written and passes b on.
func (r *StatusRecorder) Write(b []byte) (int, error) {
	if r.Status == 0 {
		r.Status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap returns the underlying ResponseWriter.
func (r *StatusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
