package httpsec_test

import (
	"crypto/tls"
	"net/http"
	"testing"

	"github.com/xpress-ops/tower/internal/httpsec"
)

func TestHostCheck_Status(t *testing.T) {
	c := httpsec.NewHostCheck([]string{"Ops.Example.PH."})
	for host, want := range map[string]int{
		"127.0.0.1:8080":      0,
		"[::1]:8080":          0,
		"::1":                 0,
		"localhost":           0,
		"LOCALHOST.:443":      0,
		"ops.example.ph":      0,
		"ops.example.ph:8443": 0,
		"":                    http.StatusBadRequest,
		":8080":               http.StatusBadRequest,
		"evil.example":        http.StatusMisdirectedRequest,
		"ops.example.ph.evil": http.StatusMisdirectedRequest,
		"127.0.0.1.nip.io":    http.StatusMisdirectedRequest,
	} {
		if got := c.Status(host); got != want {
			t.Errorf("Status(%q) = %d, want %d", host, got, want)
		}
	}
}

func TestSameOrigin(t *testing.T) {
	c := httpsec.NewHostCheck([]string{"ops.example.ph"})
	r := &http.Request{Host: "ops.example.ph:8443", TLS: &tls.ConnectionState{}}
	for origin, want := range map[string]bool{
		"https://ops.example.ph:8443":      true,
		"https://OPS.example.ph:8443":      true,
		"http://ops.example.ph:8443":       true,
		"https://ops.example.ph":           false,
		"https://evil.example":             false,
		"null":                             false,
		"":                                 false,
		"https://ops.example.ph:8443/path": false,
		"https://u@ops.example.ph:8443":    false,
		"ftp://ops.example.ph:8443":        false,
	} {
		if got := httpsec.SameOrigin(r, origin, c); got != want {
			t.Errorf("SameOrigin(%q) = %t, want %t", origin, got, want)
		}
	}
	// A Host the check does not allow never matches, even when equal.
	evil := &http.Request{Host: "evil.example"}
	if httpsec.SameOrigin(evil, "http://evil.example", c) {
		t.Error("SameOrigin accepted an Origin equal to a Host that is not allowed")
	}
}
