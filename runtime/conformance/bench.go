package conformance

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// CompareRunTrue times create → start → wait → remove of `true` through rt
// against the backend's own CLI running the same image with the same
// settings (cli returns its command line for iteration i), alternating the two in every
// iteration so both see the same machine load. It reports both per-op
// times and their ratio; cliName labels the CLI's metric.
func CompareRunTrue(b *testing.B, rt sandbox.Runtime, policy oci.Policy, cliName string, cli func(i int) []string) {
	lib, cmd := alternate(b, func(int) { runTrue(b, rt, policy) }, func(i int) {
		args := cli(i)
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%s: %v: %s", cliName, err, out)
		}
	})
	b.ReportMetric(float64(lib.Milliseconds())/float64(b.N), "sandstorm-ms/op")
	b.ReportMetric(float64(cmd.Milliseconds())/float64(b.N), cliName+"-ms/op")
	b.ReportMetric(float64(lib)/float64(cmd), "ratio")
}

// CompareIsolation times create → start → wait → remove of `true` on one
// backend under runc and under gVisor (two runtimes of one daemon),
// alternating the two in every iteration, and reports both and their ratio.
// Under gVisor the run goes without the items it cannot enforce.
func CompareIsolation(b *testing.B, runc, gvisor sandbox.Runtime, policy oci.Policy) {
	r, g := alternate(b, func(int) { runTrue(b, runc, policy) }, func(int) { runTrue(b, gvisor, policy) })
	b.ReportMetric(float64(r.Milliseconds())/float64(b.N), "runc-ms/op")
	b.ReportMetric(float64(g.Milliseconds())/float64(b.N), "gvisor-ms/op")
	b.ReportMetric(float64(g)/float64(r), "gvisor-ratio")
}

// alternate runs first and second once each per iteration, so both see the
// same machine load, and returns the time each took in all.
func alternate(b *testing.B, first, second func(i int)) (t1, t2 time.Duration) {
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		first(i)
		t1 += time.Since(start)
		start = time.Now()
		second(i)
		t2 += time.Since(start)
	}
	b.StopTimer()
	return t1, t2
}

func runTrue(b *testing.B, rt sandbox.Runtime, policy oci.Policy) {
	ctx := context.Background()
	caps, err := rt.Enforcement(ctx)
	if err != nil {
		b.Fatal(err)
	}
	sb, err := rt.Create(ctx, sandbox.Spec{SessionID: "bench", Image: TestImage, Args: []string{"true"}, Policy: policy,
		AllowUnenforced: unexercised(caps, check{policy: policy})})
	if err != nil {
		b.Fatal(err)
	}
	if err := sb.Start(ctx, sandbox.IO{}); err != nil {
		b.Fatal(err)
	}
	if st, err := sb.Wait(ctx); err != nil || st.Code != 0 {
		b.Fatalf("wait: %+v %v", st, err)
	}
	if err := sb.Remove(ctx); err != nil {
		b.Fatal(err)
	}
}
