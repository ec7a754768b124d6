package containerd

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// BenchmarkRunTrue times create → start → wait → remove of `true` through
// this package against `ctr run --rm` of the same image with the same limits
// (as far as ctr can express them: it has no user or pids flags), alternating
// the two in every iteration so both see the same machine load.
func BenchmarkRunTrue(b *testing.B) {
	rt := connect(b)
	ctx := context.Background()
	if _, err := rt.client.GetImage(rt.ctx(ctx), conformance.TestImage); err != nil {
		b.Fatalf("test image not in containerd (run the conformance test or make testimage and import it): %v", err)
	}
	policy := oci.Policy{MemoryBytes: 256 << 20, CPUs: 1}.WithDefaults()
	ctrArgs := []string{
		"-a", rt.cfg.Address, "-n", rt.cfg.Namespace, "run", "--rm",
		"--read-only", "--seccomp",
		"--memory-limit", strconv.FormatInt(policy.MemoryBytes, 10),
		"--cpus", strconv.FormatFloat(policy.CPUs, 'f', -1, 64),
	}
	// ctr 1.6 cannot drop ALL: drop its default set one by one.
	for _, c := range []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
		"SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"} {
		ctrArgs = append(ctrArgs, "--cap-drop", "CAP_"+c)
	}
	ctrArgs = append(ctrArgs, conformance.TestImage)
	conformance.CompareRunTrue(b, rt, policy, "ctr", func(i int) []string {
		return append(append([]string{"ctr"}, ctrArgs...), fmt.Sprintf("bench-ctr-%d-%d", os.Getpid(), i), "true")
	})
}

// BenchmarkGVisor compares the cold start of `true` under gVisor with runc
// on containerd, alternating them in every iteration.
func BenchmarkGVisor(b *testing.B) {
	gvisor := conformance.Connect(b, Name+"+gvisor", func() (*Runtime, error) {
		return New(context.Background(), Config{Address: os.Getenv("SANDSTORM_CONTAINERD_SOCKET"), Isolation: sandbox.IsolationGVisor})
	})
	conformance.CompareIsolation(b, connect(b), gvisor, oci.Policy{MemoryBytes: 256 << 20, CPUs: 1}.WithDefaults())
}
