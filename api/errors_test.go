package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime"
)

func TestTable(t *testing.T) {
	tests := []struct {
		err        error
		code       Code
		http, exit int
	}{
		{nil, CodeInternal, 200, 0},
		{fmt.Errorf("create: %w", runtime.ErrInvalidSpec), CodeInvalidConfig, 400, ExitUsage},
		{fmt.Errorf("x: %w", oci.ErrInvalidPolicy), CodeInvalidConfig, 400, ExitUsage},
		{fmt.Errorf("x: %w", runtime.ErrNotFound), CodeNotFound, 404, ExitNotFound},
		{fmt.Errorf("x: %w", runtime.ErrUnavailable), CodeRuntimeUnavailable, 503, ExitUnavailable},
		{fmt.Errorf("x: %w", runtime.ErrNotEnforceable), CodeInvalidConfig, 422, ExitConfig},
		{fmt.Errorf("x: %w", runtime.ErrPolicyNotApplied), CodeInvalidConfig, 500, ExitConfig},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), CodeTimeout, 504, ExitTimeout},
		{fmt.Errorf("x: %w", ErrInvalidRequest), CodeInvalidRequest, 400, ExitUsage},
		{Invalid("prompt", "is required"), CodeInvalidRequest, 400, ExitUsage},
		{fmt.Errorf("x: %w", ErrBusy), CodeBusy, 429, ExitBusy},
		{Usage(errors.New("unknown flag: --x")), CodeInvalidRequest, 400, ExitUsage},
		{fmt.Errorf("x: %w", config.ErrInvalid), CodeInvalidConfig, 400, ExitConfig},
		// A run cancelled before its sandbox started (client gone during create).
		{fmt.Errorf("create container ds-1: %w", context.Canceled), CodeCancelled, StatusClientClosed, ExitCancelled},
		// A request still queued when the server shuts down.
		{fmt.Errorf("left the queue: %w: %w", context.Canceled, ErrShuttingDown), CodeCancelled, 503, ExitCancelled},
		{&RunFailed{Code: CodeTimeout}, CodeInternal, 500, ExitTimeout},
		{&RunFailed{Code: CodeOOM}, CodeInternal, 500, ExitOOM},
		{&RunFailed{Code: CodeCancelled}, CodeInternal, 500, ExitCancelled},
		{&RunFailed{Code: CodeAgentFailed}, CodeInternal, 500, ExitFailure},
		{errors.New("boom"), CodeInternal, 500, ExitFailure},
	}
	for _, tt := range tests {
		if tt.err != nil {
			if got := CodeOf(tt.err); got != tt.code {
				t.Errorf("CodeOf(%v) = %q, want %q", tt.err, got, tt.code)
			}
		}
		if got := HTTPStatus(tt.err); got != tt.http {
			t.Errorf("HTTPStatus(%v) = %d, want %d", tt.err, got, tt.http)
		}
		if got := ExitCode(tt.err); got != tt.exit {
			t.Errorf("ExitCode(%v) = %d, want %d", tt.err, got, tt.exit)
		}
	}
}

func TestErrorEvent(t *testing.T) {
	var ev ErrorEvent
	if err := json.Unmarshal(ErrorFor(fmt.Errorf("create: %w", context.Canceled)), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Type != TypeError || ev.Code != CodeCancelled {
		t.Errorf("error event %+v", ev)
	}
}
