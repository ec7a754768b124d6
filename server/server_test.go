package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/engine"
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// backendsUnderTest are the backends the HTTP tests run on.
var backendsUnderTest = []string{"containerd", "docker"}

type harness struct {
	url        string
	eng        *engine.Engine
	srv        *Server
	gatewayDir string

	mu       sync.Mutex
	sessions []string
}

// start serves a real engine (real backend, scripted model) on a random port.
func start(t testing.TB, backend, scenario, limits string) *harness {
	t.Helper()
	return startWith(t, backend, scenario, limits, Config{}, net.Listen)
}

// startWith is start with a server config and a listener of the test's.
func startWith(t testing.TB, backend, scenario, limits string, scfg Config, listen func(network, addr string) (net.Listener, error)) *harness {
	t.Helper()
	conformance.NeedsDaemon(t, backend)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "limits.yaml")
	if err := os.WriteFile(cfg, []byte(limits), 0o644); err != nil {
		t.Fatal(err)
	}
	eng, err := engine.New(context.Background(), engine.Options{
		Runtime: backend, ConfigPath: cfg, ProjectDir: dir, ScriptedModel: scenario,
		Credentials: gateway.Credentials{AnthropicKey: "sk-ant-test-not-real"},
		GatewayDir:  filepath.Join("/run/sandstorm/servertest", filepath.Base(dir)),
		SlotDir:     filepath.Join(dir, "slots"),
	})
	if err != nil {
		conformance.Unavailable(t, backend, err)
	}
	testenv.EnsureAgentImage(t, eng.Runtime, backend)
	svc, err := eng.OpenRuns(context.Background(), filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	if scfg.Metrics == nil {
		scfg.Metrics = eng.Metrics.Handler()
	}
	srv := New(eng, svc, scfg)
	l, err := listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		srv.Shutdown(5 * time.Second)
		svc.Close()
		eng.Close()
	})
	return &harness{url: "http://" + l.Addr().String(), eng: eng, srv: srv, gatewayDir: filepath.Join("/run/sandstorm/servertest", filepath.Base(dir))}
}

var self, _ = sandbox.Self()

// noSandboxes waits until this harness's runs hold no slot, have closed
// their gateway sessions, and left nothing of the sandboxes it saw. Other
// packages' tests may run sandboxes on the same daemon meanwhile.
func (h *harness) noSandboxes(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var left []string
		if n := h.eng.Manager().Running(); n > 0 {
			left = append(left, fmt.Sprintf("%d runs hold slots", n))
		}
		if entries, _ := os.ReadDir(h.gatewayDir); len(entries) > 0 {
			left = append(left, fmt.Sprintf("%d gateway sessions open", len(entries)))
		}
		h.mu.Lock()
		sessions := append([]string(nil), h.sessions...)
		h.mu.Unlock()
		for _, s := range sessions {
			found, err := h.eng.Runtime.List(context.Background(), map[string]string{oci.LabelSession: s})
			if err != nil || len(found) > 0 {
				left = append(left, fmt.Sprintf("session %s: %v %v", s, found, err))
			}
		}
		// Also what no event named: every object this process owns.
		found, err := h.eng.Runtime.List(context.Background(), map[string]string{oci.LabelOwner: self.String()})
		if err != nil || len(found) > 0 {
			left = append(left, fmt.Sprintf("owned by this process: %v %v", found, err))
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", within, strings.Join(left, "; "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// events reads SSE frames until the stream ends, noting sandbox sessions.
// Every frame must carry the next sequence number as its id, and the first
// event must name the run; it is checked here, not passed to each.
func (h *harness) events(t *testing.T, body io.Reader, each func(ev map[string]any) bool) {
	t.Helper()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 32<<20)
	var seq, want int64 = 0, 1
	for sc.Scan() {
		line := sc.Text()
		if id, ok := strings.CutPrefix(line, "id: "); ok {
			if n, err := strconv.ParseInt(id, 10, 64); err != nil || n != want {
				t.Errorf("frame id %q, want %d", id, want)
			}
			seq = want
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			if line != "" && !strings.HasPrefix(line, ":") {
				t.Errorf("not an SSE line: %q", line)
			}
			continue
		}
		if seq != want {
			t.Errorf("frame without id: %q", data)
		}
		want++
		var ev map[string]any
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			t.Fatalf("frame is not one JSON object: %q", data)
		}
		if seq == 1 {
			if ev["type"] != "run" || !strings.HasPrefix(fmt.Sprint(ev["run_id"]), "run-") {
				t.Errorf("first event %v does not name the run", ev)
			}
			continue
		}
		if ev["type"] == "sandbox" && ev["event"] == "created" {
			h.mu.Lock()
			h.sessions = append(h.sessions, fmt.Sprint(ev["session_id"]))
			h.mu.Unlock()
		}
		if !each(ev) {
			return
		}
	}
}

