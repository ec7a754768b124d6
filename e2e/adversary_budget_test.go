package e2e

import (
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/modelserver"
)

// concurrentCalls is the attack: the session token read from the
// environment of the sandbox's processes (the runner's), then 16 calls at once of about 37k input tokens of an
// opus model (some $0.56 each), so that none is settled when the others
// are admitted.
const concurrentCalls = `tok=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | sed -n 's/^SANDSTORM_MODEL_TOKEN=//p' | head -n 1)
body=$(mktemp)
printf '{"model":"claude-opus-4-1","max_tokens":1000,"messages":[{"role":"user","content":"%s"}]}' "$(head -c 150000 /dev/zero | tr '\0' a)" >"$body"
for i in $(seq 16); do curl -s -o /dev/null -w '%{http_code}\n' "$ANTHROPIC_BASE_URL/v1/messages" -H "x-api-key: $tok" -H 'content-type: application/json' --data-binary @"$body" & done | sort | uniq -c | tr '\n' ' '
wait; rm -f "$body"`

// concurrentBudgetScenario: the agent's own code fires model calls at once
// under a $1 budget; together they spend no more than it (16 such calls once
// spent $9.92 under $1.00, each admitted before any was counted).
func concurrentBudgetScenario(t *testing.T, b backend) {
	const maxUSD = 1.00
	sc := modelserver.Scenario{Turns: []modelserver.Turn{
		{ToolUse: &modelserver.ToolUse{Name: "Bash", Input: []byte(`{"command": ` + quote(concurrentCalls) + `}`)}},
	}}
	// The answers come late, so that the calls overlap.
	for range 17 {
		sc.Turns = append(sc.Turns, modelserver.Turn{DelayMS: 1000, Text: "direct"})
	}
	// The CLI's own calls are haiku's: cheap enough to leave room for one opus call.
	job := agent.Job{Config: agent.Config{Prompt: "spend"}, Budget: gateway.Budget{MaxUSD: maxUSD}}
	job.Config.Model = "claude-haiku-4-5"
	events, out, srv, _ := run(t, b, sc, job)
	if out.Code != "" && out.Code != api.CodeBudgetExceeded {
		t.Fatalf("code %q, want success or %q", out.Code, api.CodeBudgetExceeded)
	}
	usage := find(events, api.TypeModelUsage)
	if len(usage) != 1 {
		t.Fatalf("usage events %v", usage)
	}
	cost, _ := usage[0]["cost_usd"].(float64)
	exceeded, _ := usage[0]["exceeded"].(string)
	opus := 0
	for _, r := range srv.Requests() {
		if r.Model == "claude-opus-4-1" {
			opus++
		}
	}
	// The run may end before the tool's result comes back: a call of the
	// CLI's own can be refused while the attack's calls hold the budget
	// (seen under gVisor, whose sandbox is slower). When it does come back,
	// the attacker saw the refusals.
	res := toolResults(events)
	if cost > maxUSD || exceeded == "" || opus == 0 || opus >= 16 || (res != "" && !strings.Contains(res, "400")) {
		t.Errorf("$%.4f spent of $%.2f (exceeded %q), the model answered %d of the 16 calls; tool results %s", cost, maxUSD, exceeded, opus, res)
	}
}
