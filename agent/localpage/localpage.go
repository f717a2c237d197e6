// Package localpage is the agent's regional page: the open SOS alerts of
// the office's vehicles, the state of the link to the hub, and a way for
// regional staff to acknowledge an SOS while the hub is unreachable. It
// is plain HTML and JavaScript embedded into the binary, styled with the
// operators' dashboard stylesheet (package dashboard) so both look alike,
// and it reads the agent's local API (/api/v1/local/sos) from the same
// origin.
package localpage

import (
	"embed"
	"io/fs"
	"net/http"

	"github.com/xpress-ops/tower/dashboard"
)

//go:embed static
var static embed.FS

// sharedAssets are the files served from the operators' dashboard.
var sharedAssets = map[string]bool{"/app.css": true, "/favicon.svg": true}

// Handler returns a handler that serves the page at "/", its script and
// stylesheet, and the dashboard's stylesheet and icon. Any other path gets
// 404. Every response carries Cache-Control: no-cache, so browsers
// revalidate and a new agent version reaches staff on their next reload.
func Handler() http.Handler {
	own, err := fs.Sub(static, "static")
	if err != nil {
		// fs.Sub fails only for an invalid path, and "static" is valid.
		panic(err)
	}
	ownFiles := http.FileServerFS(own)
	shared := http.FileServerFS(dashboard.Files())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		switch p := r.URL.Path; {
		case p == "/" || p == "/local.js" || p == "/local.css":
			ownFiles.ServeHTTP(w, r)
		case sharedAssets[p]:
			shared.ServeHTTP(w, r)
		default:
			http.NotFound(w, r)
		}
	})
}
