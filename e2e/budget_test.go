package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/modelserver"
)

// budgetScenario: code the agent runs calls the model itself with the
// session token (past the SDK's max_turns); the gateway counts those calls
// too, refuses the one over the run's budget, and the run ends with
// budget_exceeded, its usage in the stream.
func budgetScenario(t *testing.T, b backend) {
	direct := `for i in 1 2 3 4; do curl -s -o /dev/null -w '%{http_code} ' "$ANTHROPIC_BASE_URL/v1/messages" -H "x-api-key: $ANTHROPIC_API_KEY" -H 'content-type: application/json' -d '{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}'; done; echo`
	input := `{"command": ` + quote(direct) + `}`
	sc := modelserver.Scenario{Turns: []modelserver.Turn{
		{ToolUse: &modelserver.ToolUse{Name: "Bash", Input: []byte(input)}},
		{Text: "direct 1"}, {Text: "direct 2"}, {Text: "direct 3"},
		{Text: "never reached: the gateway refuses this call"},
	}}
	job := agent.Job{Config: agent.Config{Prompt: "spend"}, Budget: gateway.Budget{MaxRequests: 4}}
	events, out, srv, _ := run(t, b, sc, job)
	if out.Code != api.CodeBudgetExceeded {
		t.Fatalf("code %q, want %q", out.Code, api.CodeBudgetExceeded)
	}
	if res := toolResults(events); !strings.Contains(res, "200 200 200 400") {
		t.Errorf("direct calls answered %s, want three 200s, then the gateway's 400", res)
	}
	if n := len(srv.Requests()); n != 4 {
		t.Errorf("the model saw %d requests, want 4 (the budget)", n)
	}
	usage := find(events, api.TypeModelUsage)
	if len(usage) != 1 || usage[0]["requests"] != float64(4) || !strings.Contains(usage[0]["exceeded"].(string), "4 model requests") {
		t.Errorf("usage events %v", usage)
	}
	errs := find(events, "error")
	if len(errs) == 0 || errs[len(errs)-1]["code"] != string(api.CodeBudgetExceeded) {
		t.Errorf("error events %v", errs)
	}
}

// quote is s as a JSON string.
func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
