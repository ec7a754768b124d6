// Package dashboard is ds serve's web page: the runs list, a run's events
// live, its files, cancel, and the host's state. Its files are embedded in
// the binary (no CDN: it works offline); the page reads nothing but the
// server's own API, with the API key the user gives it when the server has
// keys (kept in the tab's sessionStorage only).
package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var files embed.FS

// Prefix is where the dashboard's files are served; GET / redirects there.
const Prefix = "/ui/"

// Handler serves the dashboard's files under Prefix. They hold no data and
// no secret, so they are served without a key; the page asks for one.
func Handler() http.Handler {
	static, err := fs.Sub(files, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	return http.StripPrefix(Prefix, http.FileServerFS(static))
}
