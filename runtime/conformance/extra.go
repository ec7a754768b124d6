package conformance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/lifecycle"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// failClosed: every item the backend cannot enforce makes Create fail with an
// error naming it, and an explicit allow lets the run proceed.
func failClosed(t *testing.T, rt sandbox.Runtime, caps sandbox.Enforcement) {
	var missing []sandbox.Item
	for _, it := range sandbox.Required(oci.Policy{}.WithDefaults()) {
		if !caps.Enforced(it) {
			missing = append(missing, it)
		}
	}
	if len(missing) == 0 {
		t.Logf("%s enforces every item a default policy needs", rt.Name())
		return
	}
	c := check{name: "allowed", script: "echo ok=yes"}
	assertFailsClosed(t, rt, c, missing)
	r := runCheck(t, rt, c, missing)
	if r.stdout != "ok=yes\n" {
		t.Errorf("run with explicit allow: stdout %q stderr %q", r.stdout, r.stderr)
	}
}

// notEnforced lists every item caps does not enforce: the requests below test
// other things, so they allow running without those.
func notEnforced(caps sandbox.Enforcement) []sandbox.Item {
	var items []sandbox.Item
	for _, it := range sandbox.AllItems {
		if !caps.Enforced(it) {
			items = append(items, it)
		}
	}
	return items
}

