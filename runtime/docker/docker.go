// Package docker runs sandboxes on the Docker Engine through its API
// (github.com/moby/moby/client), negotiating the API version down to the
// daemon's (1.41 for Docker 20.10).
package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"syscall"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/jsonstream"
	"github.com/moby/moby/api/types/system"
	"github.com/moby/moby/client"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/cgroupfs"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/lifecycle"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// Name is the backend's name.
const Name = "docker"

// Config selects the daemon and where the backend keeps its state.
type Config struct {
	// Host is the daemon's address, e.g. unix:///var/run/docker.sock; empty
	// means $DOCKER_HOST or the client's default.
	Host string
	// StateDir holds each sandbox's scratch directory (its workspace);
	// default /var/lib/sandstorm/docker. It must be on the daemon's host.
	StateDir string
	// Isolation: runc (default), or gvisor, the daemon's runtime named
	// sandbox.GVisorRuntime.
	Isolation sandbox.Isolation
}

func (c Config) withDefaults() Config {
	if c.StateDir == "" {
		c.StateDir = string(lifecycle.DefaultState(Name))
	}
	if c.Isolation == "" {
		c.Isolation = sandbox.IsolationRunc
	}
	return c
}

// Runtime is the Docker backend.
type Runtime struct {
	cfg   Config
	state lifecycle.State
	cli   *client.Client
	d     daemon
	caps  sandbox.Enforcement
	// rootless is what the daemon reported when it was connected.
	rootless bool
}

var _ sandbox.Runtime = (*Runtime)(nil)

// New connects to the daemon, negotiates the API version and reads what the
// daemon enforces.
func New(ctx context.Context, cfg Config) (*Runtime, error) {
	cfg = cfg.withDefaults()
	opts := []client.Opt{client.FromEnv}
	if cfg.Host != "" {
		opts = append(opts, client.WithHost(cfg.Host))
	}
	cli, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: docker client: %w", sandbox.ErrUnavailable, err)
	}
	r, err := probe(ctx, cfg, cli)
	if err != nil {
		cli.Close()
		return nil, err
	}
	return r, nil
}

// probe checks that the daemon answers and reads what it enforces.
func probe(ctx context.Context, cfg Config, cli *client.Client) (*Runtime, error) {
	if _, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		return nil, fmt.Errorf("%w: docker at %s does not answer: %w", sandbox.ErrUnavailable, cli.DaemonHost(), err)
	}
	info, err := cli.Info(ctx, client.InfoOptions{})
	if err != nil {
		return nil, fmt.Errorf("%w: docker info: %w", sandbox.ErrUnavailable, err)
	}
	ociRuntime := ""
	if cfg.Isolation == sandbox.IsolationGVisor {
		ociRuntime = sandbox.GVisorRuntime
		if _, ok := info.Info.Runtimes[ociRuntime]; !ok {
			return nil, fmt.Errorf("%w: gVisor: docker at %s has no runtime %s (dockerd --add-runtime %s=%s; scripts/host-setup.sh registers it)",
				sandbox.ErrUnavailable, cli.DaemonHost(), ociRuntime, ociRuntime, sandbox.DefaultRunsc)
		}
	}
	_, bridgeErr := cli.NetworkInspect(ctx, "bridge", client.NetworkInspectOptions{})
	state := lifecycle.State(cfg.StateDir)
	if err := state.Make(); err != nil {
		return nil, err
	}
	seccomp, err := compactSeccomp(ociRuntime != "")
	if err != nil {
		return nil, err
	}
	r := &Runtime{
		cfg:   cfg,
		state: state,
		cli:   cli,
		d: daemon{
			CgroupDriver: info.Info.CgroupDriver,
			SwapLimit:    info.Info.SwapLimit,
			Host:         sandbox.DetectHost(),
			Seccomp:      seccomp,
			Runtime:      ociRuntime,
		},
		caps:     capabilities(info.Info, bridgeErr, ociRuntime != ""),
		rootless: slices.Contains(info.Info.SecurityOptions, "name=rootless"),
	}
	return r, nil
}

