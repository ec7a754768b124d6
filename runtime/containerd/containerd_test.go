package containerd

import (
	"context"
	"os"
	"testing"

	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
)

func connect(t testing.TB) *Runtime {
	t.Helper()
	rt, err := New(context.Background(), Config{Address: os.Getenv("SANDSTORM_CONTAINERD_SOCKET")})
	if err != nil {
		if tt, ok := t.(*testing.T); ok {
			conformance.Unavailable(tt, Name, err)
		}
		t.Skip(err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

func TestConformance(t *testing.T) {
	conformance.Run(t, connect(t), conformance.Config{})
}
