package podman

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// services are the Podman services the conformance suite runs against.
// "rootless" is the service as a non-root sandstorm sees it: on cgroup v1
// it cannot enforce limits, so the suite asserts the fail-closed refusal and
// the run with an explicit allow. "rootless-delegated" adds the limits a
// root sandstorm sets itself.
var services = []struct {
	name, backend      string
	rootless, delegate bool
}{
	{"root", "podman", false, true},
	{"rootless", "podman-rootless", true, false},
	{"rootless-delegated", "podman-rootless", true, true},
}

func connect(t testing.TB, i int) *Runtime {
	t.Helper()
	svc := services[i]
	sock := testenv.PodmanSocket(svc.rootless)
	return conformance.Connect(t, svc.backend, func() (*Runtime, error) {
		rt, err := New(context.Background(), Config{Socket: sock, NoCgroupDelegation: !svc.delegate})
		if err == nil && rt.svc.rootless != svc.rootless {
			rt.Close()
			return nil, errors.New(sock + " is not a " + svc.name + " service")
		}
		return rt, err
	})
}

func TestConformance(t *testing.T) {
	for i, svc := range services {
		t.Run(svc.name, func(t *testing.T) {
			conformance.Run(t, connect(t, i), conformance.Config{})
		})
	}
}

func TestDiscoverSocket(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		present []string
		want    string
	}{
		{"CONTAINER_HOST first", map[string]string{"CONTAINER_HOST": "tcp://h:1", "XDG_RUNTIME_DIR": "/run/user/7"},
			[]string{"/run/user/7/podman/podman.sock", "/run/podman/podman.sock"}, "tcp://h:1"},
		{"user socket", map[string]string{"XDG_RUNTIME_DIR": "/run/user/7"},
			[]string{"/run/user/7/podman/podman.sock", "/run/podman/podman.sock"}, "unix:///run/user/7/podman/podman.sock"},
		{"root socket when the user has none", map[string]string{"XDG_RUNTIME_DIR": "/run/user/7"},
			[]string{"/run/podman/podman.sock"}, "unix:///run/podman/podman.sock"},
		{"root socket without XDG_RUNTIME_DIR", nil, []string{"/run/podman/podman.sock"}, "unix:///run/podman/podman.sock"},
		{"none", map[string]string{"XDG_RUNTIME_DIR": "/run/user/7"}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exists := func(p string) bool {
				for _, q := range tt.present {
					if p == q {
						return true
					}
				}
				return false
			}
			got, err := discoverSocket(func(k string) string { return tt.env[k] }, exists)
			if tt.want == "" {
				if !errors.Is(err, sandbox.ErrUnavailable) {
					t.Fatalf("got %q, %v; want ErrUnavailable", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestHostID(t *testing.T) {
	// What a rootless service reports for a user with subordinate ids 100000-165535.
	rootless := []idRange{{container: 0, host: 2345, size: 1}, {container: 1, host: 100000, size: 65536}}
	tests := []struct {
		name   string
		ranges []idRange
		id     int
		want   int
		err    bool
	}{
		{"root service keeps ids", nil, 1000, 1000, false},
		{"container root is the service's user", rootless, 0, 2345, false},
		{"sandbox user", rootless, 1000, 100999, false},
		{"first subordinate id", rootless, 1, 100000, false},
		{"last mapped id", rootless, 65536, 165535, false},
		{"beyond the mapping", rootless, 65537, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := hostID(tt.ranges, tt.id)
			if (err != nil) != tt.err || got != tt.want {
				t.Fatalf("hostID(%d) = %d, %v; want %d (error %v)", tt.id, got, err, tt.want, tt.err)
			}
		})
	}
}

// A service that is gone ends the waits on it; a slow one does not.
func TestGone(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	missing := &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ENOENT)}
	for _, tt := range []struct {
		err  error
		gone bool
	}{
		{refused, true},
		{missing, true},
		{fmt.Errorf("ping: %w", refused), true},
		{context.DeadlineExceeded, false},
		{errors.New("500 internal server error"), false},
	} {
		if got := gone(tt.err); got != tt.gone {
			t.Errorf("gone(%v) = %v, want %v", tt.err, got, tt.gone)
		}
	}
	w := &watch{gone: make(chan struct{})}
	w.set(false)
	lost := w.lost()
	select {
	case <-lost:
	default:
		t.Error("a service that stopped answering is not lost")
	}
	w.set(true)
	select {
	case <-w.lost():
		t.Error("a service answering again is still lost")
	default:
	}
}

// TestConformanceGVisor runs the suite on a root Podman service of the
// test's own whose default OCI runtime is runsc: Podman 4.3's API takes no
// runtime per container, so that is how Podman runs gVisor.
func TestConformanceGVisor(t *testing.T) {
	conformance.NeedsDaemon(t, "podman+gvisor")
	d := testenv.StartPodman(t, "test-podman-gvisor", "--runtime", sandbox.GVisorRuntime)
	rt := conformance.Connect(t, "podman+gvisor", func() (*Runtime, error) {
		return New(context.Background(), Config{Socket: d.Address, Isolation: sandbox.IsolationGVisor})
	})
	conformance.Run(t, rt, conformance.Config{})
}

// TestGVisorNeedsRunscService: a service running runc is not used for
// gVisor (its containers would silently run runc).
func TestGVisorNeedsRunscService(t *testing.T) {
	conformance.NeedsDaemon(t, "podman")
	_, err := New(context.Background(), Config{Socket: testenv.PodmanSocket(false), Isolation: sandbox.IsolationGVisor})
	if !errors.Is(err, sandbox.ErrUnavailable) || !strings.Contains(err.Error(), sandbox.GVisorRuntime) {
		t.Fatalf("gVisor on a runc service: %v, want ErrUnavailable naming %s", err, sandbox.GVisorRuntime)
	}
}