// capabilities is what a daemon enforces, from its own report. It is read
// once: every Create also verifies the container the daemon made.
func capabilities(info system.Info, bridgeErr error, gvisor bool) sandbox.Enforcement {
	caps := lifecycle.AllEnforced()
	not := func(it sandbox.Item, reason string) { caps[it] = sandbox.Support{Reason: reason} }
	not(sandbox.ItemGrantCapabilities, "docker adds listed capabilities to a non-root user's bounding set only, never to its effective set")
	if !slices.ContainsFunc(info.SecurityOptions, func(o string) bool { return strings.HasPrefix(o, "name=seccomp") }) {
		not(sandbox.ItemSeccomp, "the docker daemon runs without seccomp")
	}
	noCgroups := info.CgroupDriver == "none"
	if noCgroups || !info.MemoryLimit {
		not(sandbox.ItemMemoryLimit, "the docker daemon reports no memory limit support")
		not(sandbox.ItemOOMDetection, "no memory cgroup to detect OOM kills in")
	}
	if noCgroups || !info.CPUCfsQuota || !info.CPUCfsPeriod {
		not(sandbox.ItemCPULimit, "the docker daemon reports no CPU quota support")
	}
	if noCgroups || !info.PidsLimit {
		not(sandbox.ItemPidsLimit, "the docker daemon reports no pids limit support")
	}
	if bridgeErr != nil {
		not(sandbox.ItemNetworkBridge, fmt.Sprintf("no docker network named bridge: %v", bridgeErr))
	}
	if os.Geteuid() != 0 {
		not(sandbox.ItemNosuidMounts, "docker's API cannot make mounts nosuid,nodev, and only root can seal them so beforehand")
	}
	if gvisor {
		for it, reason := range sandbox.GVisorUnenforced() {
			not(it, reason)
		}
	}
	return caps
}

// Name implements sandbox.Runtime.
func (r *Runtime) Name() string { return Name }

// Close implements sandbox.Runtime.
func (r *Runtime) Close() error { return r.cli.Close() }

// Info implements sandbox.Runtime.
func (r *Runtime) Info(ctx context.Context) (sandbox.Info, error) {
	v, err := r.cli.ServerVersion(ctx, client.ServerVersionOptions{})
	if err != nil {
		return sandbox.Info{}, fmt.Errorf("%w: docker version: %w", sandbox.ErrUnavailable, err)
	}
	info := sandbox.Info{Name: Name, Version: v.Version, Socket: r.cli.DaemonHost(), Rootless: r.rootless, Isolation: r.cfg.Isolation}
	info.Differences = []sandbox.Difference{devDifference}
	if r.cfg.Isolation == sandbox.IsolationGVisor {
		info.Differences[0].Value = "tmpfs rw" // gVisor's mounts show no nosuid
	}
	info.Differences = append(info.Differences, sandbox.Lowered(r.d.Host)...)
	return info, nil
}

// devDifference: see sandbox.Info.
var devDifference = sandbox.Difference{
	Line: "mount /dev", Value: "tmpfs rw,nosuid",
	Reason: "Docker's API cannot add noexec to /dev: a tmpfs in its place drops /dev/pts, /dev/shm and /dev/mqueue. " +
		"The sandbox user cannot write to /dev (root's, mode 755), so nothing there can be run either way",
}

// Enforcement implements sandbox.Runtime.
func (r *Runtime) Enforcement(context.Context) (sandbox.Enforcement, error) {
	return maps.Clone(r.caps), nil
}

// HasImage implements sandbox.ImageChecker.
func (r *Runtime) HasImage(ctx context.Context, ref string) (bool, error) {
	_, err := r.cli.ImageInspect(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("inspect image %s: %w", ref, err)
	}
	return true, nil
}

// ImportImage implements sandbox.Runtime. Docker 20.10 loads the one-tar
// image through the Docker manifest.json it carries.
func (r *Runtime) ImportImage(ctx context.Context, rd io.Reader) ([]string, error) {
	resp, err := r.cli.ImageLoad(ctx, rd, client.ImageLoadWithQuiet(true))
	if err != nil {
		return nil, fmt.Errorf("load image into docker: %w", err)
	}
	defer resp.Close()
	return loadedImages(resp)
}

// loadedImages reads the daemon's load progress stream: one JSON message per
// line, "Loaded image: REF" (or "Loaded image ID: ID" when untagged) per image.
func loadedImages(rd io.Reader) ([]string, error) {
	var names []string
	dec := json.NewDecoder(rd)
	for {
		var m jsonstream.Message
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("load image into docker: read response: %w", err)
		}
		if m.Error != nil {
			return nil, fmt.Errorf("load image into docker: %s", m.Error.Message)
		}
		for _, line := range strings.Split(m.Stream, "\n") {
			for _, prefix := range []string{"Loaded image: ", "Loaded image ID: "} {
				if ref, ok := strings.CutPrefix(line, prefix); ok {
					names = append(names, strings.TrimSpace(ref))
				}
			}
		}
	}
	if len(names) == 0 {
		return nil, errors.New("load image into docker: the daemon reported no image loaded")
	}
	return names, nil
}

