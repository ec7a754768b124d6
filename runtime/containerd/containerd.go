// Package containerd runs sandboxes on containerd through its Go client,
// with runc, the overlayfs snapshotter and CNI for bridge networking.
package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/cgroupfs"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/lifecycle"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// Name is the backend's name.
const Name = "containerd"

// Config selects the daemon and where the backend keeps its state.
type Config struct {
	// Address of containerd's socket; default /run/containerd/containerd.sock.
	Address string
	// Namespace isolates sandstorm's containers and images; default "sandstorm".
	Namespace string
	// StateDir holds each sandbox's scratch directory (workspace, network
	// namespace); default /var/lib/sandstorm/containerd.
	StateDir string
	// Snapshotter for root filesystems; default overlayfs.
	Snapshotter string
	// CNIPluginDirs are searched for CNI plugins; default /usr/lib/cni, /opt/cni/bin.
	CNIPluginDirs []string
	// BridgeSubnet is the bridge network's IPv4 subnet; default 10.213.0.0/16.
	BridgeSubnet string
	// Isolation: runc (default), or gvisor, run as runc would be by the
	// runc v2 shim (its BinaryName option names runsc).
	Isolation sandbox.Isolation
}

func (c Config) withDefaults() Config {
	if c.Address == "" {
		c.Address = "/run/containerd/containerd.sock"
	}
	if c.Namespace == "" {
		c.Namespace = "sandstorm"
	}
	if c.StateDir == "" {
		c.StateDir = string(lifecycle.DefaultState(Name))
	}
	if c.Snapshotter == "" {
		c.Snapshotter = "overlayfs"
	}
	if len(c.CNIPluginDirs) == 0 {
		c.CNIPluginDirs = []string{"/usr/lib/cni", "/opt/cni/bin"}
	}
	if c.BridgeSubnet == "" {
		c.BridgeSubnet = "10.213.0.0/16"
	}
	if c.Isolation == "" {
		c.Isolation = sandbox.IsolationRunc
	}
	return c
}

// Runtime is the containerd backend.
type Runtime struct {
	cfg    Config
	state  lifecycle.State
	client *client.Client
	net    *bridge
	host   oci.Host
	// runsc is the OCI runtime binary for gVisor; empty for runc.
	runsc string
}

var _ sandbox.Runtime = (*Runtime)(nil)

// New connects to containerd and checks that it answers.
func New(ctx context.Context, cfg Config) (*Runtime, error) {
	cfg = cfg.withDefaults()
	var runsc string
	if cfg.Isolation == sandbox.IsolationGVisor {
		var err error
		if runsc, err = sandbox.Runsc(); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(cfg.Address); err != nil {
		return nil, fmt.Errorf("%w: containerd socket %s: %w", sandbox.ErrUnavailable, cfg.Address, err)
	}
	c, err := client.New(cfg.Address, client.WithDefaultNamespace(cfg.Namespace))
	if err != nil {
		return nil, fmt.Errorf("%w: connect to containerd at %s: %w", sandbox.ErrUnavailable, cfg.Address, err)
	}
	if _, err := c.Version(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: containerd at %s does not answer: %w", sandbox.ErrUnavailable, cfg.Address, err)
	}
	state := lifecycle.State(cfg.StateDir)
	if err := state.Make(); err != nil {
		c.Close()
		return nil, err
	}
	return &Runtime{cfg: cfg, state: state, client: c, net: newBridge(cfg), host: sandbox.DetectHost(), runsc: runsc}, nil
}

func (r *Runtime) ctx(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, r.cfg.Namespace)
}

// Name implements sandbox.Runtime.
func (r *Runtime) Name() string { return Name }

// Close implements sandbox.Runtime.
func (r *Runtime) Close() error { return r.client.Close() }

// Info implements sandbox.Runtime.
func (r *Runtime) Info(ctx context.Context) (sandbox.Info, error) {
	v, err := r.client.Version(r.ctx(ctx))
	if err != nil {
		return sandbox.Info{}, fmt.Errorf("%w: containerd version: %w", sandbox.ErrUnavailable, err)
	}
	return sandbox.Info{Name: Name, Version: v.Version, Socket: r.cfg.Address, Rootless: os.Geteuid() != 0, Isolation: r.cfg.Isolation,
		Differences: sandbox.Lowered(r.host)}, nil
}

// Enforcement implements sandbox.Runtime. As root with runc, containerd
// enforces every item; bridge networking needs the CNI plugins.
func (r *Runtime) Enforcement(ctx context.Context) (sandbox.Enforcement, error) {
	caps := lifecycle.AllEnforced()
	if err := r.net.available(); err != nil {
		caps[sandbox.ItemNetworkBridge] = sandbox.Support{Reason: err.Error()}
	}
	if r.runsc != "" {
		for it, reason := range sandbox.GVisorUnenforced() {
			caps[it] = sandbox.Support{Reason: reason}
		}
	}
	return caps, nil
}