func post(t *testing.T, url, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/query", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestHTTP(t *testing.T) {
	for _, backend := range backendsUnderTest {
		t.Run(backend, func(t *testing.T) {
			t.Run("streams live", func(t *testing.T) { streamsLive(t, backend) })
			t.Run("bad input", func(t *testing.T) {
				h := start(t, backend, "demo", "")
				badInput(t, h.url)
				h.noSandboxes(t, time.Second)
			})
			t.Run("client disconnect", func(t *testing.T) { disconnect(t, backend) })
			t.Run("busy", func(t *testing.T) { busy(t, backend) })
			t.Run("shutdown", func(t *testing.T) { shutdown(t, backend) })
			t.Run("queued client leaves", func(t *testing.T) { queuedLeaves(t, backend) })
			t.Run("shutdown while queued", func(t *testing.T) { shutdownQueued(t, backend) })
			t.Run("stalled reader", func(t *testing.T) { stalledReader(t, backend) })
			t.Run("clients leave during start-up", func(t *testing.T) { leaveDuringStartup(t, backend) })
		})
	}
}

func streamsLive(t *testing.T, backend string) {
	h := start(t, backend, "slow-steps", "")
	resp := post(t, h.url, `{"prompt":"take your time","timeout":120}`)
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("X-Accel-Buffering") != "no" {
		t.Fatalf("status %d headers %v", resp.StatusCode, resp.Header)
	}
	var types []string
	sawLive := false
	h.events(t, resp.Body, func(ev map[string]any) bool {
		typ, _ := ev["type"].(string)
		types = append(types, typ)
		// The first assistant message must arrive while the run still holds its slot.
		if typ == "assistant" && !sawLive {
			sawLive = true
			if h.eng.Manager().Running() != 1 {
				t.Errorf("first assistant message arrived after the run ended")
			}
		}
		return true
	})
	joined := strings.Join(types, " ")
	if !sawLive || !strings.HasPrefix(joined, "sandbox sandbox system") || !strings.Contains(joined, "result sandbox model_usage sandbox") {
		t.Errorf("event order: %s", joined)
	}
	h.noSandboxes(t, 5*time.Second)

	hr, err := http.Get(h.url + "/health")
	if err != nil {
		t.Fatal(err)
	}
	var health map[string]any
	json.NewDecoder(hr.Body).Decode(&health)
	hr.Body.Close()
	keys, _ := health["api_keys"].(map[string]any)
	if health["status"] != "ok" || health["sandbox_backend"] != backend || keys["anthropic"] != true || health["runtime_version"] == "" {
		t.Errorf("health %v", health)
	}
	if b, _ := json.Marshal(health); strings.Contains(string(b), "sk-ant") {
		t.Error("health shows a key")
	}
}

