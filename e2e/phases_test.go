package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/modelserver"
	"github.com/sandstorm-dev/sandstorm/runnerproto"
	"github.com/sandstorm-dev/sandstorm/runtime/containerd"
	"github.com/sandstorm-dev/sandstorm/runtime/docker"
	"github.com/sandstorm-dev/sandstorm/runtime/podman"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// phases of a cold run, in order, each timed from the request.
var phases = []string{"created", "started", "runner_started", "config_received", "sdk_loaded", "query_called", "model_request", "first_message", "first_assistant"}

// BenchmarkColdPhases breaks the cold time to the first assistant message
// into its phases (p50 and p90 over the runs, in ms from the request), on
// containerd, Docker and Podman: where the time goes.
func BenchmarkColdPhases(b *testing.B) {
	onBenchBackends(b, func(b *testing.B, rt sandbox.Runtime, name string) {
		at := map[string][]float64{}
		for range b.N {
			for p, d := range coldPhases(b, rt) {
				at[p] = append(at[p], float64(d.Microseconds())/1000)
			}
		}
		var line []string
		for _, p := range phases {
			v := at[p]
			if len(v) == 0 {
				b.Fatalf("phase %s never seen", p)
			}
			q := pct(v)
			b.ReportMetric(q[0], p+"-p50-ms")
			line = append(line, fmt.Sprintf("%s %.0f/%.0f", p, q[0], q[1]))
		}
		b.Logf("cold phases on %s, ms from the request, p50/p90 over %d runs: %s", name, b.N, strings.Join(line, " → "))
	})
}

// onBenchBackends runs bench on each backend benchmarks compare, with the
// agent image in it.
func onBenchBackends(b *testing.B, bench func(b *testing.B, rt sandbox.Runtime, name string)) {
	for _, bk := range benchBackends() {
		b.Run(bk.name, func(b *testing.B) {
			rt, err := bk.open(context.Background())
			if err != nil {
				b.Skip(err)
			}
			defer rt.Close()
			testenv.EnsureAgentImage(b, rt, bk.name)
			bench(b, rt, bk.name)
		})
	}
}

// benchBackends are the backends benchmarks compare.
func benchBackends() []backend {
	return []backend{
		{name: "containerd", open: func(ctx context.Context) (sandbox.Runtime, error) {
			return containerd.New(ctx, containerd.Config{Address: os.Getenv("SANDSTORM_CONTAINERD_SOCKET")})
		}},
		{name: "docker", open: func(ctx context.Context) (sandbox.Runtime, error) {
			return docker.New(ctx, docker.Config{Host: os.Getenv("SANDSTORM_DOCKER_SOCKET")})
		}},
		{name: "podman", open: func(ctx context.Context) (sandbox.Runtime, error) {
			return podman.New(ctx, podman.Config{Socket: testenv.PodmanSocket(false)})
		}},
	}
}

// coldPhases runs one agent with an answer at once and times its phases.
func coldPhases(b *testing.B, rt sandbox.Runtime) map[string]time.Duration {
	r, srv := benchRunner(b, rt, modelserver.Scenario{Name: "at-once", Turns: []modelserver.Turn{{Text: "hello"}}})
	var mu sync.Mutex
	got := map[string]time.Duration{}
	start := time.Now()
	note := func(p string, at time.Time) {
		mu.Lock()
		defer mu.Unlock()
		if _, ok := got[p]; !ok {
			got[p] = at.Sub(start)
		}
	}
	job := agent.Job{Config: agent.Config{Prompt: "hi"}, Env: []string{runnerproto.Env.Timings + "=1"}}
	out, err := r.Run(context.Background(), job, func(ev json.RawMessage) error {
		now := time.Now()
		var m struct{ Type, Event, Line string }
		json.Unmarshal(ev, &m)
		switch {
		case m.Type == "sandbox" && (m.Event == "created" || m.Event == "started"):
			note(m.Event, now)
		case m.Type == "stderr" && strings.HasPrefix(m.Line, runnerproto.TimingPrefix):
			f := strings.Fields(m.Line)
			if ms, err := strconv.ParseInt(f[len(f)-1], 10, 64); err == nil && len(f) == 4 {
				note(f[2], time.UnixMilli(ms))
			}
		case m.Type == "system":
			note("first_message", now)
		case m.Type == "assistant":
			note("first_assistant", now)
		}
		return nil
	})
	if err != nil || !out.Success() {
		b.Fatalf("run: %v %s", err, out.Code)
	}
	if reqs := srv.Requests(); len(reqs) > 0 {
		note("model_request", reqs[0].Time)
	}
	return got
}
