// Package conformance is the one suite of checks every backend must pass,
// run unchanged against real sandboxes on real daemons. A backend's test
// calls Run with a connected runtime; nothing here is faked.
package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/images/testimage"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// TestImage is the reference of the tiny busybox test image.
const TestImage = testimage.Ref

// Config tells the suite where its test image is.
type Config struct {
	// ImageTar is the test image archive to import; default: $SANDSTORM_TEST_IMAGE
	// or build/sandstorm-test.tar at the module root.
	ImageTar string
}

// Required reports whether backend name must be present: listed in
// SANDSTORM_REQUIRE_RUNTIMES (comma-separated). CI sets it so that a missing
// daemon fails the run instead of skipping.
func Required(name string) bool {
	for _, n := range strings.Split(os.Getenv("SANDSTORM_REQUIRE_RUNTIMES"), ",") {
		if strings.TrimSpace(n) == name {
			return true
		}
	}
	return false
}

// Unavailable ends a backend's test when its daemon cannot be reached:
// a failure when the backend is required, a skip otherwise.
func Unavailable(t testing.TB, name string, err error) {
	t.Helper()
	if Required(name) {
		t.Fatalf("backend %s is required (SANDSTORM_REQUIRE_RUNTIMES) but unavailable: %v", name, err)
	}
	t.Skipf("backend %s unavailable (set SANDSTORM_REQUIRE_RUNTIMES=%s to make this a failure): %v", name, name, err)
}

// NeedsDaemon marks a test that needs backend name's daemon: under -short
// (make unit, the tests that need no daemon) it is skipped.
func NeedsDaemon(t testing.TB, name string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("needs the %s daemon; not run with -short", name)
	}
}