// badInput sends every kind of bad request, three times over: each gets its
// status and names its field, and the server stays healthy.
func badInput(t *testing.T, url string) {
	tests := []struct {
		body   string
		status int
		field  string
	}{
		{`{"prompt":5}`, 400, "prompt"},
		{`{}`, 400, "prompt"},
		{`{"prompt":"x","timeout":4}`, 400, "timeout"},
		{`{"prompt":"x","timeout":"ten"}`, 400, "timeout"},
		{`{"prompt":"x","max_turns":-1}`, 400, "max_turns"},
		{`{"prompt":"x","model":"gpt-4"}`, 400, "model"},
		{`{"prompt":"x","files":{"/etc/passwd":"x"}}`, 400, "files"},
		{`{"prompt":"x","files":{"a/../../b":"x"}}`, 400, "files"},
		{`{"prompt":"x","files":["a"]}`, 400, "files"},
		{`{"prompt":"x","output_format":{"type":"text"}}`, 400, "output_format.type"},
		{`{"prompt":"x","surprise":true}`, 400, "surprise"},
		{`{"prompt":"x"`, 400, "body"},
		{`[]`, 400, "body"},
		{``, 400, "body"},
		{`{"prompt":"` + strings.Repeat("a", 1_000_001) + `"}`, 400, "prompt"},
	}
	for round := 0; round < 3; round++ {
		for _, tt := range tests {
			resp := post(t, url, tt.body)
			var body apiError
			json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if resp.StatusCode != tt.status || body.Field != tt.field {
				t.Errorf("%.60s: status %d field %q (%s), want %d %q", tt.body, resp.StatusCode, body.Field, body.Message, tt.status, tt.field)
			}
		}
	}
	if got := oversize(t, url); !strings.HasPrefix(got, "HTTP/1.1 413") {
		t.Errorf("oversized body: %q, want 413", got)
	}
	hr, err := http.Get(url + "/health")
	if err != nil || hr.StatusCode != 200 {
		t.Fatalf("server unhealthy after bad input: %v", err)
	}
	hr.Body.Close()
}

// oversize announces a body over the limit and reads the status line the
// server answers before the body is sent (a client library may instead fail
// writing a body the server refuses to read).
func oversize(t *testing.T, url string) string {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "POST /query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", BodyLimit+1)
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("no answer to an oversized body: %v", err)
	}
	return strings.TrimSpace(line)
}

func disconnect(t *testing.T, backend string) {
	h := start(t, backend, "slow-steps", "")
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", h.url+"/query", strings.NewReader(`{"prompt":"slow"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	h.events(t, resp.Body, func(ev map[string]any) bool { return ev["type"] != "system" })
	cancel()
	resp.Body.Close()
	gone := time.Now()
	h.noSandboxes(t, 2*time.Second)
	t.Logf("sandbox removed %v after the client went away", time.Since(gone).Round(time.Millisecond))
}

func busy(t *testing.T, backend string) {
	h := start(t, backend, "slow-steps", "max_concurrent_agents: 1\nqueue_size: 0\n")
	first := post(t, h.url, `{"prompt":"slow"}`)
	defer first.Body.Close()
	h.events(t, first.Body, func(ev map[string]any) bool { return ev["type"] != "system" })
	second := post(t, h.url, `{"prompt":"second"}`)
	var body apiError
	json.NewDecoder(second.Body).Decode(&body)
	second.Body.Close()
	if second.StatusCode != 429 || body.Error != "busy" {
		t.Errorf("second request while busy: %d %+v", second.StatusCode, body)
	}
	io.Copy(io.Discard, first.Body)
}

func shutdown(t *testing.T, backend string) {
	h := start(t, backend, "slow-steps", "")
	resp := post(t, h.url, `{"prompt":"slow"}`)
	defer resp.Body.Close()
	var last map[string]any
	var codes []string
	done := make(chan struct{})
	running := make(chan struct{})
	var once sync.Once
	go func() {
		defer close(done)
		h.events(t, resp.Body, func(ev map[string]any) bool {
			last = ev
			if ev["type"] == "system" {
				once.Do(func() { close(running) })
			}
			if ev["type"] == "error" {
				codes = append(codes, fmt.Sprint(ev["code"]))
			}
			return true
		})
	}()
	select {
	case <-running:
	case <-done:
		t.Fatalf("the stream ended before the agent ran: last event %v", last)
	}
	if err := h.srv.Shutdown(100 * time.Millisecond); err != nil {
		t.Logf("shutdown: %v", err)
	}
	<-done
	if len(codes) == 0 || codes[0] != "cancelled" {
		t.Errorf("stream did not say the run was cancelled: errors %v, last %v", codes, last)
	}
	h.noSandboxes(t, time.Second)
}
