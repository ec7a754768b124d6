package api

import (
	"encoding/json"
	"time"

	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/runtime"
)

// Event types of sandstorm's own; the SDK's messages pass through unchanged.
const (
	TypeSandbox = "sandbox"
	TypeError   = "error"
	TypeStderr  = "stderr"
	TypeStdout  = "stdout"
)

// Steps of a sandbox's life, in the sandbox event's "event" field.
const (
	SandboxCreated = "created"
	SandboxStarted = "started"
	SandboxExited  = "exited"
	SandboxRemoved = "removed"
)

// SandboxEvent is sandstorm's own lifecycle event: type "sandbox".
type SandboxEvent struct {
	Type       string `json:"type"`
	Event      string `json:"event"`
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

// NewSandboxEvent is step ev of sandbox id (of session) on backend rt, which took d.
func NewSandboxEvent(ev, id, session, rt string, d time.Duration) SandboxEvent {
	return SandboxEvent{Type: TypeSandbox, Event: ev, SandboxID: id, SessionID: session, Runtime: rt, DurationMS: d.Milliseconds()}
}

// TypeModelUsage is the event with what the run's model calls used, as the
// gateway counted them, sent when the sandbox has exited.
const TypeModelUsage = "model_usage"

// UsageEvent is type "model_usage": the usage, and the budget it ran under.
type UsageEvent struct {
	Type string `json:"type"`
	gateway.Usage
	Budget gateway.Budget `json:"budget"`
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
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

// NewError is an error event.
func NewError(code Code, msg string) json.RawMessage {
	return Marshal(ErrorEvent{Type: TypeError, Code: code, Message: msg})
}

// ErrorFor is the error event saying why err stopped a run.
func ErrorFor(err error) json.RawMessage { return NewError(CodeOf(err), err.Error()) }

// Marshal encodes one of this package's events.
func Marshal(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only this package's plain structs are marshalled here
	}
	return b
}
