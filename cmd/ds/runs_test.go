package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/client"
	"github.com/sandstorm-dev/sandstorm/runstore"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// TestDetachedRun is the user's path: POST /runs as curl sends it, leave,
// come back with ds logs -f, list it, download what the agent made — from
// the server and from the host's store — and cancel a run another process
// runs.
func TestDetachedRun(t *testing.T) {
	const backend = "containerd"
	agentBackend(t, backend)
	dir := t.TempDir()
	srv := serve(t, dir, backend, "--scripted-model", "hello-python")
	resp, err := http.Post(srv.url+"/runs", "application/json", strings.NewReader(`{"prompt":"Create hello.py and run it"}`))
	if err != nil {
		t.Fatal(err)
	}
	var r api.RunView
	json.NewDecoder(resp.Body).Decode(&r)
	resp.Body.Close()
	if resp.StatusCode != 202 || !runstore.ValidID(r.ID) {
		t.Fatalf("POST /runs: %d %+v", resp.StatusCode, r)
	}
	remote := []string{"--server", srv.url}
	logs := ds(t, dir, append([]string{"logs", "-f", r.ID}, remote...)...)
	if logs.code != 0 || !strings.Contains(logs.stdout, "hello from sandstorm") || !strings.Contains(logs.stdout, "↓ hello.py") {
		t.Fatalf("ds logs -f: %+v", logs)
	}
	local := []string{"--state-dir", filepath.Join(dir, "state")}
	for _, src := range [][]string{remote, local} {
		list := ds(t, dir, append([]string{"runs"}, src...)...)
		if list.code != 0 || !strings.Contains(list.stdout, r.ID+"  succeeded") || !strings.Contains(list.stdout, "Create hello.py") {
			t.Errorf("ds runs %v: %+v", src, list)
		}
		out := filepath.Join(dir, "got-"+src[0][2:])
		files := ds(t, dir, append([]string{"runs", "files", r.ID, "-o", out}, src...)...)
		data, err := os.ReadFile(filepath.Join(out, "hello.py"))
		if files.code != 0 || err != nil || !strings.Contains(string(data), "hello from sandstorm") {
			t.Errorf("ds runs files %v: %+v %v %q", src, files, err, data)
		}
		show := ds(t, dir, append([]string{"runs", "show", r.ID}, src...)...)
		if show.code != 0 || !strings.Contains(show.stdout, `"status": "succeeded"`) {
			t.Errorf("ds runs show %v: %+v", src, show)
		}
	}
	if missing := ds(t, dir, append([]string{"logs", "run-0000000000000000deadbeef"}, local...)...); missing.code != api.ExitNotFound {
		t.Errorf("ds logs of no run: %+v", missing)
	}

	// A run of a hanging model, cancelled from another process through the store.
	hang := serve(t, dir, backend, "--scripted-model", testenv.ScenarioFile(t, testenv.HangingModel(2)))
	c := client.New(hang.url, "")
	h, err := c.Detach(context.Background(), api.Request{Prompt: "hang", Timeout: 300})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if got, _ := c.Get(context.Background(), h.ID); got.SandboxID != "" || time.Now().After(deadline) {
			break
		}
	}
	if cancel := ds(t, dir, append([]string{"cancel", h.ID}, local...)...); cancel.code != 0 {
		t.Errorf("ds cancel: %+v", cancel)
	}
	var last api.ErrorEvent
	err = c.Follow(context.Background(), h.ID, 0, func(_ int64, ev json.RawMessage) error {
		var e api.ErrorEvent
		if json.Unmarshal(ev, &e) == nil && e.Type == api.TypeError {
			last = e
		}
		return nil
	})
	got, _ := c.Get(context.Background(), h.ID)
	if err != nil || got.Status != api.StatusCancelled || last.Type != api.TypeError || last.Code != api.CodeCancelled {
		t.Errorf("cancelled run: %+v, last event %+v, %v", got.RunRecord, last, err)
	}
}
