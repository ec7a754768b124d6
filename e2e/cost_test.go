package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/modelserver"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/containerd"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// costAfter is when a sandbox's cost is read: its first ten seconds.
const costAfter = 10 * time.Second

// BenchmarkMemberCost reads, on containerd (cgroup v1), the memory and the
// CPU time of one warm sandbox waiting for a run and of one agent waiting
// on the model, each over its first ten seconds: what sizing a pool needs.
func BenchmarkMemberCost(b *testing.B) {
	rt, err := containerd.New(context.Background(), containerd.Config{Address: os.Getenv("SANDSTORM_CONTAINERD_SOCKET")})
	if err != nil {
		b.Skip(err)
	}
	defer rt.Close()
	testenv.EnsureAgentImage(b, rt, "containerd")
	// The model takes a minute to answer: the agent waits on it.
	sc := modelserver.Scenario{Name: "slow", Turns: make([]modelserver.Turn, b.N)}
	for i := range sc.Turns {
		sc.Turns[i] = modelserver.Turn{DelayMS: 60000, Text: "late"}
	}
	r, _ := benchRunner(b, rt, sc)
	job := agent.Job{Config: agent.Config{Prompt: "wait"}, Timeout: time.Minute}
	var idleMB, idleCPU, busyMB, busyCPU float64
	for range b.N {
		m, err := r.Warm(context.Background(), job)
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(costAfter)
		mb, cpu := cgroupCost(b, m.ID())
		idleMB, idleCPU = idleMB+mb, idleCPU+cpu
		m.Remove(context.Background())

		started := make(chan string, 1)
		ended := make(chan struct{})
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			defer close(ended)
			r.Run(ctx, job, func(ev json.RawMessage) error {
				var e api.SandboxEvent
				if json.Unmarshal(ev, &e) == nil && e.Type == api.TypeSandbox && e.Event == api.SandboxStarted {
					started <- e.SandboxID
				}
				return nil
			})
		}()
		id := <-started
		time.Sleep(costAfter)
		mb, cpu = cgroupCost(b, id)
		busyMB, busyCPU = busyMB+mb, busyCPU+cpu
		// The run removes its sandbox before it returns.
		cancel()
		<-ended
	}
	n := float64(b.N)
	b.ReportMetric(idleMB/n, "idle-MB")
	b.ReportMetric(idleCPU/n, "idle-cpu-s")
	b.ReportMetric(busyMB/n, "waiting-MB")
	b.ReportMetric(busyCPU/n, "waiting-cpu-s")
	if b.N == 1 {
		return // the probe run of go test -benchtime Nx
	}
	b.Logf("cost of one sandbox on containerd over its first %v (%d runs): warm, waiting for a run: %.0f MB, %.2f CPU-s; running, waiting on the model: %.0f MB, %.2f CPU-s",
		costAfter, b.N, idleMB/n, idleCPU/n, busyMB/n, busyCPU/n)
}

// cgroupCost is a containerd sandbox's memory of its own (anonymous and
// tmpfs; the page cache of the image, shared by every sandbox, left out)
// and CPU time consumed, from its cgroup v1 controllers.
func cgroupCost(b *testing.B, id string) (mb, cpuSeconds float64) {
	dir := func(ctrl string) string { return filepath.Join("/sys/fs/cgroup", ctrl, oci.CgroupParent, id) }
	stat, err := os.ReadFile(filepath.Join(dir("memory"), "memory.stat"))
	if err != nil {
		b.Fatal(err)
	}
	var rss float64
	for _, line := range strings.Split(string(stat), "\n") {
		if f := strings.Fields(line); len(f) == 2 && (f[0] == "total_rss" || f[0] == "total_shmem") {
			v, _ := strconv.ParseFloat(f[1], 64)
			rss += v
		}
	}
	usage, err := os.ReadFile(filepath.Join(dir("cpuacct"), "cpuacct.usage"))
	if err != nil {
		b.Fatal(fmt.Errorf("cpuacct of %s: %w", id, err))
	}
	ns, _ := strconv.ParseFloat(strings.TrimSpace(string(usage)), 64)
	return rss / (1 << 20), ns / 1e9
}
