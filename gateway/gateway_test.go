package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/runnerproto"
)

const realKey = "sk-ant-api03-REAL-SECRET-KEY-DO-NOT-LEAK"

// client talks HTTP over the session's Unix socket, as the sandbox does.
func client(s *Session) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", s.SocketPath())
		},
	}}
}

func post(t *testing.T, s *Session, path, token string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://sandbox"+path, strings.NewReader(`{"model":"m","stream":true}`))
	if token != "" {
		req.Header.Set("x-api-key", token)
	}
	resp, err := client(s).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func open(t *testing.T, upstream string, creds Credentials, logs io.Writer) *Session {
	t.Helper()
	if logs == nil {
		logs = io.Discard
	}
	g, err := New(Config{Upstream: upstream, Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	s, err := g.Open("sess-1", SessionOptions{Credentials: creds, RunnerConfig: []byte(`{"prompt":"p"}`), Owner: "me"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestCredentialsSwapped(t *testing.T) {
	tests := []struct {
		name       string
		creds      Credentials
		wantHeader string
		wantValue  string
	}{
		{"anthropic key as x-api-key", Credentials{AnthropicKey: realKey}, "x-api-key", realKey},
		{"openrouter key as bearer", Credentials{OpenRouterKey: "sk-or-secret"}, "Authorization", "Bearer sk-or-secret"},
		{"openrouter wins over anthropic", Credentials{AnthropicKey: realKey, OpenRouterKey: "sk-or-secret"}, "Authorization", "Bearer sk-or-secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got http.Header
			hits := 0
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits++
				got = r.Header.Clone()
				w.WriteHeader(200)
			}))
			defer up.Close()
			s := open(t, up.URL, tt.creds, nil)
			resp := post(t, s, "/v1/messages?beta=true", s.Token)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if got.Get(tt.wantHeader) != tt.wantValue {
				t.Errorf("upstream got %s=%q", tt.wantHeader, got.Get(tt.wantHeader))
			}
			for k, vs := range got {
				for _, v := range vs {
					if strings.Contains(v, s.Token) {
						t.Errorf("session token forwarded upstream in %s", k)
					}
				}
			}
			if hits != 1 {
				t.Errorf("upstream saw %d requests, want 1", hits)
			}
		})
	}
}

func TestRefusals(t *testing.T) {
	called := false
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { called = true }))
	defer up.Close()
	s := open(t, up.URL, Credentials{AnthropicKey: realKey}, nil)
	tests := []struct {
		name, path, token string
		status            int
	}{
		{"no token", "/v1/messages", "", 401},
		{"wrong token", "/v1/messages", "sandstorm-session-guess", 401},
		{"real key is not a token", "/v1/messages", realKey, 401},
		{"other API path", "/v1/files", s.Token, 404},
		{"path escape", "/v1/messages/../../admin", s.Token, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := post(t, s, tt.path, tt.token)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("status %d, want %d (%s)", resp.StatusCode, tt.status, body)
			}
			if bytes.Contains(body, []byte(realKey)) {
				t.Error("error body shows the key")
			}
		})
	}
	if called {
		t.Error("a refused request reached the upstream")
	}
}

func TestStreamsWithoutBuffering(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "event: message_start\ndata: {}\n\n")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "event: message_stop\ndata: {}\n\n")
	}))
	defer up.Close()
	defer close(release)
	s := open(t, up.URL, Credentials{AnthropicKey: realKey}, nil)
	resp := post(t, s, "/v1/messages", s.Token)
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "event: message_start\n" {
		t.Fatalf("first event did not arrive before the upstream finished: %q %v", line, err)
	}
}

