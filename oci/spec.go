package oci

import (
	"fmt"
	"maps"
	"path"

	"github.com/containerd/containerd/v2/pkg/oci"
)

// Labels every sandbox carries, so strays can be found and reaped by label.
const (
	LabelManaged = "sandstorm.managed"
	LabelSession = "sandstorm.session"
	// LabelOwner names the sandstorm process that made the sandbox (see
	// sandbox.Owner), so objects of a crashed process can be told apart.
	LabelOwner = "sandstorm.owner"
)

// CgroupParent is the cgroup under which every sandbox gets its own cgroup.
const CgroupParent = "/sandstorm"

// Container is what one spec runs: a sandbox's identity, its process, and
// the host resources prepared for it.
type Container struct {
	ID        string
	SessionID string
	Args      []string
	Env       []string
	// Labels are extra labels; the managed and session labels are always added.
	Labels map[string]string
	// Workspace is the host directory mounted read-write at /home/user.
	Workspace string
	// NetNS is the path of a prepared network namespace (bridge mode); empty
	// means a fresh namespace with only loopback.
	NetNS  string
	Policy Policy
	// GVisor: the sandbox runs under gVisor (see GVisorSeccompProfile).
	GVisor bool
}

// Host is what the host allows; the spec is fitted to it.
type Host struct {
	// HardLimits are this process's hard resource limits by type
	// ("RLIMIT_NOFILE"): what a runtime it starts unprivileged cannot exceed.
	HardLimits map[string]uint64
	// SwapAccounting tells whether memory+swap can be limited (cgroup v1 memsw or v2 swap.max).
	SwapAccounting bool
}

// AllLabels returns the sandbox's labels including the managed and session labels.
func (sb Container) AllLabels() map[string]string {
	l := maps.Clone(sb.Labels)
	if l == nil {
		l = map[string]string{}
	}
	l[LabelManaged] = "true"
	l[LabelSession] = sb.SessionID
	return l
}

// CgroupPath is the sandbox's own cgroup, relative to each hierarchy's root.
func (sb Container) CgroupPath() string { return path.Join(CgroupParent, sb.ID) }

// Options returns the spec options that enforce sb's policy, one per rule,
// to be applied on top of containerd's default Linux spec (the containerd
// backend applies the image's configuration first). The policy must already
// carry its defaults.
func Options(sb Container, host Host) ([]oci.SpecOpts, error) {
	p := sb.Policy
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if sb.ID == "" || sb.SessionID == "" {
		return nil, fmt.Errorf("%w: sandbox id and session id are required", ErrInvalidPolicy)
	}
	if sb.Workspace == "" || !path.IsAbs(sb.Workspace) {
		return nil, fmt.Errorf("%w: workspace must be an absolute host path, got %q", ErrInvalidPolicy, sb.Workspace)
	}
	opts := []oci.SpecOpts{
		oci.WithProcessArgs(sb.Args...),
		oci.WithProcessCwd(Workspace),
		oci.WithEnv(sb.Env),
		oci.WithHostname(p.Hostname),
		oci.WithAnnotations(sb.AllLabels()),
		oci.WithCgroup(sb.CgroupPath()),
		withUser(p.UID, p.GID),
		withCapabilities(p.Capabilities),
		oci.WithNoNewPrivileges,
		withSeccomp(p.Seccomp, sb.GVisor),
		withRootFS(p.WritableRoot),
		withMaskedPaths,
		withReadonlyPaths,
		withCgroupNamespace,
		oci.WithDefaultUnixDevices,
		withNetwork(sb.NetNS),
		withDevNoexec,
		withTmp(p.TmpBytes),
		withWorkspace(sb.Workspace),
		withCgroupfsReadOnly,
		withBindMounts(p.Mounts),
		withMemory(p.MemoryBytes, host.SwapAccounting),
		withCPUs(p.CPUs),
		oci.WithPidsLimit(p.Pids),
		withRlimits(host.Fit(Rlimits(p))),
	}
	return opts, nil
}
