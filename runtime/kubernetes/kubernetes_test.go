package kubernetes

import (
	"context"
	"os"
	"testing"

	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
)

// connect opens the cluster $KUBECONFIG names (scripts/k8s-up.sh starts one).
func connect(t testing.TB) *Runtime {
	return conformance.Connect(t, Name, func() (*Runtime, error) {
		return New(context.Background(), FromEnv(os.Getenv("SANDSTORM_KUBECONFIG"), ""))
	})
}

func TestConformance(t *testing.T) {
	conformance.Run(t, connect(t), conformance.Config{})
}
