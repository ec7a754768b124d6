package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/modelserver"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// BenchmarkScale starts as many agents at once as SANDSTORM_SCALE says
// (default 100) through the HTTP API on containerd, each waiting 30 s on
// its model so that all live at the same time, and reports the success
// rate, the time to the first SDK message (p50, p99), the server's memory
// and the host's memory per agent at the peak: what runs out first.
func BenchmarkScale(b *testing.B) {
	n := 100
	if v, err := strconv.Atoi(os.Getenv("SANDSTORM_SCALE")); err == nil && v > 0 {
		n = v
	}
	sc := modelserver.Scenario{Name: "slow", Turns: make([]modelserver.Turn, n*b.N)}
	for i := range sc.Turns {
		sc.Turns[i] = modelserver.Turn{DelayMS: 30000, Text: "late"}
	}
	limits := fmt.Sprintf("max_concurrent_agents: %d\nqueue_size: %d\nqueue_wait_seconds: 600\nsession_timeout_seconds: 900\npool:\n  size: 0\n", n, n)
	h := start(b, "containerd", testenv.ScenarioFile(b, sc), limits)
	for range b.N {
		before := memAvailable()
		var mu sync.Mutex
		var firsts []float64
		var failures []string
		peak := before
		var wg sync.WaitGroup
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Second):
					if m := memAvailable(); m < peak {
						mu.Lock()
						peak = m
						mu.Unlock()
					}
				}
			}
		}()
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				resp, err := http.Post(h.url+"/query", "application/json", strings.NewReader(`{"prompt":"wait","timeout":900}`))
				if err != nil {
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
					return
				}
				defer resp.Body.Close()
				first, ok := 0.0, false
				eachData(resp.Body, func(data string) {
					var ev struct{ Type, Subtype, Code, Message string }
					json.Unmarshal([]byte(data), &ev)
					mu.Lock()
					switch {
					case first == 0 && ev.Type == "system":
						first = float64(time.Since(t0).Microseconds()) / 1000
						firsts = append(firsts, first)
					case ev.Type == "result" && ev.Subtype == "success":
						ok = true
					case ev.Type == "error":
						failures = append(failures, ev.Code+": "+ev.Message)
					}
					mu.Unlock()
				})
				if !ok && resp.StatusCode != 200 {
					mu.Lock()
					failures = append(failures, fmt.Sprint("HTTP ", resp.StatusCode))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		close(stop)
		slices.Sort(firsts)
		if len(firsts) == 0 {
			b.Fatalf("no agent started: %v", failures)
		}
		p50, p99 := firsts[len(firsts)/2], firsts[min(len(firsts)-1, len(firsts)*99/100)]
		perAgent := float64(before-peak) / float64(n) / (1 << 20)
		b.ReportMetric(float64(n-len(failures))/float64(n)*100, "success-%")
		b.ReportMetric(p99, "first-message-p99-ms")
		b.Logf("scale run of %d agents at once on containerd: %d succeeded; first SDK message p50 %.0f ms, p99 %.0f ms; server RSS %d MB; host memory %.0f MB per agent at the peak; failures: %v",
			n, n-len(failures), p50, p99, selfRSS()>>20, perAgent, head(failures, 5))
	}
	h.noSandboxes(b, 2*time.Minute)
}

func head(s []string, n int) []string { return s[:min(n, len(s))] }

// memAvailable is the host's MemAvailable in bytes.
func memAvailable() int64 { return meminfo("/proc/meminfo", "MemAvailable:") }

// selfRSS is this process's resident memory in bytes.
func selfRSS() int64 { return meminfo("/proc/self/status", "VmRSS:") }

func meminfo(file, key string) int64 {
	data, _ := os.ReadFile(file)
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}
