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
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
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
	unenforced []sandbox.Item
}

// specgen builds the create request: what is no policy item here, the
// rest from settings.
func (p plan) specgen() *specgen.SpecGenerator {
	no := false
	s := specgen.NewSpecGenerator(p.image, false)
	s.Name = p.id
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
	// Volumes declared by the image would be host storage outside the policy.
	s.ImageVolumeMode = "ignore"
	for _, st := range settings {
		st.set(p, s)
	}
	return s
}

// setting is one setting of the policy, mapped both ways in one place: how
// it is asked of Podman, and how the container Podman made is checked for
// it.
type setting struct {
	// set writes it into the request.
	set func(p plan, s *specgen.SpecGenerator)
	// check names, through fail, each way got differs from the plan; nil
	// where the inspect data does not show it.
	check func(p plan, got *define.InspectContainerData, fail failer)
}

// failer records a setting dropped or changed: the item, then how.
type failer func(what, format string, args ...any)

// enforced tells whether the service was asked to enforce it, and so is
// checked: limits sandstorm sets itself are checked as it writes them.
func (p plan) enforced(it sandbox.Item) bool {
	return !p.cgroupLimits && !slices.Contains(p.unenforced, it)
}

// resources are the request's cgroup limits, made on first use.
func resources(s *specgen.SpecGenerator) *specs.LinuxResources {
	if s.ResourceLimits == nil {
		s.ResourceLimits = &specs.LinuxResources{}
	}
	return s.ResourceLimits
}

