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
	"github.com/sandstorm-dev/sandstorm/runtime"
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
// and host configuration.
func buildRequest(sb oci.Container, image string, d daemon) request {
	p := sb.Policy
	// sandstorm's own seccomp profile, sent as JSON (the daemon's default
	// would differ from the other backends').
	seccomp := "unconfined"
	if p.Seccomp != oci.SeccompUnconfined {
		seccomp = string(d.Seccomp)
	}
	securityOpt := []string{"no-new-privileges", "seccomp=" + seccomp}
	mounts := []mount.Mount{{Type: mount.TypeBind, Source: sb.Workspace, Target: oci.Workspace}}
	for _, m := range p.Mounts {
		mounts = append(mounts, mount.Mount{Type: mount.TypeBind, Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	pids := p.Pids
	host := &container.HostConfig{
		Runtime:     d.Runtime,
		NetworkMode: container.NetworkMode(p.Network),
		// Drop-all plus the listed ones: Docker builds every set from this.
		CapDrop:        []string{"ALL"},
		CapAdd:         normalizeCaps(p.Capabilities),
		CgroupnsMode:   container.CgroupnsModePrivate,
		ReadonlyRootfs: !p.WritableRoot,
		SecurityOpt:    securityOpt,
		// exec overrides Docker's noexec default, as the OCI spec's /tmp allows it.
		Tmpfs: map[string]string{"/tmp": fmt.Sprintf("rw,exec,nosuid,nodev,size=%d,mode=1777", p.TmpBytes)},
		// Output goes to the attached caller only; the daemon keeps no copy.
		LogConfig: container.LogConfig{Type: "none"},
		Resources: container.Resources{
			CgroupParent: cgroupParent(d.CgroupDriver, sb.ID),
			Memory:       p.MemoryBytes,
			CPUPeriod:    oci.CPUPeriod,
			CPUQuota:     oci.CPUQuota(p.CPUs),
			PidsLimit:    &pids,
			Ulimits:      ulimits(d.Host.Fit(oci.Rlimits(p))),
		},
		Mounts: mounts,
		// The same lists as every backend (Docker's own miss some).
		MaskedPaths:   slices.Clone(oci.MaskedPaths),
		ReadonlyPaths: slices.Clone(oci.ReadonlyPaths),
	}
	if d.SwapLimit {
		host.MemorySwap = p.MemoryBytes
	}
	cfg := &container.Config{
		Hostname:   p.Hostname,
		User:       fmt.Sprintf("%d:%d", p.UID, p.GID),
		Env:        sb.Env,
		Entrypoint: sb.Args[:1],
		Cmd:        sb.Args[1:],
		Image:      image,
		WorkingDir: oci.Workspace,
		Labels:     sb.AllLabels(),
	}
	return request{Config: cfg, Host: host}
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
	c, h := got.Config, got.HostConfig
	if c == nil || h == nil {
		return fmt.Errorf("%w: the daemon reported no configuration for the container", runtime.ErrPolicyNotApplied)
	}
	wc, wh := want.Config, want.Host
	var bad []string
	check := func(setting string, ok bool) {
		if !ok {
			bad = append(bad, setting)
		}
	}
	check("user", c.User == wc.User)
	check("hostname", c.Hostname == wc.Hostname)
	check("privileged", !h.Privileged)
	check("capabilities", slices.Equal(normalizeCaps(h.CapDrop), normalizeCaps(wh.CapDrop)) &&
		slices.Equal(normalizeCaps(h.CapAdd), normalizeCaps(wh.CapAdd)))
	check("security options (no-new-privileges, seccomp)", sameSet(h.SecurityOpt, wh.SecurityOpt))
	check("read-only root", h.ReadonlyRootfs == wh.ReadonlyRootfs)
	check("masked and read-only /proc, /sys paths", slices.Equal(h.MaskedPaths, wh.MaskedPaths) && slices.Equal(h.ReadonlyPaths, wh.ReadonlyPaths))
	check("memory limit", h.Memory == wh.Memory && h.MemorySwap == wh.MemorySwap)
	check("cpu limit", h.CPUQuota == wh.CPUQuota && h.CPUPeriod == wh.CPUPeriod && h.NanoCPUs == wh.NanoCPUs)
	check("pids limit", h.PidsLimit != nil && wh.PidsLimit != nil && *h.PidsLimit == *wh.PidsLimit)
	check("ulimits", slices.EqualFunc(h.Ulimits, wh.Ulimits, func(a, b *container.Ulimit) bool {
		return a != nil && b != nil && *a == *b
	}))
	check("tmpfs", maps.Equal(h.Tmpfs, wh.Tmpfs))
	check("mounts", sameMounts(got.Mounts, wh.Mounts))
	check("network mode", h.NetworkMode == wh.NetworkMode)
	check("runtime", wh.Runtime == "" || h.Runtime == wh.Runtime)
	check("cgroup namespace", h.CgroupnsMode == wh.CgroupnsMode)
	check("cgroup parent", h.CgroupParent == wh.CgroupParent)
	if len(bad) > 0 {
		return fmt.Errorf("%w: docker dropped or changed %s", runtime.ErrPolicyNotApplied, strings.Join(bad, ", "))
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
