package server

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

// TestMetrics: GET /metrics is behind the API keys, and a real run moves
// the figures: runs by outcome, sandbox steps, the model's calls, tokens
// and cost, and the host's slots.
func TestMetrics(t *testing.T) {
	key := strings.Repeat("m", 32)
	h := startWith(t, "containerd", "hello-python", "max_concurrent_agents: 3\n", Config{APIKeys: []string{key}}, net.Listen)
	auth := map[string]string{"Authorization": "Bearer " + key, "Content-Type": "application/json"}
	if code, _, _ := send(t, "GET", h.url+"/metrics", "", nil); code != 401 {
		t.Errorf("/metrics without a key: %d, want 401", code)
	}
	if code, _, body := send(t, "POST", h.url+"/query", `{"prompt":"write hello.py and run it","timeout":120}`, auth); code != 200 || !strings.Contains(string(body), `"subtype":"success"`) {
		t.Fatalf("run: %d %s", code, body)
	}
	code, _, body := send(t, "GET", h.url+"/metrics", "", auth)
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	out := string(body)
	value := func(series string) float64 {
		for _, line := range strings.Split(out, "\n") {
			if name, v, ok := strings.Cut(line, " "); ok && name == series {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		return -1
	}
	for series, atLeast := range map[string]float64{
		`sandstorm_runs_started_total{backend="containerd"}`:                           1,
		`sandstorm_runs_finished_total{backend="containerd",outcome="succeeded"}`:      1,
		`sandstorm_run_first_message_seconds_count{backend="containerd",warm="false"}`: 1,
		`sandstorm_sandbox_step_seconds_count{backend="containerd",step="create"}`:     1,
		`sandstorm_sandbox_step_seconds_count{backend="containerd",step="remove"}`:     1,
		`sandstorm_gateway_requests_total{status="2xx"}`:                               2,
		`sandstorm_model_tokens_total{kind="input"}`:                                   1,
		`sandstorm_model_tokens_total{kind="output"}`:                                  1,
		`sandstorm_queue_wait_seconds_count`:                                           1,
		`sandstorm_backend_up{backend="containerd"}`:                                   1,
		`sandstorm_slots_max`: 3,
		`sandstorm_run_duration_seconds_count{backend="containerd",outcome="succeeded"}`: 1,
	} {
		if v := value(series); v < atLeast {
			t.Errorf("%s = %v, want at least %v", series, v, atLeast)
		}
	}
	if v := value("sandstorm_model_cost_usd_total"); v <= 0 {
		t.Errorf("model cost %v, want > 0", v)
	}
	if v := value("sandstorm_slots_in_use"); v != 0 {
		t.Errorf("slots in use after the run: %v", v)
	}
	for _, leak := range []string{"hello.py", key, "sk-ant-test-not-real", "ds-"} {
		if strings.Contains(out, leak) {
			t.Errorf("the metrics carry %q", leak)
		}
	}
}
