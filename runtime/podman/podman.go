// Package podman runs sandboxes on a Podman service, root or rootless,
// through its REST API (the go.podman.io/podman/v6 bindings).
//
// Podman 4.3 silently drops specgen fields it does not know, so every
// sandbox is inspected after create and refused when a setting its policy
// requires did not take. Each sandbox gets its own cgroup parent
// (/sandstorm/ID) where the service manages cgroups with cgroupfs: it
// outlives the container, for OOM detection and leftover checks. For a
// rootless service on cgroup v1, sandstorm (as root) delegates that parent
// to the service's user and writes the resource limits Podman drops.
package podman

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"go.podman.io/podman/v6/pkg/bindings"
	"go.podman.io/podman/v6/pkg/bindings/containers"
	"go.podman.io/podman/v6/pkg/bindings/images"
	"go.podman.io/podman/v6/pkg/bindings/system"
	"go.podman.io/podman/v6/pkg/errorhandling"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/cgroupfs"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/lifecycle"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// Name is the backend's name.
const Name = "podman"

// Config selects the Podman service and where the backend keeps its state.
type Config struct {
	// Socket is the service's address (unix:///run/podman/podman.sock);
	// empty means DiscoverSocket.
	Socket string
	// StateDir holds each sandbox's scratch directory; default
	// /var/lib/sandstorm/podman, or /var/lib/sandstorm/podman-rootless for a
	// rootless service.
	StateDir string
	// NoCgroupDelegation stops a root sandstorm from setting memory, CPU and
	// pids limits itself for a rootless service on cgroup v1 (which cannot
	// set them). The limits are then reported unenforced, as they are for a
	// non-root sandstorm, and policies needing them fail closed.
	NoCgroupDelegation bool
	// Isolation: runc (default), or gvisor, runsc given to the service as
	// the container's OCI runtime by path.
	Isolation sandbox.Isolation
}

// DiscoverSocket finds the Podman service the way podman-remote does:
// $CONTAINER_HOST, then the user's $XDG_RUNTIME_DIR/podman/podman.sock, then
// the root service's /run/podman/podman.sock.
func DiscoverSocket() (string, error) {
	return discoverSocket(os.Getenv, fileExists)
}

