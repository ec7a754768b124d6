package server

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/runs"
)

// TestRebinding: a page whose name was made to resolve to a key-less
// server (DNS rebinding) is refused, whatever Host, Origin or forwarded
// headers it sends; the names the server is really reached by pass.
func TestRebinding(t *testing.T) {
	key := strings.Repeat("k", 32)
	cases := []struct {
		name    string
		cfg     Config
		method  string
		path    string
		host    string // "" keeps the listener's address
		headers map[string]string
		want    int
	}{
		{"rebound name starts a run", Config{}, "POST", "/runs", "evil.test:8000", map[string]string{"Origin": "http://evil.test:8000"}, 403},
		{"rebound name lists runs", Config{}, "GET", "/runs", "evil.test:8000", map[string]string{"Origin": "http://evil.test:8000"}, 403},
		{"rebound name reads health", Config{}, "GET", "/health", "evil.test", nil, 403},
		{"trailing dot", Config{}, "GET", "/runs", "localhost.:8000", nil, 403},
		{"forwarded host as same origin", Config{}, "POST", "/runs", "", map[string]string{"X-Forwarded-Host": "evil.test", "Origin": "http://evil.test"}, 403},
		{"forwarded scheme as same origin", Config{}, "POST", "/runs", "127.0.0.1:8000", map[string]string{"X-Forwarded-Proto": "https", "Origin": "https://127.0.0.1:8000"}, 403},
		{"forwarded host names the page", Config{}, "GET", "/runs", "evil.test:8000", map[string]string{"X-Forwarded-Host": "localhost"}, 403},
		{"loopback address", Config{}, "POST", "/runs", "", nil, 202},
		{"own origin", Config{}, "POST", "/runs", "127.0.0.1:8000", map[string]string{"Origin": "http://127.0.0.1:8000"}, 202},
		{"localhost", Config{}, "GET", "/runs", "localhost:8000", map[string]string{"Origin": "http://localhost:8000"}, 200},
		{"IPv6 loopback", Config{}, "GET", "/runs", "[::1]:8000", nil, 200},
		{"LAN address of --insecure", Config{}, "GET", "/runs", "192.0.2.7:8000", nil, 200},
		{"the --host name", Config{Host: "sandstorm.lan"}, "GET", "/runs", "sandstorm.lan:8000", nil, 200},
		{"another name than --host", Config{Host: "sandstorm.lan"}, "GET", "/runs", "evil.test:8000", nil, 403},
		{"keys guard any name", Config{APIKeys: []string{key}}, "GET", "/runs", "runs.example.com", map[string]string{"Authorization": "Bearer " + key}, 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			url, _ := serveEngine(t, &stepEngine{step: make(chan struct{})}, tc.cfg, runs.Options{})
			req, _ := http.NewRequest(tc.method, url+tc.path, strings.NewReader(`{"prompt":"x"}`))
			req.Header.Set("Content-Type", "application/json")
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			if tc.host != "" {
				req.Host = tc.host
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s %s Host %q %v: %d, want %d", tc.method, tc.path, req.Host, tc.headers, resp.StatusCode, tc.want)
			}
			var e apiError
			if err := json.NewDecoder(resp.Body).Decode(&e); tc.want == 403 && (err != nil || e.Error != api.CodeForbidden) {
				t.Errorf("refusal: %v %+v, want a JSON forbidden error", err, e)
			}
		})
	}
}
