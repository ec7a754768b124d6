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
	"github.com/sandstorm-dev/sandstorm/runtime/docker"
)

// Auto picks the first backend that answers.
const Auto = "auto"

// Names lists the backends this build can open, in the order auto tries
// them: containerd first (no extra daemon in the path, fastest in our
// benchmarks), then Docker.
var Names = []string{containerd.Name, docker.Name}

// Options carries per-backend settings; empty values take each backend's defaults.
type Options struct {
	ContainerdAddress string
	// DockerHost is the Docker daemon's address; empty means $DOCKER_HOST or the default.
	DockerHost string
}

// FromEnv reads backend settings from the environment.
func FromEnv() Options {
	return Options{
		ContainerdAddress: os.Getenv("SANDSTORM_CONTAINERD_SOCKET"),
		DockerHost:        os.Getenv("SANDSTORM_DOCKER_SOCKET"),
	}
}

// Open connects to the named backend, or with "auto" (or "") to the first
// one that answers.
func Open(ctx context.Context, name string, opts Options) (runtime.Runtime, error) {
	switch name {
	case containerd.Name:
		return containerd.New(ctx, containerd.Config{Address: opts.ContainerdAddress})
	case docker.Name:
		return docker.New(ctx, docker.Config{Host: opts.DockerHost})
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
