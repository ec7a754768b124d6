package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/modelserver"
)

func builtin(t *testing.T, name string) modelserver.Scenario {
	sc, err := modelserver.Builtin(name)
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

// scenarios runs every scenario on backend b.
func scenarios(t *testing.T, b backend) {
	t.Run("egress through the proxy", func(t *testing.T) { egressScenario(t, b) })
	t.Run("adversary: the host's loopback through the egress proxy", func(t *testing.T) { adversaryEgressScenario(t, b) })
	t.Run("a secret put in at the boundary", func(t *testing.T) { secretScenario(t, b) })
	t.Run("npm and pip install through the proxy", func(t *testing.T) { packagesScenario(t, b) })
	t.Run("budget enforced at the gateway", func(t *testing.T) { budgetScenario(t, b) })
	t.Run("adversary: concurrent model calls within the budget", func(t *testing.T) { concurrentBudgetScenario(t, b) })
	t.Run("a tool of a stdio MCP server", func(t *testing.T) { mcpScenario(t, b) })
	t.Run("a subagent", func(t *testing.T) { subagentScenario(t, b) })
	t.Run("a tool of an http MCP server on the host", func(t *testing.T) { mcpHTTPScenario(t, b) })
	t.Run("files handed back", func(t *testing.T) { filesScenario(t, b) })
	t.Run("a warm sandbox handed a run", func(t *testing.T) { warmScenario(t, b) })
	t.Run("hello-python", func(t *testing.T) {
		events, out, srv, _ := run(t, b, builtin(t, "hello-python"), agent.Job{Config: agent.Config{Prompt: "Create hello.py and run it"}})
		if !out.Success() {
			t.Fatalf("run failed: %s (sandbox events %v)", out.Code, find(events, "sandbox"))
		}
		if inits := find(events, "system"); len(inits) == 0 || inits[0]["subtype"] != "init" {
			t.Errorf("no system init message")
		}
		if got := toolUses(events); !slices.Equal(got, []string{"Write", "Bash"}) {
			t.Errorf("tool uses %v, want Write then Bash", got)
		}
		// The Bash result proves hello.py was written to the workspace and ran there.
		if !strings.Contains(toolResults(events), "hello from sandstorm") {
			t.Errorf("no tool_result with the program's output: %s", toolResults(events))
		}
		res := find(events, "result")
		if len(res) != 1 || res[0]["subtype"] != "success" || res[0]["is_error"] != false {
			t.Errorf("result %v", res)
		}
		if len(srv.Requests()) < 3 {
			t.Errorf("model saw %d requests", len(srv.Requests()))
		}
	})
	t.Run("structured-output", func(t *testing.T) {
		schema := `{"type":"json_schema","schema":{"type":"object","properties":{"answer":{"type":"string"},"count":{"type":"integer"}},"required":["answer","count"]}}`
		events, out, _, _ := run(t, b, builtin(t, "structured-output"), agent.Job{Config: agent.Config{Prompt: "Count the files", Project: config.Project{OutputFormat: []byte(schema)}}})
		if !out.Success() {
			t.Fatalf("run failed: %s", out.Code)
		}
		res := find(events, "result")
		so, _ := res[0]["structured_output"].(map[string]any)
		if so["answer"] != "three files" || so["count"] != float64(3) {
			t.Errorf("structured_output %v", res[0]["structured_output"])
		}
	})
	t.Run("model-error", func(t *testing.T) {
		// A 500 from the model must end the run with an error event, not
		// a hang or minutes of retries: the timeout here is a backstop.
		events, out, _, _ := run(t, b, builtin(t, "model-error"), agent.Job{Config: agent.Config{Prompt: "anything"}, Timeout: 2 * time.Minute})
		if out.Code != api.CodeAgentFailed {
			t.Fatalf("code %q, want %q", out.Code, api.CodeAgentFailed)
		}
		errs := find(events, "error")
		if len(errs) == 0 || !strings.Contains(errs[len(errs)-1]["message"].(string), "500") {
			t.Errorf("error events %v do not report the 500", errs)
		}
	})
	t.Run("key never in the sandbox", func(t *testing.T) {
		sc := modelserver.Scenario{Turns: []modelserver.Turn{
			{ToolUse: &modelserver.ToolUse{Name: "Bash", Input: []byte(`{"command": "env; for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ 2>/dev/null; done; echo scanned"}`)}},
			{Text: "checked"},
		}}
		events, out, _, _ := run(t, b, sc, agent.Job{Config: agent.Config{Prompt: "show env"}})
		if !out.Success() {
			t.Fatalf("run failed: %s", out.Code)
		}
		results := toolResults(events)
		if !strings.Contains(results, "scanned") {
			t.Fatalf("environment scan did not run: %s", results)
		}
		if strings.Contains(results, realKey) || strings.Contains(results, "sk-ant-") {
			t.Errorf("a key is visible inside the sandbox")
		}
	})
}
