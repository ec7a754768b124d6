package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sandstorm-dev/sandstorm/agent"
	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/modelserver"
	"github.com/sandstorm-dev/sandstorm/outfiles"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// filesScenario: the files the agent made are copied out of the sandbox
// before its removal, readable on the host whatever uid the backend maps
// the agent to; uploads left untouched, caches, the CLI's own state and
// symlinks out of the workspace are not.
func filesScenario(t *testing.T, b backend) {
	script := strings.Join([]string{
		"mkdir -p report .npm",
		"printf '\\000\\001\\377binary' > report/raw.bin",
		"echo done > report/summary.md && chmod 0600 report/summary.md",
		"printf changed > input.txt",
		"ln -s /etc/hostname host-link",
		"echo cache > .npm/x",
	}, " && ")
	sc := modelserver.Scenario{Turns: []modelserver.Turn{
		{ToolUse: &modelserver.ToolUse{Name: "Bash", Input: []byte(`{"command": "` + strings.ReplaceAll(script, `\`, `\\`) + `"}`)}},
		{Text: "made a report"},
	}}
	dir := filepath.Join(t.TempDir(), "out")
	job := agent.Job{Config: agent.Config{Prompt: "report"},
		Files:  []sandbox.File{{Path: "input.txt", Content: []byte("original")}, {Path: "keep.txt", Content: []byte("untouched")}},
		Output: &agent.Output{Dir: dir, URL: "/files/", Options: outfiles.Options{MaxFiles: 10, MaxBytes: 1 << 20, InlineMax: 64}}}
	events, out, _, _ := run(t, b, sc, job)
	if !out.Success() {
		t.Fatalf("run failed: %s", out.Code)
	}
	var paths []string
	for _, ev := range find(events, "file") {
		paths = append(paths, ev["path"].(string))
		data, err := os.ReadFile(filepath.Join(dir, ev["path"].(string)))
		if err != nil {
			t.Fatalf("handed back %s but: %v", ev["path"], err)
		}
		sum := sha256.Sum256(data)
		if hex.EncodeToString(sum[:]) != ev["sha256"] || ev["url"] != "/files/"+ev["path"].(string) {
			t.Errorf("%s: event %v does not match the %d bytes on the host", ev["path"], ev, len(data))
		}
	}
	slices.Sort(paths)
	if want := []string{"input.txt", "report/raw.bin", "report/summary.md"}; !slices.Equal(paths, want) {
		t.Errorf("handed back %v, want %v", paths, want)
	}
	if raw, _ := os.ReadFile(filepath.Join(dir, "report/raw.bin")); !bytes.Equal(raw, []byte("\x00\x01\xffbinary")) {
		t.Errorf("raw.bin is %q", raw)
	}
	skipped := find(events, "files_skipped")
	if len(skipped) != 1 || fmt.Sprint(skipped[0]["skipped"]) != "[map[path:host-link reason:symlink]]" {
		t.Errorf("files_skipped %v", skipped)
	}
}

// warmScenario: a run handed to a warm sandbox (started before it, the CLI
// waiting) gets its files, owned by the agent, and hands back what it made.
func warmScenario(t *testing.T, b backend) {
	files := []sandbox.File{{Path: "data/in.txt", Content: []byte("quiet words\n")}}
	// test -O, not ls or stat: gVisor's statx fails with EINVAL.
	command := "cat data/in.txt && test -O data/in.txt && echo owned by $(id -u) && tr a-z A-Z < data/in.txt > out.txt"
	owner := "owned by 1000"
	sc := modelserver.Scenario{Turns: []modelserver.Turn{
		{ToolUse: &modelserver.ToolUse{Name: "Bash", Input: api.Marshal(map[string]string{"command": command})}},
		{Text: "shouted"},
	}}
	dir := filepath.Join(t.TempDir(), "out")
	job := agent.Job{Config: agent.Config{Prompt: "shout"}, Files: files,
		Output: &agent.Output{Dir: dir, Options: outfiles.Options{MaxFiles: 10, MaxBytes: 1 << 20}}}
	events, out, _, _ := runWarm(t, b, sc, job)
	if !out.Success() {
		t.Fatalf("run failed: %s", out.Code)
	}
	created := find(events, "sandbox")[0]
	if created["event"] != "created" || created["warm"] != true {
		t.Errorf("created %v, want warm", created)
	}
	if res := toolResults(events); !strings.Contains(res, "quiet words") || !strings.Contains(res, owner) {
		t.Errorf("the agent did not read its file, or not as uid 1000: %s", res)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "out.txt")); err != nil || string(data) != "QUIET WORDS\n" {
		t.Errorf("out.txt: %q %v", data, err)
	}
}
