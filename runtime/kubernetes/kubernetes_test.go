package kubernetes

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
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

// sleeper is a spec of a sandbox that waits, with what a Pod cannot have allowed.
func sleeper(t *testing.T, rt *Runtime, session string) sandbox.Spec {
	caps, err := rt.Enforcement(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var allow []sandbox.Item
	for _, it := range sandbox.AllItems {
		if !caps.Enforced(it) {
			allow = append(allow, it)
		}
	}
	return sandbox.Spec{SessionID: session, Image: conformance.TestImage, Args: []string{"sleep", "600"}, AllowUnenforced: allow}
}

// TestCapacity: with MaxSandboxes 1, shared through the Pods by two
// connections as two sandstorm replicas would, a second sandbox waits for
// the first (its Pod gated from the scheduler), gets its turn when the
// first goes, and fails as busy when none frees in time.
func TestCapacity(t *testing.T) {
	connect(t)
	ctx := context.Background()
	// A namespace of its own: other tests' sandboxes would count.
	cfg := FromEnv(os.Getenv("SANDSTORM_KUBECONFIG"), "")
	cfg.Namespace, cfg.MaxSandboxes, cfg.StartTimeout = "sandstorm-capacity-test", 1, 3*time.Second
	first, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	second, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// A run of this test killed midway would hold the one place.
	if _, err := sandbox.Reap(ctx, first, nil); err != nil {
		t.Fatal(err)
	}
	a, err := first.Create(ctx, sleeper(t, first, "cap-a"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Remove(ctx)
	if _, err := second.Create(ctx, sleeper(t, second, "cap-b")); !errors.Is(err, sandbox.ErrNoCapacity) {
		t.Fatalf("second sandbox with the cluster full: %v, want ErrNoCapacity", err)
	} else {
		t.Logf("refused as busy: %v", err)
	}
	if left, err := second.Leftovers(ctx, "", "cap-b"); err != nil || len(left) > 0 {
		t.Errorf("the refused sandbox left %v %v", left, err)
	}
	second.cfg.StartTimeout = time.Minute
	go func() {
		time.Sleep(2 * time.Second)
		a.Remove(ctx)
	}()
	start := time.Now()
	b, err := second.Create(ctx, sleeper(t, second, "cap-b"))
	if err != nil {
		t.Fatalf("second sandbox after the first went: %v", err)
	}
	defer b.Remove(ctx)
	t.Logf("admitted %v after it asked, once the first was removed", time.Since(start).Round(time.Millisecond))
}

// TestUnschedulable: a Pod no node can take ends its Create with a clear
// ErrUnavailable within StartTimeout, and leaves nothing.
func TestUnschedulable(t *testing.T) {
	connect(t)
	ctx := context.Background()
	cfg := FromEnv(os.Getenv("SANDSTORM_KUBECONFIG"), "")
	cfg.StartTimeout = 3 * time.Second
	rt, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	spec := sleeper(t, rt, "unsched")
	// After its capabilities were read from the nodes there are.
	rt.cfg.NodeSelector = map[string]string{"sandstorm.dev/no-such-node": "true"}
	_, err = rt.Create(ctx, spec)
	if !errors.Is(err, sandbox.ErrUnavailable) || !strings.Contains(err.Error(), "no node could take it") {
		t.Fatalf("create on no node: %v, want ErrUnavailable saying no node could take it", err)
	}
	t.Logf("refused: %v", err)
	if left, err := rt.Leftovers(ctx, "", "unsched"); err != nil || len(left) > 0 {
		t.Errorf("left %v %v", left, err)
	}
}
