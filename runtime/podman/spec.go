package podman

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"go.podman.io/podman/v6/libpod/define"
	"go.podman.io/podman/v6/pkg/specgen"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime"
)

// plan is one sandbox as Podman must create it: the policy with host paths
// resolved, from which both the specgen and the inspect check are derived.
type plan struct {
	id, image string
	args      []string
	env       []string
	labels    map[string]string
	policy    oci.Policy
	// workspace is the host directory mounted at /home/user.
	workspace string
	// mounts are the policy's bind mounts, sources as the service sees them.
	mounts []oci.Mount
	// cgroupParent is empty when Podman's default parent is kept.
	cgroupParent string
	// network is Podman's network mode: none, bridge, slirp4netns or pasta.
	network string
	// swap: the host can limit memory+swap, so swap is set to the memory limit.
	swap bool
	// rlimits are the policy's (oci.Rlimits), fitted to the host. Set explicitly, nproc among them, they also keep
	// Podman from raising nproc to 1048576, which fails where root lacks
	// CAP_SYS_RESOURCE.
	rlimits []specs.POSIXRlimit
	// cgroupLimits: the service drops resource limits (rootless, cgroup v1),
	// so sandstorm writes them into the container's cgroup itself.
	cgroupLimits bool
	// ociRuntime is the service's name of the OCI runtime, checked after
	// create; empty for its default.
	ociRuntime string
	// seccomp is the profile's path on the service's host (sandstorm's own),
	// or "unconfined".
	seccomp string
	// unenforced are items the caller allowed to go unenforced: not verified.
	unenforced []runtime.Item
}

// tmpOptions mounts /tmp like the containerd backend: size-bounded, sticky.
func tmpOptions(size int64) []string {
	return []string{"rw", "nosuid", "nodev", "mode=1777", "size=" + strconv.FormatInt(size, 10)}
}

// specgen builds the create request.
func (p plan) specgen() *specgen.SpecGenerator {
	pol := p.policy
	no, yes := false, true
	s := specgen.NewSpecGenerator(p.image, false)
	s.Name = p.id
	s.Labels = p.labels
	// The command replaces the image's entrypoint and command.
	s.Entrypoint = p.args
	s.Env = envMap(p.env)
	// Podman would copy its own proxy variables into the sandbox.
	s.HTTPProxy = &no
	s.Terminal = &no
	s.Stdin = &no
	// Output goes to the attached caller only; no log file on the host.
	s.LogConfiguration = &specgen.LogConfig{Driver: "none"}
	s.WorkDir = oci.Workspace
	s.Hostname = pol.Hostname
	s.UtsNS = specgen.Namespace{NSMode: specgen.Private}
	s.CgroupNS = specgen.Namespace{NSMode: specgen.Private}
	s.CgroupParent = p.cgroupParent
	if p.cgroupParent != "" {
		// conmon stays in the service's cgroup: in the sandbox's it would
		// keep the cgroup busy until Podman's cleanup process has exited.
		s.CgroupsMode = "no-conmon"
	}
	// Volumes declared by the image would be host storage outside the policy.
	s.ImageVolumeMode = "ignore"

	s.User = fmt.Sprintf("%d:%d", pol.UID, pol.GID)
	s.CapDrop = []string{"ALL"}
	s.CapAdd = capList(pol.Capabilities)
	s.NoNewPrivileges = &yes
	s.SeccompProfilePath = p.seccomp
	s.OCIRuntime = p.ociRuntime
	// sandstorm's masked paths, added to Podman's own (which miss some).
	s.Mask = slices.Clone(oci.MaskedPaths)
	ro := !pol.WritableRoot
	s.ReadOnlyFilesystem = &ro

	s.Mounts = []specs.Mount{
		{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: tmpOptions(pol.TmpBytes)},
		// The sandbox's own, as on the other backends: Podman's default is
		// a host directory bound in, which runsc would share as 9p.
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: oci.Workspace, Type: "bind", Source: p.workspace, Options: []string{"rbind", "rw", "nosuid", "nodev"}},
	}
	for _, m := range p.mounts {
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: m.Target, Type: "bind", Source: m.Source, Options: []string{"rbind", mode, "nosuid", "nodev"}})
	}

	if !p.cgroupLimits {
		limit, quota, period := pol.MemoryBytes, oci.CPUQuota(pol.CPUs), uint64(oci.CPUPeriod)
		mem := &specs.LinuxMemory{Limit: &limit}
		if p.swap {
			mem.Swap = &limit
		}
		pids := pol.Pids
		s.ResourceLimits = &specs.LinuxResources{
			Memory: mem,
			CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
			Pids:   &specs.LinuxPids{Limit: &pids},
		}
	}
	for _, l := range p.rlimits {
		s.Rlimits = append(s.Rlimits, specs.POSIXRlimit{Type: oci.RlimitName(l.Type), Soft: l.Soft, Hard: l.Hard})
	}

	s.NetNS = specgen.Namespace{NSMode: specgen.NamespaceMode(p.network)}
	switch p.network {
	case "slirp4netns":
		// The sandbox reaches the host through its gateway 10.0.2.2, which
		// slirp4netns maps to the host's loopback only when allowed.
		s.NetworkOptions = map[string][]string{"slirp4netns": {"allow_host_loopback=true"}}
	case "pasta":
		s.NetworkOptions = map[string][]string{"pasta": {"--map-gw"}}
	}
	return s
}

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// capList is the policy's capabilities, sorted and without duplicates.
func capList(caps []string) []string {
	c := slices.Clone(caps)
	slices.Sort(c)
	return slices.Compact(c)
}

