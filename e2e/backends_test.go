package e2e

import (
	"context"
	"os"
	"testing"

	"github.com/sandstorm-dev/sandstorm/runtime"
	"github.com/sandstorm-dev/sandstorm/runtime/containerd"
	"github.com/sandstorm-dev/sandstorm/runtime/docker"
)

func TestContainerd(t *testing.T) {
	scenarios(t, backend{name: "containerd", open: func(ctx context.Context) (runtime.Runtime, error) {
		return containerd.New(ctx, containerd.Config{Address: os.Getenv("SANDSTORM_CONTAINERD_SOCKET")})
	}})
}

func TestDocker(t *testing.T) {
	scenarios(t, backend{name: "docker", open: func(ctx context.Context) (runtime.Runtime, error) {
		return docker.New(ctx, docker.Config{Host: os.Getenv("SANDSTORM_DOCKER_SOCKET")})
	}})
}
