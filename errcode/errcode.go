// Package errcode is the one table from an error to its API code
// (api.Code), HTTP status and exit code. It knows the errors of the
// packages that define them (configuration, policy, backends, run store)
// so that api, the vocabulary they are mapped to, needs none of them.
package errcode

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/config"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runstore"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

type row struct {
	err  error
	code api.Code
	http int
	exit int
}

// table maps an error to its code, HTTP status and exit code; the first
// row err matches (errors.Is) wins.
var table = []row{
	{api.ErrInvalidRequest, api.CodeInvalidRequest, http.StatusBadRequest, api.ExitUsage},
	{api.ErrUsage, api.CodeInvalidRequest, http.StatusBadRequest, api.ExitUsage},
	{api.ErrBusy, api.CodeBusy, http.StatusTooManyRequests, api.ExitBusy},
	{sandbox.ErrNoCapacity, api.CodeBusy, http.StatusTooManyRequests, api.ExitBusy},
	{api.ErrUnauthorized, api.CodeUnauthorized, http.StatusUnauthorized, api.ExitUsage},
	{api.ErrForbiddenOrigin, api.CodeForbidden, http.StatusForbidden, api.ExitUsage},
	{api.ErrMediaType, api.CodeMediaType, http.StatusUnsupportedMediaType, api.ExitUsage},
	{config.ErrInvalid, api.CodeInvalidConfig, http.StatusBadRequest, api.ExitConfig},
	{sandbox.ErrInvalidSpec, api.CodeInvalidConfig, http.StatusBadRequest, api.ExitUsage},
	{oci.ErrInvalidPolicy, api.CodeInvalidConfig, http.StatusBadRequest, api.ExitUsage},
	{sandbox.ErrNotFound, api.CodeNotFound, http.StatusNotFound, api.ExitNotFound},
	{runstore.ErrNotFound, api.CodeNotFound, http.StatusNotFound, api.ExitNotFound},
	{runstore.ErrNotFinished, api.CodeConflict, http.StatusConflict, api.ExitFailure},
	{runstore.ErrUnavailable, api.CodeStoreUnavailable, http.StatusServiceUnavailable, api.ExitUnavailable},
	{sandbox.ErrUnavailable, api.CodeRuntimeUnavailable, http.StatusServiceUnavailable, api.ExitUnavailable},
	{sandbox.ErrNotEnforceable, api.CodeInvalidConfig, http.StatusUnprocessableEntity, api.ExitConfig},
	{sandbox.ErrPolicyNotApplied, api.CodeInvalidConfig, http.StatusInternalServerError, api.ExitConfig},
	{context.DeadlineExceeded, api.CodeTimeout, http.StatusGatewayTimeout, api.ExitTimeout},
	{api.ErrShuttingDown, api.CodeCancelled, http.StatusServiceUnavailable, api.ExitCancelled},
	{context.Canceled, api.CodeCancelled, api.StatusClientClosed, api.ExitCancelled},
}

func lookup(err error) (row, bool) {
	for _, r := range table {
		if errors.Is(err, r.err) {
			return r, true
		}
	}
	return row{}, false
}

// Of is err's code; "internal" for an error the table does not know.
func Of(err error) api.Code {
	if r, ok := lookup(err); ok {
		return r.code
	}
	return api.CodeInternal
}

// HTTPStatus is err's status; 200 for nil.
func HTTPStatus(err error) int {
	if err == nil {
		return http.StatusOK
	}
	if r, ok := lookup(err); ok {
		return r.http
	}
	return http.StatusInternalServerError
}

// ExitCode is the process exit code for err; 0 for nil. A run that failed
// exits with its own ending's code (api.ExitCodeOf).
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var rf *api.RunFailed
	if errors.As(err, &rf) {
		return api.ExitCodeOf(rf.Code)
	}
	if r, ok := lookup(err); ok {
		return r.exit
	}
	return api.ExitFailure
}

// Event is the error event saying why err stopped a run.
func Event(err error) json.RawMessage { return api.NewError(Of(err), err.Error()) }
