package errcode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runstore"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

func TestTable(t *testing.T) {
	tests := []struct {
		err        error
		code       api.Code
		http, exit int
	}{
		{nil, api.CodeInternal, 200, 0},
		{fmt.Errorf("create: %w", sandbox.ErrInvalidSpec), api.CodeInvalidConfig, 400, api.ExitUsage},
		{fmt.Errorf("x: %w", oci.ErrInvalidPolicy), api.CodeInvalidConfig, 400, api.ExitUsage},
		{fmt.Errorf("x: %w", sandbox.ErrNotFound), api.CodeNotFound, 404, api.ExitNotFound},
		{fmt.Errorf("x: %w", sandbox.ErrUnavailable), api.CodeRuntimeUnavailable, 503, api.ExitUnavailable},
		{fmt.Errorf("x: %w", sandbox.ErrNotEnforceable), api.CodeInvalidConfig, 422, api.ExitConfig},
		{fmt.Errorf("x: %w", sandbox.ErrPolicyNotApplied), api.CodeInvalidConfig, 500, api.ExitConfig},
		{fmt.Errorf("x: %w", sandbox.ErrNoCapacity), api.CodeBusy, 429, api.ExitBusy},
		{fmt.Errorf("x: %w", runstore.ErrNotFound), api.CodeNotFound, 404, api.ExitNotFound},
		{fmt.Errorf("x: %w", runstore.ErrNotFinished), api.CodeConflict, 409, api.ExitFailure},
		{fmt.Errorf("x: %w", runstore.ErrUnavailable), api.CodeStoreUnavailable, 503, api.ExitUnavailable},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), api.CodeTimeout, 504, api.ExitTimeout},
		{fmt.Errorf("x: %w", api.ErrInvalidRequest), api.CodeInvalidRequest, 400, api.ExitUsage},
		{api.Invalid("prompt", "is required"), api.CodeInvalidRequest, 400, api.ExitUsage},
		{fmt.Errorf("x: %w", api.ErrBusy), api.CodeBusy, 429, api.ExitBusy},
		{api.Usage(errors.New("unknown flag: --x")), api.CodeInvalidRequest, 400, api.ExitUsage},
		{fmt.Errorf("x: %w", config.ErrInvalid), api.CodeInvalidConfig, 400, api.ExitConfig},
		// A run cancelled before its sandbox started (client gone during create).
		{fmt.Errorf("create container ds-1: %w", context.Canceled), api.CodeCancelled, api.StatusClientClosed, api.ExitCancelled},
		// A request still queued when the server shuts down.
		{fmt.Errorf("left the queue: %w: %w", context.Canceled, api.ErrShuttingDown), api.CodeCancelled, 503, api.ExitCancelled},
		{&api.RunFailed{Code: api.CodeTimeout}, api.CodeInternal, 500, api.ExitTimeout},
		{&api.RunFailed{Code: api.CodeOOM}, api.CodeInternal, 500, api.ExitOOM},
		{&api.RunFailed{Code: api.CodeCancelled}, api.CodeInternal, 500, api.ExitCancelled},
		{&api.RunFailed{Code: api.CodeAgentFailed}, api.CodeInternal, 500, api.ExitFailure},
		{errors.New("boom"), api.CodeInternal, 500, api.ExitFailure},
	}
	for _, tt := range tests {
		if tt.err != nil {
			if got := Of(tt.err); got != tt.code {
				t.Errorf("Of(%v) = %q, want %q", tt.err, got, tt.code)
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

func TestEvent(t *testing.T) {
	var ev api.ErrorEvent
	if err := json.Unmarshal(Event(fmt.Errorf("create: %w", context.Canceled)), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Type != api.TypeError || ev.Code != api.CodeCancelled || ev.Message != "create: context canceled" {
		t.Errorf("error event %+v", ev)
	}
}
