package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
)

// fakeEngine validates requests as the real engine does (api.Request's own
// Validate) and plays a run, so the HTTP layer is tested without a daemon.
type fakeEngine struct {
	admitErr error
	startErr error
	health   api.Health
	// endless runs emit until emit fails, then report it on ended.
	endless bool
	ended   chan error
}

func (f *fakeEngine) Admit(_ context.Context, req api.Request, _ func(int)) (api.Run, error) {
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
	if f.health.Status == "" {
		f.health = api.Health{Status: api.HealthOK, Backend: "fake"}
	}
	srv := New(f, Config{WriteTimeout: 300 * time.Millisecond})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Shutdown(time.Second) })
	return "http://" + l.Addr().String()
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
