package docker

import (
	"context"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime"
	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
)

func connect(t testing.TB) *Runtime {
	return conformance.Connect(t, Name, func() (*Runtime, error) {
		return New(context.Background(), Config{Host: os.Getenv("SANDSTORM_DOCKER_SOCKET")})
	})
}

func TestConformance(t *testing.T) {
	conformance.Run(t, connect(t), conformance.Config{})
}

// A Create that fails must undo only what it made: a second sandbox asking
// for a taken id must not remove the one holding it.
func TestCreateFailureKeepsOthers(t *testing.T) {
	rt := connect(t)
	ctx := context.Background()
	spec := runtime.Spec{ID: "docker-test-" + strconv.Itoa(os.Getpid()), SessionID: "docker-test", Image: conformance.TestImage, Args: []string{"true"}}
	if _, err := rt.cli.ImageInspect(ctx, conformance.TestImage); err != nil {
		t.Skipf("test image not loaded (run TestConformance first): %v", err)
	}
	sb, err := rt.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Remove(ctx)
	if _, err := rt.Create(ctx, spec); !errors.Is(err, runtime.ErrInvalidSpec) {
		t.Errorf("second create with id %s = %v, want ErrInvalidSpec", spec.ID, err)
	}
	bad := spec
	bad.ID += "-b"
	bad.Policy.Mounts = []oci.Mount{{Source: "/nonexistent/sandstorm", Target: "/mnt/x"}}
	if _, err := rt.Create(ctx, bad); !errors.Is(err, runtime.ErrInvalidSpec) {
		t.Errorf("create with a missing mount source = %v, want ErrInvalidSpec", err)
	}
	if left, err := rt.Leftovers(ctx, bad.ID, bad.SessionID); err != nil || len(left) > 0 {
		t.Errorf("failed create left %v, %v", left, err)
	}
	left, err := rt.Leftovers(ctx, spec.ID, spec.SessionID)
	if err != nil || !slices.ContainsFunc(left, func(s string) bool { return strings.HasPrefix(s, "container ") }) {
		t.Errorf("the sandbox holding the id lost its container: %v, %v", left, err)
	}
}
