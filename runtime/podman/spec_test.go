package podman

import (
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"go.podman.io/podman/v6/libpod/define"
	"go.podman.io/podman/v6/pkg/specgen"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// testSeccomp is where the test plan's seccomp profile lives.
const testSeccomp = "/var/lib/sandstorm/podman/seccomp.json"

func testPlan() plan {
	pol := oci.Policy{
		Capabilities: []string{"CAP_NET_BIND_SERVICE", "CAP_CHOWN"},
		MemoryBytes:  96 << 20, CPUs: 0.5, Pids: 77, NoFile: 1500,
		Mounts: []oci.Mount{{Source: "/srv/data", Target: "/mnt/data", ReadOnly: true}, {Source: "/run/x.sock", Target: "/run/host.sock"}},
	}.WithDefaults()
	return plan{
		id: "sb-1", image: "localhost/img:latest", args: []string{"sh", "-c", "true"},
		labels: map[string]string{oci.LabelManaged: "true", oci.LabelSession: "s1"},
		policy: pol, workspace: "/var/lib/sandstorm/podman/sb-1/home", mounts: pol.Mounts,
		cgroupParent: "/sandstorm/sb-1", network: "none", swap: true,
		rlimits: oci.Rlimits(pol),
		seccomp: testSeccomp,
	}
}

// inspectOf is what Podman 4.3 reports for a container that took every setting of p.
func inspectOf(p plan) *define.InspectContainerData {
	return &define.InspectContainerData{
		EffectiveCaps: []string{"CAP_CHOWN", "CAP_NET_BIND_SERVICE"},
		BoundingCaps:  []string{"CAP_NET_BIND_SERVICE", "CAP_CHOWN"},
		Config: &define.InspectContainerConfig{
			Hostname: "sandbox", User: "1000:1000",
			Labels: map[string]string{oci.LabelManaged: "true", oci.LabelSession: "s1", "io.podman.extra": "x"},
		},
		HostConfig: &define.InspectContainerHostConfig{
			SecurityOpt:    []string{"no-new-privileges"},
			ReadonlyRootfs: true,
			Memory:         96 << 20, MemorySwap: 96 << 20,
			CpuQuota: 50000, CpuPeriod: 100000,
			PidsLimit:    77,
			Ulimits:      inspectUlimits(p.rlimits),
			Tmpfs:        map[string]string{"/tmp": "rw,nosuid,nodev,mode=1777,size=536870912,tmpcopyup"},
			NetworkMode:  "none",
			CgroupMode:   "private",
			CgroupParent: "/sandstorm/sb-1",
		},
		Mounts: []define.InspectMount{
			{Type: "bind", Source: "/var/lib/sandstorm/podman/sb-1/home", Destination: "/home/user", RW: true},
			{Type: "bind", Source: "/srv/data", Destination: "/mnt/data", RW: false},
			{Type: "bind", Source: "/run/x.sock", Destination: "/run/host.sock", RW: true},
		},
	}
}

func unconfined(p *plan) { p.policy.Seccomp, p.seccomp = oci.SeccompUnconfined, "unconfined" }

func TestVerify(t *testing.T) {
	tests := []struct {
		name string
		plan func(*plan)
		got  func(*define.InspectContainerData)
		// want names the dropped settings; none means the container passes.
		want []string
	}{
		{"everything applied", nil, nil, nil},
		{"capability added by the service", nil, func(d *define.InspectContainerData) {
			d.BoundingCaps = append(d.BoundingCaps, "CAP_SYS_ADMIN")
		}, []string{"capabilities"}},
		{"capabilities dropped from the effective set", nil, func(d *define.InspectContainerData) { d.EffectiveCaps = nil }, []string{"grant_capabilities"}},
		{"no caps asked, none given", func(p *plan) { p.policy.Capabilities = nil }, func(d *define.InspectContainerData) {
			d.BoundingCaps, d.EffectiveCaps = []string{}, nil
		}, nil},
		{"no-new-privileges dropped", nil, func(d *define.InspectContainerData) { d.HostConfig.SecurityOpt = nil }, []string{"no_new_privileges"}},
		{"seccomp unconfined though default asked", nil, func(d *define.InspectContainerData) {
			d.HostConfig.SecurityOpt = append(d.HostConfig.SecurityOpt, "seccomp=unconfined")
		}, []string{"seccomp"}},
		{"another profile", nil, func(d *define.InspectContainerData) {
			d.HostConfig.SecurityOpt = append(d.HostConfig.SecurityOpt, "seccomp=/etc/containers/seccomp.json")
		}, []string{"seccomp"}},
		{"unconfined asked and applied", unconfined, func(d *define.InspectContainerData) {
			d.HostConfig.SecurityOpt = append(d.HostConfig.SecurityOpt, "seccomp=unconfined")
		}, nil},
		{"unconfined asked, sandstorm's profile kept", unconfined, nil, []string{"seccomp"}},
		{"root filesystem writable", nil, func(d *define.InspectContainerData) { d.HostConfig.ReadonlyRootfs = false }, []string{"read_only_root"}},
		{"writable root asked", func(p *plan) { p.policy.WritableRoot = true }, func(d *define.InspectContainerData) { d.HostConfig.ReadonlyRootfs = false }, nil},
		{"user from the image", nil, func(d *define.InspectContainerData) { d.Config.User = "" }, []string{"user"}},
		{"memory limit dropped", nil, func(d *define.InspectContainerData) { d.HostConfig.Memory = 0 }, []string{"memory_limit"}},
		{"swap doubled", nil, func(d *define.InspectContainerData) { d.HostConfig.MemorySwap = 2 * (96 << 20) }, []string{"memory+swap limit"}},
		{"swap not limited where the host cannot", func(p *plan) { p.swap = false }, func(d *define.InspectContainerData) { d.HostConfig.MemorySwap = 0 }, nil},
		{"cpu quota dropped", nil, func(d *define.InspectContainerData) { d.HostConfig.CpuQuota = 0 }, []string{"cpu_limit"}},
		{"pids limit changed", nil, func(d *define.InspectContainerData) { d.HostConfig.PidsLimit = 2048 }, []string{"pids_limit"}},
		{"nofile from the service's defaults", nil, func(d *define.InspectContainerData) {
			i := slices.IndexFunc(d.HostConfig.Ulimits, func(u define.InspectUlimit) bool { return u.Name == "RLIMIT_NOFILE" })
			d.HostConfig.Ulimits[i] = define.InspectUlimit{Name: "RLIMIT_NOFILE", Soft: 20000, Hard: 20000}
		}, []string{"nofile_limit"}},
		{"tmpfs without size", nil, func(d *define.InspectContainerData) { d.HostConfig.Tmpfs["/tmp"] = "rw,nosuid,nodev,mode=1777" }, []string{"tmpfs /tmp"}},
		{"tmpfs missing", nil, func(d *define.InspectContainerData) { d.HostConfig.Tmpfs = nil }, []string{"tmpfs /tmp"}},
		{"workspace missing", nil, func(d *define.InspectContainerData) { d.Mounts = d.Mounts[1:] }, []string{"mount /home/user"}},
		{"read-only mount made writable", nil, func(d *define.InspectContainerData) { d.Mounts[1].RW = true }, []string{"mount /mnt/data"}},
		{"mount from another source", nil, func(d *define.InspectContainerData) { d.Mounts[2].Source = "/tmp/other" }, []string{"mount /run/host.sock"}},
		{"network none became bridge", nil, func(d *define.InspectContainerData) { d.HostConfig.NetworkMode = "bridge" }, []string{"network_none"}},
		{"slirp4netns asked and applied", func(p *plan) { p.policy.Network, p.network = oci.NetworkBridge, "slirp4netns" }, func(d *define.InspectContainerData) {
			d.HostConfig.NetworkMode = "slirp4netns"
		}, nil},
		{"bridge asked, none given", func(p *plan) { p.policy.Network, p.network = oci.NetworkBridge, "bridge" }, nil, []string{"network_bridge"}},
		{"host cgroup namespace", nil, func(d *define.InspectContainerData) { d.HostConfig.CgroupMode = "host" }, []string{"cgroup namespace"}},
		{"hostname from the id", nil, func(d *define.InspectContainerData) { d.Config.Hostname = "4f2a" }, []string{"hostname"}},
		{"session label lost", nil, func(d *define.InspectContainerData) { delete(d.Config.Labels, oci.LabelSession) }, []string{"label " + oci.LabelSession}},
		{"default cgroup parent", nil, func(d *define.InspectContainerData) { d.HostConfig.CgroupParent = "" }, []string{"cgroup parent"}},
		{"limits allowed unenforced are not checked", func(p *plan) {
			p.unenforced = []sandbox.Item{sandbox.ItemMemoryLimit, sandbox.ItemCPULimit, sandbox.ItemPidsLimit}
		}, func(d *define.InspectContainerData) {
			d.HostConfig.Memory, d.HostConfig.MemorySwap, d.HostConfig.CpuQuota, d.HostConfig.CpuPeriod, d.HostConfig.PidsLimit = 0, 0, 0, 0, 0
		}, nil},
		{"limits sandstorm sets itself are not checked here", func(p *plan) { p.cgroupLimits = true }, func(d *define.InspectContainerData) {
			d.HostConfig.Memory, d.HostConfig.MemorySwap, d.HostConfig.CpuQuota, d.HostConfig.CpuPeriod, d.HostConfig.PidsLimit = 0, 0, 0, 0, 0
		}, nil},
		{"several at once", nil, func(d *define.InspectContainerData) {
			d.HostConfig.SecurityOpt, d.HostConfig.ReadonlyRootfs, d.HostConfig.Ulimits = nil, false, nil
		}, append([]string{"no_new_privileges", "read_only_root"}, rlimitItems...)},
		{"no host config at all", nil, func(d *define.InspectContainerData) { d.HostConfig = nil }, []string{"inspect data"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testPlan()
			if tt.plan != nil {
				tt.plan(&p)
			}
			d := inspectOf(p)
			if tt.got != nil {
				tt.got(d)
			}
			var got []string
			for _, b := range p.verify(d) {
				name, _, _ := strings.Cut(b, " (")
				got = append(got, name)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("verify named %q, want %q (full: %q)", got, tt.want, p.verify(d))
			}
		})
	}
}

func TestSpecgen(t *testing.T) {
	p := testPlan()
	s := p.specgen()
	if s.Name != "sb-1" || !slices.Equal(s.Entrypoint, p.args) || len(s.Command) != 0 {
		t.Errorf("name %q entrypoint %q command %q", s.Name, s.Entrypoint, s.Command)
	}
	if !slices.Equal(s.CapDrop, []string{"ALL"}) || !slices.Equal(s.CapAdd, []string{"CAP_CHOWN", "CAP_NET_BIND_SERVICE"}) {
		t.Errorf("caps drop %v add %v", s.CapDrop, s.CapAdd)
	}
	if s.User != "1000:1000" || s.NoNewPrivileges == nil || !*s.NoNewPrivileges || s.ReadOnlyFilesystem == nil || !*s.ReadOnlyFilesystem {
		t.Errorf("user %q nnp %v ro %v", s.User, s.NoNewPrivileges, s.ReadOnlyFilesystem)
	}
	var rl []string
	for _, r := range s.Rlimits {
		rl = append(rl, r.Type)
		if r.Type == "nofile" && (r.Soft != 1500 || r.Hard != 1500) {
			t.Errorf("nofile %+v, want the policy's 1500", r)
		}
	}
	var want []string
	for _, l := range oci.Rlimits(p.policy) {
		want = append(want, oci.RlimitName(l.Type))
	}
	if !slices.Equal(rl, want) {
		t.Errorf("rlimits %v, want the policy's %v", rl, want)
	}
	if r := s.ResourceLimits; r == nil || *r.Memory.Limit != 96<<20 || *r.Memory.Swap != 96<<20 || *r.CPU.Quota != 50000 || *r.CPU.Period != 100000 || *r.Pids.Limit != 77 {
		t.Errorf("resource limits %+v", r)
	}
	if s.CgroupParent != "/sandstorm/sb-1" || s.CgroupsMode != "no-conmon" {
		t.Errorf("cgroup parent %q mode %q", s.CgroupParent, s.CgroupsMode)
	}
	if len(s.Mounts) != 5 || s.Mounts[0].Destination != "/tmp" || s.Mounts[1].Destination != "/dev/shm" || s.Mounts[2].Source != p.workspace || !slices.Contains(s.Mounts[3].Options, "ro") {
		t.Errorf("mounts %+v", s.Mounts)
	}

	p.cgroupLimits = true
	if s := p.specgen(); s.ResourceLimits != nil {
		t.Errorf("resource limits sent though sandstorm sets them itself: %+v", s.ResourceLimits)
	}
	p.network, p.policy.Network = "slirp4netns", oci.NetworkBridge
	if s := p.specgen(); string(s.NetNS.NSMode) != "slirp4netns" || !slices.Equal(s.NetworkOptions["slirp4netns"], []string{"allow_host_loopback=true"}) {
		t.Errorf("slirp4netns network %+v options %v", s.NetNS, s.NetworkOptions)
	}
}

// echo is the inspect data of a service that applied s exactly, as Podman
// 4.3 reports it (no seccomp profile but "unconfined").
func echo(s *specgen.SpecGenerator) *define.InspectContainerData {
	hc := &define.InspectContainerHostConfig{
		ReadonlyRootfs: s.ReadOnlyFilesystem != nil && *s.ReadOnlyFilesystem,
		Tmpfs:          map[string]string{},
		NetworkMode:    string(s.NetNS.NSMode),
		CgroupParent:   s.CgroupParent,
	}
	if s.NoNewPrivileges != nil && *s.NoNewPrivileges {
		hc.SecurityOpt = append(hc.SecurityOpt, "no-new-privileges")
	}
	if s.SeccompProfilePath == "unconfined" {
		hc.SecurityOpt = append(hc.SecurityOpt, "seccomp=unconfined")
	}
	if s.CgroupNS.NSMode == specgen.Private {
		hc.CgroupMode = "private"
	}
	if r := s.ResourceLimits; r != nil {
		if r.Memory != nil {
			hc.Memory = *r.Memory.Limit
			if r.Memory.Swap != nil {
				hc.MemorySwap = *r.Memory.Swap
			}
		}
		if r.CPU != nil {
			hc.CpuQuota, hc.CpuPeriod = *r.CPU.Quota, *r.CPU.Period
		}
		if r.Pids != nil {
			hc.PidsLimit = *r.Pids.Limit
		}
	}
	for _, l := range s.Rlimits {
		hc.Ulimits = append(hc.Ulimits, define.InspectUlimit{Name: l.Type, Soft: int64(l.Soft), Hard: int64(l.Hard)})
	}
	got := &define.InspectContainerData{
		OCIRuntime: s.OCIRuntime, BoundingCaps: s.CapAdd, EffectiveCaps: s.CapAdd,
		Config:     &define.InspectContainerConfig{Hostname: s.Hostname, User: s.User, Labels: s.Labels},
		HostConfig: hc,
	}
	for _, m := range s.Mounts {
		if m.Type == "tmpfs" {
			hc.Tmpfs[m.Destination] = strings.Join(m.Options, ",")
			continue
		}
		got.Mounts = append(got.Mounts, define.InspectMount{Type: m.Type, Source: m.Source, Destination: m.Destination, RW: !slices.Contains(m.Options, "ro")})
	}
	return got
}

// TestEverySettingChecked: a service that ignores any one setting of the
// request is caught.
func TestEverySettingChecked(t *testing.T) {
	p := testPlan()
	// Set where the test plan leaves Podman's default, which no check could tell.
	p.ociRuntime = "runsc"
	unconfined(&p)
	if bad := p.verify(echo(p.specgen())); len(bad) > 0 {
		t.Fatalf("a service that applied every setting: verify named %q", bad)
	}
	for i, st := range settings {
		if st.check == nil {
			continue
		}
		s := specgen.NewSpecGenerator(p.image, false)
		for j, other := range settings {
			if j != i {
				other.set(p, s)
			}
		}
		if bad := p.verify(echo(s)); len(bad) == 0 {
			t.Errorf("settings[%d]: a service ignoring it is not caught", i)
		}
	}
}

func TestCapabilities(t *testing.T) {
	root := service{version: "4.3.1", local: true, cgroupfs: true}
	rootless := service{version: "4.3.1", local: true, cgroupfs: true, rootless: true}
	v2 := func(s service) service { s.cgroupV2 = true; return s }
	systemd := func(s service) service { s.cgroupfs = false; return s }
	remote := func(s service) service { s.local = false; return s }
	limits := []sandbox.Item{sandbox.ItemMemoryLimit, sandbox.ItemCPULimit, sandbox.ItemPidsLimit, sandbox.ItemOOMDetection}
	tests := []struct {
		name     string
		svc      service
		root     bool
		missing  []sandbox.Item
		mentions string
	}{
		{"root service, cgroup v1", root, true, nil, ""},
		{"root service, cgroup v2", v2(root), true, nil, ""},
		{"rootless v1, sandstorm as root sets the limits", rootless, true, nil, ""},
		{"rootless v1, sandstorm not root", rootless, false, limits, limitsReason},
		{"rootless v1, remote service", remote(rootless), true, limits, limitsReason},
		{"rootless v2 enforces limits itself", v2(rootless), true, []sandbox.Item{sandbox.ItemOOMDetection}, "cgroup v2"},
		{"systemd cgroup manager", systemd(root), true, []sandbox.Item{sandbox.ItemOOMDetection}, "cgroupfs"},
		{"remote root service", remote(root), true, []sandbox.Item{sandbox.ItemOOMDetection}, "not on this host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			caps := capabilities(tt.svc, tt.root)
			var missing []sandbox.Item
			for _, it := range sandbox.AllItems {
				if !caps.Enforced(it) {
					missing = append(missing, it)
					if !strings.Contains(caps[it].Reason, tt.mentions) {
						t.Errorf("%s: reason %q does not mention %q", it, caps[it].Reason, tt.mentions)
					}
				}
			}
			if !slices.Equal(missing, tt.missing) {
				t.Errorf("not enforced %v, want %v", missing, tt.missing)
			}
		})
	}
}

// inspectUlimits are limits as the service's inspect shows them.
func inspectUlimits(limits []specs.POSIXRlimit) []define.InspectUlimit {
	var out []define.InspectUlimit
	for _, l := range limits {
		out = append(out, define.InspectUlimit{Name: l.Type, Soft: int64(l.Soft), Hard: int64(l.Hard)})
	}
	return out
}

// rlimitItems are the items verify names when every limit is missing.
var rlimitItems = func() []string {
	var out []string
	for _, l := range oci.Rlimits(oci.Policy{}) {
		if l.Type == "RLIMIT_NOFILE" {
			out = append(out, string(sandbox.ItemNoFileLimit))
			continue
		}
		out = append(out, "rlimit "+oci.RlimitName(l.Type))
	}
	return out
}()
