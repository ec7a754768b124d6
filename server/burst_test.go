package server

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/modelserver"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// BenchmarkBurst: a burst of 20 requests at once against a pool of 4 and 8
// slots, through ds serve's HTTP API on containerd: time to the first SDK
// message, p50 and p99, how many ran warm, and no warm sandbox handed out
// twice.
func BenchmarkBurst(b *testing.B) {
	const burst = 20
	sc := modelserver.Scenario{Name: "at-once", Turns: make([]modelserver.Turn, burst*b.N)}
	for i := range sc.Turns {
		sc.Turns[i].Text = "hello"
	}
	h := start(b, "containerd", testenv.ScenarioFile(b, sc), "max_concurrent_agents: 8\nqueue_size: 40\npool:\n  size: 4\n  max_refill_concurrency: 2\n")
	p := h.eng.StartPool(context.Background())
	defer p.Close()
	var firsts []float64
	warm := 0
	for range b.N {
		for deadline := time.Now().Add(time.Minute); h.eng.Health(context.Background()).Pool.Ready < 4; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatal("the pool did not fill")
			}
		}
		var mu sync.Mutex
		var ids []string
		var wg sync.WaitGroup
		for range burst {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				resp, err := http.Post(h.url+"/query", "application/json", strings.NewReader(`{"prompt":"hi","timeout":120}`))
				if err != nil {
					b.Error(err)
					return
				}
				defer resp.Body.Close()
				first := 0.0
				eachData(resp.Body, func(data string) {
					var ev struct {
						Type, Event string
						SandboxID   string `json:"sandbox_id"`
						Warm        bool
					}
					json.Unmarshal([]byte(data), &ev)
					mu.Lock()
					if ev.Event == "created" {
						ids = append(ids, ev.SandboxID)
						if ev.Warm {
							warm++
						}
					}
					if first == 0 && (ev.Type == "system" || ev.Type == "assistant") {
						first = float64(time.Since(t0).Microseconds()) / 1000
						firsts = append(firsts, first)
					}
					mu.Unlock()
				})
			}()
		}
		wg.Wait()
		slices.Sort(ids)
		if len(ids) != burst || len(slices.Compact(ids)) != burst {
			b.Fatalf("%d sandboxes for %d requests, %d distinct", len(ids), burst, len(slices.Compact(ids)))
		}
	}
	slices.Sort(firsts)
	p50, p99 := firsts[len(firsts)/2], firsts[min(len(firsts)-1, len(firsts)*99/100)]
	b.ReportMetric(p50, "first-message-p50-ms")
	b.ReportMetric(p99, "first-message-p99-ms")
	if b.N == 1 {
		return // the probe run of go test -benchtime Nx
	}
	b.Logf("burst of %d against pool size 4, 8 slots, on containerd (%d bursts): first SDK message p50 %.0f ms, p99 %.0f ms; %d of %d warm; no sandbox handed out twice",
		burst, b.N, p50, p99, warm, burst*b.N)
}

// eachData calls f with the data of every SSE frame of body.
func eachData(body io.Reader, f func(data string)) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 32<<20)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			f(data)
		}
	}
}
