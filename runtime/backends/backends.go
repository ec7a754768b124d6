// Package backends opens a runtime backend by name and discovers the ones
// present on a host.
package backends

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sandstorm-dev/sandstorm/runtime/containerd"
	"github.com/sandstorm-dev/sandstorm/runtime/docker"
	"github.com/sandstorm-dev/sandstorm/runtime/kubernetes"
	"github.com/sandstorm-dev/sandstorm/runtime/podman"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// Auto picks the first backend that answers.
const Auto = "auto"

// Names lists the backends in the order auto tries them: containerd first
// (no extra daemon in the path, and as root it enforces every policy item),
// then Docker (also enforces everything as root, but listed capabilities
// stay out of a non-root user's effective set), then Podman (which may be a
// rootless service that cannot enforce resource limits on cgroup v1).
var Names = []string{containerd.Name, docker.Name, podman.Name}

// Options carries per-backend settings; empty values take each backend's defaults.
type Options struct {
	ContainerdAddress string
	// DockerHost is the Docker daemon's address; empty means $DOCKER_HOST or the default.
	DockerHost string
	// PodmanSocket is the Podman service's address; empty means discovery
	// ($CONTAINER_HOST, $XDG_RUNTIME_DIR/podman/podman.sock, /run/podman/podman.sock).
	PodmanSocket string
	// Isolation is what the opened backend runs sandboxes with; default runc.
	Isolation sandbox.Isolation
	// Kubeconfig is the cluster of the kubernetes backend; empty means
	// $KUBECONFIG, ~/.kube/config, or the in-cluster service account.
	Kubeconfig string
	// MaxSandboxes bounds a cluster's sandboxes (kubernetes), shared by
	// every sandstorm using it; 0 means no bound of the backend's own.
	MaxSandboxes int
}

// FromEnv reads backend settings from the environment.
func FromEnv() Options {
	return Options{
		ContainerdAddress: os.Getenv("SANDSTORM_CONTAINERD_SOCKET"),
		DockerHost:        os.Getenv("SANDSTORM_DOCKER_SOCKET"),
		PodmanSocket:      os.Getenv("SANDSTORM_PODMAN_SOCKET"),
	}
}

// Open connects to the named backend, or with "auto" (or "") to the first
// one that answers.
func Open(ctx context.Context, name string, opts Options) (sandbox.Runtime, error) {
	switch name {
	case containerd.Name:
		return opened(containerd.New(ctx, containerd.Config{Address: opts.ContainerdAddress, Isolation: opts.Isolation}))
	case docker.Name:
		return opened(docker.New(ctx, docker.Config{Host: opts.DockerHost, Isolation: opts.Isolation}))
	case podman.Name:
		return opened(podman.New(ctx, podman.Config{Socket: opts.PodmanSocket, Isolation: opts.Isolation}))
	case kubernetes.Name:
		cfg := kubernetes.FromEnv(opts.Kubeconfig, opts.Isolation)
		cfg.MaxSandboxes = opts.MaxSandboxes
		return opened(kubernetes.New(ctx, cfg))
	case Auto, "":
		var errs []error
		for _, n := range Names {
			rt, err := Open(ctx, n, opts)
			if err == nil {
				return rt, nil
			}
			errs = append(errs, err)
		}
		return nil, fmt.Errorf("%w: no backend answers: %w", sandbox.ErrUnavailable, errors.Join(errs...))
	}
	return nil, fmt.Errorf("%w: unknown runtime %q (choose one of %s, %s, %s)", sandbox.ErrInvalidSpec, name, strings.Join(Names, ", "), kubernetes.Name, Auto)
}

// Found is one backend instance found on the host.
type Found struct {
	// Name is the backend; Socket tells instances of one backend apart.
	Name    string
	Socket  string
	Runtime sandbox.Runtime
	Err     error
}

// Discover tries every backend, and every Podman service it can find: the
// configured or discovered one, root's, and each user's rootless service.
func Discover(ctx context.Context, opts Options) []Found {
	var found []Found
	try := func(name, socket string, open func() (sandbox.Runtime, error)) {
		rt, err := open()
		found = append(found, Found{Name: name, Socket: socket, Runtime: rt, Err: err})
	}
	try(containerd.Name, opts.ContainerdAddress, func() (sandbox.Runtime, error) {
		return opened(containerd.New(ctx, containerd.Config{Address: opts.ContainerdAddress, Isolation: opts.Isolation}))
	})
	try(docker.Name, opts.DockerHost, func() (sandbox.Runtime, error) {
		return opened(docker.New(ctx, docker.Config{Host: opts.DockerHost, Isolation: opts.Isolation}))
	})
	for _, sock := range podmanSockets(opts.PodmanSocket) {
		try(podman.Name, sock, func() (sandbox.Runtime, error) {
			return opened(podman.New(ctx, podman.Config{Socket: sock, Isolation: opts.Isolation}))
		})
	}
	// A cluster only when one is configured: auto never picks one.
	if kubeconfig := kubeconfigFound(opts.Kubeconfig); kubeconfig != "" {
		try(kubernetes.Name, kubeconfig, func() (sandbox.Runtime, error) {
			return opened(kubernetes.New(ctx, kubernetes.FromEnv(opts.Kubeconfig, opts.Isolation)))
		})
	}
	return found
}

// kubeconfigFound names the cluster configuration the kubernetes backend
// would use, or "" when there is none.
func kubeconfigFound(explicit string) string {
	if explicit != "" {
		return explicit
	}
	if k := os.Getenv("KUBECONFIG"); k != "" {
		return k
	}
	if home, err := os.UserHomeDir(); err == nil {
		if p := filepath.Join(home, ".kube", "config"); fileExists(p) {
			return p
		}
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		return "in-cluster"
	}
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// podmanSockets lists Podman services to try, without duplicates.
func podmanSockets(explicit string) []string {
	var socks []string
	add := func(s string) {
		if s != "" && !slices.Contains(socks, s) {
			socks = append(socks, s)
		}
	}
	add(explicit)
	if s, err := podman.DiscoverSocket(); err == nil {
		add(s)
	}
	if _, err := os.Stat("/run/podman/podman.sock"); err == nil {
		add("unix:///run/podman/podman.sock")
	}
	users, _ := filepath.Glob("/run/user/*/podman/podman.sock")
	for _, u := range users {
		add("unix://" + u)
	}
	if len(socks) == 0 {
		socks = append(socks, "")
	}
	return socks
}

// opened turns a backend's constructor result into a sandbox.Runtime that
// is nil when it failed: a nil *containerd.Runtime returned as is would be
// a non-nil interface, and its Close would panic.
func opened[R sandbox.Runtime](rt R, err error) (sandbox.Runtime, error) {
	if err != nil {
		return nil, err
	}
	return rt, nil
}
