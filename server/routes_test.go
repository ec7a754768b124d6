package server

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/api"
)

// TestRouteKeys: with keys set, a route needs one exactly when Routes says
// so, and any of the keys opens it.
func TestRouteKeys(t *testing.T) {
	key := strings.Repeat("k", 32)
	url := serveFakeWith(t, &fakeEngine{}, Config{APIKeys: []string{key}})
	path := strings.NewReplacer("{id}", "run-"+strings.Repeat("0", 24), "{path}", "x")
	for _, r := range Routes() {
		t.Run(r.Method+" "+r.Path, func(t *testing.T) {
			h := map[string]string{"Content-Type": "application/json"}
			code, ec, _ := send(t, r.Method, url+path.Replace(r.Path), `{"prompt":"x"}`, h)
			if locked := code == 401 && ec == api.CodeUnauthorized; locked == r.Public {
				t.Errorf("without a key: %d %s; public %v", code, ec, r.Public)
			}
			h["Authorization"] = "Bearer " + key
			if code, ec, _ := send(t, r.Method, url+path.Replace(r.Path), `{"prompt":"x"}`, h); code == 401 {
				t.Errorf("with the key: %d %s", code, ec)
			}
		})
	}
}

// readmeRoutes is README's table of routes as it must read.
func readmeRoutes() string {
	var b strings.Builder
	b.WriteString("| route | API key | what |\n|---|---|---|\n")
	for _, r := range Routes() {
		key := "needed"
		if r.Public {
			key = "no"
		}
		fmt.Fprintf(&b, "| `%s %s` | %s | %s |\n", r.Method, r.Path, key, r.Doc)
	}
	return b.String()
}

// TestREADMERoutes holds README to the route table: its table of routes is
// the one Routes makes, and every route it names elsewhere is served.
func TestREADMERoutes(t *testing.T) {
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	want := readmeRoutes()
	if !strings.Contains(readme, want) {
		t.Errorf("README.md has no table of the routes as the server serves them; it should read:\n%s", want)
	}
	served := map[string]bool{}
	for _, r := range Routes() {
		served[r.Method+" "+r.Path] = true
	}
	for _, m := range regexp.MustCompile("`((?:GET|POST|PUT|PATCH|DELETE) /[^`\\s]*)`").FindAllStringSubmatch(readme, -1) {
		if !served[m[1]] {
			t.Errorf("README.md names %s, which the server does not serve", m[1])
		}
	}
}
