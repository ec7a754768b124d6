package api

import (
	"errors"
	"fmt"
)

// Code is an error code, in error events and error bodies; clients switch on it.
type Code string

// sandstorm's codes. The runner inside the sandbox may print error events
// with codes of its own first (see the README).
const (
	CodeInvalidRequest     Code = "invalid_request"
	CodeBusy               Code = "busy"
	CodeTooLarge           Code = "too_large"
	CodeHTTPError          Code = "http_error"
	CodeNotFound           Code = "not_found"
	CodeRuntimeUnavailable Code = "runtime_unavailable"
	CodeInvalidConfig      Code = "invalid_config"
	CodeTimeout            Code = "timeout"
	CodeCancelled          Code = "cancelled"
	CodeOOM                Code = "oom"
	CodeAgentFailed        Code = "agent_failed"
	// CodeBudgetExceeded: the gateway refused a model call over the run's budget.
	CodeBudgetExceeded Code = "budget_exceeded"
	CodeInternal       Code = "internal"
	CodeUnauthorized   Code = "unauthorized"
	CodeForbidden      Code = "forbidden"
	CodeMediaType      Code = "unsupported_media_type"
	// CodeInterrupted: the process running the run went away (a crash);
	// the run store says so for it.
	CodeInterrupted Code = "interrupted"
	// CodeConflict: the run is in a state that does not allow it (deleting
	// a run still going).
	CodeConflict Code = "conflict"
	// CodeStoreUnavailable: the run store cannot be read or written (a
	// full disk); a run that cannot record its events ends.
	CodeStoreUnavailable Code = "store_unavailable"
)

// Errors of the API itself; the backends' and the configuration's are
// defined where they arise, and package errcode maps them all to codes.
var (
	// ErrInvalidRequest is wrapped by every request validation error (see FieldError).
	ErrInvalidRequest = errors.New("invalid request")
	// ErrBusy: every slot is taken and the queue is full, or the wait ran out.
	ErrBusy = errors.New("all agent slots are busy")
	// ErrShuttingDown: the server is shutting down; what still runs or
	// waits is cancelled.
	ErrShuttingDown = errors.New("server shutting down")
	// ErrUsage: a command line that is wrong (flags, arguments); see Usage.
	ErrUsage = errors.New("invalid usage")
	// ErrUnauthorized: the API needs a key and the request has none that is valid.
	ErrUnauthorized = errors.New("unauthorized: send Authorization: Bearer <one of SANDSTORM_API_KEY>")
	// ErrForbiddenOrigin: a browser request from an origin that is not allowed.
	ErrForbiddenOrigin = errors.New("origin not allowed (CORS_ORIGINS)")
	// ErrMediaType: a request body that is not application/json.
	ErrMediaType = errors.New("request body must be Content-Type: application/json")
)

// Usage marks err as a wrong command line, keeping its message.
func Usage(err error) error { return usageError{err} }

type usageError struct{ err error }

func (e usageError) Error() string   { return e.err.Error() }
func (e usageError) Unwrap() []error { return []error{ErrUsage, e.err} }

// FieldError names the request field that is wrong.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("%s: %s: %s", ErrInvalidRequest, e.Field, e.Message)
}

func (e *FieldError) Unwrap() error { return ErrInvalidRequest }

// Invalid is a FieldError for field.
func Invalid(field, format string, a ...any) error {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, a...)}
}

// Exit codes, after sysexits(3); 137 is what a shell reports for SIGKILL,
// the OOM killer's signal.
const (
	ExitFailure     = 1
	ExitUsage       = 64
	ExitNotFound    = 66
	ExitUnavailable = 69
	ExitBusy        = 75
	ExitConfig      = 78
	ExitTimeout     = 124
	ExitCancelled   = 130
	ExitOOM         = 137
)

// StatusClientClosed is the status of a request whose client left (nginx's 499).
const StatusClientClosed = 499

// byCode maps the codes of a run's own ending (error events) to exit codes.
var byCode = map[Code]int{
	CodeTimeout:   ExitTimeout,
	CodeCancelled: ExitCancelled,
	CodeOOM:       ExitOOM,
}

// ExitCodeOf is the exit code of a run that ended with code.
func ExitCodeOf(code Code) int {
	if code == "" {
		return 0
	}
	if n, ok := byCode[code]; ok {
		return n
	}
	return ExitFailure
}

// RunFailed is a run that took place and failed; its error event was already sent.
type RunFailed struct{ Code Code }

func (e *RunFailed) Error() string { return "agent run failed: " + string(e.Code) }