// settings are every setting of the request, in the order verify names them.
var settings = []setting{
	{func(p plan, s *specgen.SpecGenerator) { s.OCIRuntime = p.ociRuntime }, func(p plan, got *define.InspectContainerData, fail failer) {
		if p.ociRuntime != "" && got.OCIRuntime != p.ociRuntime {
			fail("isolation", "OCI runtime %q, want %q", got.OCIRuntime, p.ociRuntime)
		}
	}},
	{func(p plan, s *specgen.SpecGenerator) {
		s.CapDrop = []string{"ALL"}
		s.CapAdd = capList(p.policy.Capabilities)
	}, func(p plan, got *define.InspectContainerData, fail failer) {
		want := capList(p.policy.Capabilities)
		if b := capList(got.BoundingCaps); !slices.Equal(b, want) {
			fail(string(sandbox.ItemCapabilities), "bounding set %v, want %v", b, want)
		}
		if e := capList(got.EffectiveCaps); !slices.Equal(e, want) {
			fail(string(sandbox.ItemGrantCapabilities), "effective set %v, want %v", e, want)
		}
	}},
	{func(_ plan, s *specgen.SpecGenerator) {
		yes := true
		s.NoNewPrivileges = &yes
	}, func(_ plan, got *define.InspectContainerData, fail failer) {
		if !slices.Contains(got.HostConfig.SecurityOpt, "no-new-privileges") {
			fail(string(sandbox.ItemNoNewPrivileges), "security options %v", got.HostConfig.SecurityOpt)
		}
	}},
	{func(p plan, s *specgen.SpecGenerator) { s.SeccompProfilePath = p.seccomp }, func(p plan, got *define.InspectContainerData, fail failer) {
		seccomp := ""
		for _, o := range got.HostConfig.SecurityOpt {
			if v, ok := strings.CutPrefix(o, "seccomp="); ok {
				seccomp = v
			}
		}
		// Podman 4.3 does not report a profile given through the API (its CLI
		// records one in an annotation): "" is what sandstorm's profile reads
		// as; the conformance suite proves from inside that it applies.
		if seccomp != p.seccomp && !(seccomp == "" && p.seccomp != "unconfined") {
			fail(string(sandbox.ItemSeccomp), "profile %q, want %q", seccomp, p.seccomp)
		}
	}},
	{func(p plan, s *specgen.SpecGenerator) {
		ro := !p.policy.WritableRoot
		s.ReadOnlyFilesystem = &ro
	}, func(p plan, got *define.InspectContainerData, fail failer) {
		if got.HostConfig.ReadonlyRootfs == p.policy.WritableRoot {
			fail(string(sandbox.ItemReadOnlyRoot), "read-only %v", got.HostConfig.ReadonlyRootfs)
		}
	}},
	{func(p plan, s *specgen.SpecGenerator) { s.User = p.user() }, func(p plan, got *define.InspectContainerData, fail failer) {
		if got.Config.User != p.user() {
			fail(string(sandbox.ItemUser), "%q, want %q", got.Config.User, p.user())
		}
	}},
	{func(p plan, s *specgen.SpecGenerator) {
		if !p.cgroupLimits {
			limit := p.policy.MemoryBytes
			resources(s).Memory = &specs.LinuxMemory{Limit: &limit}
			if p.swap {
				resources(s).Memory.Swap = &limit
			}
		}
	}, func(p plan, got *define.InspectContainerData, fail failer) {
		if !p.enforced(sandbox.ItemMemoryLimit) {
			return
		}
		want, hc := p.policy.MemoryBytes, got.HostConfig
		if hc.Memory != want {
			fail(string(sandbox.ItemMemoryLimit), "%d bytes, want %d", hc.Memory, want)
		}
		if p.swap && hc.MemorySwap != want {
			fail("memory+swap limit", "%d bytes, want %d", hc.MemorySwap, want)
		}
	}},
	{func(p plan, s *specgen.SpecGenerator) {
		if !p.cgroupLimits {
			quota, period := oci.CPUQuota(p.policy.CPUs), uint64(oci.CPUPeriod)
			resources(s).CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
		}
	}, func(p plan, got *define.InspectContainerData, fail failer) {
		hc := got.HostConfig
		if q := oci.CPUQuota(p.policy.CPUs); p.enforced(sandbox.ItemCPULimit) && (hc.CpuQuota != q || hc.CpuPeriod != oci.CPUPeriod) {
			fail(string(sandbox.ItemCPULimit), "quota %d/%d, want %d/%d", hc.CpuQuota, hc.CpuPeriod, q, oci.CPUPeriod)
		}
	}},
	{func(p plan, s *specgen.SpecGenerator) {
		if !p.cgroupLimits {
			pids := p.policy.Pids
			resources(s).Pids = &specs.LinuxPids{Limit: &pids}
		}
	}, func(p plan, got *define.InspectContainerData, fail failer) {
		if p.enforced(sandbox.ItemPidsLimit) && got.HostConfig.PidsLimit != p.policy.Pids {
			fail(string(sandbox.ItemPidsLimit), "%d, want %d", got.HostConfig.PidsLimit, p.policy.Pids)
		}
	}},
	{func(p plan, s *specgen.SpecGenerator) {
		for _, l := range p.rlimits {
			s.Rlimits = append(s.Rlimits, specs.POSIXRlimit{Type: oci.RlimitName(l.Type), Soft: l.Soft, Hard: l.Hard})
		}
	}, func(p plan, got *define.InspectContainerData, fail failer) {
		have := got.HostConfig.Ulimits
		for _, l := range p.rlimits {
			i := slices.IndexFunc(have, func(u define.InspectUlimit) bool { return oci.RlimitName(u.Name) == oci.RlimitName(l.Type) })
			if i >= 0 && have[i].Soft == int64(l.Soft) && have[i].Hard == int64(l.Hard) {
				continue
			}
			item := "rlimit " + oci.RlimitName(l.Type)
			if l.Type == "RLIMIT_NOFILE" {
				item = string(sandbox.ItemNoFileLimit)
			}
			was := "not set"
			if i >= 0 {
				was = fmt.Sprintf("%d:%d", have[i].Soft, have[i].Hard)
			}
			fail(item, "%s, want %d:%d", was, int64(l.Soft), int64(l.Hard))
		}
	}},
	// Like the containerd backend's: size-bounded, sticky.
	{func(p plan, s *specgen.SpecGenerator) {
		opts := []string{"rw", "nosuid", "nodev", "mode=1777", "size=" + strconv.FormatInt(p.policy.TmpBytes, 10)}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: opts})
	}, func(p plan, got *define.InspectContainerData, fail failer) {
		tmp := got.HostConfig.Tmpfs["/tmp"]
		if opts := strings.Split(tmp, ","); !slices.Contains(opts, fmt.Sprintf("size=%d", p.policy.TmpBytes)) || !slices.Contains(opts, "mode=1777") {
			fail("tmpfs /tmp", "options %q", tmp)
		}
	}},
	// The sandbox's own, as on the other backends: Podman's default is a
	// host directory bound in, which runsc would share as 9p.
	{func(_ plan, s *specgen.SpecGenerator) {
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}})
	}, nil},
	{func(p plan, s *specgen.SpecGenerator) {
		for _, m := range p.binds() {
			mode := "rw"
			if m.ReadOnly {
				mode = "ro"
			}
			s.Mounts = append(s.Mounts, specs.Mount{Destination: m.Target, Type: "bind", Source: m.Source, Options: []string{"rbind", mode, "nosuid", "nodev"}})
		}
	}, func(p plan, got *define.InspectContainerData, fail failer) {
		for _, m := range p.binds() {
			i := slices.IndexFunc(got.Mounts, func(g define.InspectMount) bool { return g.Destination == m.Target })
			switch {
			case i < 0:
				fail("mount "+m.Target, "missing")
			case got.Mounts[i].Type != "bind" || got.Mounts[i].Source != m.Source || got.Mounts[i].RW == m.ReadOnly:
				g := got.Mounts[i]
				fail("mount "+m.Target, "%s %s rw=%v, want bind %s rw=%v", g.Type, g.Source, g.RW, m.Source, !m.ReadOnly)
			}
		}
	}},
	{func(p plan, s *specgen.SpecGenerator) {
		s.NetNS = specgen.Namespace{NSMode: specgen.NamespaceMode(p.network)}
		switch p.network {
		case "slirp4netns":
			// The sandbox reaches the host through its gateway 10.0.2.2, which
			// slirp4netns maps to the host's loopback only when allowed.
			s.NetworkOptions = map[string][]string{"slirp4netns": {"allow_host_loopback=true"}}
		case "pasta":
			s.NetworkOptions = map[string][]string{"pasta": {"--map-gw"}}
		}
	}, func(p plan, got *define.InspectContainerData, fail failer) {
		if got.HostConfig.NetworkMode != p.network {
			item := sandbox.ItemNetworkNone
			if p.policy.Network == oci.NetworkBridge {
				item = sandbox.ItemNetworkBridge
			}
			fail(string(item), "mode %q, want %q", got.HostConfig.NetworkMode, p.network)
		}
	}},
	{func(_ plan, s *specgen.SpecGenerator) { s.CgroupNS = specgen.Namespace{NSMode: specgen.Private} }, func(_ plan, got *define.InspectContainerData, fail failer) {
		if got.HostConfig.CgroupMode != "private" {
			fail("cgroup namespace", "%q, want private", got.HostConfig.CgroupMode)
		}
	}},
	{func(p plan, s *specgen.SpecGenerator) {
		s.Hostname = p.policy.Hostname
		s.UtsNS = specgen.Namespace{NSMode: specgen.Private}
	}, func(p plan, got *define.InspectContainerData, fail failer) {
		if got.Config.Hostname != p.policy.Hostname {
			fail("hostname", "%q, want %q", got.Config.Hostname, p.policy.Hostname)
		}
	}},
	{func(p plan, s *specgen.SpecGenerator) { s.Labels = p.labels }, func(p plan, got *define.InspectContainerData, fail failer) {
		for k, v := range p.labels {
			if got.Config.Labels[k] != v {
				fail("label "+k, "%q, want %q", got.Config.Labels[k], v)
			}
		}
	}},
	{func(p plan, s *specgen.SpecGenerator) {
		s.CgroupParent = p.cgroupParent
		if p.cgroupParent != "" {
			// conmon stays in the service's cgroup: in the sandbox's it would
			// keep the cgroup busy until Podman's cleanup process has exited.
			s.CgroupsMode = "no-conmon"
		}
	}, func(p plan, got *define.InspectContainerData, fail failer) {
		if p.cgroupParent != "" && got.HostConfig.CgroupParent != p.cgroupParent {
			fail("cgroup parent", "%q, want %q", got.HostConfig.CgroupParent, p.cgroupParent)
		}
	}},
	// sandstorm's masked paths, added to Podman's own (which miss some).
	{func(_ plan, s *specgen.SpecGenerator) { s.Mask = slices.Clone(oci.MaskedPaths) }, nil},
}

// user is the sandbox user as Podman writes it.
func (p plan) user() string { return fmt.Sprintf("%d:%d", p.policy.UID, p.policy.GID) }

// binds are the sandbox's bind mounts: the workspace, then the policy's.
func (p plan) binds() []oci.Mount {
	return append([]oci.Mount{{Source: p.workspace, Target: oci.Workspace}}, p.mounts...)
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
	if got.HostConfig == nil || got.Config == nil {
		return []string{"inspect data (no HostConfig or Config)"}
	}
	var bad []string
	fail := func(what, format string, args ...any) {
		bad = append(bad, what+" ("+fmt.Sprintf(format, args...)+")")
	}
	for _, st := range settings {
		if st.check != nil {
			st.check(p, got, fail)
		}
	}
	return bad
}
