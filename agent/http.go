package agent

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/xpress-ops/tower/agent/localpage"
	"github.com/xpress-ops/tower/internal/httpsec"
	"github.com/xpress-ops/tower/protocol"
)

// routes returns the agent's HTTP handler: probes and metrics, the
// regional page (package localpage) and its local API.
func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", a.handleHealthz)
	mux.HandleFunc("GET /readyz", a.handleReadyz)
	// The local API needs a session of an operator from the hub's list
	// (see localsession.go); only signing in does not.
	mux.HandleFunc("POST /api/v1/local/session", a.handleLocalLogin)
	mux.HandleFunc("GET /api/v1/local/session", a.requireSession(false, a.handleLocalSession))
	mux.HandleFunc("DELETE /api/v1/local/session", a.requireSession(true, a.handleLocalLogout))
	mux.HandleFunc("GET /api/v1/info", a.requireSession(false, a.handleInfo))
	mux.HandleFunc("GET /api/v1/local/sos", a.requireSession(false, a.handleLocalSOS))
	mux.HandleFunc("POST /api/v1/local/sos/{vehicle}/{sos_id}/acknowledge", a.requireSession(true, a.handleLocalAck))
	mux.HandleFunc("GET /api/v1/", a.requireSession(false, http.NotFound))
	mux.Handle("GET /", localpage.Handler())
	return httpsec.Headers(a.instrument(a.checkHost(mux)))
}

// routeHostRejected is the route label of requests checkHost rejected.
const routeHostRejected = "host_rejected"

// checkHost rejects a request whose Host header is not an IP address,
// localhost or one of Config.HTTPAllowedHosts: 400 without a usable Host,
// 421 for another name. A page on another site that rebinds its DNS name
// to the agent's address sends its own name, so it cannot reach the
// acknowledge endpoint. The request counter counts rejections under the
// route routeHostRejected.
func (a *Agent) checkHost(next http.Handler) http.Handler {
	check := httpsec.NewHostCheck(a.cfg.HTTPAllowedHosts)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status := check.Status(r.Host)
		if status == 0 {
			next.ServeHTTP(w, r)
			return
		}
		// instrument reads the route from the request after this returns.
		r.Pattern = routeHostRejected
		shown := httpsec.ShownHost(r.Host)
		a.log.Warn("HTTP request rejected: Host not allowed", "host", shown, "method", r.Method, "path", r.URL.Path,
			"remote", r.RemoteAddr, "status", status)
		writeJSON(w, status, map[string]string{"error": fmt.Sprintf(
			"host %q is not served by this agent: use its IP address, localhost, or a name given with --http-allowed-hosts", shown)})
	})
}

// httpRequests counts the agent's HTTP requests by route and status.
func newHTTPRequests() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "xpress_agent_http_requests_total",
		Help: "HTTP requests to the agent, by route pattern and status code; unmatched for requests that matched no route, host_rejected for requests whose Host header is not allowed.",
	}, []string{"route", "code"})
}

// instrument counts requests by the route pattern the ServeMux matched,
// so the route label is bounded, and by status code.
func (a *Agent) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
		a.httpRequests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	})
}

// handleHealthz responds 200 while the process serves HTTP at all.
func (a *Agent) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readiness is the body of /readyz.
type readiness struct {
	Ready bool `json:"ready"`
	// Spool is "open", "full" (open, but an SOS could not be stored for
	// lack of space; see spool.Usage.Full) or "closed".
	Spool string `json:"spool"`
	// Broker is "listening" or "stopped".
	Broker string `json:"broker"`
	// Uplink is "connected" or "disconnected"; it does not affect Ready.
	Uplink string `json:"uplink"`
	// HubCredentials is "refused" while the hub refuses the agent's id or
	// token (see uplink.Uplink.CredentialsRefused), else absent. Like
	// Uplink it does not affect Ready: the agent keeps spooling.
	HubCredentials string `json:"hub_credentials,omitempty"`
	// HubSubscriptions is "refused" while the hub refuses one of the
	// uplink's subscriptions (see uplink.Uplink.SubscriptionsRefused), so
	// the agent may miss revoked vehicle credentials; else absent. The
	// uplink reconnects to subscribe again. It does not affect Ready.
	HubSubscriptions string                       `json:"hub_subscriptions,omitempty"`
	Agent            string                       `json:"agent"`
	Region           string                       `json:"region"`
	SpoolID          string                       `json:"spool_id,omitempty"`
	Lanes            map[protocol.Lane]laneReport `json:"lanes,omitempty"`
	// SpoolSpace reports the spool's size cap and usage; absent when the spool is closed.
	SpoolSpace *spaceReport `json:"spool_space,omitempty"`
}

// spaceReport is the spool's space in /readyz, from spool.Usage.
type spaceReport struct {
	Full bool `json:"full"`
	// FullReason is "max_bytes" or "disk", see spool.Usage.FullReason.
	FullReason      string    `json:"full_reason,omitempty"`
	FullSince       time.Time `json:"full_since,omitzero"`
	LiveBytes       int64     `json:"live_bytes"`
	MaxBytes        int64     `json:"max_bytes"`
	SOSReserveBytes int64     `json:"sos_reserve_bytes"`
	FileBytes       int64     `json:"file_bytes"`
}

type laneReport struct {
	Records          int     `json:"records"`
	Bytes            int64   `json:"bytes"`
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
	Rejected         int     `json:"rejected"`
}

// handleReadyz responds 200 when the spool is open and not full and the
// broker listens, so vehicles can be served. A full spool (an SOS could
// not be stored for lack of space) makes the agent unready: it cannot keep
// its main promise, a load balancer should send vehicles to another agent,
// and the failing probe alerts operators. It turns ready again once space
// is freed. A hub outage does not make the agent unready, because the agent
// must keep accepting vehicles while the WAN is down. The body reports the
// uplink state and the spool's space for operators.
func (a *Agent) handleReadyz(w http.ResponseWriter, _ *http.Request) {
	r := readiness{
		Spool:  "closed",
		Broker: "stopped",
		Uplink: a.uplink.State().String(),
		Agent:  a.cfg.ID,
		Region: a.cfg.Region,
	}
	if a.uplink.CredentialsRefused() {
		r.HubCredentials = "refused"
	}
	if a.uplink.SubscriptionsRefused() {
		r.HubSubscriptions = "refused"
	}
	spoolOpen, brokerUp := a.spoolOpen.Load(), a.brokerListen.Load()
	if spoolOpen {
		r.Spool = "open"
		r.SpoolID = a.spool.SpoolID()
		now := a.cfg.Now()
		r.Lanes = make(map[protocol.Lane]laneReport, len(protocol.Lanes))
		for lane, st := range a.spool.Stats() {
			rep := laneReport{Records: st.Records, Bytes: st.Bytes, Rejected: st.Rejected}
			if !st.Oldest.IsZero() {
				rep.OldestAgeSeconds = max(now.Sub(st.Oldest), 0).Round(time.Millisecond).Seconds()
			}
			r.Lanes[lane] = rep
		}
		u := a.spool.Usage()
		r.SpoolSpace = &spaceReport{
			Full: u.Full, FullReason: u.FullReason, FullSince: u.FullSince,
			LiveBytes: u.LiveBytes, MaxBytes: u.MaxBytes, SOSReserveBytes: u.SOSReserveBytes, FileBytes: u.FileBytes,
		}
		if u.Full {
			r.Spool = "full"
		}
	}
	if brokerUp {
		r.Broker = "listening"
	}
	r.Ready = spoolOpen && brokerUp && r.Spool != "full"

	code := http.StatusOK
	if !r.Ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, r)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
