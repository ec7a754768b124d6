package docker

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/system"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

var testDaemon = daemon{CgroupDriver: "cgroupfs", SwapLimit: true, Seccomp: []byte(`{"defaultAction":"SCMP_ACT_ERRNO"}`)}

func testSandbox(p oci.Policy) oci.Container {
	return oci.Container{
		ID: "sb-1", SessionID: "sess", Args: []string{"/bin/sh", "-c", "echo hi"}, Env: []string{"A=b"},
		Labels: map[string]string{"x": "y"}, Workspace: "/var/lib/sandstorm/docker/sb-1/home", Policy: p.WithDefaults(),
	}
}

func TestBuildRequestDefaults(t *testing.T) {
	req := buildRequest(testSandbox(oci.Policy{}), "img:1", testDaemon)
	c, h := req.Config, req.Host
	if c.User != "1000:1000" || c.Hostname != "sandbox" || c.Image != "img:1" || c.WorkingDir != oci.Workspace {
		t.Errorf("config user %q hostname %q image %q workdir %q", c.User, c.Hostname, c.Image, c.WorkingDir)
	}
	if !slices.Equal(c.Entrypoint, []string{"/bin/sh"}) || !slices.Equal(c.Cmd, []string{"-c", "echo hi"}) {
		t.Errorf("entrypoint %q cmd %q: the command must replace the image's entrypoint", c.Entrypoint, c.Cmd)
	}
	if c.Labels[oci.LabelManaged] != "true" || c.Labels[oci.LabelSession] != "sess" || c.Labels["x"] != "y" {
		t.Errorf("labels %v", c.Labels)
	}
	if !slices.Equal(h.CapDrop, []string{"ALL"}) || len(h.CapAdd) != 0 {
		t.Errorf("caps drop %v add %v", h.CapDrop, h.CapAdd)
	}
	if !slices.Equal(h.SecurityOpt, []string{"no-new-privileges", `seccomp={"defaultAction":"SCMP_ACT_ERRNO"}`}) {
		t.Errorf("security options %v: want no-new-privileges and sandstorm's seccomp profile", h.SecurityOpt)
	}
	if !h.ReadonlyRootfs || h.NetworkMode != "none" || h.CgroupnsMode != container.CgroupnsModePrivate || h.Privileged {
		t.Errorf("readonly %v network %q cgroupns %q privileged %v", h.ReadonlyRootfs, h.NetworkMode, h.CgroupnsMode, h.Privileged)
	}
	if got := h.Tmpfs["/tmp"]; got != "rw,exec,nosuid,nodev,size=536870912,mode=1777" {
		t.Errorf("tmpfs %q", got)
	}
	if h.Memory != oci.DefaultMemoryBytes || h.MemorySwap != oci.DefaultMemoryBytes {
		t.Errorf("memory %d swap %d", h.Memory, h.MemorySwap)
	}
	if h.CPUPeriod != 100000 || h.CPUQuota != 200000 || h.NanoCPUs != 0 {
		t.Errorf("cpu period %d quota %d nano %d", h.CPUPeriod, h.CPUQuota, h.NanoCPUs)
	}
	if h.PidsLimit == nil || *h.PidsLimit != oci.DefaultPids {
		t.Errorf("pids %v", h.PidsLimit)
	}
	// Every limit, as Docker spells it: -1 is unlimited.
	wantUlimits := map[string]container.Ulimit{"core": {Name: "core"}, "nofile": {Name: "nofile", Soft: 4096, Hard: 4096},
		"nproc": {Name: "nproc", Soft: oci.DefaultNProc, Hard: oci.DefaultNProc}, "as": {Name: "as", Soft: -1, Hard: -1},
		"stack": {Name: "stack", Soft: 8 << 20, Hard: -1}, "sigpending": {Name: "sigpending", Soft: oci.DefaultSigPending, Hard: oci.DefaultSigPending}}
	if len(h.Ulimits) != 16 {
		t.Errorf("%d ulimits, want all 16: %v", len(h.Ulimits), h.Ulimits)
	}
	for _, u := range h.Ulimits {
		if w, ok := wantUlimits[u.Name]; ok && *u != w {
			t.Errorf("ulimit %+v, want %+v", *u, w)
		}
	}
	if h.CgroupParent != "/sandstorm/sb-1" {
		t.Errorf("cgroup parent %q", h.CgroupParent)
	}
	if h.LogConfig.Type != "none" {
		t.Errorf("log driver %q", h.LogConfig.Type)
	}
	want := []mount.Mount{{Type: mount.TypeBind, Source: "/var/lib/sandstorm/docker/sb-1/home", Target: oci.Workspace}}
	if !slices.Equal(h.Mounts, want) {
		t.Errorf("mounts %+v", h.Mounts)
	}
}

