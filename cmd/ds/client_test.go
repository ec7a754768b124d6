package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/client"
	"github.com/sandstorm-dev/sandstorm/modelserver"
	"github.com/sandstorm-dev/sandstorm/runstore"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// TestClient runs the Go client against a real ds serve with API keys: a
// streamed run, a detached one followed to its end, its file downloaded,
// the list, a cancel, health, and a wrong key.
func TestClient(t *testing.T) {
	const backend = "containerd"
	agentBackend(t, backend)
	key := strings.Repeat("c", 40)
	t.Setenv("SANDSTORM_API_KEY", key)
	write := &modelserver.ToolUse{Name: "Write", Input: api.Marshal(map[string]string{"file_path": "/home/user/out.txt", "content": "made by the agent\n"})}
	sc := modelserver.Scenario{Name: "client", Turns: []modelserver.Turn{
		{Text: "streamed"},
		{ToolUse: write}, {Text: "written"},
		{DelayMS: 600000, Text: "never"},
	}}
	srv := serve(t, t.TempDir(), backend, "--scripted-model", testenv.ScenarioFile(t, sc))
	ctx := context.Background()
	c := client.New(srv.url, key)

	var types []string
	id, err := c.Query(ctx, api.Request{Prompt: "say it"}, func(seq int64, ev json.RawMessage) error {
		var m struct{ Type string }
		json.Unmarshal(ev, &m)
		types = append(types, m.Type)
		return nil
	})
	if err != nil || !runstore.ValidID(id) || types[0] != "run" || types[len(types)-1] != "model_usage" && types[len(types)-1] != "sandbox" {
		t.Fatalf("Query: %q %v, events %v", id, err, types)
	}
	if r, err := c.Get(ctx, id); err != nil || r.Status != api.StatusSucceeded {
		t.Errorf("the streamed run: %+v %v", r, err)
	}

	run, err := c.Detach(ctx, api.Request{Prompt: "write it"})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := c.Follow(ctx, run.ID, 0, func(int64, json.RawMessage) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	files, err := c.Files(ctx, run.ID)
	if err != nil || len(files) != 1 || files[0].Path != "out.txt" {
		t.Fatalf("Files: %+v %v", files, err)
	}
	rc, _, err := c.OpenFile(ctx, run.ID, "out.txt")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(rc)
	rc.Close()
	if string(data) != "made by the agent\n" {
		t.Errorf("out.txt: %q", data)
	}

	waiting, err := c.Detach(ctx, api.Request{Prompt: "wait"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Cancel(ctx, waiting.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.Follow(ctx, waiting.ID, 0, func(int64, json.RawMessage) error { return nil }); err != nil {
		t.Fatal(err)
	}
	page, err := c.List(ctx, runstore.Filter{})
	if err != nil || len(page.Runs) != 3 {
		t.Fatalf("List: %+v %v", page, err)
	}
	got := map[string]api.RunStatus{}
	for _, r := range page.Runs {
		got[r.ID] = r.Status
	}
	if got[id] != api.StatusSucceeded || got[run.ID] != api.StatusSucceeded || got[waiting.ID] != api.StatusCancelled {
		t.Errorf("statuses %v", got)
	}
	if h, err := c.Health(ctx); err != nil || h.Backend != backend {
		t.Errorf("Health: %+v %v", h, err)
	}
	if _, err := client.New(srv.url, strings.Repeat("x", 40)).List(ctx, runstore.Filter{}); !errors.Is(err, api.ErrUnauthorized) {
		t.Errorf("a wrong key: %v, want unauthorized", err)
	}
}
