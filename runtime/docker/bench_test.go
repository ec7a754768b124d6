package docker

import (
	"context"
	"fmt"
	"os"
	"path"
	"strconv"
	"testing"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/cgroupfs"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// BenchmarkRunTrue times create → start → wait → remove of `true` through
// this package against `docker run --rm` of the same image with the same
// settings (network none, limits, user, capabilities, read-only root, /tmp,
// workspace bind mount, cgroup namespace and parent, no logging), alternating
// the two in every iteration so both see the same machine load.
func BenchmarkRunTrue(b *testing.B) {
	rt := connect(b)
	ctx := context.Background()
	if _, err := rt.cli.ImageInspect(ctx, conformance.TestImage); err != nil {
		b.Fatalf("test image not in docker (run the conformance test or make testimage and docker load it): %v", err)
	}
	policy := oci.Policy{MemoryBytes: 256 << 20, CPUs: 1}.WithDefaults()
	workspace := b.TempDir()
	parent := path.Join(oci.CgroupParent, fmt.Sprintf("bench-docker-%d", os.Getpid()))
	b.Cleanup(func() {
		for _, d := range cgroupfs.Existing(parent) {
			_ = os.Remove(d)
		}
	})
	mem := strconv.FormatInt(policy.MemoryBytes, 10)
	args := []string{
		"-H", rt.cli.DaemonHost(), "run", "--rm",
		"--network", "none", "--hostname", policy.Hostname,
		"--user", fmt.Sprintf("%d:%d", policy.UID, policy.GID),
		"--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only",
		"--tmpfs", fmt.Sprintf("/tmp:rw,exec,nosuid,nodev,size=%d,mode=1777", policy.TmpBytes),
		"--memory", mem, "--memory-swap", mem,
		"--cpu-period", strconv.Itoa(oci.CPUPeriod), "--cpu-quota", strconv.FormatInt(oci.CPUQuota(policy.CPUs), 10),
		"--pids-limit", strconv.FormatInt(policy.Pids, 10),
		"--cgroupns", "private", "--cgroup-parent", parent, "--log-driver", "none",
		"--workdir", oci.Workspace, "--mount", "type=bind,source=" + workspace + ",target=" + oci.Workspace,
	}
	for _, u := range ulimits(rt.d.Host.Fit(oci.Rlimits(policy))) {
		args = append(args, "--ulimit", fmt.Sprintf("%s=%d:%d", u.Name, u.Soft, u.Hard))
	}
	args = append(args, "--entrypoint", "true", conformance.TestImage)
	conformance.CompareRunTrue(b, rt, policy, "docker", func(int) []string { return append([]string{"docker"}, args...) })
}

// BenchmarkGVisor compares the cold start of `true` under gVisor with runc
// on Docker, alternating them in every iteration.
func BenchmarkGVisor(b *testing.B) {
	gvisor := conformance.Connect(b, Name+"+gvisor", func() (*Runtime, error) {
		return New(context.Background(), Config{Host: os.Getenv("SANDSTORM_DOCKER_SOCKET"), Isolation: sandbox.IsolationGVisor})
	})
	conformance.CompareIsolation(b, connect(b), gvisor, oci.Policy{MemoryBytes: 256 << 20, CPUs: 1}.WithDefaults())
}
