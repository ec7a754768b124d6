package containerd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime"
	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
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
	var lib, cli time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		runLibrary(b, rt, policy)
		lib += time.Since(start)

		start = time.Now()
		args := append(ctrArgs[:len(ctrArgs):len(ctrArgs)], fmt.Sprintf("bench-ctr-%d-%d", os.Getpid(), i), "true")
		if out, err := exec.Command("ctr", args...).CombinedOutput(); err != nil {
			b.Fatalf("ctr run: %v: %s", err, out)
		}
		cli += time.Since(start)
	}
	b.StopTimer()
	b.ReportMetric(float64(lib.Milliseconds())/float64(b.N), "sandstorm-ms/op")
	b.ReportMetric(float64(cli.Milliseconds())/float64(b.N), "ctr-ms/op")
	b.ReportMetric(float64(lib)/float64(cli), "ratio")
}

func runLibrary(b *testing.B, rt *Runtime, policy oci.Policy) {
	ctx := context.Background()
	sb, err := rt.Create(ctx, runtime.Spec{SessionID: "bench", Image: conformance.TestImage, Args: []string{"true"}, Policy: policy})
	if err != nil {
		b.Fatal(err)
	}
	if err := sb.Start(ctx, runtime.IO{}); err != nil {
		b.Fatal(err)
	}
	if st, err := sb.Wait(ctx); err != nil || st.Code != 0 {
		b.Fatalf("wait: %+v %v", st, err)
	}
	if err := sb.Remove(ctx); err != nil {
		b.Fatal(err)
	}
}
