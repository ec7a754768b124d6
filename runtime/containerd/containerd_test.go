package containerd

import (
	"context"
	"os"
	"testing"

	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

func connect(t testing.TB) *Runtime {
	return conformance.Connect(t, Name, func() (*Runtime, error) {
		return New(context.Background(), Config{Address: os.Getenv("SANDSTORM_CONTAINERD_SOCKET")})
	})
}

func TestConformance(t *testing.T) {
	conformance.Run(t, connect(t), conformance.Config{})
}

func TestConformanceGVisor(t *testing.T) {
	rt := conformance.Connect(t, Name+"+gvisor", func() (*Runtime, error) {
		return New(context.Background(), Config{Address: os.Getenv("SANDSTORM_CONTAINERD_SOCKET"), Isolation: sandbox.IsolationGVisor})
	})
	conformance.Run(t, rt, conformance.Config{})
}
