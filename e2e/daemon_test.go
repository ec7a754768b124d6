package e2e

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/modelserver"
	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
	"github.com/sandstorm-dev/sandstorm/runtime/containerd"
	"github.com/sandstorm-dev/sandstorm/runtime/podman"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// lostBound is how long after its daemon died a run may take to end.
const lostBound = 15 * time.Second

// TestDaemonDies: the daemon is killed while an agent runs. The stream
// ends at once, well within the run's timeout, with runtime_unavailable
// and no made-up exit status; once the daemon is back, the sweep removes
// everything the run left.
func TestDaemonDies(t *testing.T) {
	t.Run("containerd", func(t *testing.T) {
		conformance.NeedsDaemon(t, containerd.Name)
		d := testenv.StartContainerd(t)
		rt, err := containerd.New(context.Background(), containerd.Config{Address: d.Address, StateDir: "/var/lib/sandstorm/test-containerd-scratch"})
		if err != nil {
			t.Fatal(err)
		}
		defer rt.Close()
		daemonDies(t, d, rt)
	})
	t.Run("podman", func(t *testing.T) {
		conformance.NeedsDaemon(t, podman.Name)
		d := testenv.StartPodman(t, "test-podman")
		rt, err := podman.New(context.Background(), podman.Config{Socket: d.Address, StateDir: "/var/lib/sandstorm/test-podman-scratch"})
		if err != nil {
			t.Fatal(err)
		}
		defer rt.Close()
		daemonDies(t, d, rt)
	})
}

func daemonDies(t *testing.T, d *testenv.Daemon, rt sandbox.Runtime) {
	ctx := context.Background()
	testenv.EnsureAgentImage(t, rt, "test-"+rt.Name())

	// The model answers after a minute: the run is waiting on it when the daemon dies.
	srv := modelserver.NewServer(testenv.SlowModel(time.Minute, 1))
	url, stop, err := srv.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	gw, err := gateway.New(gateway.Config{Upstream: url, Dir: "/run/sandstorm/e2e/test-" + rt.Name()})
	if err != nil {
		t.Fatal(err)
	}
	r := &agent.Launcher{Runtime: rt, Gateway: gw}
	var mu sync.Mutex
	var events []map[string]any
	running := make(chan struct{})
	var once sync.Once
	type ended struct {
		out api.Outcome
		err error
		at  time.Time
	}
	done := make(chan ended, 1)
	start := time.Now()
	go func() {
		out, err := r.Run(ctx, agent.Job{Config: agent.Config{Prompt: "wait"}, Timeout: time.Minute}, func(ev json.RawMessage) error {
			var m map[string]any
			json.Unmarshal(ev, &m)
			mu.Lock()
			events = append(events, m)
			mu.Unlock()
			if m["type"] == "system" {
				once.Do(func() { close(running) })
			}
			return nil
		})
		done <- ended{out, err, time.Now()}
	}()
	select {
	case <-running:
	case e := <-done:
		t.Fatalf("the run ended before it ran: %+v", e)
	}
	d.Kill()
	killed := time.Now()
	var e ended
	select {
	case e = <-done:
	case <-time.After(lostBound):
		mu.Lock()
		t.Fatalf("the run went on %v after its daemon died; events %v", lostBound, events)
	}
	t.Logf("the run ended %v after the daemon died (%v after it started); err: %v", e.at.Sub(killed).Round(time.Millisecond), e.at.Sub(start).Round(time.Millisecond), e.err)
	if e.out.Code != api.CodeRuntimeUnavailable {
		t.Errorf("code %q, want %q", e.out.Code, api.CodeRuntimeUnavailable)
	}
	mu.Lock()
	var id, session string
	for _, ev := range events {
		switch {
		case ev["event"] == "created":
			id, session = ev["sandbox_id"].(string), ev["session_id"].(string)
		case ev["event"] == "exited":
			if _, has := ev["exit_code"]; has {
				t.Errorf("exited with a made-up status: %v", ev)
			}
		}
	}
	last := events[len(events)-1]
	mu.Unlock()
	if last["type"] != "error" && last["event"] != "removed" {
		t.Errorf("the stream ended with %v", last)
	}

	// The daemon is back: what the run could not remove goes with the next
	// sweeps (ds serve sweeps every --sweep-interval; the client reconnects
	// with a back-off).
	d.Start()
	deadline := time.Now().Add(30 * time.Second)
	for {
		removed, serr := sandbox.Sweep(ctx, rt)
		left, lerr := rt.Leftovers(ctx, id, session)
		if serr == nil && lerr == nil && len(left) == 0 {
			t.Logf("the sweep removed %v once the daemon was back", removed)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after the daemon came back: left %v (%v), sweep: %v", left, lerr, serr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
