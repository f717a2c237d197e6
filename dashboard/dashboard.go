// Package dashboard is the operators' web page: plain HTML, CSS and
// JavaScript embedded into the binary, with no build step and nothing
// loaded from other hosts. The page reads the hub's JSON API and its
// WebSocket event stream from the same origin.
package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed static
var static embed.FS

// Files returns the embedded static files, rooted at the page's URL root.
func Files() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		// fs.Sub fails only for an invalid path, and "static" is valid.
		panic(err)
	}
	return sub
}

// Handler returns a handler that serves the embedded page at "/" and its
// assets below it. Paths ending in "/" other than the root get 404, so no
// directory is ever listed. Every response carries Cache-Control: no-cache,
// so browsers revalidate and a new hub version reaches operators on their
// next reload.
func Handler() http.Handler {
	files := http.FileServerFS(Files())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" && strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
