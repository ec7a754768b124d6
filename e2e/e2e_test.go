// Package e2e runs the real Claude Agent SDK inside the real agent image on
// every backend, against sandstorm's scripted model behind the gateway.
package e2e

import (
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/modelserver"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// realKey stands for a provider key: it must reach the upstream through the
// gateway and never the sandbox.
const realKey = "sk-ant-api03-e2e-REAL-KEY-must-never-enter-a-sandbox"

// backend is one configuration the scenarios run on.
type backend struct {
	name  string // as in SANDSTORM_REQUIRE_RUNTIMES
	open  func(ctx context.Context) (sandbox.Runtime, error)
	allow []sandbox.Item
	// gatewayHost, for sandboxes on a cluster's nodes, is the address of
	// this host they reach the gateway's TCP side at.
	gatewayHost string
}

// run runs one scenario on rt and returns the events and what the model server saw.
func run(t *testing.T, b backend, sc modelserver.Scenario, job agent.Job) ([]map[string]any, api.Outcome, *modelserver.Server, sandbox.Runtime) {
	t.Helper()
	return runWith(t, b, sc, job, nil)
}

// runWith is run with the runner set up further by configure (egress).
func runWith(t *testing.T, b backend, sc modelserver.Scenario, job agent.Job, configure func(*agent.Launcher)) ([]map[string]any, api.Outcome, *modelserver.Server, sandbox.Runtime) {
	t.Helper()
	return runHow(t, b, sc, job, configure, false)
}

// runWarm is run in a sandbox started warm (agent.Launcher.Warm) before the
// job is handed to it.
func runWarm(t *testing.T, b backend, sc modelserver.Scenario, job agent.Job) ([]map[string]any, api.Outcome, *modelserver.Server, sandbox.Runtime) {
	t.Helper()
	return runHow(t, b, sc, job, nil, true)
}

func runHow(t *testing.T, b backend, sc modelserver.Scenario, job agent.Job, configure func(*agent.Launcher), warm bool) ([]map[string]any, api.Outcome, *modelserver.Server, sandbox.Runtime) {
	t.Helper()
	conformance.NeedsDaemon(t, b.name)
	ctx := context.Background()
	rt, err := b.open(ctx)
	if err != nil {
		conformance.Unavailable(t, b.name, err)
	}
	t.Cleanup(func() { rt.Close() })
	testenv.EnsureAgentImage(t, rt, b.name)
	srv := modelserver.NewServer(sc)
	url, stop, err := srv.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	gw, err := gateway.New(gateway.Config{Upstream: url, Dir: filepath.Join("/run/sandstorm/e2e", b.name)})
	if err != nil {
		t.Fatal(err)
	}
	r := &agent.Launcher{Runtime: rt, Gateway: gw,
		Policy: oci.Policy{MemoryBytes: 2 << 30}, AllowUnenforced: b.allow}
	if b.gatewayHost != "" {
		l, err := net.Listen("tcp", net.JoinHostPort(b.gatewayHost, "0"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go gw.ServeTCP(l)
		r.GatewayAddr = l.Addr().String()
	}
	if configure != nil {
		configure(r)
	}
	if job.Timeout == 0 {
		job.Timeout = 3 * time.Minute
	}
	job.Credentials = gateway.Credentials{AnthropicKey: realKey}
	var mu sync.Mutex
	var events []map[string]any
	run := r.Run
	if warm {
		m, err := r.Warm(ctx, job)
		if err != nil {
			t.Fatalf("warm: %v", err)
		}
		run = func(ctx context.Context, job agent.Job, emit api.Emit) (api.Outcome, error) {
			return r.RunOn(ctx, m, job, emit)
		}
	}
	out, err := run(ctx, job, func(ev json.RawMessage) error {
		if strings.Contains(string(ev), realKey) {
			t.Errorf("the real key appeared in an event")
		}
		var m map[string]any
		if err := json.Unmarshal(ev, &m); err != nil {
			t.Errorf("event is not a JSON object: %.200s", ev)
		}
		mu.Lock()
		events = append(events, m)
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if !out.Success() {
		// What the runner said is what explains a failed run.
		for _, e := range events {
			if e["type"] == api.TypeStderr || e["type"] == "error" {
				t.Logf("%s: %v %v", e["type"], e["line"], e["message"])
			}
		}
	}
	assertGone(t, rt, events)
	assertUnenforcedSaid(t, rt, events)
	assertKeyStayedOut(t, srv)
	return events, out, srv, rt
}

// assertGone: the sandbox and everything it owned are removed.
func assertGone(t *testing.T, rt sandbox.Runtime, events []map[string]any) {
	t.Helper()
	var id, session string
	for _, e := range events {
		if e["type"] == "sandbox" && e["event"] == "created" {
			id, _ = e["sandbox_id"].(string)
			session, _ = e["session_id"].(string)
		}
	}
	if id == "" {
		t.Fatal("no sandbox created event")
	}
	left, err := rt.Leftovers(context.Background(), id, session)
	if err != nil || len(left) > 0 {
		t.Errorf("left behind: %v %v", left, err)
	}
	if found, _ := rt.List(context.Background(), map[string]string{oci.LabelSession: session}); len(found) > 0 {
		t.Errorf("sandbox still listed: %v", found)
	}
}

// assertUnenforcedSaid: when the backend cannot enforce an item and the run
// was allowed without it, the stream says so.
func assertUnenforcedSaid(t *testing.T, rt sandbox.Runtime, events []map[string]any) {
	t.Helper()
	caps, err := rt.Enforcement(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var said []string
	for _, e := range find(events, "sandbox") {
		if e["event"] == "created" {
			list, _ := e["unenforced"].([]any)
			for _, it := range list {
				said = append(said, it.(string))
			}
		}
	}
	for _, it := range sandbox.Required(oci.Policy{MemoryBytes: 2 << 30}.WithDefaults()) {
		if !caps.Enforced(it) && !slices.Contains(said, string(it)) {
			t.Errorf("%s is not enforced here but the stream did not say so (said %v)", it, said)
		}
	}
}

// assertKeyStayedOut: the upstream got the real key (swapped in by the
// gateway) and every request came from the sandbox with its token.
func assertKeyStayedOut(t *testing.T, srv *modelserver.Server) {
	t.Helper()
	for _, r := range srv.Requests() {
		if r.Credential != "x-api-key" || r.Fingerprint != modelserver.Fingerprint(realKey) {
			t.Errorf("request %d reached the model with credential %q (fingerprint %s), want the real key via x-api-key", r.Seq, r.Credential, r.Fingerprint)
		}
	}
}

func find(events []map[string]any, typ string) []map[string]any {
	var out []map[string]any
	for _, e := range events {
		if e["type"] == typ {
			out = append(out, e)
		}
	}
	return out
}

// toolUses lists the tool names the assistant called, in order.
func toolUses(events []map[string]any) []string {
	var names []string
	for _, e := range find(events, "assistant") {
		msg, _ := e["message"].(map[string]any)
		blocks, _ := msg["content"].([]any)
		for _, b := range blocks {
			if bm, _ := b.(map[string]any); bm["type"] == "tool_use" {
				names = append(names, bm["name"].(string))
			}
		}
	}
	return names
}

// toolResults concatenates the tool results the stream carried.
func toolResults(events []map[string]any) string {
	var sb strings.Builder
	for _, e := range find(events, "user") {
		b, _ := json.Marshal(e["message"])
		sb.Write(b)
	}
	return sb.String()
}

// timeRun runs the hello-python scenario once and returns the time to the
// first SDK message and to the end of the run.
// benchRunner is a runner on rt whose model is sc's scripted server.
func benchRunner(b *testing.B, rt sandbox.Runtime, sc modelserver.Scenario) (*agent.Launcher, *modelserver.Server) {
	srv := modelserver.NewServer(sc)
	url, stop, err := srv.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(stop)
	gw, err := gateway.New(gateway.Config{Upstream: url, Dir: "/run/sandstorm/e2e/bench"})
	if err != nil {
		b.Fatal(err)
	}
	return &agent.Launcher{Runtime: rt, Gateway: gw}, srv
}

func timeRun(b *testing.B, rt sandbox.Runtime) (first, total time.Duration) {
	sc, err := modelserver.Builtin("hello-python")
	if err != nil {
		b.Fatal(err)
	}
	r, _ := benchRunner(b, rt, sc)
	start := time.Now()
	out, err := r.Run(context.Background(), agent.Job{Config: agent.Config{Prompt: "go"}}, func(ev json.RawMessage) error {
		if first == 0 && strings.Contains(string(ev), `"type":"system"`) {
			first = time.Since(start)
		}
		return nil
	})
	if err != nil || !out.Success() {
		b.Fatalf("run: %v %s", err, out.Code)
	}
	return first, time.Since(start)
}
