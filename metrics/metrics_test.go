package metrics

import (
	"encoding/json"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/egress"
	"github.com/sandstorm-dev/sandstorm/gateway"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != 200 {
		t.Fatalf("scrape: %d %s", rec.Code, body)
	}
	return string(body)
}

// typeLast re-encodes v with its keys in alphabetical order, which puts
// "type" after most of them: what is counted must not depend on where it
// stands.
func typeLast(v any) []byte {
	b, _ := json.Marshal(v)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	b, _ = json.Marshal(m)
	return b
}

func TestRunEvents(t *testing.T) {
	encodings := map[string]func(any) []byte{
		"as written": func(v any) []byte { b, _ := json.Marshal(v); return b },
		"type last":  typeLast,
	}
	for name, encode := range encodings {
		t.Run(name, func(t *testing.T) { testRunEvents(t, encode) })
	}
}

func testRunEvents(t *testing.T, encode func(any) []byte) {
	m := New()
	m.Watch("docker", func() api.Health {
		return api.Health{Status: api.HealthOK, Backend: "docker", Running: 3, Queued: 2, MaxConcurrentAgents: 8,
			Pool: &api.PoolHealth{Size: 2, Ready: 1, Refilling: 1}}
	})
	warm := true
	created := api.NewSandboxEvent(api.SandboxCreated, "ds-1", "s-1", "containerd", 0)
	created.Warm = &warm
	events := []any{
		api.RunEvent{Type: api.TypeRun, RunID: "run-1"},
		created,
		api.NewSandboxEvent(api.SandboxStarted, "ds-1", "s-1", "containerd", 0),
		map[string]any{"type": "system", "subtype": "init"},
		egress.Event{Type: egress.TypeEvent, Host: "secret-host.example", Port: 443, Decision: egress.Deny},
		egress.Event{Type: egress.TypeEvent, Host: "example.org", Port: 443, Decision: egress.Allow},
		map[string]any{"type": "assistant", "message": map[string]any{"content": "the prompt's words"}},
		api.NewSandboxEvent(api.SandboxRemoved, "ds-1", "s-1", "containerd", 0),
	}
	r := m.Run()
	for _, ev := range events {
		r.Event(encode(ev))
	}
	r.Finish("succeeded")
	// A run that never got a sandbox: the watched backend.
	m.Run().Finish("failed")
	m.QueueWait(0)
	m.ModelCall(200)
	m.ModelCall(529)
	m.UpstreamError()
	m.Usage(gateway.Usage{InputTokens: 100, OutputTokens: 20, CostUSD: 0.5})
	m.Reaped("sandbox", 2)

	out := scrape(t, m)
	for _, want := range []string{
		`sandstorm_runs_started_total{backend="containerd"} 1`,
		`sandstorm_runs_finished_total{backend="containerd",outcome="succeeded"} 1`,
		`sandstorm_runs_finished_total{backend="docker",outcome="failed"} 1`,
		`sandstorm_run_duration_seconds_count{backend="containerd",outcome="succeeded"} 1`,
		`sandstorm_run_first_message_seconds_count{backend="containerd",warm="true"} 1`,
		`sandstorm_sandbox_step_seconds_count{backend="containerd",step="create"} 1`,
		`sandstorm_sandbox_step_seconds_count{backend="containerd",step="start"} 1`,
		`sandstorm_sandbox_step_seconds_count{backend="containerd",step="remove"} 1`,
		`sandstorm_queue_wait_seconds_count 1`,
		`sandstorm_gateway_requests_total{status="2xx"} 1`,
		`sandstorm_gateway_requests_total{status="5xx"} 1`,
		`sandstorm_gateway_upstream_errors_total 1`,
		`sandstorm_model_tokens_total{kind="input"} 100`,
		`sandstorm_model_tokens_total{kind="output"} 20`,
		`sandstorm_model_cost_usd_total 0.5`,
		`sandstorm_egress_connections_total{decision="allow"} 1`,
		`sandstorm_egress_connections_total{decision="deny"} 1`,
		`sandstorm_reaped_total{kind="sandbox"} 2`,
		`sandstorm_backend_up{backend="docker"} 1`,
		`sandstorm_slots_in_use 3`,
		`sandstorm_slots_max 8`,
		`sandstorm_queue_depth 2`,
		`sandstorm_pool_size 2`,
		`sandstorm_pool_ready 1`,
		`sandstorm_pool_refilling 1`,
		`process_resident_memory_bytes`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	for _, leak := range []string{"secret-host", "example.org", "prompt's words", "ds-1", "run-1"} {
		if strings.Contains(out, leak) {
			t.Errorf("the metrics carry %q", leak)
		}
	}
}

// A backend's name from an event is a label only if it is one of
// sandstorm's backends, which keeps the label set bounded.
func TestBoundedBackend(t *testing.T) {
	tests := []struct{ name, label string }{
		{"containerd", "containerd"},
		{"docker", "docker"},
		{"podman", "podman"},
		{"kubernetes", "kubernetes"},
		{"something-else", "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New()
			r := m.Run()
			b, _ := json.Marshal(api.NewSandboxEvent(api.SandboxCreated, "x", "y", tt.name, 0))
			r.Event(b)
			r.Finish("failed")
			if out := scrape(t, m); !strings.Contains(out, `sandstorm_runs_started_total{backend="`+tt.label+`"} 1`) {
				t.Errorf("backend %q: no runs_started_total labelled %q in\n%s", tt.name, tt.label, out)
			}
		})
	}
}

// A nil *Metrics counts nothing and never panics: code that counts need
// not ask.
func TestNil(t *testing.T) {
	var m *Metrics
	m.Watch("containerd", nil)
	m.QueueWait(0)
	m.ModelCall(200)
	m.UpstreamError()
	m.Usage(gateway.Usage{})
	m.Reaped("sandbox", 1)
	r := m.Run()
	r.Event(json.RawMessage(`{"type":"system"}`))
	r.Finish("succeeded")
}
