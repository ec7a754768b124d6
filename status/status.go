// Package status maps sandstorm's errors to HTTP statuses and CLI exit codes,
// in one place.
package status

import (
	"context"
	"errors"
	"net/http"

	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime"
	"github.com/sandstorm-dev/sandstorm/session"
)

// Exit codes, after sysexits(3).
const (
	ExitFailure     = 1
	ExitUsage       = 64
	ExitNotFound    = 66
	ExitBusy        = 75
	ExitUnavailable = 69
	ExitConfig      = 78
	ExitTimeout     = 124
	ExitCancelled   = 130
)

type mapping struct {
	err  error
	http int
	exit int
}

var table = []mapping{
	{session.ErrInvalidRequest, http.StatusBadRequest, ExitUsage},
	{session.ErrBusy, http.StatusTooManyRequests, ExitBusy},
	{config.ErrInvalid, http.StatusBadRequest, ExitConfig},
	{runtime.ErrInvalidSpec, http.StatusBadRequest, ExitUsage},
	{oci.ErrInvalidPolicy, http.StatusBadRequest, ExitUsage},
	{runtime.ErrNotFound, http.StatusNotFound, ExitNotFound},
	{runtime.ErrUnavailable, http.StatusServiceUnavailable, ExitUnavailable},
	{runtime.ErrNotEnforceable, http.StatusUnprocessableEntity, ExitConfig},
	{runtime.ErrPolicyNotApplied, http.StatusInternalServerError, ExitConfig},
	{context.DeadlineExceeded, http.StatusGatewayTimeout, ExitTimeout},
	{context.Canceled, 499, ExitCancelled},
}

func lookup(err error) (mapping, bool) {
	for _, m := range table {
		if errors.Is(err, m.err) {
			return m, true
		}
	}
	return mapping{}, false
}

// HTTP is the status code for err; 200 for nil.
func HTTP(err error) int {
	if err == nil {
		return http.StatusOK
	}
	if m, ok := lookup(err); ok {
		return m.http
	}
	return http.StatusInternalServerError
}

// ExitCode is the process exit code for err; 0 for nil.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	if m, ok := lookup(err); ok {
		return m.exit
	}
	return ExitFailure
}