func invalidRequests(t *testing.T, rt sandbox.Runtime, caps sandbox.Enforcement) {
	ctx := context.Background()
	base := sandbox.Spec{SessionID: newSession(t), Image: TestImage, Args: []string{"true"}, AllowUnenforced: notEnforced(caps)}
	tests := []struct {
		name string
		mod  func(*sandbox.Spec)
		want error
	}{
		{"absolute file path", func(s *sandbox.Spec) { s.Files = []sandbox.File{{Path: "/etc/x"}} }, sandbox.ErrInvalidSpec},
		{"dotdot file path", func(s *sandbox.Spec) { s.Files = []sandbox.File{{Path: "a/../../x"}} }, sandbox.ErrInvalidSpec},
		{"bad policy", func(s *sandbox.Spec) { s.Policy.Pids = 1 }, sandbox.ErrInvalidSpec},
		{"bad id", func(s *sandbox.Spec) { s.ID = "../../etc" }, sandbox.ErrInvalidSpec},
		{"missing image", func(s *sandbox.Spec) { s.Image = "localhost/sandstorm-no-such-image:latest" }, sandbox.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := base
			tt.mod(&s)
			sb, err := rt.Create(ctx, s)
			if err == nil {
				_ = sb.Remove(ctx)
				t.Fatal("accepted")
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
	if left, _ := rt.List(ctx, map[string]string{oci.LabelSession: base.SessionID}); len(left) > 0 {
		t.Errorf("rejected requests left sandboxes: %v", left)
	}
}

// reap: a sandbox abandoned mid-run (as after a crash) is found by its label
// and removed with everything it owns.
func reap(t *testing.T, rt sandbox.Runtime, caps sandbox.Enforcement) {
	ctx := context.Background()
	session := newSession(t)
	sb, err := rt.Create(ctx, sandbox.Spec{SessionID: session, Image: TestImage, Args: []string{"sleep", "600"}, AllowUnenforced: notEnforced(caps)})
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.Start(ctx, sandbox.IO{}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{oci.LabelSession: session}
	found, err := rt.List(ctx, labels)
	if err != nil || len(found) != 1 || found[0].ID != sb.ID() || !found[0].Running || found[0].Labels[oci.LabelManaged] != "true" {
		t.Fatalf("list by session label = %+v, %v; want the one running sandbox", found, err)
	}
	// Leftovers must see a live sandbox, or its empty answer after removal proves nothing.
	live, err := rt.Leftovers(ctx, sb.ID(), session)
	has := func(kind string) bool {
		return slices.ContainsFunc(live, func(s string) bool { return strings.HasPrefix(s, kind+" ") })
	}
	// A sandbox has a cgroup of its own wherever limits are enforced.
	if err != nil || !has("container") || (caps.Enforced(sandbox.ItemMemoryLimit) && !has("cgroup")) {
		t.Errorf("leftovers of a running sandbox = %q, %v; want its container (and cgroup, when limits are enforced)", live, err)
	}
	t.Logf("a running sandbox owns: %s", strings.Join(live, "; "))
	n, err := sandbox.Reap(ctx, rt, labels)
	if err != nil || n != 1 {
		t.Fatalf("reap = %d, %v; want 1", n, err)
	}
	if left, err := rt.Leftovers(ctx, sb.ID(), session); err != nil || len(left) > 0 {
		t.Errorf("left after reap: %s %v", strings.Join(left, "; "), err)
	}
}

// createFailureKeepsOthers: a Create that fails undoes what it made and
// only that. A second Create asking for an id in use is refused and must
// not remove the sandbox holding it, which then still runs.
func createFailureKeepsOthers(t *testing.T, rt sandbox.Runtime, caps sandbox.Enforcement) {
	ctx := context.Background()
	spec := sandbox.Spec{ID: fmt.Sprintf("conf-keep-%d", os.Getpid()), SessionID: newSession(t), Image: TestImage,
		Args: []string{"/bin/sh", "-c", "echo still-here"}, AllowUnenforced: notEnforced(caps)}
	sb, err := rt.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer assertGone(t, rt, sb, spec.SessionID)
	if _, err := rt.Create(ctx, spec); !errors.Is(err, sandbox.ErrInvalidSpec) {
		t.Errorf("second create with id %s = %v, want ErrInvalidSpec", spec.ID, err)
	}
	bad := spec
	bad.ID += "-b"
	bad.SessionID = newSession(t)
	bad.Policy.Mounts = []oci.Mount{{Source: "/nonexistent/sandstorm", Target: "/mnt/x"}}
	if _, err := rt.Create(ctx, bad); !errors.Is(err, sandbox.ErrInvalidSpec) {
		t.Errorf("create with a missing mount source = %v, want ErrInvalidSpec", err)
	}
	if left, err := rt.Leftovers(ctx, bad.ID, bad.SessionID); err != nil || len(left) > 0 {
		t.Errorf("failed create left %v, %v", left, err)
	}
	r := startWait(t, ctx, sb)
	if r.stdout != "still-here\n" || r.exit.Code != 0 {
		t.Errorf("the sandbox holding the id does not run intact: stdout %q stderr %q exit %+v", r.stdout, r.stderr, r.exit)
	}
}

// cancelAtEveryStep: a run cancelled at any step of its create or start
// (before and after each daemon call) ends with a cancellation and leaves
// nothing of any kind, found by Leftovers and by List.
func cancelAtEveryStep(t *testing.T, rt sandbox.Runtime, caps sandbox.Enforcement) {
	networks := []oci.Network{oci.NetworkNone}
	if caps.Enforced(sandbox.ItemNetworkBridge) {
		networks = append(networks, oci.NetworkBridge)
	}
	for _, network := range networks {
		for k := 0; ; k++ {
			ctx, cancel := context.WithCancel(context.Background())
			reached := []string{}
			ctx = lifecycle.WithCheckpoints(ctx, func(step string) {
				if len(reached) == k {
					cancel()
				}
				reached = append(reached, step)
			})
			spec := sandbox.Spec{ID: fmt.Sprintf("conf-cancel-%d-%s-%d", os.Getpid(), network, k), SessionID: newSession(t),
				Image: TestImage, Args: []string{"true"}, Policy: oci.Policy{Network: network}, AllowUnenforced: notEnforced(caps)}
			_, err := sandbox.Run(ctx, rt, spec, sandbox.IO{}, time.Minute, sandbox.Hooks{})
			cancel()
			through := len(reached) <= k
			switch {
			case through && err != nil:
				t.Errorf("%s: uncancelled run: %v", network, err)
			case !through && !errors.Is(err, context.Canceled):
				t.Errorf("%s: cancelled at step %d (%s): got %v, want a cancellation", network, k, reached[k], err)
			}
			left, lerr := rt.Leftovers(context.Background(), spec.ID, spec.SessionID)
			found, ferr := rt.List(context.Background(), map[string]string{oci.LabelSession: spec.SessionID})
			if lerr != nil || ferr != nil || len(left) > 0 || len(found) > 0 {
				t.Errorf("%s: cancelled at step %d of %v: left %v %v, listed %v %v", network, k, reached, left, lerr, found, ferr)
			}
			if through {
				t.Logf("%s: %d steps, each cancelled in turn: nothing left", network, k)
				break
			}
		}
	}
}
