package server

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/modelserver"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

func bash(cmd string) modelserver.Turn {
	return modelserver.Turn{ToolUse: &modelserver.ToolUse{Name: "Bash", Input: api.Marshal(map[string]string{"command": cmd})}}
}

// TestWarmPool: requests that fit run in warm sandboxes, one each; two
// consecutive runs share nothing (files, /tmp, processes, environment,
// token); one that does not fit runs cold and says why; on close the pool
// leaves nothing.
func TestWarmPool(t *testing.T) {
	for _, backend := range backendsUnderTest {
		t.Run(backend, func(t *testing.T) {
			sc := modelserver.Scenario{Name: "two-runs", Turns: []modelserver.Turn{
				bash(`echo MARKER-A > left-by-first.txt; echo MARKER-A > /tmp/left-by-first; (sleep 600 &); export MARKER_ENV=MARKER-A; echo "token=$(echo $ANTHROPIC_API_KEY | sha256sum | head -c 16)"`),
				{Text: "first done"},
				bash(`ls -a . /tmp; grep -rs MARKER . /tmp; cat /proc/[0-9]*/cmdline | tr '\0' ' '; env | grep MARKER; echo "token=$(echo $ANTHROPIC_API_KEY | sha256sum | head -c 16)"`),
				{Text: "second done"},
				// The third run's client leaves while the model thinks.
				{DelayMS: 60000, Text: "too late"},
			}}
			h := start(t, backend, testenv.ScenarioFile(t, sc), "pool:\n  size: 2\n")
			p := h.eng.StartPool(context.Background())
			waitReady(t, h, 2)
			var results []string
			for i := range 2 {
				warm, out := runAndCollect(t, h.url, `{"prompt":"go","timeout":120}`)
				if warm["warm"] != true || warm["warm_miss"] != nil {
					t.Errorf("run %d: created %v, want warm", i, warm)
				}
				results = append(results, out)
			}
			first, second := results[0], results[1]
			// The session token (as the CLI sees it), by its digest: each run has its own.
			digest := func(out string) string {
				i := strings.Index(out, "token=")
				if i < 0 || len(out) < i+22 {
					return ""
				}
				return out[i+6 : i+22]
			}
			if d1, d2 := digest(first), digest(second); d1 == "" || d1 == d2 {
				t.Errorf("token digests %q and %q: want two different tokens", d1, d2)
			}
			for _, leak := range []string{"left-by-first", "MARKER-A", "sleep 600"} {
				if strings.Contains(second, leak) {
					t.Errorf("the second run sees %q of the first: %s", leak, second)
				}
			}
			// A client that leaves a warm run mid-way: its sandbox goes with
			// every object it had, as any run's.
			waitReady(t, h, 1)
			asked := len(h.eng.Scripted.Requests())
			resp := post(t, h.url, `{"prompt":"go","timeout":120}`)
			var left map[string]any
			h.events(t, resp.Body, func(ev map[string]any) bool {
				if ev["type"] == "sandbox" && ev["event"] == "created" {
					left = ev
				}
				return ev["type"] != "system"
			})
			// Gone once its model request (the slow turn) is in flight.
			for deadline := time.Now().Add(30 * time.Second); len(h.eng.Scripted.Requests()) == asked; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the third run never asked its model")
				}
			}
			resp.Body.Close()
			if left["warm"] != true {
				t.Errorf("the third run: created %v, want warm", left)
			}
			id, session := fmt.Sprint(left["sandbox_id"]), fmt.Sprint(left["session_id"])
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				objects, err := h.eng.Runtime.Leftovers(context.Background(), id, session)
				if err == nil && len(objects) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("30s after the client left a warm run: %v %v", objects, err)
				}
			}

			// Options of its own: cold, and told why.
			created, _ := runAndCollect(t, h.url, `{"prompt":"go","model":"opus","timeout":60}`)
			if created["warm"] != false || !strings.Contains(created["warm_miss"].(string), "agent options") {
				t.Errorf("a request with its own model: %v", created)
			}
			waitReady(t, h, 2)
			p.Close()
			if st := p.Stats(); st.Ready != 0 || st.Refilling != 0 {
				t.Errorf("after close: %+v", st)
			}
			h.noSandboxes(t, 30*time.Second)

			// size 0: no pool, and runs as without one.
			off := start(t, backend, "demo", "pool:\n  size: 0\n")
			if p := off.eng.StartPool(context.Background()); p != nil || off.eng.Health(context.Background()).Pool != nil {
				t.Errorf("size 0 started a pool")
			}
			if created, _ := runAndCollect(t, off.url, `{"prompt":"hi","timeout":60}`); created["warm"] != false || created["warm_miss"] != nil {
				t.Errorf("created without a pool: %v", created)
			}
		})
	}
}

func waitReady(t *testing.T, h *harness, n int) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		hl := h.eng.Health(context.Background())
		if hl.Pool != nil && hl.Pool.Ready >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool not ready: %+v", hl.Pool)
		}
	}
}

// runAndCollect runs body through /query and returns its created event and
// the text of its tool results.
func runAndCollect(t *testing.T, url, body string) (map[string]any, string) {
	t.Helper()
	resp := post(t, url, body)
	defer resp.Body.Close()
	var created map[string]any
	var out strings.Builder
	(&harness{}).events(t, resp.Body, func(ev map[string]any) bool {
		switch {
		case ev["type"] == "sandbox" && ev["event"] == "created":
			created = ev
		case ev["type"] == "user":
			b, _ := json.Marshal(ev["message"])
			out.Write(b)
		case ev["type"] == "result" && ev["subtype"] != "success":
			t.Errorf("run failed: %v", ev)
		}
		return true
	})
	return created, out.String()
}
