package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/runs"
	"github.com/sandstorm-dev/sandstorm/runstore"
)

// fakeEngine validates requests as the real engine does (api.Request's own
// Validate) and plays a run, so the HTTP layer is tested without a daemon.
type fakeEngine struct {
	// admitted counts the requests that reached the engine.
	admitted atomic.Int32
	admitErr error
	startErr error
	health   api.Health
	// endless runs emit until emit fails, then report it on ended.
	endless bool
	ended   chan error
}

func (f *fakeEngine) Admit(_ context.Context, req api.Request, _ func(int)) (api.Run, error) {
	f.admitted.Add(1)
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if f.admitErr != nil {
		return nil, f.admitErr
	}
	return fakeRun{f}, nil
}

func (f *fakeEngine) Health(context.Context) api.Health { return f.health }

type fakeRun struct{ f *fakeEngine }

func (r fakeRun) Start(_ context.Context, emit api.Emit) (api.Outcome, error) {
	if r.f.startErr != nil {
		return api.Outcome{}, r.f.startErr
	}
	if r.f.endless {
		frame := json.RawMessage(`{"type":"stdout","line":"` + strings.Repeat("x", 64<<10) + `"}`)
		for {
			if err := emit(frame); err != nil {
				r.f.ended <- err
				return api.Outcome{}, err
			}
		}
	}
	if err := emit(json.RawMessage(`{"type":"result","subtype":"success","is_error":false}`)); err != nil {
		return api.Outcome{}, err
	}
	return api.Outcome{}, nil
}

func serveFake(t *testing.T, f *fakeEngine) string {
	t.Helper()
	return serveFakeWith(t, f, Config{})
}

func serveFakeWith(t *testing.T, f *fakeEngine, cfg Config) string {
	t.Helper()
	if f.health.Status == "" {
		f.health = api.Health{Status: api.HealthOK, Backend: "fake"}
	}
	cfg.WriteTimeout = 300 * time.Millisecond
	url, _ := serveEngine(t, f, cfg, runs.Options{})
	return url
}

// serveEngine serves eng, over a run store of the test's, on a free port.
func serveEngine(t *testing.T, eng api.Engine, cfg Config, o runs.Options) (string, *runs.Service) {
	t.Helper()
	svc := openRuns(t, eng, o)
	srv := New(eng, svc, cfg)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	// Before the service closes (cleanups run last first).
	t.Cleanup(func() { srv.Shutdown(time.Second) })
	return "http://" + l.Addr().String(), svc
}

// TestRequests needs no daemon: the server's answers before and at the
// start of a stream.
func TestRequests(t *testing.T) {
	t.Run("bad input", func(t *testing.T) { badInput(t, serveFake(t, &fakeEngine{})) })

	t.Run("busy", func(t *testing.T) {
		url := serveFake(t, &fakeEngine{admitErr: fmt.Errorf("%w: 1 running, 0 waiting", api.ErrBusy)})
		resp := post(t, url, `{"prompt":"x"}`)
		var body apiError
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != 429 || body.Error != api.CodeBusy {
			t.Errorf("busy: %d %+v", resp.StatusCode, body)
		}
	})

	// A run that could not start says why in the stream, with the code the
	// one table gives: cancelled before its sandbox started is "cancelled".
	for _, tt := range []struct {
		err  error
		code api.Code
	}{
		{fmt.Errorf("create container ds-1: %w", context.Canceled), api.CodeCancelled},
		{errors.New("open model gateway session: disk full"), api.CodeInternal},
	} {
		t.Run("start fails "+string(tt.code), func(t *testing.T) {
			url := serveFake(t, &fakeEngine{startErr: tt.err})
			resp := post(t, url, `{"prompt":"x"}`)
			defer resp.Body.Close()
			var got []map[string]any
			(&harness{}).events(t, resp.Body, func(ev map[string]any) bool { got = append(got, ev); return true })
			if len(got) != 1 || got[0]["type"] != "error" || got[0]["code"] != string(tt.code) {
				t.Errorf("stream %v, want one error %q", got, tt.code)
			}
		})
	}

	t.Run("stream", func(t *testing.T) {
		resp := post(t, serveFake(t, &fakeEngine{}), `{"prompt":"x"}`)
		defer resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("X-Accel-Buffering") != "no" {
			t.Fatalf("status %d headers %v", resp.StatusCode, resp.Header)
		}
		var types []string
		(&harness{}).events(t, resp.Body, func(ev map[string]any) bool { types = append(types, fmt.Sprint(ev["type"])); return true })
		if strings.Join(types, " ") != "result" {
			t.Errorf("events %v", types)
		}
	})

	// A client that stops reading is cut after the write timeout: the run
	// sees its emit fail and ends.
	t.Run("stalled reader", func(t *testing.T) {
		f := &fakeEngine{endless: true, ended: make(chan error, 1)}
		dialStalled(t, serveFake(t, f), `{"prompt":"x"}`)
		select {
		case err := <-f.ended:
			t.Logf("emit failed: %v", err)
		case <-time.After(10 * time.Second):
			t.Error("a client that stopped reading was not cut")
		}
	})

	// A body over the limit gets its 413 in Python's requests too (which
	// is still sending when the server answers), not a broken pipe.
	t.Run("oversize body from python requests", func(t *testing.T) {
		if exec.Command("python3", "-c", "import requests").Run() != nil {
			t.Skip("python3 with requests is not installed")
		}
		script := `import sys, requests
r = requests.post(sys.argv[1] + "/query", data=b'{"prompt":"' + b"a" * (60 << 20) + b'"}', headers={"Content-Type": "application/json"})
print(r.status_code, r.json()["error"])`
		out, err := exec.Command("python3", "-c", script, serveFake(t, &fakeEngine{})).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "413 too_large" {
			t.Errorf("python requests with a 60 MB body: %v: %s", err, out)
		}
	})

	t.Run("degraded health", func(t *testing.T) {
		url := serveFake(t, &fakeEngine{health: api.Health{Status: api.HealthDegraded, Backend: "fake", Error: "does not answer"}})
		hr, err := http.Get(url + "/health")
		if err != nil {
			t.Fatal(err)
		}
		var h api.Health
		json.NewDecoder(hr.Body).Decode(&h)
		hr.Body.Close()
		if hr.StatusCode != 503 || h.Status != api.HealthDegraded || h.Error == "" {
			t.Errorf("health %d %+v", hr.StatusCode, h)
		}
	})
}