func TestBuildRequestPolicy(t *testing.T) {
	p := oci.Policy{
		Capabilities: []string{"CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_CHOWN"},
		Seccomp:      oci.SeccompUnconfined, WritableRoot: true, Network: oci.NetworkBridge,
		CPUs: 0.5, NoFile: 1 << 20, UID: 1234, GID: 2345,
		Mounts: []oci.Mount{{Source: "/srv/data", Target: "/mnt/data", ReadOnly: true}, {Source: "/run/x.sock", Target: "/run/x.sock"}},
	}
	d := daemon{CgroupDriver: "systemd"}
	req := buildRequest(testSandbox(p), "img", d)
	c, h := req.Config, req.Host
	if c.User != "1234:2345" {
		t.Errorf("user %q", c.User)
	}
	if !slices.Equal(h.CapAdd, []string{"CAP_CHOWN", "CAP_NET_BIND_SERVICE"}) {
		t.Errorf("cap add %v", h.CapAdd)
	}
	if !slices.Equal(h.SecurityOpt, []string{"no-new-privileges", "seccomp=unconfined"}) {
		t.Errorf("security options %v", h.SecurityOpt)
	}
	if h.ReadonlyRootfs || h.NetworkMode != "bridge" || h.CPUQuota != 50000 {
		t.Errorf("readonly %v network %q quota %d", h.ReadonlyRootfs, h.NetworkMode, h.CPUQuota)
	}
	if h.MemorySwap != 0 {
		t.Errorf("memory swap %d set on a daemon without swap limit support", h.MemorySwap)
	}
	if h.Ulimits[9].Name != "nofile" || h.Ulimits[9].Soft != 1<<20 || h.Ulimits[9].Hard != 1<<20 {
		t.Errorf("nofile %+v, want the policy's where the host allows it", h.Ulimits[9])
	}
	small := daemon{Host: oci.Host{HardLimits: map[string]uint64{"RLIMIT_NOFILE": 20000}}}
	if u := buildRequest(testSandbox(p), "img", small).Host.Ulimits[9]; u.Soft != 20000 || u.Hard != 20000 {
		t.Errorf("nofile %+v, want it lowered to the host's hard limit", u)
	}
	if h.CgroupParent != "sandstorm.slice" {
		t.Errorf("systemd cgroup parent %q", h.CgroupParent)
	}
	want := []mount.Mount{
		{Type: mount.TypeBind, Source: "/var/lib/sandstorm/docker/sb-1/home", Target: oci.Workspace},
		{Type: mount.TypeBind, Source: "/srv/data", Target: "/mnt/data", ReadOnly: true},
		{Type: mount.TypeBind, Source: "/run/x.sock", Target: "/run/x.sock"},
	}
	if !slices.Equal(h.Mounts, want) {
		t.Errorf("mounts %+v", h.Mounts)
	}
}

// echo is the inspect result of a daemon that applied req exactly, as Docker
// 20.10 reports it: mounts as mount points.
func echo(req request) container.InspectResponse {
	c, h := *req.Config, *req.Host
	h.Ulimits = nil
	for _, u := range req.Host.Ulimits {
		cp := *u
		h.Ulimits = append(h.Ulimits, &cp)
	}
	if req.Host.PidsLimit != nil {
		pids := *req.Host.PidsLimit
		h.PidsLimit = &pids
	}
	got := container.InspectResponse{Config: &c, HostConfig: &h, State: &container.State{Status: container.StateCreated}}
	for _, m := range req.Host.Mounts {
		got.Mounts = append(got.Mounts, container.MountPoint{Type: m.Type, Source: m.Source, Destination: m.Target, RW: !m.ReadOnly, Propagation: mount.PropagationRPrivate})
	}
	return got
}

