package httpsec

import (
	"net"
	"net/http"
	"net/url"
	"strings"
)

// HostCheck decides which Host headers an HTTP server serves: IP
// addresses, localhost and the names it was given. A page on another
// site that rebinds its DNS name to the server's address sends its own
// name in the Host header, so the check keeps it away from the API.
type HostCheck struct {
	allowed map[string]bool
}

// NewHostCheck returns a HostCheck that allows IP addresses, localhost
// and names. Names are compared without case and without a trailing
// dot.
func NewHostCheck(names []string) *HostCheck {
	allowed := map[string]bool{"localhost": true}
	for _, h := range names {
		allowed[NormalizeHost(h)] = true
	}
	return &HostCheck{allowed: allowed}
}

// Status returns 0 when a request with Host header hostport may be
// served, http.StatusBadRequest when it names no host and
// http.StatusMisdirectedRequest (421) when it names a host not allowed.
func (c *HostCheck) Status(hostport string) int {
	host := hostport
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = NormalizeHost(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	switch {
	case host == "":
		return http.StatusBadRequest
	case net.ParseIP(host) != nil, c.allowed[host]:
		return 0
	}
	return http.StatusMisdirectedRequest
}

// Allowed reports whether hostport names a host the server serves.
func (c *HostCheck) Allowed(hostport string) bool { return c.Status(hostport) == 0 }

// NormalizeHost lowercases a host name and drops a trailing dot.
func NormalizeHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".")
}

// ShownHost returns a Host header cut to 100 bytes, for logs and error
// messages.
func ShownHost(host string) string {
	if len(host) > 100 {
		return host[:100] + "..."
	}
	return host
}

// SameOrigin reports whether the Origin header origin is an http or
// https origin whose host is the one r was sent to (its Host header) and
// one check allows. The scheme is not compared with the connection's, so
// a server behind a proxy that ends TLS still matches its own pages.
func SameOrigin(r *http.Request, origin string, check *HostCheck) bool {
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.User != nil {
		return false
	}
	return strings.EqualFold(u.Host, r.Host) && check.Allowed(u.Host)
}
