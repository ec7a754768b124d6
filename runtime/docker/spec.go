package docker

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// systemdSlice is the parent of every sandbox under the systemd cgroup
// driver, which only accepts slice names as parents.
const systemdSlice = "sandstorm.slice"

// daemon is what the mapping needs to know about the daemon and its host.
type daemon struct {
	// CgroupDriver is the daemon's: "cgroupfs", "systemd" or "none".
	CgroupDriver string
	// SwapLimit tells whether the daemon can limit memory+swap.
	SwapLimit bool
	// Host is what the daemon's host allows (it is this host).
	Host oci.Host
	// Runtime is the daemon's OCI runtime to use; empty for its default (runc).
	Runtime string
	// Seccomp is sandstorm's seccomp profile as compact JSON.
	Seccomp []byte
}

// request is what Create sends to the daemon for one sandbox.
type request struct {
	Config *container.Config
	Host   *container.HostConfig
}

// cgroupParent is where the daemon puts the sandbox's cgroup. Under
// cgroupfs each sandbox gets its own parent, /sandstorm/<id>, so its cgroups
// are found by sandbox id (as containerd's are) even after the container,
// whose cgroup is named by Docker's container id, is gone.
func cgroupParent(driver, id string) string {
	switch driver {
	case "cgroupfs":
		return oci.Container{ID: id}.CgroupPath()
	case "systemd":
		return systemdSlice
	}
	return ""
}

// ulimits are rlimits as Docker names them ("nofile" for RLIMIT_NOFILE).
func ulimits(limits []specs.POSIXRlimit) []*container.Ulimit {
	out := make([]*container.Ulimit, len(limits))
	for i, l := range limits {
		out[i] = &container.Ulimit{Name: oci.RlimitName(l.Type), Soft: int64(l.Soft), Hard: int64(l.Hard)}
	}
	return out
}

// buildRequest maps a sandbox with a defaulted policy to Docker's container
// and host configuration: what is no policy item here, the rest from settings.
func buildRequest(sb oci.Container, image string, d daemon) request {
	req := request{
		Config: &container.Config{
			Env:        sb.Env,
			Entrypoint: sb.Args[:1],
			Cmd:        sb.Args[1:],
			Image:      image,
			WorkingDir: oci.Workspace,
			Labels:     sb.AllLabels(),
		},
		// Output goes to the attached caller only; the daemon keeps no copy.
		Host: &container.HostConfig{LogConfig: container.LogConfig{Type: "none"}},
	}
	for _, s := range settings {
		if s.set != nil {
			s.set(req, sb, d)
		}
	}
	return req
}

// setting is one setting of the policy, mapped both ways in one place: how
// it is asked of Docker, and how the container Docker made is checked for it.
type setting struct {
	// name is how verify's error names it.
	name string
	// set writes it into the request; nil where Docker's default is the
	// policy's and only the check is needed.
	set func(r request, sb oci.Container, d daemon)
	// applied tells whether the created container has it as want asked.
	applied func(want request, got container.InspectResponse) bool
}