// verify compares a created container's inspect data with the plan and
// names every setting Podman dropped or changed.
func (p plan) verify(got *define.InspectContainerData) []string {
	pol := p.policy
	var bad []string
	fail := func(what, format string, args ...any) {
		bad = append(bad, what+" ("+fmt.Sprintf(format, args...)+")")
	}
	// Limits sandstorm sets itself are checked as it writes them.
	enforced := func(it runtime.Item) bool { return !p.cgroupLimits && !slices.Contains(p.unenforced, it) }
	hc := got.HostConfig
	cfg := got.Config
	if hc == nil || cfg == nil {
		return []string{"inspect data (no HostConfig or Config)"}
	}
	if p.ociRuntime != "" && got.OCIRuntime != p.ociRuntime {
		fail("isolation", "OCI runtime %q, want %q", got.OCIRuntime, p.ociRuntime)
	}

	want := capList(pol.Capabilities)
	if b := capList(got.BoundingCaps); !slices.Equal(b, want) {
		fail(string(runtime.ItemCapabilities), "bounding set %v, want %v", b, want)
	}
	if e := capList(got.EffectiveCaps); !slices.Equal(e, want) {
		fail(string(runtime.ItemGrantCapabilities), "effective set %v, want %v", e, want)
	}
	if !slices.Contains(hc.SecurityOpt, "no-new-privileges") {
		fail(string(runtime.ItemNoNewPrivileges), "security options %v", hc.SecurityOpt)
	}
	seccomp := ""
	for _, o := range hc.SecurityOpt {
		if v, ok := strings.CutPrefix(o, "seccomp="); ok {
			seccomp = v
		}
	}
	// Podman 4.3 does not report a profile given through the API (its CLI
	// records one in an annotation): "" is what sandstorm's profile reads
	// as; the conformance suite proves from inside that it applies.
	if seccomp != p.seccomp && !(seccomp == "" && p.seccomp != "unconfined") {
		fail(string(runtime.ItemSeccomp), "profile %q, want %q", seccomp, p.seccomp)
	}
	if hc.ReadonlyRootfs == pol.WritableRoot {
		fail(string(runtime.ItemReadOnlyRoot), "read-only %v", hc.ReadonlyRootfs)
	}
	if u := fmt.Sprintf("%d:%d", pol.UID, pol.GID); cfg.User != u {
		fail(string(runtime.ItemUser), "%q, want %q", cfg.User, u)
	}
	if enforced(runtime.ItemMemoryLimit) {
		if hc.Memory != pol.MemoryBytes {
			fail(string(runtime.ItemMemoryLimit), "%d bytes, want %d", hc.Memory, pol.MemoryBytes)
		}
		if p.swap && hc.MemorySwap != pol.MemoryBytes {
			fail("memory+swap limit", "%d bytes, want %d", hc.MemorySwap, pol.MemoryBytes)
		}
	}
	if q := oci.CPUQuota(pol.CPUs); enforced(runtime.ItemCPULimit) && (hc.CpuQuota != q || hc.CpuPeriod != oci.CPUPeriod) {
		fail(string(runtime.ItemCPULimit), "quota %d/%d, want %d/%d", hc.CpuQuota, hc.CpuPeriod, q, oci.CPUPeriod)
	}
	if enforced(runtime.ItemPidsLimit) && hc.PidsLimit != pol.Pids {
		fail(string(runtime.ItemPidsLimit), "%d, want %d", hc.PidsLimit, pol.Pids)
	}
	for _, l := range p.rlimits {
		i := slices.IndexFunc(hc.Ulimits, func(u define.InspectUlimit) bool { return oci.RlimitName(u.Name) == oci.RlimitName(l.Type) })
		if i >= 0 && hc.Ulimits[i].Soft == int64(l.Soft) && hc.Ulimits[i].Hard == int64(l.Hard) {
			continue
		}
		item := "rlimit " + oci.RlimitName(l.Type)
		if l.Type == "RLIMIT_NOFILE" {
			item = string(runtime.ItemNoFileLimit)
		}
		got := "not set"
		if i >= 0 {
			got = fmt.Sprintf("%d:%d", hc.Ulimits[i].Soft, hc.Ulimits[i].Hard)
		}
		fail(item, "%s, want %d:%d", got, int64(l.Soft), int64(l.Hard))
	}
	if opts := strings.Split(hc.Tmpfs["/tmp"], ","); !slices.Contains(opts, fmt.Sprintf("size=%d", pol.TmpBytes)) || !slices.Contains(opts, "mode=1777") {
		fail("tmpfs /tmp", "options %q", hc.Tmpfs["/tmp"])
	}
	binds := append([]oci.Mount{{Source: p.workspace, Target: oci.Workspace}}, p.mounts...)
	for _, m := range binds {
		i := slices.IndexFunc(got.Mounts, func(g define.InspectMount) bool { return g.Destination == m.Target })
		switch {
		case i < 0:
			fail("mount "+m.Target, "missing")
		case got.Mounts[i].Type != "bind" || got.Mounts[i].Source != m.Source || got.Mounts[i].RW == m.ReadOnly:
			g := got.Mounts[i]
			fail("mount "+m.Target, "%s %s rw=%v, want bind %s rw=%v", g.Type, g.Source, g.RW, m.Source, !m.ReadOnly)
		}
	}
	if hc.NetworkMode != p.network {
		item := runtime.ItemNetworkNone
		if pol.Network == oci.NetworkBridge {
			item = runtime.ItemNetworkBridge
		}
		fail(string(item), "mode %q, want %q", hc.NetworkMode, p.network)
	}
	if hc.CgroupMode != "private" {
		fail("cgroup namespace", "%q, want private", hc.CgroupMode)
	}
	if cfg.Hostname != pol.Hostname {
		fail("hostname", "%q, want %q", cfg.Hostname, pol.Hostname)
	}
	for k, v := range p.labels {
		if cfg.Labels[k] != v {
			fail("label "+k, "%q, want %q", cfg.Labels[k], v)
		}
	}
	if p.cgroupParent != "" && hc.CgroupParent != p.cgroupParent {
		fail("cgroup parent", "%q, want %q", hc.CgroupParent, p.cgroupParent)
	}
	return bad
}