func discoverSocket(getenv func(string) string, exists func(string) bool) (string, error) {
	if h := getenv("CONTAINER_HOST"); h != "" {
		return h, nil
	}
	var tried []string
	if dir := getenv("XDG_RUNTIME_DIR"); dir != "" {
		p := filepath.Join(dir, "podman", "podman.sock")
		if exists(p) {
			return "unix://" + p, nil
		}
		tried = append(tried, p)
	}
	const rootSock = "/run/podman/podman.sock"
	if exists(rootSock) {
		return "unix://" + rootSock, nil
	}
	tried = append(tried, rootSock)
	return "", fmt.Errorf("%w: no Podman socket: CONTAINER_HOST is unset and none of %s exists",
		sandbox.ErrUnavailable, strings.Join(tried, ", "))
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// service is what the backend learned about the Podman service when it connected.
type service struct {
	version  string
	rootless bool
	cgroupV2 bool
	// cgroupfs: the service manages cgroups itself (not through systemd),
	// so a sandbox's cgroup parent can be a plain path.
	cgroupfs bool
	uidMap   []idRange
	gidMap   []idRange
	// pasta: the rootless network is pasta (Podman 5+), not slirp4netns.
	pasta bool
	// local: the socket is a Unix socket on this host, so the service's
	// cgroups and mount namespace can be reached from here.
	local bool
}

// Runtime is the Podman backend.
type Runtime struct {
	cfg   Config
	state lifecycle.State
	conn  context.Context
	svc   service
	host  oci.Host

	watch *watch
	// seccomp is the path of sandstorm's seccomp profile for the service.
	seccomp string
	// ociRuntime names the service's OCI runtime for gVisor; empty for its default.
	ociRuntime string
}

var (
	_ sandbox.Runtime      = (*Runtime)(nil)
	_ sandbox.ImageChecker = (*Runtime)(nil)
)

// New connects to the Podman service and reads what kind it is.
func New(ctx context.Context, cfg Config) (*Runtime, error) {
	if cfg.Socket == "" {
		s, err := DiscoverSocket()
		if err != nil {
			return nil, err
		}
		cfg.Socket = s
	}
	conn, err := bindings.NewConnection(ctx, cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("%w: connect to podman at %s: %w", sandbox.ErrUnavailable, cfg.Socket, err)
	}
	// The bindings keep the connection in a context; it must outlive ctx.
	r := &Runtime{cfg: cfg, conn: context.WithoutCancel(conn), host: sandbox.DetectHost()}
	info, err := system.Info(r.ctx(ctx), nil)
	if err != nil {
		return nil, fmt.Errorf("%w: podman info at %s: %w", sandbox.ErrUnavailable, cfg.Socket, err)
	}
	r.svc = service{
		version:  info.Version.Version,
		rootless: info.Host.Security.Rootless,
		cgroupV2: info.Host.CgroupsVersion == "v2",
		cgroupfs: info.Host.CgroupManager == "cgroupfs",
		pasta:    info.Host.RootlessNetworkCmd == "pasta",
		local:    strings.HasPrefix(cfg.Socket, "unix://"),
	}
	for _, m := range info.Host.IDMappings.UIDMap {
		r.svc.uidMap = append(r.svc.uidMap, idRange{container: m.ContainerID, host: m.HostID, size: m.Size})
	}
	for _, m := range info.Host.IDMappings.GIDMap {
		r.svc.gidMap = append(r.svc.gidMap, idRange{container: m.ContainerID, host: m.HostID, size: m.Size})
	}
	if r.cfg.Isolation == "" {
		r.cfg.Isolation = sandbox.IsolationRunc
	}
	if r.cfg.Isolation == sandbox.IsolationGVisor {
		// Podman 4.3's API ignores a container's own OCI runtime (specgen
		// oci_runtime; the fingerprint showed runc answering): only a
		// service whose default runtime is runsc runs gVisor.
		if got := info.Host.OCIRuntime; got == nil || got.Name != sandbox.GVisorRuntime {
			name := "none"
			if got != nil {
				name = got.Name
			}
			return nil, fmt.Errorf("%w: gVisor: the podman service at %s runs %s; podman %s takes no OCI runtime per container, so run a service whose default is runsc (podman --runtime %s system service)",
				sandbox.ErrUnavailable, cfg.Socket, name, info.Version.Version, sandbox.GVisorRuntime)
		}
		r.ociRuntime = sandbox.GVisorRuntime
	}
	if r.cfg.StateDir == "" {
		name := Name
		if r.svc.rootless {
			name += "-rootless"
		}
		r.cfg.StateDir = string(lifecycle.DefaultState(name))
	}
	// A rootless service's user must traverse it to reach workspaces.
	r.state = lifecycle.State(r.cfg.StateDir)
	if err := r.state.Make(); err != nil {
		return nil, err
	}
	// sandstorm's seccomp profile, where the service (rootless too) reads it.
	r.seccomp = filepath.Join(r.cfg.StateDir, "seccomp.json")
	profile := oci.SeccompJSON()
	if r.ociRuntime != "" {
		r.seccomp = filepath.Join(r.cfg.StateDir, "seccomp-gvisor.json")
		p, err := oci.GVisorSeccompProfile()
		if err == nil {
			profile, err = json.Marshal(p)
		}
		if err != nil {
			return nil, fmt.Errorf("seccomp profile: %w", err)
		}
	}
	if err := os.WriteFile(r.seccomp, profile, 0o644); err != nil {
		return nil, fmt.Errorf("write seccomp profile: %w", err)
	}
	r.startWatch()
	return r, nil
}

// ctx gives a caller's context the bindings' connection, keeping the
// caller's deadline and cancellation.
func (r *Runtime) ctx(ctx context.Context) context.Context {
	return connCtx{Context: ctx, conn: r.conn}
}

type connCtx struct {
	context.Context
	conn context.Context
}

func (c connCtx) Value(key any) any {
	if v := c.Context.Value(key); v != nil {
		return v
	}
	return c.conn.Value(key)
}

// Name implements sandbox.Runtime.
func (r *Runtime) Name() string { return Name }

// Close implements sandbox.Runtime. The bindings hold no open connection
// beyond idle keep-alives.
func (r *Runtime) Close() error {
	r.watch.stop()
	if c, err := bindings.GetClient(r.conn); err == nil {
		c.Client.CloseIdleConnections()
	}
	return nil
}

// Info implements sandbox.Runtime.
func (r *Runtime) Info(ctx context.Context) (sandbox.Info, error) {
	info, err := system.Info(r.ctx(ctx), nil)
	if err != nil {
		return sandbox.Info{}, fmt.Errorf("%w: podman info: %w", sandbox.ErrUnavailable, err)
	}
	return sandbox.Info{Name: Name, Version: info.Version.Version, Socket: r.cfg.Socket, Rootless: info.Host.Security.Rootless,
		Isolation: r.cfg.Isolation, Differences: sandbox.Lowered(r.host)}, nil
}

// limitsReason is Podman's own warning when it drops a rootless container's
// resource limits.
const limitsReason = "Resource limits are not supported and ignored on cgroups V1 rootless systems"

// Enforcement implements sandbox.Runtime. Podman enforces every item but
// one: a rootless service on cgroup v1 drops resource limits. sandstorm then
// sets them itself in a cgroup it delegates to the service, which needs it
// to run as root next to a cgroupfs service. OOM kills are detected by
// watching the sandbox's memory cgroup, which needs the same.
func (r *Runtime) Enforcement(context.Context) (sandbox.Enforcement, error) {
	caps := capabilities(r.svc, r.delegates())
	if r.ociRuntime != "" {
		for it, reason := range sandbox.GVisorUnenforced() {
			caps[it] = sandbox.Support{Reason: reason}
		}
	}
	return caps, nil
}

func capabilities(svc service, root bool) sandbox.Enforcement {
	caps := lifecycle.AllEnforced()
	if svc.rootless && !svc.cgroupV2 && !ownCgroup(svc, root) {
		reason := "podman: " + limitsReason + " (sandstorm sets them itself when it runs as root on the service's host, with cgroup_manager cgroupfs, and cgroup delegation is on)"
		caps[sandbox.ItemMemoryLimit] = sandbox.Support{Reason: reason}
		caps[sandbox.ItemCPULimit] = sandbox.Support{Reason: reason}
		caps[sandbox.ItemPidsLimit] = sandbox.Support{Reason: reason}
		caps[sandbox.ItemOOMDetection] = sandbox.Support{Reason: "depends on memory_limit: " + reason}
	} else if reason := oomUnsupported(svc, root); reason != "" {
		caps[sandbox.ItemOOMDetection] = sandbox.Support{Reason: reason}
	}
	return caps
}

// delegates tells whether sandstorm may manage sandbox cgroups itself: it
// must be root, and not told otherwise.
func (r *Runtime) delegates() bool { return os.Geteuid() == 0 && !r.cfg.NoCgroupDelegation }

// ImportImage implements sandbox.Runtime. A rootless service has its own
// image store, so images are imported per service.
func (r *Runtime) ImportImage(ctx context.Context, rd io.Reader) ([]string, error) {
	rep, err := images.Load(r.ctx(ctx), rd)
	if err != nil {
		return nil, fmt.Errorf("load image into podman: %w", err)
	}
	if len(rep.Names) == 0 {
		return nil, errors.New("load image into podman: no image in the archive")
	}
	return rep.Names, nil
}

// HasImage implements sandbox.ImageChecker.
func (r *Runtime) HasImage(ctx context.Context, ref string) (bool, error) {
	ok, err := images.Exists(r.ctx(ctx), ref, nil)
	if err != nil {
		return false, fmt.Errorf("check image %s: %w", ref, err)
	}
	return ok, nil
}

// List implements sandbox.Runtime.
func (r *Runtime) List(ctx context.Context, labels map[string]string) ([]sandbox.SandboxInfo, error) {
	var filter []string
	sel := lifecycle.Selector(labels)
	for k, v := range sel {
		filter = append(filter, k+"="+v)
	}
	slices.Sort(filter)
	ctrs, err := containers.List(r.ctx(ctx), new(containers.ListOptions).WithAll(true).WithFilters(map[string][]string{"label": filter}))
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var out []sandbox.SandboxInfo
	for _, c := range ctrs {
		// Sandboxes are named by their id; skip containers someone else
		// labelled. Every label must match, whatever the service's filter does.
		if len(c.Names) != 1 || !lifecycle.Matches(c.Labels, sel) {
			continue
		}
		out = append(out, sandbox.SandboxInfo{ID: c.Names[0], SessionID: c.Labels[oci.LabelSession], Labels: c.Labels, Running: c.State == "running"})
	}
	// A create cut short leaves a scratch directory with no container.
	dirs, err := r.state.List(sel)
	if err != nil {
		return nil, err
	}
	return lifecycle.Merge(out, dirs), nil
}

// Remove implements sandbox.Runtime.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	return r.cleanup(ctx, id, true)
}

// Leftovers implements sandbox.Runtime.
func (r *Runtime) Leftovers(ctx context.Context, id, _ string) ([]string, error) {
	var left []string
	exists, err := containers.Exists(r.ctx(ctx), id, nil)
	if err != nil {
		return nil, fmt.Errorf("check container %s: %w", id, err)
	}
	if exists {
		left = append(left, "container "+id)
	}
	for _, d := range cgroupfs.Existing(cgroupParent(id)) {
		left = append(left, "cgroup "+d)
	}
	mounts, err := r.mediatedMounts(ctx, id)
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		left = append(left, "mount "+m)
	}
	return append(left, r.state.Leftovers(id)...), nil
}

// gone tells whether err says the service cannot be reached.
func gone(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF)
}

// notFound tells whether the service answered 404.
func notFound(err error) bool {
	var em *errorhandling.ErrorModel
	return errors.As(err, &em) && em.ResponseCode == http.StatusNotFound
}
