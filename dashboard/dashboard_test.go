package dashboard_test

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"path"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/net/html"

	"github.com/xpress-ops/tower/dashboard"
)

func get(t *testing.T, h http.Handler, target string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	res := rec.Result()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(body)
}

func TestHandler_ServesFilesWithContentTypes(t *testing.T) {
	h := dashboard.Handler()
	for target, want := range map[string]string{
		"/":            "text/html; charset=utf-8",
		"/index.html":  "", // redirected to "/"
		"/app.js":      "text/javascript; charset=utf-8",
		"/app.css":     "text/css; charset=utf-8",
		"/favicon.svg": "image/svg+xml",
		"/login.html":  "text/html; charset=utf-8",
		"/login.js":    "text/javascript; charset=utf-8",
	} {
		res, body := get(t, h, target)
		if want == "" {
			if res.StatusCode != http.StatusMovedPermanently || res.Header.Get("Location") != "./" {
				t.Errorf("GET %s = %d to %q, want a redirect to ./", target, res.StatusCode, res.Header.Get("Location"))
			}
			continue
		}
		if res.StatusCode != http.StatusOK {
			t.Errorf("GET %s status = %d, want 200", target, res.StatusCode)
		}
		if got := res.Header.Get("Content-Type"); got != want {
			t.Errorf("GET %s Content-Type = %q, want %q", target, got, want)
		}
		if got := res.Header.Get("Cache-Control"); got != "no-cache" {
			t.Errorf("GET %s Cache-Control = %q, want no-cache", target, got)
		}
		if len(body) == 0 {
			t.Errorf("GET %s body is empty", target)
		}
	}
}

func TestHandler_NotFoundAndNoListings(t *testing.T) {
	h := dashboard.Handler()
	for _, target := range []string{"/missing.js", "/static/", "/static/app.js", "/assets/", "/../dashboard.go"} {
		if res, _ := get(t, h, target); res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s status = %d, want 404", target, res.StatusCode)
		}
	}
}

// TestIndex_NoInlineScriptOrStyle checks what the hub's Content-Security-Policy
// (script-src 'self'; style-src 'self') would block: inline script bodies,
// event-handler attributes, javascript: URLs, style elements and attributes.
func TestIndex_NoInlineScriptOrStyle(t *testing.T) {
	files := dashboard.Files()
	pages, err := fs.Glob(files, "*.html")
	if err != nil || len(pages) == 0 {
		t.Fatalf("no HTML pages embedded (%v)", err)
	}
	for _, page := range pages {
		data, err := fs.ReadFile(files, page)
		if err != nil {
			t.Fatal(err)
		}
		z := html.NewTokenizer(strings.NewReader(string(data)))
		inScript := false
		for {
			tt := z.Next()
			if tt == html.ErrorToken {
				if z.Err() != io.EOF {
					t.Fatalf("%s: %v", page, z.Err())
				}
				break
			}
			tok := z.Token()
			switch tt {
			case html.StartTagToken, html.SelfClosingTagToken:
				if tok.Data == "style" {
					t.Errorf("%s: <style> element; put styles in app.css", page)
				}
				hasSrc := false
				for _, a := range tok.Attr {
					name := strings.ToLower(a.Key)
					switch {
					case strings.HasPrefix(name, "on"):
						t.Errorf("%s: <%s %s=...> is an inline event handler", page, tok.Data, a.Key)
					case name == "style":
						t.Errorf("%s: <%s style=...> is an inline style", page, tok.Data)
					case strings.HasPrefix(strings.ToLower(strings.TrimSpace(a.Val)), "javascript:"):
						t.Errorf("%s: <%s %s=%q> is a javascript: URL", page, tok.Data, a.Key, a.Val)
					case name == "src":
						hasSrc = true
					}
				}
				if tok.Data == "script" {
					if !hasSrc {
						t.Errorf("%s: <script> without src", page)
					}
					inScript = true
				}
			case html.EndTagToken:
				if tok.Data == "script" {
					inScript = false
				}
			case html.TextToken:
				if inScript && strings.TrimSpace(tok.Data) != "" {
					t.Errorf("%s: inline script body %.60q", page, tok.Data)
				}
			}
		}
	}
}

// TestFiles_EverythingLocal checks that the page loads nothing from other
// hosts and that every file the page references is embedded.
func TestFiles_EverythingLocal(t *testing.T) {
	files := dashboard.Files()
	// The SVG namespace is an identifier, not a download.
	external := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	err := fs.WalkDir(files, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(files, name)
		if err != nil {
			return err
		}
		for _, m := range external.FindAllString(string(data), -1) {
			if m != "http://www.w3.org" {
				t.Errorf("%s refers to another host: %s", name, m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	for _, page := range []string{"index.html", "login.html"} {
		data, err := fs.ReadFile(files, page)
		if err != nil {
			t.Fatal(err)
		}
		refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(string(data), -1)
		if len(refs) < 3 {
			t.Fatalf("%s references %d files, want its script, app.css and the icon", page, len(refs))
		}
		for _, ref := range refs {
			if _, err := fs.Stat(files, path.Clean(ref[1])); err != nil {
				t.Errorf("%s references %s, which is not embedded: %v", page, ref[1], err)
			}
		}
	}
}