// Connect opens backend name for a test with open, closing it at cleanup;
// when it cannot be reached, see Unavailable.
func Connect[R sandbox.Runtime](t testing.TB, name string, open func() (R, error)) R {
	t.Helper()
	NeedsDaemon(t, name)
	rt, err := open()
	if err != nil {
		Unavailable(t, name, err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

// ImageTarPath finds the test image archive.
func ImageTarPath() (string, error) {
	if p := os.Getenv("SANDSTORM_TEST_IMAGE"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "build", "sandstorm-test.tar"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root not found")
		}
		dir = parent
	}
}

// check is one conformance check: a sandbox to run and what must hold.
type check struct {
	name string
	// needs lists capability items the check exercises; a backend that does
	// not enforce one must refuse the policy instead (asserted separately).
	needs  []sandbox.Item
	policy oci.Policy
	files  []sandbox.File
	script string
	// verify inspects the finished run.
	verify func(t *testing.T, r result)
	// setup, if set, prepares host-side state and may fill in the script.
	setup func(t *testing.T, c *check)
	// drive replaces the default start-and-wait, for checks that act mid-run.
	drive func(t *testing.T, ctx context.Context, sb sandbox.Sandbox) result
}

type result struct {
	stdout, stderr string
	exit           sandbox.ExitStatus
	// caps is the backend's report, for checks whose rule depends on it.
	caps sandbox.Enforcement
}

// Run runs every check against rt.
func Run(t *testing.T, rt sandbox.Runtime, cfg Config) {
	ctx := context.Background()
	tarPath := cfg.ImageTar
	if tarPath == "" {
		var err error
		if tarPath, err = ImageTarPath(); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatalf("test image archive: %v (build it with `make testimage`)", err)
	}
	names, err := rt.ImportImage(ctx, f)
	f.Close()
	if err != nil {
		t.Fatalf("import test image: %v", err)
	}
	t.Logf("%s: imported %v", rt.Name(), names)
	caps, err := rt.Enforcement(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range checks() {
		t.Run(c.name, func(t *testing.T) {
			var missing []sandbox.Item
			for _, it := range c.needs {
				if !caps.Enforced(it) {
					missing = append(missing, it)
				}
			}
			if c.setup != nil {
				c.setup(t, &c)
			}
			if len(missing) > 0 {
				assertFailsClosed(t, rt, c, missing)
				return
			}
			// Items the check does not exercise may be missing on this
			// backend: allowing exactly those keeps the check about its own rule.
			r := runCheck(t, rt, c, unexercised(caps, c))
			r.caps = caps
			c.verify(t, r)
		})
	}
	t.Run("the fingerprint from the inside is the golden one", func(t *testing.T) { fingerprint(t, rt, caps) })
	t.Run("fail closed on unenforceable items", func(t *testing.T) { failClosed(t, rt, caps) })
	t.Run("invalid requests", func(t *testing.T) { invalidRequests(t, rt, caps) })
	t.Run("reap strays by label", func(t *testing.T) { reap(t, rt, caps) })
	t.Run("a failed create keeps others", func(t *testing.T) { createFailureKeepsOthers(t, rt, caps) })
	t.Run("cancel at every step", func(t *testing.T) { cancelAtEveryStep(t, rt, caps) })
}

// unexercised lists the items a check's policy needs that the backend does
// not enforce and the check does not test.
func unexercised(caps sandbox.Enforcement, c check) []sandbox.Item {
	var allow []sandbox.Item
	for _, it := range sandbox.Required(c.policy.WithDefaults()) {
		if !caps.Enforced(it) && !slices.Contains(c.needs, it) {
			allow = append(allow, it)
		}
	}
	return allow
}

var sessionSeq struct {
	sync.Mutex
	n int
}

func newSession(t *testing.T) string {
	sessionSeq.Lock()
	defer sessionSeq.Unlock()
	sessionSeq.n++
	return fmt.Sprintf("conf-%d-%d", os.Getpid(), sessionSeq.n)
}

func specFor(t *testing.T, c check, allow []sandbox.Item) sandbox.Spec {
	return sandbox.Spec{
		SessionID:       newSession(t),
		Image:           TestImage,
		Args:            []string{"/bin/sh", "-c", c.script},
		Files:           c.files,
		Policy:          c.policy,
		AllowUnenforced: allow,
	}
}

// runCheck creates, runs and removes one sandbox, then asserts nothing of it is left.
func runCheck(t *testing.T, rt sandbox.Runtime, c check, allow []sandbox.Item) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	spec := specFor(t, c, allow)
	sb, err := rt.Create(ctx, spec)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	defer assertGone(t, rt, sb, spec.SessionID)
	if c.drive != nil {
		return c.drive(t, ctx, sb)
	}
	return startWait(t, ctx, sb)
}

func startWait(t *testing.T, ctx context.Context, sb sandbox.Sandbox) result {
	t.Helper()
	var out, errb syncBuffer
	if err := sb.Start(ctx, sandbox.IO{Stdout: &out, Stderr: &errb}); err != nil {
		t.Fatalf("start: %v", err)
	}
	st, err := sb.Wait(ctx)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	if !st.Known {
		t.Errorf("a wait that succeeded reports an unknown exit: %+v", st)
	}
	return result{stdout: out.String(), stderr: errb.String(), exit: st}
}

// assertGone removes sb and checks that nothing labelled with its session is left.
func assertGone(t *testing.T, rt sandbox.Runtime, sb sandbox.Sandbox, session string) {
	t.Helper()
	ctx := context.Background()
	if err := sb.Remove(ctx); err != nil {
		t.Errorf("remove: %v", err)
	}
	if err := sb.Remove(ctx); err != nil {
		t.Errorf("second remove is not a no-op: %v", err)
	}
	left, err := rt.Leftovers(ctx, sb.ID(), session)
	if err != nil {
		t.Errorf("leftovers: %v", err)
	}
	found, err := rt.List(ctx, map[string]string{oci.LabelSession: session})
	if err != nil {
		t.Errorf("list: %v", err)
	}
	for _, s := range found {
		left = append(left, "listed sandbox "+s.ID)
	}
	if len(left) > 0 {
		t.Errorf("left behind after remove: %s", strings.Join(left, "; "))
	}
}

// assertFailsClosed: a check whose rule the backend cannot enforce must be
// refused at Create, naming the rule, instead of running unprotected.
func assertFailsClosed(t *testing.T, rt sandbox.Runtime, c check, missing []sandbox.Item) {
	t.Helper()
	required := sandbox.Required(c.policy.WithDefaults())
	var named []sandbox.Item
	for _, it := range missing {
		if slices.Contains(required, it) {
			named = append(named, it)
		}
	}
	if len(named) == 0 {
		// Only a capability no policy names is missing (oom_detection):
		// there is nothing to refuse, and the check cannot be made here.
		t.Fatalf("backend cannot support %v, which this check needs", missing)
	}
	sb, err := rt.Create(context.Background(), specFor(t, c, nil))
	if err == nil {
		_ = sb.Remove(context.Background())
	}
	if !errors.Is(err, sandbox.ErrNotEnforceable) {
		t.Fatalf("backend does not enforce %v but Create did not fail closed: %v", named, err)
	}
	for _, it := range named {
		if !strings.Contains(err.Error(), string(it)) {
			t.Errorf("fail-closed error does not name %s: %v", it, err)
		}
	}
	t.Logf("not enforced here, refused as it must be: %v", err)
}

// syncBuffer is written by the backend's copy goroutines while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	// onWrite, if set, sees every chunk as it arrives.
	onWrite func(p []byte)
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.onWrite != nil {
		b.onWrite(p)
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// kv parses "key=value" lines printed by a check's script.
func kv(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m
}

func expect(t *testing.T, got map[string]string, key, want string) {
	t.Helper()
	if got[key] != want {
		t.Errorf("%s = %q, want %q", key, got[key], want)
	}
}

// hostResponsive runs a process on the host: it must start and finish.
func hostResponsive(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "true").CombinedOutput(); err != nil {
		t.Errorf("host could not run a process during the check: %v %s", err, out)
	}
}

// listenOnHost listens on every host address; the sandbox dials its gateway,
// an address of this machine.
func listenOnHost(t *testing.T) (net.Listener, int) {
	t.Helper()
	l, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	return l, l.Addr().(*net.TCPAddr).Port
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
