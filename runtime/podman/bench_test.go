package podman

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
)

// BenchmarkRunTrue times create → start → wait → remove of `true` through
// this package on the root service against `podman run --rm` of the same
// image with the same settings, alternating the two in every iteration so
// both see the same machine load.
func BenchmarkRunTrue(b *testing.B) {
	rt := connect(b, 0)
	ctx := context.Background()
	if ok, err := rt.HasImage(ctx, conformance.TestImage); err != nil || !ok {
		b.Fatalf("test image not in podman (run the conformance test, or make testimage and podman load it): %v", err)
	}
	policy := oci.Policy{MemoryBytes: 256 << 20, CPUs: 1}.WithDefaults()
	workspace := b.TempDir()
	if err := os.Chown(workspace, int(policy.UID), int(policy.GID)); err != nil {
		b.Fatal(err)
	}
	args := []string{
		"run", "--rm", "--network", "none", "--log-driver", "none",
		"--user", fmt.Sprintf("%d:%d", policy.UID, policy.GID),
		"--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only",
		"--tmpfs", fmt.Sprintf("/tmp:rw,nosuid,nodev,mode=1777,size=%d", policy.TmpBytes),
		"-v", workspace + ":" + oci.Workspace + ":rw,nosuid,nodev", "--workdir", oci.Workspace,
		"--memory", strconv.FormatInt(policy.MemoryBytes, 10), "--memory-swap", strconv.FormatInt(policy.MemoryBytes, 10),
		"--cpu-period", strconv.Itoa(oci.CPUPeriod), "--cpu-quota", strconv.FormatInt(oci.CPUQuota(policy.CPUs), 10),
		"--pids-limit", strconv.FormatInt(policy.Pids, 10),
		"--hostname", policy.Hostname, "--cgroupns", "private", "--cgroup-parent", "/sandstorm/bench-cli",
		"--image-volume", "ignore", "--label", oci.LabelManaged + "=bench",
	}
	// sandstorm's rlimits (without an explicit nproc the CLI, like the API,
	// raises it beyond what root may here).
	for _, l := range rt.host.Fit(oci.Rlimits(policy)) {
		args = append(args, "--ulimit", fmt.Sprintf("%s=%d:%d", oci.RlimitName(l.Type), l.Soft, l.Hard))
	}
	args = append(args, conformance.TestImage, "true")
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = removeCgroup(ctx, "/sandstorm/bench-cli")
	})

	conformance.CompareRunTrue(b, rt, policy, "podman", func(int) []string { return append([]string{"podman"}, args...) })
}
