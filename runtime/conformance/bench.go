package conformance

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime"
)

// CompareRunTrue times create → start → wait → remove of `true` through rt
// against the backend's own CLI running the same image with the same
// settings (cli returns its command line for iteration i), alternating the two in every
// iteration so both see the same machine load. It reports both per-op
// times and their ratio; cliName labels the CLI's metric.
func CompareRunTrue(b *testing.B, rt runtime.Runtime, policy oci.Policy, cliName string, cli func(i int) []string) {
	var lib, cmd time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		runTrue(b, rt, policy)
		lib += time.Since(start)

		args := cli(i)
		start = time.Now()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%s: %v: %s", cliName, err, out)
		}
		cmd += time.Since(start)
	}
	b.StopTimer()
	b.ReportMetric(float64(lib.Milliseconds())/float64(b.N), "sandstorm-ms/op")
	b.ReportMetric(float64(cmd.Milliseconds())/float64(b.N), cliName+"-ms/op")
	b.ReportMetric(float64(lib)/float64(cmd), "ratio")
}

func runTrue(b *testing.B, rt runtime.Runtime, policy oci.Policy) {
	ctx := context.Background()
	sb, err := rt.Create(ctx, runtime.Spec{SessionID: "bench", Image: TestImage, Args: []string{"true"}, Policy: policy})
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
