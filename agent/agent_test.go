package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/runnerproto"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// fakeRuntime plays a runner: unit tests only; the real path is covered by
// the end-to-end tests against real backends.
type fakeRuntime struct {
	stdout, stderr string
	code           int
	oom            bool
	hang           bool
	// lost: the daemon goes away; the exit is unknown.
	lost bool
	// chunk is the size of the writes stdout arrives in; default 7.
	chunk      int
	mu         sync.Mutex
	created    []sandbox.Spec
	removed    int
	configSeen Config
}

func (f *fakeRuntime) Name() string                                             { return "fake" }
func (f *fakeRuntime) Info(context.Context) (sandbox.Info, error)               { return sandbox.Info{}, nil }
func (f *fakeRuntime) ImportImage(context.Context, io.Reader) ([]string, error) { return nil, nil }
func (f *fakeRuntime) List(context.Context, map[string]string) ([]sandbox.SandboxInfo, error) {
	return nil, nil
}
func (f *fakeRuntime) Remove(context.Context, string) error { return nil }
func (f *fakeRuntime) Leftovers(context.Context, string, string) ([]string, error) {
	return nil, nil
}
func (f *fakeRuntime) Close() error { return nil }
func (f *fakeRuntime) Enforcement(context.Context) (sandbox.Enforcement, error) {
	c := sandbox.Enforcement{}
	for _, it := range sandbox.AllItems {
		c[it] = sandbox.Support{Enforced: true}
	}
	return c, nil
}

func (f *fakeRuntime) Create(_ context.Context, s sandbox.Spec) (sandbox.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.created = append(f.created, s)
	// Read the runner's config as the runner does: from the gateway socket
	// mounted at runnerproto.SessionDir.Mount, with the session token.
	token := ""
	for _, e := range s.Env {
		if v, ok := strings.CutPrefix(e, runnerproto.Env.Token+"="); ok {
			token = v
		}
	}
	for _, m := range s.Policy.Mounts {
		if m.Target == runnerproto.SessionDir.Mount {
			c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(m.Source, runnerproto.SessionDir.ModelSocket))
			}}}
			req, _ := http.NewRequest("GET", "http://sandbox"+runnerproto.Docs.Config, nil)
			req.Header.Set(runnerproto.Docs.TokenHeader, token)
			if resp, err := c.Do(req); err == nil {
				_ = json.NewDecoder(resp.Body).Decode(&f.configSeen)
				resp.Body.Close()
			}
		}
	}
	return &fakeSandbox{f: f, done: make(chan struct{})}, nil
}

type fakeSandbox struct {
	f    *fakeRuntime
	done chan struct{}
	once sync.Once
}

func (s *fakeSandbox) ID() string                 { return "fake-1" }
func (s *fakeSandbox) Unenforced() []sandbox.Item { return nil }
func (s *fakeSandbox) Workspace() (*os.Root, error) {
	return nil, errors.New("the fake sandbox has no workspace")
}
func (s *fakeSandbox) Start(_ context.Context, o sandbox.IO) error {
	go func() {
		// Written in odd chunks, as pipes deliver.
		n := s.f.chunk
		if n == 0 {
			n = 7
		}
		for _, part := range chunks(s.f.stdout, n) {
			o.Stdout.Write([]byte(part))
		}
		o.Stderr.Write([]byte(s.f.stderr))
		if !s.f.hang {
			s.once.Do(func() { close(s.done) })
		}
	}()
	return nil
}
func (s *fakeSandbox) Wait(ctx context.Context) (sandbox.ExitStatus, error) {
	select {
	case <-s.done:
		if s.f.hang {
			return sandbox.ExitStatus{Known: true, Code: 137, Signal: "SIGKILL"}, nil
		}
		if s.f.lost {
			return sandbox.ExitStatus{}, fmt.Errorf("%w: sandbox fake-1: lost its exit status: connection refused", sandbox.ErrUnavailable)
		}
		return sandbox.ExitStatus{Known: true, Code: s.f.code, OOMKilled: s.f.oom}, nil
	case <-ctx.Done():
		return sandbox.ExitStatus{}, ctx.Err()
	}
}
func (s *fakeSandbox) Kill(context.Context) error {
	s.once.Do(func() { close(s.done) })
	return nil
}
func (s *fakeSandbox) Remove(context.Context) error {
	s.f.mu.Lock()
	s.f.removed++
	s.f.mu.Unlock()
	return nil
}

