package modelserver

import (
	"encoding/json"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseScenarioErrors(t *testing.T) {
	tests := []struct {
		name, json, want string
	}{
		{"not json", `{`, "unexpected EOF"},
		{"trailing data", `{"turns":[{"text":"a"}]} {}`, "trailing data"},
		{"unknown top-level field", `{"turn":[]}`, `unknown field "turn"`},
		{"unknown turn field", `{"turns":[{"text":"a"},{"txt":"b"}]}`, `turns[1]: json: unknown field "txt"`},
		{"wrong type", `{"turns":[{"text":1}]}`, "turns[0]: json: cannot unmarshal number"},
		{"no turns", `{"name":"x"}`, "turns: empty"},
		{"empty turn", `{"turns":[{"delay_ms":5}]}`, "turns[0]: empty turn"},
		{"negative delay", `{"turns":[{"text":"a","delay_ms":-1}]}`, "turns[0]: delay_ms: -1 is negative"},
		{"bad stop_reason", `{"turns":[{"text":"a","stop_reason":"done"}]}`, `turns[0]: stop_reason: unknown value "done"`},
		{"tool_use without name", `{"turns":[{"tool_use":{"input":{}}}]}`, "turns[0]: tool_use: name: missing"},
		{"tool_use input not object", `{"turns":[{"tool_use":{"name":"Bash","input":[1]}}]}`, "turns[0]: tool_use: input: not a JSON object"},
		{"tool_use input null", `{"turns":[{"tool_use":{"name":"Bash","input":null}}]}`, "turns[0]: tool_use: input: not a JSON object"},
		{"duplicate tool id", `{"turns":[{"tool_use":{"id":"t1","name":"A"}},{"tool_use":{"id":"t1","name":"B"}}]}`, `turns[1]: tool_use: id: "t1" used twice`},
		{"content with text", `{"turns":[{"text":"a","content":[{"type":"text","text":"b"}]}]}`, "turns[0]: content: cannot be combined"},
		{"content bad type", `{"turns":[{"content":[{"type":"text","text":"a"},{"type":"image"}]}]}`, `turns[0]: content[1]: type: "image" is not`},
		{"content empty text", `{"turns":[{"content":[{"type":"text"}]}]}`, "turns[0]: content[0]: text: empty"},
		{"content text with name", `{"turns":[{"content":[{"type":"text","text":"a","name":"B"}]}]}`, "turns[0]: content[0]: a text block has only text"},
		{"content tool_use with text", `{"turns":[{"content":[{"type":"tool_use","name":"A","text":"x"}]}]}`, "turns[0]: content[0]: text: not allowed"},
		{"content tool_use no name", `{"turns":[{"content":[{"type":"tool_use"}]}]}`, "turns[0]: content[0]: name: missing"},
		{"error with text", `{"turns":[{"text":"a","error":{"status":500}}]}`, "turns[0]: error: cannot be combined"},
		{"error status missing", `{"turns":[{"error":{"type":"api_error"}}]}`, "turns[0]: error.status: 0 is not an HTTP error status"},
		{"error status 200", `{"turns":[{"error":{"status":200}}]}`, "turns[0]: error.status: 200"},
		{"bad on_exhausted", `{"on_exhausted":"loop","turns":[{"text":"a"}]}`, `on_exhausted: "loop"`},
		{"exhausted_error without error mode", `{"exhausted_error":{"status":500},"turns":[{"text":"a"}]}`, `exhausted_error: needs on_exhausted "error"`},
		{"exhausted_error bad status", `{"on_exhausted":"error","exhausted_error":{"status":99}}`, "exhausted_error.status: 99"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseScenario([]byte(tt.json))
			if err == nil {
				t.Fatalf("ParseScenario(%s) = nil error, want %q", tt.json, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseScenario(%s) error %q, want it to contain %q", tt.json, err, tt.want)
			}
		})
	}
}

func TestParseScenarioDefaults(t *testing.T) {
	sc, err := ParseScenario([]byte(`{
		"name": "d",
		"on_exhausted": "error",
		"turns": [
			{"text": "hi"},
			{"text": "run", "tool_use": {"name": "Bash", "input": {"command": "ls",  "n": 1}}},
			{"tool_use": {"name": "Noop"}, "stop_reason": "end_turn"},
			{"error": {"status": 529}},
			{"error": {"status": 418}}
		]}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(sc.Turns[1].ToolUse.Input); got != `{"command":"ls","n":1}` {
		t.Errorf("input not compacted: %s", got)
	}
	if got := string(sc.Turns[2].ToolUse.Input); got != `{}` {
		t.Errorf("missing input = %s, want {}", got)
	}
	stops := []string{"end_turn", "tool_use", "end_turn"}
	for i, want := range stops {
		if got := sc.Turns[i].stopReason(); got != want {
			t.Errorf("turns[%d] stop reason %q, want %q", i, got, want)
		}
	}
	if e := sc.Turns[3].Error; e.Type != "overloaded_error" || e.Message == "" {
		t.Errorf("529 defaults: %+v", e)
	}
	if e := sc.Turns[4].Error; e.Type != "api_error" {
		t.Errorf("unknown status defaults to api_error: %+v", e)
	}
	if e := sc.ExhaustedError; e == nil || e.Status != 500 || !strings.Contains(e.Message, "no turn left") {
		t.Errorf("default exhausted error: %+v", e)
	}
	if bs := sc.Turns[1].blocks(); len(bs) != 2 || bs[0].Type != "text" || bs[1].Type != "tool_use" {
		t.Errorf("text + tool_use blocks: %+v", bs)
	}
}

// TestScenarioFiles checks every shipped scenario parses, also as Builtin,
// and that each keeps the promise its tests and the demo rely on.
func TestScenarioFiles(t *testing.T) {
	files, err := filepath.Glob("scenarios/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenario files: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		sc, err := LoadScenario(f)
		if err != nil {
			t.Errorf("LoadScenario(%s): %v", f, err)
			continue
		}
		if sc.Name != name || sc.Description == "" {
			t.Errorf("%s: name %q (want the file name) description %q", f, sc.Name, sc.Description)
		}
		if _, err := Builtin(name); err != nil {
			t.Errorf("Builtin(%s): %v", name, err)
		}
	}
	if _, err := Builtin("nope"); err == nil {
		t.Error("Builtin(nope) = nil error")
	}
	if _, err := LoadScenario("scenarios/nope.json"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadScenario of a missing file: %v, want a wrapped not-exist error", err)
	}

	hello, _ := Builtin("hello-python")
	var write struct{ Content string }
	if err := json.Unmarshal(hello.Turns[0].ToolUse.Input, &write); err != nil || write.Content != "print(\"hello from sandstorm\")\n" {
		t.Errorf("hello-python writes %q (%v)", write.Content, err)
	}
	so, _ := Builtin("structured-output")
	if len(so.Turns) != 1 || so.Turns[0].ToolUse == nil || so.Turns[0].ToolUse.Name != "StructuredOutput" {
		t.Errorf("structured-output: want one StructuredOutput turn, got %+v", so.Turns)
	}
	me, _ := Builtin("model-error")
	if me.OnExhausted != ExhaustError || me.ExhaustedError.Status != 500 || me.ExhaustedError.Type != "api_error" {
		t.Errorf("model-error: %+v", me)
	}
}

func TestNewServerValidatesGoScenarios(t *testing.T) {
	sc := Scenario{Turns: []Turn{{ToolUse: &ToolUse{Name: "Bash"}}}}
	s := NewServer(sc)
	if got := string(s.scenario.Turns[0].ToolUse.Input); got != "{}" {
		t.Errorf("default input %q", got)
	}
	if sc.Turns[0].ToolUse.Input != nil {
		t.Error("NewServer changed the caller's scenario")
	}
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "turns[0]: tool_use: name: missing") {
			t.Errorf("panic = %v", r)
		}
	}()
	NewServer(Scenario{Turns: []Turn{{ToolUse: &ToolUse{}}}})
}
