package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/client"
	"github.com/sandstorm-dev/sandstorm/gateway"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/backends"
	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
	"github.com/sandstorm-dev/sandstorm/server"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// dsServe is a `ds serve` the test started as a user would.
type dsServe struct {
	cmd *exec.Cmd
	url string
	// logs is the file its stdout and stderr go to.
	logs string
}

// serve starts `ds serve` on a free port and waits until it answers.
func serve(t *testing.T, dir, backend string, args ...string) *dsServe {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(dsBinary, append([]string{"serve", "--runtime", backend, "--port", fmt.Sprint(port)}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "ANTHROPIC_API_KEY=", "OPENROUTER_API_KEY=", "SANDSTORM_SLOT_DIR="+slotDir, "SANDSTORM_STATE_DIR="+filepath.Join(dir, "state"))
	logs, err := os.Create(filepath.Join(dir, fmt.Sprintf("serve-%d.log", port)))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &dsServe{cmd: cmd, url: fmt.Sprintf("http://127.0.0.1:%d", port), logs: logs.Name()}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		}
		logs.Close()
		if t.Failed() {
			data, _ := os.ReadFile(logs.Name())
			t.Logf("ds serve %v:\n%s", cmd.Args[1:], data)
		}
	})
	deadline := time.Now().Add(time.Minute)
	for {
		if resp, err := http.Get(s.url + "/health"); err == nil {
			resp.Body.Close()
			return s
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(logs.Name())
			t.Fatalf("ds serve does not answer: %s", data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startRun posts a query and returns its run id once its sandbox has started.
func (s *dsServe) startRun(t *testing.T) string {
	t.Helper()
	resp, err := http.Post(s.url+"/query", "application/json", strings.NewReader(`{"prompt":"wait","timeout":300}`))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 32<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), `"event":"started"`) {
			return resp.Header.Get(server.HeaderRunID)
		}
	}
	t.Fatalf("the run did not start (status %d)", resp.StatusCode)
	return ""
}

// agentBackend opens backend, which must hold the agent image (it is
// imported if not), for the test.
func agentBackend(t *testing.T, backend string) sandbox.Runtime {
	t.Helper()
	conformance.NeedsDaemon(t, backend)
	rt, err := backends.Open(context.Background(), backend, backends.FromEnv())
	if err != nil {
		conformance.Unavailable(t, backend, err)
	}
	t.Cleanup(func() { rt.Close() })
	testenv.EnsureAgentImage(t, rt, backend)
	return rt
}

// owned lists what pid owns: sandboxes on rt, gateway session directories.
func owned(t *testing.T, rt sandbox.Runtime, pid int) (sandboxes, sessions []string) {
	t.Helper()
	found, err := rt.List(context.Background(), map[string]string{oci.LabelManaged: "true"})
	if err != nil {
		t.Fatal(err)
	}
	of := func(label string) bool {
		o, err := sandbox.ParseOwner(label)
		return err == nil && o.PID == pid
	}
	for _, s := range found {
		if of(s.Labels[oci.LabelOwner]) {
			sandboxes = append(sandboxes, s.ID)
		}
	}
	entries, _ := os.ReadDir(gateway.DefaultDir)
	for _, e := range entries {
		if owner, err := os.ReadFile(filepath.Join(gateway.DefaultDir, e.Name(), "owner")); err == nil && of(string(owner)) {
			sessions = append(sessions, e.Name())
		}
	}
	return sandboxes, sessions
}

// TestServeCrash: `kill -9` of a ds serve with runs in flight leaves its
// sandboxes and sessions; another ds serve on the host leaves them alone
// while their owner lives, and removes every object of them once it is gone.
func TestServeCrash(t *testing.T) {
	for _, backend := range []string{"containerd", "docker"} {
		t.Run(backend, func(t *testing.T) {
			rt := agentBackend(t, backend)
			dir := t.TempDir()
			// The model hangs: the runs are in flight when the server dies.
			scenario := testenv.ScenarioFile(t, testenv.HangingModel(10))

			crashing := serve(t, dir, backend, "--scripted-model", scenario)
			const runs = 3
			var ids []string
			for i := 0; i < runs; i++ {
				ids = append(ids, crashing.startRun(t))
			}
			pid := crashing.cmd.Process.Pid
			// Its warm pool (default size 2) refills beside the runs: its
			// members are the server's too, and must go with it.
			for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
				if h := testenv.Health(t, crashing.url); h.Pool != nil && h.Pool.Ready == 2 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the warm pool did not refill: %+v", testenv.Health(t, crashing.url).Pool)
				}
			}
			const objects = runs + 2
			if sb, ss := owned(t, rt, pid); len(sb) != objects || len(ss) != objects {
				t.Fatalf("%d runs in flight and 2 warm sandboxes own %v and %v", runs, sb, ss)
			}

			// A second server on the host: its start-up and periodic sweeps
			// leave the live server's sandboxes alone.
			other := serve(t, dir, backend, "--scripted-model", "demo", "--sweep-interval", "1s")
			time.Sleep(2500 * time.Millisecond) // two sweeps of the other server
			if sb, ss := owned(t, rt, pid); len(sb) != objects || len(ss) != objects {
				t.Errorf("a live server's objects were swept: left %v and %v", sb, ss)
			}
			if h := testenv.Health(t, crashing.url); h.Running != runs {
				t.Errorf("the live server runs %d, want %d", h.Running, runs)
			}

			crashing.cmd.Process.Kill()
			crashing.cmd.Wait()
			deadline := time.Now().Add(30 * time.Second)
			for {
				sb, ss := owned(t, rt, pid)
				if len(sb) == 0 && len(ss) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("30s after kill -9: %v and %v still there", sb, ss)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if h := testenv.Health(t, other.url); h.Status != api.HealthOK {
				t.Errorf("the other server: %+v", h)
			}

			// Restarted on the same store: the runs of the dead server are
			// interrupted, never left running, and what they streamed is there.
			restarted := serve(t, dir, backend, "--scripted-model", "demo")
			c := client.New(restarted.url, "")
			for _, id := range ids {
				r, err := c.Get(context.Background(), id)
				if err != nil || r.Status != api.StatusInterrupted || r.ErrorCode != string(api.CodeInterrupted) {
					t.Errorf("run %s after kill -9: %+v %v", id, r, err)
					continue
				}
				var types []string
				if err := c.Follow(context.Background(), id, 0, func(_ int64, ev json.RawMessage) error {
					var m struct{ Type, Event, Code string }
					json.Unmarshal(ev, &m)
					types = append(types, m.Type+m.Event+m.Code)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				if len(types) < 4 || types[0] != "run" || !slices.Contains(types, "sandboxstarted") || types[len(types)-1] != "errorinterrupted" {
					t.Errorf("events of %s: %v", id, types)
				}
			}
		})
	}
}