// send posts body to path with headers, and returns the status and error code.
func send(t *testing.T, method, url string, body string, headers map[string]string) (int, api.Code, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var e apiError
	_ = json.Unmarshal(data, &e)
	return resp.StatusCode, e.Error, data
}

// TestDriveBy: a page of another origin cannot start an agent, not even
// with a "simple" request that browsers send without asking first.
func TestDriveBy(t *testing.T) {
	f := &fakeEngine{}
	url := serveFake(t, f)
	if code, ec, _ := send(t, "POST", url+"/query", `{"prompt":"x"}`, map[string]string{"Content-Type": "text/plain"}); code != 415 || ec != api.CodeMediaType {
		t.Errorf("text/plain body: %d %s, want 415", code, ec)
	}
	code, ec, _ := send(t, "POST", url+"/query", `{"prompt":"x"}`, map[string]string{"Content-Type": "application/json", "Origin": "http://evil.example"})
	if code != 403 || ec != api.CodeForbidden {
		t.Errorf("another origin: %d %s, want 403", code, ec)
	}
	if n := f.admitted.Load(); n != 0 {
		t.Errorf("%d refused requests reached the engine", n)
	}
	// The server's own origin is fine.
	if code, _, _ := send(t, "POST", url+"/query", `{"prompt":"x"}`, map[string]string{"Content-Type": "application/json; charset=utf-8", "Origin": url}); code != 200 {
		t.Errorf("same origin: %d", code)
	}
	// Listed origins are allowed, and told so.
	listed := serveFakeWith(t, &fakeEngine{}, Config{CORSOrigins: "http://app.example"})
	req, _ := http.NewRequest("GET", listed+"/health", nil)
	req.Header.Set("Origin", "http://app.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "http://app.example" {
		t.Errorf("listed origin: %d %q", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
	}
}

// TestAPIKeys: with keys, every route but /health needs one (any of them:
// keys rotate), and /health tells a stranger only its status.
func TestAPIKeys(t *testing.T) {
	k1, k2 := strings.Repeat("a", 32), strings.Repeat("b", 40)
	f := &fakeEngine{}
	url := serveFakeWith(t, f, Config{APIKeys: []string{k1, k2}})
	hdr := func(auth string) map[string]string {
		h := map[string]string{"Content-Type": "application/json"}
		if auth != "" {
			h["Authorization"] = auth
		}
		return h
	}
	for _, auth := range []string{"", "Bearer wrong", "Basic " + k1, "Bearer " + k1 + "x"} {
		if code, ec, body := send(t, "POST", url+"/query", `{"prompt":"x"}`, hdr(auth)); code != 401 || ec != api.CodeUnauthorized || strings.Contains(string(body), k1) {
			t.Errorf("auth %q: %d %s %s", auth, code, ec, body)
		}
	}
	if n := f.admitted.Load(); n != 0 {
		t.Errorf("%d unauthorized requests reached the engine", n)
	}
	for _, k := range []string{k1, k2} {
		if code, _, _ := send(t, "POST", url+"/query", `{"prompt":"x"}`, hdr("Bearer "+k)); code != 200 {
			t.Errorf("key %d...: %d", len(k), code)
		}
	}
	_, _, body := send(t, "GET", url+"/health", "", nil)
	var h map[string]any
	if err := json.Unmarshal(body, &h); err != nil || len(h) != 1 || h["status"] != api.HealthOK {
		t.Errorf("unauthenticated /health: %s", body)
	}
	_, _, body = send(t, "GET", url+"/health", "", hdr("Bearer "+k2))
	if err := json.Unmarshal(body, &h); err != nil || h["sandbox_backend"] != "fake" {
		t.Errorf("authenticated /health: %s", body)
	}
}

// openRuns is a run service over eng with a store of the test's.
func openRuns(t *testing.T, eng api.Engine, o runs.Options) *runs.Service {
	t.Helper()
	store, err := runstore.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	svc, err := runs.New(eng, store, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return svc
}
