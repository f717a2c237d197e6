package api

import (
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
