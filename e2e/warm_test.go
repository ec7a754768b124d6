package e2e

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/modelserver"
	"github.com/sandstorm-dev/sandstorm/pool"
	"github.com/sandstorm-dev/sandstorm/runnerproto"
	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// BenchmarkWarm compares, on containerd, Docker and Podman, the time from
// the request to the first SDK message and to the first assistant message
// of a cold run and of a run handed to a warm sandbox (the model answering
// at once), and the hand-off itself: p50 and p90 over the runs.
func BenchmarkWarm(b *testing.B) {
	onBenchBackends(b, func(b *testing.B, rt sandbox.Runtime, name string) {
		// One answer per run, at once.
		sc := modelserver.Scenario{Name: "at-once", Turns: make([]modelserver.Turn, 2*b.N)}
		for i := range sc.Turns {
			sc.Turns[i].Text = "hello"
		}
		r, srv := benchRunner(b, rt, sc)
		job := agent.Job{Config: agent.Config{Prompt: "hi"}, Timeout: time.Minute}
		warmJob := job
		warmJob.Env = []string{runnerproto.Env.Timings + "=1"}
		p := pool.New(pool.Config{Size: 1}, r, warmJob, func() func() { return func() {} }, nil)
		p.Start(context.Background())
		defer p.Close()
		var cold, warm [2][]float64
		var handOff, released, request []float64
		for range b.N {
			f, a, _ := firstMessages(b, func(emit api.Emit) (api.Outcome, error) { return r.Run(context.Background(), job, emit) })
			cold[0], cold[1] = append(cold[0], f), append(cold[1], a)
			m := claim(b, p)
			start := time.Now()
			f, a, rel := firstMessages(b, func(emit api.Emit) (api.Outcome, error) { return r.RunOn(context.Background(), m.Member, job, emit) })
			warm[0], warm[1] = append(warm[0], f), append(warm[1], a)
			handOff = append(handOff, float64(m.HandOff().Microseconds())/1000)
			released = append(released, float64(rel.Sub(start).Microseconds())/1000)
			reqs := srv.Requests()
			request = append(request, float64(reqs[len(reqs)-1].Time.Sub(start).Microseconds())/1000)
		}
		c0, c1, w0, w1, h := pct(cold[0]), pct(cold[1]), pct(warm[0]), pct(warm[1]), pct(handOff)
		rl, rq := pct(released), pct(request)
		b.ReportMetric(w1[0], "warm-assistant-p50-ms")
		b.ReportMetric(c1[0], "cold-assistant-p50-ms")
		b.ReportMetric(h[0], "handoff-p50-ms")
		b.Logf("warm pool on %s over %d runs, ms p50/p90: first message cold %.0f/%.0f warm %.0f/%.0f; first assistant cold %.0f/%.0f warm %.0f/%.0f; hand-off %.1f/%.1f; warm runner released %.0f/%.0f, model request %.0f/%.0f",
			name, b.N, c0[0], c0[1], w0[0], w0[1], c1[0], c1[1], w1[0], w1[1], h[0], h[1], rl[0], rl[1], rq[0], rq[1])
	})
}

// claim waits (untimed) for a ready member and takes it.
func claim(b *testing.B, p *pool.Pool) pool.Member {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m, ok := p.Claim(); ok {
			return m
		}
	}
	b.Fatal("no warm sandbox within a minute")
	return pool.Member{}
}

// firstMessages runs one and times, from its start, the first SDK message
// and the first assistant message; a warm runner with timings on also says
// when it released the prompt.
func firstMessages(b *testing.B, run func(api.Emit) (api.Outcome, error)) (first, assistant float64, released time.Time) {
	start := time.Now()
	out, err := run(func(ev json.RawMessage) error {
		var m struct{ Type, Line string }
		json.Unmarshal(ev, &m)
		if at, ok := strings.CutPrefix(m.Line, runnerproto.TimingPrefix+"released "); ok && m.Type == "stderr" {
			if ms, err := strconv.ParseInt(at, 10, 64); err == nil {
				released = time.UnixMilli(ms)
			}
		}
		ms := float64(time.Since(start).Microseconds()) / 1000
		if first == 0 && (m.Type == "system" || m.Type == "assistant") {
			first = ms
		}
		if assistant == 0 && m.Type == "assistant" {
			assistant = ms
		}
		return nil
	})
	if err != nil || !out.Success() {
		b.Fatalf("run: %v %s", err, out.Code)
	}
	return first, assistant, released
}

// pct is the p50 and p90 of v.
func pct(v []float64) [2]float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return [2]float64{v[len(v)/2], v[min(len(v)-1, len(v)*9/10)]}
}

// TestWarmMemberDies: a warm sandbox whose process dies (its daemon lost
// it) is no longer ready, so a claim passes it by; removing it leaves
// nothing.
func TestWarmMemberDies(t *testing.T) {
	b := benchBackends()[0]
	conformance.NeedsDaemon(t, b.name)
	rt, err := b.open(context.Background())
	if err != nil {
		conformance.Unavailable(t, b.name, err)
	}
	defer rt.Close()
	testenv.EnsureAgentImage(t, rt, b.name)
	gw, err := gateway.New(gateway.Config{Upstream: "http://127.0.0.1:1", Dir: "/run/sandstorm/e2e/dies"})
	if err != nil {
		t.Fatal(err)
	}
	r := &agent.Launcher{Runtime: rt, Gateway: gw}
	m, err := r.Warm(context.Background(), agent.Job{Config: agent.Config{Prompt: "never"}})
	if err != nil {
		t.Fatal(err)
	}
	if !m.Ready() {
		t.Fatal("a warm sandbox just made is not ready")
	}
	if err := rt.Remove(context.Background(), m.ID()); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); m.Ready(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a dead warm sandbox still says it is ready")
		}
	}
	m.Remove(context.Background())
	if left, err := rt.Leftovers(context.Background(), m.ID(), ""); err != nil || len(left) > 0 {
		t.Errorf("left %v %v", left, err)
	}
}