func TestVerify(t *testing.T) {
	p := oci.Policy{Capabilities: []string{"CAP_CHOWN"}, Mounts: []oci.Mount{{Source: "/srv/data", Target: "/mnt/data", ReadOnly: true}}}
	req := buildRequest(testSandbox(p), "img", testDaemon)
	tests := []struct {
		name    string
		mod     func(*container.InspectResponse)
		setting string // named in the error; empty: verification passes
	}{
		{"applied as asked", func(*container.InspectResponse) {}, ""},
		{"capabilities normalised differently", func(g *container.InspectResponse) { g.HostConfig.CapAdd = []string{"chown"} }, ""},
		{"anonymous volume of the image", func(g *container.InspectResponse) {
			g.Mounts = append(g.Mounts, container.MountPoint{Type: mount.TypeVolume, Destination: "/data", RW: true})
		}, ""},
		{"user dropped", func(g *container.InspectResponse) { g.Config.User = "" }, "user"},
		{"hostname changed", func(g *container.InspectResponse) { g.Config.Hostname = "abc" }, "hostname"},
		{"privileged", func(g *container.InspectResponse) { g.HostConfig.Privileged = true }, "privileged"},
		{"cap drop ignored", func(g *container.InspectResponse) { g.HostConfig.CapDrop = nil }, "capabilities"},
		{"extra capability", func(g *container.InspectResponse) {
			g.HostConfig.CapAdd = []string{"CAP_CHOWN", "CAP_SYS_ADMIN"}
		}, "capabilities"},
		{"listed capability dropped", func(g *container.InspectResponse) { g.HostConfig.CapAdd = nil }, "capabilities"},
		{"no-new-privileges dropped", func(g *container.InspectResponse) { g.HostConfig.SecurityOpt = nil }, "no-new-privileges"},
		{"seccomp unconfined added", func(g *container.InspectResponse) {
			g.HostConfig.SecurityOpt = []string{"no-new-privileges", "seccomp=unconfined"}
		}, "seccomp"},
		{"writable root", func(g *container.InspectResponse) { g.HostConfig.ReadonlyRootfs = false }, "read-only root"},
		{"no masked paths", func(g *container.InspectResponse) { g.HostConfig.MaskedPaths = []string{} }, "masked"},
		{"no read-only paths", func(g *container.InspectResponse) { g.HostConfig.ReadonlyPaths = nil }, "masked"},
		{"the daemon's own masked paths", func(g *container.InspectResponse) {
			g.HostConfig.MaskedPaths = []string{"/proc/acpi", "/proc/kcore", "/proc/keys", "/sys/firmware"}
		}, "masked"},
		{"memory dropped", func(g *container.InspectResponse) { g.HostConfig.Memory = 0 }, "memory limit"},
		{"swap unlimited", func(g *container.InspectResponse) { g.HostConfig.MemorySwap = -1 }, "memory limit"},
		{"cpu quota dropped", func(g *container.InspectResponse) { g.HostConfig.CPUQuota = 0 }, "cpu limit"},
		{"cpu period changed", func(g *container.InspectResponse) { g.HostConfig.CPUPeriod = 50000 }, "cpu limit"},
		{"pids dropped", func(g *container.InspectResponse) { g.HostConfig.PidsLimit = nil }, "pids limit"},
		{"pids changed", func(g *container.InspectResponse) { *g.HostConfig.PidsLimit = 0 }, "pids limit"},
		{"ulimits dropped", func(g *container.InspectResponse) { g.HostConfig.Ulimits = nil }, "ulimits"},
		{"nofile changed", func(g *container.InspectResponse) { g.HostConfig.Ulimits[1].Hard = 1 << 20 }, "ulimits"},
		{"tmpfs dropped", func(g *container.InspectResponse) { g.HostConfig.Tmpfs = nil }, "tmpfs"},
		{"tmpfs size changed", func(g *container.InspectResponse) {
			g.HostConfig.Tmpfs = map[string]string{"/tmp": "rw,exec,nosuid,nodev,mode=1777"}
		}, "tmpfs"},
		{"workspace not mounted", func(g *container.InspectResponse) { g.Mounts = g.Mounts[1:] }, "mounts"},
		{"read-only mount writable", func(g *container.InspectResponse) { g.Mounts[1].RW = true }, "mounts"},
		{"mount from another source", func(g *container.InspectResponse) { g.Mounts[1].Source = "/" }, "mounts"},
		{"extra bind mount", func(g *container.InspectResponse) {
			g.Mounts = append(g.Mounts, container.MountPoint{Type: mount.TypeBind, Source: "/etc", Destination: "/host-etc"})
		}, "mounts"},
		{"network mode changed", func(g *container.InspectResponse) { g.HostConfig.NetworkMode = "host" }, "network mode"},
		{"host cgroup namespace", func(g *container.InspectResponse) { g.HostConfig.CgroupnsMode = container.CgroupnsModeHost }, "cgroup namespace"},
		{"cgroup parent dropped", func(g *container.InspectResponse) { g.HostConfig.CgroupParent = "" }, "cgroup parent"},
		{"no host config", func(g *container.InspectResponse) { g.HostConfig = nil }, "no configuration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := echo(req)
			tt.mod(&got)
			err := verify(req, got)
			if tt.setting == "" {
				if err != nil {
					t.Fatalf("verify: %v", err)
				}
				return
			}
			if !errors.Is(err, sandbox.ErrPolicyNotApplied) {
				t.Fatalf("verify = %v, want ErrPolicyNotApplied", err)
			}
			if !strings.Contains(err.Error(), tt.setting) {
				t.Errorf("error %q does not name %q", err, tt.setting)
			}
		})
	}
}

