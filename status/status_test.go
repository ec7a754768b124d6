package status

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime"
	"github.com/sandstorm-dev/sandstorm/session"
)

func TestMapping(t *testing.T) {
	tests := []struct {
		err        error
		http, exit int
	}{
		{nil, 200, 0},
		{fmt.Errorf("create: %w", runtime.ErrInvalidSpec), 400, ExitUsage},
		{fmt.Errorf("x: %w", oci.ErrInvalidPolicy), 400, ExitUsage},
		{fmt.Errorf("x: %w", runtime.ErrNotFound), 404, ExitNotFound},
		{fmt.Errorf("x: %w", runtime.ErrUnavailable), 503, ExitUnavailable},
		{fmt.Errorf("x: %w", runtime.ErrNotEnforceable), 422, ExitConfig},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), 504, ExitTimeout},
		{fmt.Errorf("x: %w", session.ErrInvalidRequest), 400, ExitUsage},
		{fmt.Errorf("x: %w", session.ErrBusy), 429, ExitBusy},
		{fmt.Errorf("x: %w", config.ErrInvalid), 400, ExitConfig},
		{errors.New("boom"), 500, ExitFailure},
	}
	for _, tt := range tests {
		if got := HTTP(tt.err); got != tt.http {
			t.Errorf("HTTP(%v) = %d, want %d", tt.err, got, tt.http)
		}
		if got := ExitCode(tt.err); got != tt.exit {
			t.Errorf("ExitCode(%v) = %d, want %d", tt.err, got, tt.exit)
		}
	}
}