func TestCloseKillsSession(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	s := open(t, up.URL, Credentials{AnthropicKey: realKey}, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Errorf("session directory still there: %v", err)
	}
	if _, err := net.DialTimeout("unix", s.SocketPath(), time.Second); err == nil {
		t.Error("socket still accepts connections")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestUpstreamErrorLogsNoSecret(t *testing.T) {
	var logs bytes.Buffer
	s := open(t, "http://127.0.0.1:1", Credentials{AnthropicKey: realKey}, &logs)
	resp := post(t, s, "/v1/messages", s.Token)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status %d, want 502", resp.StatusCode)
	}
	for _, out := range []string{logs.String(), string(body)} {
		if strings.Contains(out, realKey) || strings.Contains(out, s.Token) {
			t.Errorf("secret in output: %s", out)
		}
	}
	if !strings.Contains(logs.String(), "upstream request failed") {
		t.Errorf("failure not logged: %q", logs.String())
	}
}

func TestBadConfig(t *testing.T) {
	for _, u := range []string{"ftp://x", "not a url", "http://"} {
		if _, err := New(Config{Upstream: u, Dir: t.TempDir()}); err == nil {
			t.Errorf("upstream %q accepted", u)
		}
	}
	g, err := New(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", "..", "a/b"} {
		if _, err := g.Open(id, SessionOptions{}); err == nil {
			t.Errorf("session id %q accepted", id)
		}
	}
}

// The runner's config is served over the socket to the token only; no file
// of the session directory holds it, and nothing in it is world-readable.
func TestRunnerConfig(t *testing.T) {
	s := open(t, "http://127.0.0.1:1", Credentials{}, nil)
	get := func(token string) (int, string) {
		req, _ := http.NewRequest("GET", "http://sandbox"+runnerproto.Docs.Config, nil)
		if token != "" {
			req.Header.Set("x-api-key", token)
		}
		resp, err := client(s).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(s.Token); code != 200 || body != `{"prompt":"p"}` {
		t.Errorf("with the token: %d %q", code, body)
	}
	if code, _ := get("sandstorm-session-guess"); code != 401 {
		t.Errorf("without the token: %d", code)
	}
	entries, _ := os.ReadDir(s.Dir)
	for _, e := range entries {
		fi, _ := os.Lstat(filepath.Join(s.Dir, e.Name()))
		if e.Name() != runnerproto.SessionDir.ModelSocket && fi.Mode().Perm()&0o044 != 0 {
			t.Errorf("%s is readable by others: %v", e.Name(), fi.Mode())
		}
		if data, _ := os.ReadFile(filepath.Join(s.Dir, e.Name())); strings.Contains(string(data), "prompt") {
			t.Errorf("%s holds the prompt", e.Name())
		}
	}
}

// Sweep removes the directories of owners that are gone, and only those.
func TestSweep(t *testing.T) {
	g, err := New(Config{Upstream: "http://127.0.0.1:1", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	live, err := g.Open("live", SessionOptions{Owner: "alive"})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	dead, err := g.Open("dead", SessionOptions{Owner: "gone"})
	if err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(g.cfg.Dir, "opening"), 0o711)
	removed, err := Sweep(g.Dir(), func(owner string) bool { return owner == "gone" })
	if err != nil || len(removed) != 1 || removed[0] != dead.Dir {
		t.Errorf("sweep removed %v, %v; want only %s", removed, err, dead.Dir)
	}
	for _, d := range []string{live.Dir, filepath.Join(g.cfg.Dir, "opening")} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s was removed", d)
		}
	}
}

// TestPending: a pending session's token reaches nothing until Activate,
// its runner's config request waits for the run, and after Close the
// token is worthless again.
func TestPending(t *testing.T) {
	var calls atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.Header.Get("x-api-key") != "sk-ant-real" {
			t.Errorf("upstream got key %q", r.Header.Get("x-api-key"))
		}
		w.Write([]byte(`{}`))
	}))
	defer up.Close()
	g, err := New(Config{Upstream: up.URL, Dir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	s, err := g.Open("warm-1", SessionOptions{Pending: true, Owner: "me", Credentials: Credentials{AnthropicKey: "ignored"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if resp := post(t, s, "/v1/messages", s.Token); resp.StatusCode != 403 || calls.Load() != 0 {
		t.Errorf("before Activate: %d, %d upstream calls", resp.StatusCode, calls.Load())
	}
	config := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://sandbox"+runnerproto.Docs.Config, nil)
		req.Header.Set("x-api-key", s.Token)
		resp, err := client(s).Do(req)
		if err != nil {
			config <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		config <- string(b)
	}()
	select {
	case c := <-config:
		t.Fatalf("config answered before Activate: %q", c)
	case <-s.Asked():
	}
	for !s.Waiting() {
		time.Sleep(time.Millisecond)
	}
	if err := s.Activate(Grant{Credentials: Credentials{AnthropicKey: "sk-ant-real"}, RunnerConfig: []byte(`{"prompt":"late"}`)}); err != nil {
		t.Fatal(err)
	}
	if c := <-config; c != `{"prompt":"late"}` {
		t.Errorf("config %q", c)
	}
	if s.Waiting() {
		t.Error("still waiting after Activate")
	}
	if resp := post(t, s, "/v1/messages", s.Token); resp.StatusCode != 200 || calls.Load() != 1 {
		t.Errorf("after Activate: %d, %d upstream calls", resp.StatusCode, calls.Load())
	}
	if err := s.Activate(Grant{}); !errors.Is(err, ErrNotPending) {
		t.Errorf("second Activate: %v", err)
	}
	s.Close()
	req, _ := http.NewRequest("POST", "http://sandbox/v1/messages", strings.NewReader(`{}`))
	req.Header.Set("x-api-key", s.Token)
	if resp, err := client(s).Do(req); err == nil {
		t.Errorf("after Close: %d", resp.StatusCode)
		resp.Body.Close()
	}
}
