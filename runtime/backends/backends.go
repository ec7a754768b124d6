// Package backends opens a runtime backend by name.
package backends

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/sandstorm-dev/sandstorm/runtime"
	"github.com/sandstorm-dev/sandstorm/runtime/containerd"
)

// Auto picks the first backend that answers.
const Auto = "auto"

// Names lists the backends this build can open, in the order auto tries them.
var Names = []string{containerd.Name}

// Options carries per-backend settings; empty values take each backend's defaults.
type Options struct {
	ContainerdAddress string
}

// FromEnv reads backend settings from the environment.
func FromEnv() Options {
	return Options{ContainerdAddress: os.Getenv("SANDSTORM_CONTAINERD_SOCKET")}
}

// Open connects to the named backend, or with "auto" (or "") to the first
// one that answers.
func Open(ctx context.Context, name string, opts Options) (runtime.Runtime, error) {
	switch name {
	case containerd.Name:
		return containerd.New(ctx, containerd.Config{Address: opts.ContainerdAddress})
	case Auto, "":
		var errs []error
		for _, n := range Names {
			rt, err := Open(ctx, n, opts)
			if err == nil {
				return rt, nil
			}
			errs = append(errs, err)
		}
		return nil, fmt.Errorf("%w: no backend answers: %w", runtime.ErrUnavailable, errors.Join(errs...))
	}
	return nil, fmt.Errorf("%w: unknown runtime %q (choose one of %s, %s)", runtime.ErrInvalidSpec, name, strings.Join(Names, ", "), Auto)
}