// ImportImage implements sandbox.Runtime.
func (r *Runtime) ImportImage(ctx context.Context, rd io.Reader) ([]string, error) {
	ctx = r.ctx(ctx)
	imgs, err := r.client.Import(ctx, rd)
	if err != nil {
		return nil, fmt.Errorf("import image into containerd: %w", err)
	}
	var names []string
	for _, i := range imgs {
		if err := client.NewImage(r.client, i).Unpack(ctx, r.cfg.Snapshotter); err != nil {
			return nil, fmt.Errorf("unpack image %s: %w", i.Name, err)
		}
		names = append(names, i.Name)
	}
	return names, nil
}

// HasImage implements sandbox.ImageChecker: present and unpacked.
func (r *Runtime) HasImage(ctx context.Context, ref string) (bool, error) {
	ctx = r.ctx(ctx)
	img, err := r.client.GetImage(ctx, ref)
	if notFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get image %s: %w", ref, err)
	}
	return img.IsUnpacked(ctx, r.cfg.Snapshotter)
}

// List implements sandbox.Runtime.
func (r *Runtime) List(ctx context.Context, labels map[string]string) ([]sandbox.SandboxInfo, error) {
	ctx = r.ctx(ctx)
	sel := lifecycle.Selector(labels)
	var conds []string
	for k, v := range sel {
		conds = append(conds, fmt.Sprintf("labels.%q==%q", k, v))
	}
	filter := strings.Join(conds, ",")
	ctrs, err := r.client.Containers(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var out []sandbox.SandboxInfo
	for _, c := range ctrs {
		l, err := c.Labels(ctx)
		if err != nil {
			continue
		}
		running := false
		if t, err := c.Task(ctx, nil); err == nil {
			if st, err := t.Status(ctx); err == nil {
				running = st.Status == client.Running
			}
		}
		out = append(out, sandbox.SandboxInfo{ID: c.ID(), SessionID: l[oci.LabelSession], Labels: l, Running: running})
	}
	// A create cut short leaves a snapshot or a scratch directory with no
	// container: those are sandboxes too, for reaping.
	var snaps []sandbox.SandboxInfo
	err = r.client.SnapshotService(r.cfg.Snapshotter).Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		if sandbox.ValidID(i.Name) {
			snaps = append(snaps, sandbox.SandboxInfo{ID: i.Name, SessionID: i.Labels[oci.LabelSession], Labels: i.Labels})
		}
		return nil
	}, filter)
	if err != nil {
		return nil, fmt.Errorf("walk snapshots: %w", err)
	}
	ls, err := r.client.LeasesService().List(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	var held []sandbox.SandboxInfo
	for _, l := range ls {
		if id, ok := strings.CutPrefix(l.ID, leaseID("")); ok && sandbox.ValidID(id) {
			held = append(held, sandbox.SandboxInfo{ID: id, SessionID: l.Labels[oci.LabelSession], Labels: l.Labels})
		}
	}
	dirs, err := r.state.List(sel)
	if err != nil {
		return nil, err
	}
	// An IP allocation carries no labels: it counts as a managed sandbox of
	// no session and no owner (reap --all removes it; a sweep leaves it).
	var ips []sandbox.SandboxInfo
	for _, id := range r.net.allocated() {
		l := map[string]string{oci.LabelManaged: "true"}
		if lifecycle.Matches(l, sel) {
			ips = append(ips, sandbox.SandboxInfo{ID: id, Labels: l})
		}
	}
	return lifecycle.Merge(out, snaps, held, dirs, ips), nil
}

// Remove implements sandbox.Runtime.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	return r.cleanup(ctx, id)
}

// Leftovers implements sandbox.Runtime.
func (r *Runtime) Leftovers(ctx context.Context, id, sessionID string) ([]string, error) {
	ctx = r.ctx(ctx)
	var left []string
	if _, err := r.client.LoadContainer(ctx, id); err == nil {
		left = append(left, "container "+id)
	}
	if _, err := r.client.TaskService().Get(ctx, &tasks.GetRequest{ContainerID: id}); err == nil {
		left = append(left, "task "+id)
	}
	filter := fmt.Sprintf("labels.%q==%q", oci.LabelSession, sessionID)
	err := r.client.SnapshotService(r.cfg.Snapshotter).Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		left = append(left, "snapshot "+i.Name)
		return nil
	}, filter)
	if err != nil {
		return nil, fmt.Errorf("walk snapshots: %w", err)
	}
	if ls, err := r.client.LeasesService().List(ctx, fmt.Sprintf("id==%q", leaseID(id))); err == nil && len(ls) > 0 {
		left = append(left, "lease "+leaseID(id))
	}
	for _, d := range cgroupfs.Existing(oci.Container{ID: id}.CgroupPath()) {
		left = append(left, "cgroup "+d)
	}
	left = append(left, r.state.Leftovers(id)...)
	left = append(left, r.net.leftovers(id)...)
	return left, nil
}

func notFound(err error) bool { return errors.Is(err, errdefs.ErrNotFound) }

// gone tells whether err says containerd cannot be reached.
func gone(err error) bool {
	return errdefs.IsUnavailable(err) || errors.Is(err, syscall.ECONNREFUSED)
}