// settings are every setting verify checks, in the order its error names them.
var settings = []setting{
	{"user", func(r request, sb oci.Container, _ daemon) {
		r.Config.User = fmt.Sprintf("%d:%d", sb.Policy.UID, sb.Policy.GID)
	}, func(w request, g container.InspectResponse) bool { return g.Config.User == w.Config.User }},
	{"hostname", func(r request, sb oci.Container, _ daemon) {
		r.Config.Hostname = sb.Policy.Hostname
	}, func(w request, g container.InspectResponse) bool { return g.Config.Hostname == w.Config.Hostname }},
	{"privileged", nil, func(_ request, g container.InspectResponse) bool { return !g.HostConfig.Privileged }},
	// Drop-all plus the listed ones: Docker builds every set from this.
	{"capabilities", func(r request, sb oci.Container, _ daemon) {
		r.Host.CapDrop, r.Host.CapAdd = []string{"ALL"}, normalizeCaps(sb.Policy.Capabilities)
	}, func(w request, g container.InspectResponse) bool {
		return slices.Equal(normalizeCaps(g.HostConfig.CapDrop), normalizeCaps(w.Host.CapDrop)) &&
			slices.Equal(normalizeCaps(g.HostConfig.CapAdd), normalizeCaps(w.Host.CapAdd))
	}},
	// sandstorm's own seccomp profile, sent as JSON (the daemon's default
	// would differ from the other backends').
	{"security options (no-new-privileges, seccomp)", func(r request, sb oci.Container, d daemon) {
		seccomp := "unconfined"
		if sb.Policy.Seccomp != oci.SeccompUnconfined {
			seccomp = string(d.Seccomp)
		}
		r.Host.SecurityOpt = []string{"no-new-privileges", "seccomp=" + seccomp}
	}, func(w request, g container.InspectResponse) bool {
		return sameSet(g.HostConfig.SecurityOpt, w.Host.SecurityOpt)
	}},
	{"read-only root", func(r request, sb oci.Container, _ daemon) {
		r.Host.ReadonlyRootfs = !sb.Policy.WritableRoot
	}, func(w request, g container.InspectResponse) bool {
		return g.HostConfig.ReadonlyRootfs == w.Host.ReadonlyRootfs
	}},
	// The same lists as every backend (Docker's own miss some).
	{"masked and read-only /proc, /sys paths", func(r request, _ oci.Container, _ daemon) {
		r.Host.MaskedPaths, r.Host.ReadonlyPaths = slices.Clone(oci.MaskedPaths), slices.Clone(oci.ReadonlyPaths)
	}, func(w request, g container.InspectResponse) bool {
		return slices.Equal(g.HostConfig.MaskedPaths, w.Host.MaskedPaths) && slices.Equal(g.HostConfig.ReadonlyPaths, w.Host.ReadonlyPaths)
	}},
	{"memory limit", func(r request, sb oci.Container, d daemon) {
		r.Host.Memory = sb.Policy.MemoryBytes
		if d.SwapLimit {
			r.Host.MemorySwap = sb.Policy.MemoryBytes
		}
	}, func(w request, g container.InspectResponse) bool {
		return g.HostConfig.Memory == w.Host.Memory && g.HostConfig.MemorySwap == w.Host.MemorySwap
	}},
	{"cpu limit", func(r request, sb oci.Container, _ daemon) {
		r.Host.CPUPeriod, r.Host.CPUQuota = oci.CPUPeriod, oci.CPUQuota(sb.Policy.CPUs)
	}, func(w request, g container.InspectResponse) bool {
		h, wh := g.HostConfig, w.Host
		return h.CPUQuota == wh.CPUQuota && h.CPUPeriod == wh.CPUPeriod && h.NanoCPUs == wh.NanoCPUs
	}},
	{"pids limit", func(r request, sb oci.Container, _ daemon) {
		pids := sb.Policy.Pids
		r.Host.PidsLimit = &pids
	}, func(w request, g container.InspectResponse) bool {
		return g.HostConfig.PidsLimit != nil && w.Host.PidsLimit != nil && *g.HostConfig.PidsLimit == *w.Host.PidsLimit
	}},
	{"ulimits", func(r request, sb oci.Container, d daemon) {
		r.Host.Ulimits = ulimits(d.Host.Fit(oci.Rlimits(sb.Policy)))
	}, func(w request, g container.InspectResponse) bool {
		return slices.EqualFunc(g.HostConfig.Ulimits, w.Host.Ulimits, func(a, b *container.Ulimit) bool {
			return a != nil && b != nil && *a == *b
		})
	}},
	// exec overrides Docker's noexec default, as the OCI spec's /tmp allows it.
	{"tmpfs", func(r request, sb oci.Container, _ daemon) {
		r.Host.Tmpfs = map[string]string{"/tmp": fmt.Sprintf("rw,exec,nosuid,nodev,size=%d,mode=1777", sb.Policy.TmpBytes)}
	}, func(w request, g container.InspectResponse) bool { return maps.Equal(g.HostConfig.Tmpfs, w.Host.Tmpfs) }},
	{"mounts", func(r request, sb oci.Container, _ daemon) {
		r.Host.Mounts = []mount.Mount{{Type: mount.TypeBind, Source: sb.Workspace, Target: oci.Workspace}}
		for _, m := range sb.Policy.Mounts {
			r.Host.Mounts = append(r.Host.Mounts, mount.Mount{Type: mount.TypeBind, Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly})
		}
	}, func(w request, g container.InspectResponse) bool { return sameMounts(g.Mounts, w.Host.Mounts) }},
	{"network mode", func(r request, sb oci.Container, _ daemon) {
		r.Host.NetworkMode = container.NetworkMode(sb.Policy.Network)
	}, func(w request, g container.InspectResponse) bool {
		return g.HostConfig.NetworkMode == w.Host.NetworkMode
	}},
	{"runtime", func(r request, _ oci.Container, d daemon) {
		r.Host.Runtime = d.Runtime
	}, func(w request, g container.InspectResponse) bool {
		return w.Host.Runtime == "" || g.HostConfig.Runtime == w.Host.Runtime
	}},
	{"cgroup namespace", func(r request, _ oci.Container, _ daemon) {
		r.Host.CgroupnsMode = container.CgroupnsModePrivate
	}, func(w request, g container.InspectResponse) bool {
		return g.HostConfig.CgroupnsMode == w.Host.CgroupnsMode
	}},
	{"cgroup parent", func(r request, sb oci.Container, d daemon) {
		r.Host.CgroupParent = cgroupParent(d.CgroupDriver, sb.ID)
	}, func(w request, g container.InspectResponse) bool {
		return g.HostConfig.CgroupParent == w.Host.CgroupParent
	}},
}

// normalizeCaps writes capabilities as Docker stores them: upper case,
// CAP_ prefixed (except ALL), sorted, once each.
func normalizeCaps(caps []string) []string {
	out := make([]string, 0, len(caps))
	for _, c := range caps {
		c = strings.ToUpper(c)
		if c != "ALL" && !strings.HasPrefix(c, "CAP_") {
			c = "CAP_" + c
		}
		out = append(out, c)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// verify compares what the daemon reports for a created container with what
// was asked, and names every setting it dropped or changed: a daemon (or an
// API version) that ignores a field must not leave a sandbox running without it.
func verify(want request, got container.InspectResponse) error {
	if got.Config == nil || got.HostConfig == nil {
		return fmt.Errorf("%w: the daemon reported no configuration for the container", sandbox.ErrPolicyNotApplied)
	}
	var bad []string
	for _, s := range settings {
		if !s.applied(want, got) {
			bad = append(bad, s.name)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: docker dropped or changed %s", sandbox.ErrPolicyNotApplied, strings.Join(bad, ", "))
	}
	return nil
}

// sameMounts reports whether the container's bind mounts are exactly the
// wanted ones, each with its source and writability. Volumes declared by the
// image are not host paths and go with the container; they are allowed.
func sameMounts(got []container.MountPoint, want []mount.Mount) bool {
	n := 0
	for _, g := range got {
		if g.Type != mount.TypeBind {
			continue
		}
		n++
		ok := slices.ContainsFunc(want, func(w mount.Mount) bool {
			return w.Target == g.Destination && w.Source == g.Source && w.ReadOnly != g.RW
		})
		if !ok {
			return false
		}
	}
	return n == len(want)
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}
