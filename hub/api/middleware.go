package api

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/xpress-ops/tower/internal/httpsec"
)

// instrument counts requests by route pattern and status code and times
// them. It reads the pattern the ServeMux matched, so the route label is
// bounded; requests that matched no route are labelled "unmatched".
func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &httpsec.StatusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)

		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		code := rec.Status
		if code == 0 {
			code = http.StatusOK
		}
		s.metrics.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
		s.metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// routeHostRejected is the route label of requests checkHost rejected.
const routeHostRejected = "host_rejected"

// checkHost rejects a request whose Host header is not an IP address,
// localhost or one of Config.AllowedHosts: 400 without a usable Host,
// 421 for another name. A page on another site that rebinds its DNS name
// to the hub's address sends its own name, so it cannot sign in, use a
// session or open the stream. Probes are checked too: a load balancer
// reaches them by address or an allowed name.
func (s *Server) checkHost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status := s.hosts.Status(r.Host)
		if status == 0 {
			next.ServeHTTP(w, r)
			return
		}
		// instrument reads the route from the request after this returns.
		r.Pattern = routeHostRejected
		shown := httpsec.ShownHost(r.Host)
		s.log.Warn("HTTP request rejected: Host not allowed", "host", shown, "method", r.Method, "path", r.URL.Path,
			"remote", r.RemoteAddr, "status", status)
		s.writeJSON(w, r, status, map[string]string{"error": fmt.Sprintf(
			"host %q is not served by this hub: use its IP address, localhost, or a name given with --http-allowed-hosts", shown)})
	})
}
