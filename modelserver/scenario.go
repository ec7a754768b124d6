// Package modelserver is a scripted stand-in for the Anthropic Messages API.
// No model provider is reachable from sandstorm's machines, so tests and the
// offline demo point the real Claude Agent SDK (ANTHROPIC_BASE_URL) at a
// Server that answers each request with the next turn of a Scenario, in the
// API's exact streaming and non-streaming formats, and records what it got.
package modelserver

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// OnExhausted values: what the server answers once every turn is used.
const (
	// ExhaustFinish answers a final text turn, FinishedText with end_turn.
	ExhaustFinish = "finish"
	// ExhaustError answers ExhaustedError, by default HTTP 500 api_error.
	ExhaustError = "error"
)

// FinishedText is the text of the turn answered after the scenario ran out.
const FinishedText = "(scenario finished)"

// Scenario is a scripted model: an ordered list of assistant turns, one
// consumed by each POST /v1/messages.
type Scenario struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// OnExhausted is ExhaustFinish (the default when empty) or ExhaustError.
	OnExhausted string `json:"on_exhausted,omitempty"`
	// ExhaustedError is the answer for ExhaustError. With no turns, every
	// request gets it, which scripts a model that always fails.
	ExhaustedError *APIError `json:"exhausted_error,omitempty"`
	Turns          []Turn    `json:"turns"`
}

// Turn is one assistant answer. It has Content, or Text and/or ToolUse (Text
// first), or Error alone.
type Turn struct {
	Text    string    `json:"text,omitempty"`
	ToolUse *ToolUse  `json:"tool_use,omitempty"`
	Content []Block   `json:"content,omitempty"`
	Error   *APIError `json:"error,omitempty"`
	// DelayMS pauses before answering, so tests can watch a run stream live.
	DelayMS int `json:"delay_ms,omitempty"`
	// StopReason overrides the default: tool_use when the turn has a tool_use
	// block, else end_turn.
	StopReason string `json:"stop_reason,omitempty"`
}

// ToolUse asks the agent to call a tool. ID is generated when empty.
type ToolUse struct {
	ID    string          `json:"id,omitempty"`
	Name  string          `json:"name"`
	Input json.RawMessage `json:"input,omitempty"`
}

// Block is one content block of a turn: type "text" (Text) or "tool_use"
// (ID, Name, Input).
type Block struct {
	Type  string          `json:"type"`
	Text  string          `json:"text,omitempty"`
	ID    string          `json:"id,omitempty"`
	Name  string          `json:"name,omitempty"`
	Input json.RawMessage `json:"input,omitempty"`
}

// APIError is an error answer, as the API sends it. Type and Message default
// from Status when empty.
type APIError struct {
	Status  int    `json:"status"`
	Type    string `json:"type,omitempty"`
	Message string `json:"message,omitempty"`
}

// The error types the API documents, by the status it sends them with.
var errorTypes = map[int]string{
	400: "invalid_request_error",
	401: "authentication_error",
	402: "billing_error",
	403: "permission_error",
	404: "not_found_error",
	413: "request_too_large",
	429: "rate_limit_error",
	500: "api_error",
	504: "timeout_error",
	529: "overloaded_error",
}

var stopReasons = map[string]bool{
	"end_turn": true, "max_tokens": true, "stop_sequence": true,
	"tool_use": true, "pause_turn": true, "refusal": true,
}

//go:embed scenarios/*.json
var builtins embed.FS

// LoadScenario reads and parses a scenario file.
func LoadScenario(path string) (Scenario, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Scenario{}, fmt.Errorf("modelserver: load scenario: %w", err)
	}
	sc, err := ParseScenario(data)
	if err != nil {
		return Scenario{}, fmt.Errorf("%s: %w", path, err)
	}
	return sc, nil
}

// Builtin returns one of the scenarios shipped in scenarios/ by name (the
// file name without .json), so the offline demo needs no file on disk.
func Builtin(name string) (Scenario, error) {
	data, err := builtins.ReadFile("scenarios/" + name + ".json")
	if err != nil {
		return Scenario{}, fmt.Errorf("modelserver: builtin scenario %q: %w", name, err)
	}
	sc, err := ParseScenario(data)
	if err != nil {
		return Scenario{}, fmt.Errorf("builtin %q: %w", name, err)
	}
	return sc, nil
}

// ParseScenario parses and validates a scenario. Unknown fields are errors,
// so a misspelt field fails loudly instead of being ignored.
func ParseScenario(data []byte) (Scenario, error) {
	// Turns are decoded one by one so an error can name the turn.
	var raw struct {
		Scenario
		Turns []json.RawMessage `json:"turns"`
	}
	if err := decodeStrict(data, &raw); err != nil {
		return Scenario{}, fmt.Errorf("modelserver: scenario: %w", err)
	}
	sc := raw.Scenario
	sc.Turns = make([]Turn, len(raw.Turns))
	for i, rt := range raw.Turns {
		if err := decodeStrict(rt, &sc.Turns[i]); err != nil {
			return Scenario{}, fmt.Errorf("modelserver: scenario: turns[%d]: %w", i, err)
		}
	}
	if err := sc.validate(); err != nil {
		return Scenario{}, fmt.Errorf("modelserver: scenario: %w", err)
	}
	return sc, nil
}

