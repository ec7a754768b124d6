package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// TestServeReload: ds serve --reload applies a changed limits file to the
// runs that start after it (a new pids limit in the new sandbox's cgroup,
// its warm pool started afresh) and leaves a running one as it was; an
// invalid file, or a key only a restart applies, is logged by name and the
// running configuration kept; SIGHUP reloads sandstorm.json; shutting
// down leaves nothing, the pools reloads replaced included.
func TestServeReload(t *testing.T) {
	const backend = "containerd"
	rt := agentBackend(t, backend)
	dir := t.TempDir()
	limits := filepath.Join(dir, "config", "limits.yaml")
	os.MkdirAll(filepath.Dir(limits), 0o755)
	write := func(path, content string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(limits, "max_concurrent_agents: 4\npids_limit: 200\npool:\n  size: 1\n")
	srv := serve(t, dir, backend, "--reload", "--scripted-model", testenv.ScenarioFile(t, testenv.HangingModel(4)))
	waitFor := func(what string, ok func(api.Health) bool) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); !ok(testenv.Health(t, srv.url)); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %+v", what, testenv.Health(t, srv.url))
			}
		}
	}
	pidsMax := func(runID string) string {
		t.Helper()
		resp, err := http.Get(srv.url + "/runs/" + runID)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r api.RunView
		json.NewDecoder(resp.Body).Decode(&r)
		data, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/pids", oci.CgroupParent, r.SandboxID, "pids.max"))
		if err != nil {
			t.Fatalf("run %s's sandbox %q: %v", runID, r.SandboxID, err)
		}
		return strings.TrimSpace(string(data))
	}
	logged := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			data, _ := os.ReadFile(srv.logs)
			if strings.Contains(string(data), what) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("never logged %q:\n%s", what, data)
			}
		}
	}

	waitFor("the pool fills", func(h api.Health) bool { return h.Pool != nil && h.Pool.Ready == 1 })
	before := srv.startRun(t)
	if got := pidsMax(before); got != "200" {
		t.Fatalf("the first run's pids.max %s, want 200", got)
	}

	write(limits, "max_concurrent_agents: 6\npids_limit: 300\npool:\n  size: 1\n")
	waitFor("the new limits", func(h api.Health) bool { return h.MaxConcurrentAgents == 6 })
	logged("changed=\"[max_concurrent_agents pids_limit]\"")
	waitFor("the new pool fills", func(h api.Health) bool { return h.Pool != nil && h.Pool.Ready == 1 })
	after := srv.startRun(t)
	if got := pidsMax(after); got != "300" {
		t.Errorf("a run after the reload: pids.max %s, want 300", got)
	}
	if got := pidsMax(before); got != "200" {
		t.Errorf("the run from before: pids.max %s, want 200 still", got)
	}
	if h := testenv.Health(t, srv.url); h.Running != 2 {
		t.Errorf("%d runs, want both still running", h.Running)
	}

	write(limits, "max_concurrent_agents: 6\ncpu_limit: 9999\n")
	logged("cpu_limit")
	write(limits, "max_concurrent_agents: 6\nisolation: gvisor\n")
	logged("isolation: changing it needs a restart")
	if h := testenv.Health(t, srv.url); h.MaxConcurrentAgents != 6 || h.Pool == nil {
		t.Errorf("after refused reloads: %+v, want the running configuration", h)
	}

	write(limits, "max_concurrent_agents: 6\npids_limit: 300\npool:\n  size: 1\n")
	logged("nothing changed")
	write(filepath.Join(dir, "sandstorm.json"), `{"model":"haiku"}`)
	logged("changed=\"[sandstorm.json: model]\"")
	srv.cmd.Process.Signal(syscall.SIGHUP)
	logged("trigger=SIGHUP")
	if h := testenv.Health(t, srv.url); h.Status != api.HealthOK {
		t.Errorf("after SIGHUP: %+v", h)
	}

	// Shut down with two runs going and pools replaced by reloads: nothing
	// of the server's is left, sandboxes or sessions.
	pid := srv.cmd.Process.Pid
	srv.cmd.Process.Signal(syscall.SIGTERM)
	srv.cmd.Wait()
	if sb, ss := owned(t, rt, pid); len(sb) != 0 || len(ss) != 0 {
		t.Errorf("after shutdown: %v and %v left", sb, ss)
	}
}