func TestVerifyNamesEverySetting(t *testing.T) {
	req := buildRequest(testSandbox(oci.Policy{}), "img", testDaemon)
	err := verify(req, container.InspectResponse{Config: &container.Config{}, HostConfig: &container.HostConfig{}})
	for _, s := range []string{"user", "capabilities", "no-new-privileges", "read-only root", "memory limit", "cpu limit",
		"pids limit", "ulimits", "tmpfs", "mounts", "network mode", "cgroup namespace", "cgroup parent"} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("verify of an empty configuration = %v; does not name %s", err, s)
		}
	}
}

// TestEverySettingChecked: a daemon that ignores any one setting of the
// request is caught, by that setting's name and no other.
func TestEverySettingChecked(t *testing.T) {
	d := testDaemon
	d.Runtime = "runsc"
	sb := testSandbox(oci.Policy{Capabilities: []string{"CAP_CHOWN"}, Mounts: []oci.Mount{{Source: "/srv/data", Target: "/mnt/data"}}})
	want := buildRequest(sb, "img", d)
	for i, s := range settings {
		if s.set == nil {
			continue
		}
		t.Run(s.name, func(t *testing.T) {
			ignored := request{Config: &container.Config{}, Host: &container.HostConfig{}}
			for j, other := range settings {
				if j != i && other.set != nil {
					other.set(ignored, sb, d)
				}
			}
			if err := verify(want, echo(ignored)); err == nil || !strings.HasSuffix(err.Error(), "changed "+s.name) {
				t.Errorf("a daemon ignoring %s: verify = %v", s.name, err)
			}
		})
	}
}