// List implements sandbox.Runtime.
func (r *Runtime) List(ctx context.Context, labels map[string]string) ([]sandbox.SandboxInfo, error) {
	f := client.Filters{}
	for k, v := range lifecycle.Selector(labels) {
		f.Add("label", k+"="+v)
	}
	res, err := r.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var out []sandbox.SandboxInfo
	for _, c := range res.Items {
		out = append(out, sandbox.SandboxInfo{
			ID:        sandboxID(c.Names),
			SessionID: c.Labels[oci.LabelSession],
			Labels:    c.Labels,
			Running:   c.State == container.StateRunning,
		})
	}
	// A create cut short leaves a scratch directory with no container.
	dirs, err := r.state.List(lifecycle.Selector(labels))
	if err != nil {
		return nil, err
	}
	return lifecycle.Merge(out, dirs), nil
}

// sandboxID is the container's own name: the sandbox id. Docker also lists
// link aliases, which have a second slash.
func sandboxID(names []string) string {
	for _, n := range names {
		if n = strings.TrimPrefix(n, "/"); !strings.Contains(n, "/") {
			return n
		}
	}
	return ""
}

// find returns the container named id, or nil. The name is matched exactly:
// the daemon's own lookup by name falls back to id prefixes, which could
// reach a container that is not the sandbox.
func (r *Runtime) find(ctx context.Context, id string) (*container.Summary, error) {
	f := client.Filters{}
	f.Add("name", "^/?"+regexp.QuoteMeta(id)+"$")
	res, err := r.cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("find container %s: %w", id, err)
	}
	for _, c := range res.Items {
		if sandboxID(c.Names) == id {
			return &c, nil
		}
	}
	return nil, nil
}

// Remove implements sandbox.Runtime.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	return r.cleanup(ctx, id, "")
}

// Leftovers implements sandbox.Runtime. Nothing Docker makes for a sandbox
// outlives its container except what is named here, so the session is not
// needed to find it.
func (r *Runtime) Leftovers(ctx context.Context, id, _ string) ([]string, error) {
	if err := lifecycle.CheckID(id); err != nil {
		return nil, err
	}
	var left []string
	c, err := r.find(ctx, id)
	if err != nil {
		return nil, err
	}
	containerID := ""
	if c != nil {
		containerID = c.ID
		left = append(left, fmt.Sprintf("container %s (%s)", id, c.ID))
	}
	for _, d := range r.cgroups(id, containerID) {
		left = append(left, "cgroup "+d)
	}
	return append(left, r.state.Leftovers(id)...), nil
}

// cgroups returns the existing directories of sandbox id's cgroups: under
// cgroupfs its own parent; under systemd the scope of its container, which
// Docker names by container id and so is only found while the container
// exists (systemd removes empty scopes itself).
func (r *Runtime) cgroups(id, containerID string) []string {
	switch {
	case r.d.CgroupDriver == "cgroupfs":
		return cgroupfs.Existing(cgroupParent(r.d.CgroupDriver, id))
	case r.d.CgroupDriver == "systemd" && containerID != "":
		return cgroupfs.Existing(path.Join("/", systemdSlice, "docker-"+containerID+".scope"))
	}
	return nil
}

func notFound(err error) bool { return cerrdefs.IsNotFound(err) }

// compactSeccomp is sandstorm's profile on one line, as Docker takes it.
func compactSeccomp(gvisor bool) ([]byte, error) {
	if gvisor {
		p, err := oci.GVisorSeccompProfile()
		if err != nil {
			return nil, err
		}
		return json.Marshal(p)
	}
	var b bytes.Buffer
	if err := json.Compact(&b, oci.SeccompJSON()); err != nil {
		return nil, fmt.Errorf("seccomp profile: %w", err)
	}
	return b.Bytes(), nil
}

// gone tells whether err says the daemon cannot be reached.
func gone(err error) bool {
	return client.IsErrConnectionFailed(err) || cerrdefs.IsUnavailable(err) || errors.Is(err, syscall.ECONNREFUSED)
}
