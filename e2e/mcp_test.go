package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/egress"
	"github.com/sandstorm-dev/sandstorm/modelserver"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// mcpEcho is a tiny MCP server over stdio (newline-delimited JSON-RPC):
// one tool, echo.
const mcpEcho = `import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    m, result = msg["method"], {}
    if m == "initialize":
        result = {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}}, "serverInfo": {"name": "echo", "version": "1"}}
    elif m == "tools/list":
        result = {"tools": [{"name": "echo", "description": "Echo the text back", "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}]}
    elif m == "tools/call":
        result = {"content": [{"type": "text", "text": "echo from the MCP server: " + msg["params"]["arguments"]["text"]}]}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\n")
    sys.stdout.flush()
`

// mcpScenario: the scripted model calls a tool of a stdio MCP server the
// configuration declares; its answer comes back as the tool result.
func mcpScenario(t *testing.T, b backend) {
	sc := modelserver.Scenario{Turns: []modelserver.Turn{
		{ToolUse: &modelserver.ToolUse{Name: "mcp__echo__echo", Input: []byte(`{"text": "hi"}`)}},
		{Text: "the MCP server answered"},
	}}
	servers, _ := json.Marshal(map[string]any{"echo": map[string]any{"type": "stdio", "command": "python3", "args": []string{"/home/user/mcp_echo.py"}}})
	job := agent.Job{Config: agent.Config{Prompt: "echo hi", Project: config.Project{MCPServers: servers}},
		Files: []sandbox.File{{Path: "mcp_echo.py", Content: []byte(mcpEcho)}}}
	events, out, _, _ := run(t, b, sc, job)
	if !out.Success() {
		t.Fatalf("run failed: %s", out.Code)
	}
	if res := toolResults(events); !strings.Contains(res, "echo from the MCP server: hi") {
		t.Errorf("tool result %s", res)
	}
}

// subagentScenario: the scripted model hands a task to a subagent the
// configuration declares; the subagent's own answer is the tool result.
func subagentScenario(t *testing.T, b backend) {
	sc := modelserver.Scenario{Turns: []modelserver.Turn{
		{ToolUse: &modelserver.ToolUse{Name: "Task", Input: []byte(`{"description": "say hi", "prompt": "Say hi.", "subagent_type": "greeter", "run_in_background": false}`)}},
		{Text: "hi from the greeter subagent"},
		{Text: "the subagent answered"},
	}}
	agents, _ := json.Marshal(map[string]any{"greeter": map[string]any{"description": "Says hi", "prompt": "You say hi."}})
	job := agent.Job{Config: agent.Config{Prompt: "ask the greeter", Project: config.Project{Agents: agents}}}
	events, out, srv, _ := run(t, b, sc, job)
	if !out.Success() {
		t.Fatalf("run failed: %s", out.Code)
	}
	if res := toolResults(events); !strings.Contains(res, "hi from the greeter subagent") {
		t.Errorf("tool result %s", res)
	}
	if n := len(srv.Requests()); n != 3 {
		t.Errorf("the model saw %d requests, want 3 (main, subagent, main)", n)
	}
}

// mcpHTTPServer is a tiny MCP server over streamable HTTP (JSON answers).
func mcpHTTPServer(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		var msg struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params struct {
				ProtocolVersion string         `json:"protocolVersion"`
				Arguments       map[string]any `json:"arguments"`
			} `json:"params"`
		}
		if err := json.NewDecoder(r.Body).Decode(&msg); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if len(msg.ID) == 0 {
			w.WriteHeader(http.StatusAccepted) // a notification
			return
		}
		var result any
		switch msg.Method {
		case "initialize":
			result = map[string]any{"protocolVersion": msg.Params.ProtocolVersion, "capabilities": map[string]any{"tools": map[string]any{}}, "serverInfo": map[string]any{"name": "hostdocs", "version": "1"}}
		case "tools/list":
			result = map[string]any{"tools": []any{map[string]any{"name": "lookup", "description": "Look a word up", "inputSchema": map[string]any{"type": "object", "properties": map[string]any{"word": map[string]any{"type": "string"}}}}}}
		case "tools/call":
			result = map[string]any{"content": []any{map[string]any{"type": "text", "text": fmt.Sprintf("the host's MCP server looked up %v", msg.Params.Arguments["word"])}}}
		default:
			result = map[string]any{}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": msg.ID, "result": result})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// mcpHTTPScenario: an http MCP server on the host's loopback, declared as
// localhost in the configuration, is reached through the egress proxy
// (its URL rewritten for the sandbox, its port opened because it was
// declared), and its tool's answer is the tool result.
func mcpHTTPScenario(t *testing.T, b backend) {
	srv := mcpHTTPServer(t)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	sc := modelserver.Scenario{Turns: []modelserver.Turn{
		{ToolUse: &modelserver.ToolUse{Name: "mcp__hostdocs__lookup", Input: []byte(`{"word": "sandstorm"}`)}},
		{Text: "the host's MCP server answered"},
	}}
	servers, _ := json.Marshal(map[string]any{"hostdocs": map[string]any{"type": "http", "url": fmt.Sprintf("http://localhost:%d/mcp", port)}})
	policy, err := egress.Config{}.Policy()
	if err != nil {
		t.Fatal(err)
	}
	job := agent.Job{Config: agent.Config{Prompt: "look it up", Project: config.Project{MCPServers: servers}}}
	events, out, _, _ := runWith(t, b, sc, job, func(r *agent.Launcher) { r.Egress = &policy })
	if !out.Success() {
		t.Fatalf("run failed: %s", out.Code)
	}
	if res := toolResults(events); !strings.Contains(res, "the host's MCP server looked up sandstorm") {
		t.Errorf("tool result %s", res)
	}
	declared := 0
	for _, e := range find(events, egress.TypeEvent) {
		if e["decision"] == egress.Allow && e["rule"] == fmt.Sprintf("declared 127.0.0.1:%d", port) {
			declared++
		}
	}
	if declared == 0 {
		t.Errorf("no egress event through the declared MCP server's rule: %v", find(events, egress.TypeEvent))
	}
}