func TestCapabilities(t *testing.T) {
	full := system.Info{
		CgroupDriver: "cgroupfs", MemoryLimit: true, SwapLimit: true, CPUCfsQuota: true, CPUCfsPeriod: true, PidsLimit: true,
		SecurityOptions: []string{"name=seccomp,profile=default"},
	}
	caps := capabilities(full, nil, false)
	for _, it := range sandbox.AllItems {
		if want := it != sandbox.ItemGrantCapabilities; caps.Enforced(it) != want {
			t.Errorf("%s enforced = %v, want %v", it, caps.Enforced(it), want)
		}
	}
	if !strings.Contains(caps[sandbox.ItemGrantCapabilities].Reason, "bounding") {
		t.Errorf("grant_capabilities reason %q", caps[sandbox.ItemGrantCapabilities].Reason)
	}

	rootlessV1 := full
	rootlessV1.CgroupDriver = "none"
	rootlessV1.SecurityOptions = []string{"name=rootless"}
	caps = capabilities(rootlessV1, errors.New("network bridge not found"), false)
	for _, it := range []sandbox.Item{sandbox.ItemSeccomp, sandbox.ItemMemoryLimit, sandbox.ItemCPULimit, sandbox.ItemPidsLimit, sandbox.ItemOOMDetection, sandbox.ItemNetworkBridge} {
		if caps.Enforced(it) || caps[it].Reason == "" {
			t.Errorf("%s = %+v, want not enforced with a reason", it, caps[it])
		}
	}
	for _, it := range []sandbox.Item{sandbox.ItemCapabilities, sandbox.ItemNoNewPrivileges, sandbox.ItemUser, sandbox.ItemNoFileLimit, sandbox.ItemNetworkNone} {
		if !caps.Enforced(it) {
			t.Errorf("%s not enforced", it)
		}
	}
}

func TestLoadedImages(t *testing.T) {
	stream := `{"status":"Loading layer","progressDetail":{"current":1,"total":2}}
{"stream":"Loaded image: localhost/a:1\n"}
{"stream":"Loaded image ID: sha256:abc\n"}
`
	got, err := loadedImages(strings.NewReader(stream))
	if err != nil || !slices.Equal(got, []string{"localhost/a:1", "sha256:abc"}) {
		t.Errorf("loadedImages = %v, %v", got, err)
	}
	if _, err := loadedImages(strings.NewReader(`{"errorDetail":{"message":"bad tar"},"error":"bad tar"}`)); err == nil || !strings.Contains(err.Error(), "bad tar") {
		t.Errorf("error message not reported: %v", err)
	}
	if _, err := loadedImages(strings.NewReader("")); err == nil {
		t.Error("an empty response was accepted")
	}
}

func TestExitStatus(t *testing.T) {
	at := time.Date(2026, 11, 25, 10, 0, 0, 123, time.UTC)
	tests := []struct {
		state container.State
		want  sandbox.ExitStatus
	}{
		{container.State{ExitCode: 0, FinishedAt: at.Format(time.RFC3339Nano)}, sandbox.ExitStatus{Known: true, ExitedAt: at}},
		{container.State{ExitCode: 3}, sandbox.ExitStatus{Known: true, Code: 3}},
		{container.State{ExitCode: 137, OOMKilled: true}, sandbox.ExitStatus{Known: true, Code: 137, Signal: "SIGKILL", OOMKilled: true}},
		{container.State{ExitCode: 143}, sandbox.ExitStatus{Known: true, Code: 143, Signal: "SIGTERM"}},
		{container.State{ExitCode: 255}, sandbox.ExitStatus{Known: true, Code: 255}},
	}
	for _, tt := range tests {
		if got := exitStatus(tt.state); got != tt.want {
			t.Errorf("exitStatus(%+v) = %+v, want %+v", tt.state, got, tt.want)
		}
	}
}

func TestSandboxID(t *testing.T) {
	if got := sandboxID([]string{"/other/alias", "/sb-1"}); got != "sb-1" {
		t.Errorf("sandboxID = %q", got)
	}
}

func TestCgroupParent(t *testing.T) {
	for driver, want := range map[string]string{"cgroupfs": "/sandstorm/sb-1", "systemd": "sandstorm.slice", "none": ""} {
		if got := cgroupParent(driver, "sb-1"); got != want {
			t.Errorf("cgroupParent(%s) = %q, want %q", driver, got, want)
		}
	}
}