func chunks(s string, n int) []string {
	var out []string
	for len(s) > n {
		out = append(out, s[:n])
		s = s[n:]
	}
	return append(out, s)
}

const okResult = `{"type":"result","subtype":"success","is_error":false,"result":"done","total_cost_usd":0.01}`

func run(t *testing.T, f *fakeRuntime, job Job) (api.Outcome, []map[string]any, error) {
	t.Helper()
	g, err := gateway.New(gateway.Config{Upstream: "http://127.0.0.1:1", Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var events []map[string]any
	r := &Launcher{Runtime: f, Gateway: g, Image: "img"}
	out, err := r.Run(context.Background(), job, func(ev json.RawMessage) error {
		var m map[string]any
		if e := json.Unmarshal(ev, &m); e != nil {
			t.Errorf("event is not a JSON object: %s", ev)
		}
		events = append(events, m)
		return nil
	})
	return out, events, err
}

func types(evs []map[string]any) string {
	var s []string
	for _, e := range evs {
		t := e["type"].(string)
		if t == "sandbox" {
			t += ":" + e["event"].(string)
		}
		if t == "error" {
			t += ":" + e["code"].(string)
		}
		s = append(s, t)
	}
	return strings.Join(s, " ")
}

func TestRunEvents(t *testing.T) {
	tests := []struct {
		name string
		f    *fakeRuntime
		job  Job
		want string
		code api.Code
	}{
		{"success", &fakeRuntime{stdout: `{"type":"system","subtype":"init"}` + "\n" + `{"type":"assistant"}` + "\n" + okResult + "\n", stderr: "diag\n"},
			Job{}, "sandbox:created sandbox:started system assistant result stderr sandbox:exited model_usage sandbox:removed", ""},
		{"noise on stdout becomes its own event", &fakeRuntime{stdout: "npm WARN x\n" + okResult + "\n"},
			Job{}, "sandbox:created sandbox:started stdout result sandbox:exited model_usage sandbox:removed", ""},
		{"error result", &fakeRuntime{stdout: `{"type":"result","subtype":"error_max_turns","is_error":true}` + "\n", code: 1},
			Job{}, "sandbox:created sandbox:started result sandbox:exited model_usage error:agent_failed sandbox:removed", api.CodeAgentFailed},
		{"exit 0 without result", &fakeRuntime{stdout: ""},
			Job{}, "sandbox:created sandbox:started sandbox:exited model_usage error:agent_failed sandbox:removed", api.CodeAgentFailed},
		{"oom", &fakeRuntime{code: 137, oom: true},
			Job{}, "sandbox:created sandbox:started sandbox:exited model_usage error:oom sandbox:removed", api.CodeOOM},
		{"daemon lost", &fakeRuntime{lost: true, stdout: `{"type":"system"}` + "\n"},
			Job{}, "sandbox:created sandbox:started system sandbox:exited model_usage error:runtime_unavailable sandbox:removed", api.CodeRuntimeUnavailable},
		{"timeout", &fakeRuntime{hang: true, stdout: `{"type":"system"}` + "\n"},
			Job{Timeout: 50 * time.Millisecond}, "sandbox:created sandbox:started system sandbox:exited model_usage error:timeout sandbox:removed", api.CodeTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.job.Config = Config{Prompt: "hi", Project: config.Project{Model: "sonnet"}}
			out, evs, err := run(t, tt.f, tt.job)
			if err != nil {
				t.Fatal(err)
			}
			if err := inOrder(types(evs), tt.want); err != nil {
				t.Errorf("events\n got %s\nwant %s\n%v", types(evs), tt.want, err)
			}
			if out.Code != tt.code {
				t.Errorf("code %q, want %q", out.Code, tt.code)
			}
			// An exit nobody saw has no exit code (not a fake 0).
			for _, ev := range evs {
				if ev["event"] == "exited" {
					if _, has := ev["exit_code"]; has == tt.f.lost {
						t.Errorf("exited event %v (daemon lost: %v)", ev, tt.f.lost)
					}
				}
			}
			if tt.f.removed != 1 {
				t.Errorf("removed %d times", tt.f.removed)
			}
			if tt.f.configSeen.Prompt != "hi" || tt.f.configSeen.Model != "sonnet" {
				t.Errorf("runner config not readable at create: %+v", tt.f.configSeen)
			}
			env := strings.Join(tt.f.created[0].Env, " ")
			if !strings.Contains(env, runnerproto.Env.Token+"=sandstorm-session-") {
				t.Errorf("no session token in env: %s", env)
			}
		})
	}
}

// inOrder checks got against want: every event but stderr exactly in
// order (the lifecycle, the SDK's messages, the error before the removal),
// and stderr lines, a stream of their own, all between started and exited.
func inOrder(got, want string) error {
	rest := func(s string) (events []string, stderr []int) {
		for i, e := range strings.Fields(s) {
			if e == "stderr" {
				stderr = append(stderr, i)
				continue
			}
			events = append(events, e)
		}
		return events, stderr
	}
	g, gerr := rest(got)
	w, werr := rest(want)
	if strings.Join(g, " ") != strings.Join(w, " ") {
		return errors.New("events other than stderr differ")
	}
	if len(gerr) != len(werr) {
		return fmt.Errorf("%d stderr events, want %d", len(gerr), len(werr))
	}
	all := strings.Fields(got)
	started, exited := slices.Index(all, "sandbox:started"), slices.Index(all, "sandbox:exited")
	for _, i := range gerr {
		if i < started || i > exited {
			return fmt.Errorf("stderr event %d is outside the run (started %d, exited %d)", i, started, exited)
		}
	}
	return nil
}

func TestInOrder(t *testing.T) {
	want := "sandbox:created sandbox:started result stderr sandbox:exited error:timeout sandbox:removed"
	for _, tt := range []struct {
		got string
		ok  bool
	}{
		{want, true},
		{"sandbox:created sandbox:started stderr result sandbox:exited error:timeout sandbox:removed", true},
		{"sandbox:created sandbox:started result stderr error:timeout sandbox:exited sandbox:removed", false},
		{"sandbox:created sandbox:started result sandbox:exited stderr error:timeout sandbox:removed", false},
		{"sandbox:created sandbox:started result stderr sandbox:exited sandbox:removed error:timeout", false},
	} {
		if err := inOrder(tt.got, want); (err == nil) != tt.ok {
			t.Errorf("inOrder(%s) = %v, want ok %v", tt.got, err, tt.ok)
		}
	}
}

func TestClientGoneCancelsRun(t *testing.T) {
	f := &fakeRuntime{hang: true, stdout: `{"type":"system"}` + "\n"}
	g, _ := gateway.New(gateway.Config{Upstream: "http://127.0.0.1:1", Dir: t.TempDir()})
	r := &Launcher{Runtime: f, Gateway: g, Image: "img"}
	gone := errors.New("client gone")
	n := 0
	out, err := r.Run(context.Background(), Job{Config: Config{Prompt: "x"}}, func(json.RawMessage) error {
		n++
		if n >= 3 {
			return gone
		}
		return nil
	})
	if !errors.Is(err, gone) {
		t.Fatalf("err = %v, want client gone", err)
	}
	if out.Code != api.CodeCancelled || f.removed != 1 {
		t.Errorf("code %q removed %d", out.Code, f.removed)
	}
}
