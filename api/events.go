package api

import (
	"bytes"
	"encoding/json"
	"time"
)

// Event types of sandstorm's own; the SDK's messages pass through unchanged.
const (
	TypeSandbox = "sandbox"
	TypeError   = "error"
	TypeStderr  = "stderr"
	TypeStdout  = "stdout"
)

// TypeOf is ev's "type", which tells sandstorm's own events from each other
// and from the SDK's messages, wherever the field stands in the object; ""
// when ev is not an object with a string "type". It reads no further than
// that field, which the SDK and sandstorm write first, so telling a large
// message apart stays cheap; the kinds it names are then decoded whole.
func TypeOf(ev json.RawMessage) string {
	dec := json.NewDecoder(bytes.NewReader(ev))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return ""
		}
		if key == "type" {
			v, _ := dec.Token()
			s, _ := v.(string)
			return s
		}
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return ""
		}
	}
	return ""
}

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
	Unenforced []string `json:"unenforced,omitempty"`
	// Warm (created only) says whether the sandbox came from the warm pool
	// (started before the request); WarmMiss, on a cold one, why none fit.
	Warm     *bool  `json:"warm,omitempty"`
	WarmMiss string `json:"warm_miss,omitempty"`
}

// NewSandboxEvent is step ev of sandbox id (of session) on backend rt, which took d.
func NewSandboxEvent(ev, id, session, rt string, d time.Duration) SandboxEvent {
	return SandboxEvent{Type: TypeSandbox, Event: ev, SandboxID: id, SessionID: session, Runtime: rt, DurationMS: d.Milliseconds()}
}

// TypeRun is a run's first event: its id, to follow or cancel it by.
const TypeRun = "run"

// RunEvent is type "run".
type RunEvent struct {
	Type  string `json:"type"`
	RunID string `json:"run_id"`
	// Events is the URL that replays and follows the run's events.
	Events string `json:"events_url"`
}

// FileList is GET /runs/ID/files's body.
type FileList struct {
	Files []FileEvent `json:"files"`
}

// TypeFile is one file the agent created or changed, handed back after
// the sandbox exited; TypeFilesSkipped lists what the bounds left out.
const (
	TypeFile         = "file"
	TypeFilesSkipped = "files_skipped"
)

// FileEvent is type "file".
type FileEvent struct {
	Type string `json:"type"`
	OutputFile
	URL string `json:"url,omitempty"`
}

// OutputFile is one file handed back (package outfiles collects them).
type OutputFile struct {
	Path    string  `json:"path"` // slash-separated, relative to the workspace
	Size    int64   `json:"size"`
	SHA256  string  `json:"sha256"`
	Mode    string  `json:"mode"` // permission bits in octal, e.g. "0644" (setuid/setgid/sticky never kept)
	Content *string `json:"content,omitempty"`
}

// FilesSkippedEvent is type "files_skipped".
type FilesSkippedEvent struct {
	Type    string        `json:"type"`
	Skipped []SkippedFile `json:"skipped"`
}

// SkippedFile is a file not handed back, and why.
type SkippedFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size,omitempty"`
	Reason string `json:"reason"` // one of outfiles' Reason* values
}

// TypeModelUsage is the event with what the run's model calls used, as the
// gateway counted them, sent when the sandbox has exited.
const TypeModelUsage = "model_usage"

// UsageEvent is type "model_usage": the usage, and the budget it ran under.
type UsageEvent struct {
	Type string `json:"type"`
	ModelUsage
	Budget Budget `json:"budget"`
}

// ModelUsage is what a session's model calls used, summed from the usage
// each response reports (streamed or not), as the gateway counts it.
type ModelUsage struct {
	Requests         int     `json:"requests"`
	InputTokens      int64   `json:"input_tokens"`
	OutputTokens     int64   `json:"output_tokens"`
	CacheReadTokens  int64   `json:"cache_read_input_tokens,omitempty"`
	CacheWriteTokens int64   `json:"cache_creation_input_tokens,omitempty"`
	CostUSD          float64 `json:"cost_usd"`
	// Exceeded says which bound refused a call; empty while within budget.
	Exceeded string `json:"exceeded,omitempty"`
}

// Budget bounds a session's model use at the gateway, the one place that
// sees every model call (code in the sandbox can call the model with the
// session token, past the SDK's own limits). Zero fields are no bound.
type Budget struct {
	// MaxUSD bounds the estimated cost (list prices, see gateway.Price).
	MaxUSD float64 `json:"max_usd,omitempty"`
	// MaxRequests bounds the Messages API calls.
	MaxRequests int `json:"max_requests,omitempty"`
	// MaxOutputTokens bounds the output tokens, summed over all calls.
	MaxOutputTokens int64 `json:"max_output_tokens,omitempty"`
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

// Marshal encodes one of this package's events.
func Marshal(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only this package's plain structs are marshalled here
	}
	return b
}
