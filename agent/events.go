package agent

import (
	"encoding/json"
	"time"

	"github.com/sandstorm-dev/sandstorm/runtime"
)

// Error codes carried by "error" events; clients switch on them.
const (
	CodeTimeout            = "timeout"
	CodeOOM                = "oom"
	CodeCancelled          = "cancelled"
	CodeBusy               = "busy"
	CodeRuntimeUnavailable = "runtime_unavailable"
	CodeInvalidConfig      = "invalid_config"
	CodeInvalidRequest     = "invalid_request"
	CodeAgentFailed        = "agent_failed"
)

// SandboxEvent is sandstorm's own lifecycle event: type "sandbox".
type SandboxEvent struct {
	Type       string `json:"type"`
	Event      string `json:"event"` // created, started, exited, removed
	SandboxID  string `json:"sandbox_id"`
	SessionID  string `json:"session_id"`
	Runtime    string `json:"runtime"`
	DurationMS int64  `json:"duration_ms"`
	ExitCode   *int   `json:"exit_code,omitempty"`
	Signal     string `json:"signal,omitempty"`
	OOMKilled  bool   `json:"oom_killed,omitempty"`
	// Unenforced names policy items the caller allowed the backend to skip.
	Unenforced []runtime.Item `json:"unenforced,omitempty"`
}

// LineEvent carries one line of the runner's stderr ("stderr"), or a stdout
// line that was not JSON ("stdout").
type LineEvent struct {
	Type      string `json:"type"`
	Line      string `json:"line"`
	Truncated bool   `json:"truncated,omitempty"`
}

// ErrorEvent reports why a run failed: type "error".
type ErrorEvent struct {
	Type    string `json:"type"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// NewError builds an error event.
func NewError(code, msg string) json.RawMessage {
	return mustJSON(ErrorEvent{Type: "error", Code: code, Message: msg})
}

func sandboxEvent(ev, id, session, rt string, d time.Duration) SandboxEvent {
	return SandboxEvent{Type: "sandbox", Event: ev, SandboxID: id, SessionID: session, Runtime: rt, DurationMS: d.Milliseconds()}
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only our own plain structs are marshalled here
	}
	return b
}