// validate checks the scenario and fills its defaults in place.
func (sc *Scenario) validate() error {
	switch sc.OnExhausted {
	case "", ExhaustFinish:
		if sc.ExhaustedError != nil {
			return errors.New(`exhausted_error: needs on_exhausted "error"`)
		}
		if len(sc.Turns) == 0 {
			return errors.New(`turns: empty (only allowed with on_exhausted "error")`)
		}
	case ExhaustError:
		if sc.ExhaustedError == nil {
			sc.ExhaustedError = &APIError{Status: 500, Type: "api_error",
				Message: fmt.Sprintf("scripted model: scenario %q has no turn left (%d used)", sc.Name, len(sc.Turns))}
		}
		if err := sc.ExhaustedError.fill("exhausted_error"); err != nil {
			return err
		}
	default:
		return fmt.Errorf("on_exhausted: %q is not %q or %q", sc.OnExhausted, ExhaustFinish, ExhaustError)
	}
	ids := map[string]bool{}
	for i := range sc.Turns {
		if err := sc.Turns[i].validate(ids); err != nil {
			return fmt.Errorf("turns[%d]: %w", i, err)
		}
	}
	return nil
}

func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// validate checks a turn and fills the error defaults; ids collects the
// tool_use ids seen so far, which must be unique in a conversation.
func (t *Turn) validate(ids map[string]bool) error {
	if t.DelayMS < 0 {
		return fmt.Errorf("delay_ms: %d is negative", t.DelayMS)
	}
	if t.StopReason != "" && !stopReasons[t.StopReason] {
		return fmt.Errorf("stop_reason: unknown value %q", t.StopReason)
	}
	hasBlocks := t.Text != "" || t.ToolUse != nil
	switch {
	case t.Error != nil:
		if hasBlocks || len(t.Content) > 0 || t.StopReason != "" {
			return errors.New("error: cannot be combined with text, tool_use, content or stop_reason")
		}
		return t.Error.fill("error")
	case len(t.Content) > 0 && hasBlocks:
		return errors.New("content: cannot be combined with text or tool_use")
	case len(t.Content) == 0 && !hasBlocks:
		return errors.New("empty turn: needs text, tool_use, content or error")
	}
	if t.ToolUse != nil {
		if err := checkToolUse(t.ToolUse.ID, t.ToolUse.Name, &t.ToolUse.Input, ids); err != nil {
			return fmt.Errorf("tool_use: %w", err)
		}
	}
	for j := range t.Content {
		b := &t.Content[j]
		var err error
		switch b.Type {
		case "text":
			if b.Text == "" {
				err = errors.New("text: empty")
			} else if b.ID != "" || b.Name != "" || b.Input != nil {
				err = errors.New("a text block has only text")
			}
		case "tool_use":
			if b.Text != "" {
				err = errors.New("text: not allowed in a tool_use block")
			} else {
				err = checkToolUse(b.ID, b.Name, &b.Input, ids)
			}
		default:
			err = fmt.Errorf("type: %q is not \"text\" or \"tool_use\"", b.Type)
		}
		if err != nil {
			return fmt.Errorf("content[%d]: %w", j, err)
		}
	}
	return nil
}

// checkToolUse requires a name and an object input (the API's tool input is
// always an object; {} when absent), and compacts it for streaming.
func checkToolUse(id, name string, input *json.RawMessage, ids map[string]bool) error {
	if name == "" {
		return errors.New("name: missing")
	}
	if id != "" {
		if ids[id] {
			return fmt.Errorf("id: %q used twice", id)
		}
		ids[id] = true
	}
	if len(*input) == 0 {
		*input = json.RawMessage("{}")
		return nil
	}
	var obj map[string]any
	if err := json.Unmarshal(*input, &obj); err != nil || obj == nil {
		return errors.New("input: not a JSON object")
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, *input); err != nil {
		return fmt.Errorf("input: %w", err)
	}
	*input = buf.Bytes()
	return nil
}

// fill checks the status and defaults the type and message from it; field
// names e in the error.
func (e *APIError) fill(field string) error {
	if e.Status < 400 || e.Status > 599 {
		return fmt.Errorf("%s.status: %d is not an HTTP error status (400-599)", field, e.Status)
	}
	if e.Type == "" {
		e.Type = errorTypes[e.Status]
		if e.Type == "" {
			e.Type = "api_error"
		}
	}
	if e.Message == "" {
		e.Message = strings.ReplaceAll(e.Type, "_", " ") + " (scripted)"
	}
	return nil
}

// blocks is the turn's content in order.
func (t Turn) blocks() []Block {
	if len(t.Content) > 0 {
		return t.Content
	}
	var bs []Block
	if t.Text != "" {
		bs = append(bs, Block{Type: "text", Text: t.Text})
	}
	if t.ToolUse != nil {
		bs = append(bs, Block{Type: "tool_use", ID: t.ToolUse.ID, Name: t.ToolUse.Name, Input: t.ToolUse.Input})
	}
	return bs
}

// stopReason is the override, else tool_use when a block is a tool_use.
func (t Turn) stopReason() string {
	if t.StopReason != "" {
		return t.StopReason
	}
	for _, b := range t.blocks() {
		if b.Type == "tool_use" {
			return "tool_use"
		}
	}
	return "end_turn"
}
