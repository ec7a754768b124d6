package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
	"github.com/sandstorm-dev/sandstorm/runtime/containerd"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// ds builds the real binary once; the tests run it as a user would, with
// slots of their own (not the host's /run/sandstorm/slots).
var dsBinary, slotDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ds-cli-test")
	if err != nil {
		panic(err)
	}
	dsBinary = filepath.Join(dir, "ds")
	slotDir = filepath.Join(dir, "slots")
	if out, err := exec.Command("go", "build", "-o", dsBinary, ".").CombinedOutput(); err != nil {
		panic(string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

func ds(t *testing.T, dir string, args ...string) result {
	t.Helper()
	return dsEnv(t, dir, nil, args...)
}

// needBackend fails (in CI) or skips when containerd is not there, and makes
// sure it holds the agent image.
func needBackend(t *testing.T) {
	rt := conformance.Connect(t, containerd.Name, func() (*containerd.Runtime, error) {
		return containerd.New(context.Background(), containerd.Config{Address: os.Getenv("SANDSTORM_CONTAINERD_SOCKET")})
	})
	testenv.EnsureAgentImage(t, rt, containerd.Name)
}

func TestBadInputExitsWithUsage(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"hi", "--timeout", "2"}, "timeout"},
		{[]string{"hi", "--timeout", "4000"}, "timeout"},
		{[]string{"hi", "--model", "gpt-4"}, "unknown model"},
		{[]string{"hi", "--max-turns", "-2"}, "max_turns"},
		{[]string{"hi", "-f", "/etc/hostname"}, "absolute"},
		{[]string{"hi", "-f", "missing.txt"}, "missing.txt"},
		{[]string{"  "}, "prompt"},
	}
	for _, tt := range tests {
		r := ds(t, dir, tt.args...)
		if r.code != 64 || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("ds %v: exit %d, stderr %q; want exit 64 naming %q", tt.args, r.code, r.stderr, tt.want)
		}
	}
}

func TestQueryRawWithProjectConfig(t *testing.T) {
	needBackend(t)
	dir := t.TempDir()
	// sandstorm.json supplies the schema; the request gives none.
	os.WriteFile(filepath.Join(dir, "sandstorm.json"), []byte(`{"output_format":{"type":"json_schema","schema":{"type":"object"}},"unknown_key":1}`), 0o644)
	os.MkdirAll(filepath.Join(dir, "src"), 0o755)
	os.WriteFile(filepath.Join(dir, "src", "data.bin"), []byte{0, 1, 2, 255}, 0o644)
	r := ds(t, dir, "count", "--raw", "--runtime", "containerd", "--scripted-model", "structured-output", "-f", "src/data.bin")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, `unknown key "unknown_key"`) || !strings.Contains(r.stderr, "scripted") {
		t.Errorf("warnings missing from stderr: %s", r.stderr)
	}
	var sawResult bool
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("--raw line is not one JSON event: %q", line)
		}
		if ev["type"] == "result" {
			sawResult = ev["structured_output"] != nil
		}
	}
	if !sawResult {
		t.Errorf("no result with structured_output: %s", r.stdout)
	}
}

// TestBusyAcrossProcesses: the slots are host-wide, so a second ds finds the
// only slot held (here by this test process) and, with no queue, is busy.
func TestBusyAcrossProcesses(t *testing.T) {
	needBackend(t)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "config"), 0o755)
	os.WriteFile(filepath.Join(dir, "config", "limits.yaml"), []byte("max_concurrent_agents: 1\nqueue_size: 0\n"), 0o644)
	os.MkdirAll(slotDir, 0o700)
	f, err := os.OpenFile(filepath.Join(slotDir, "slot-0.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	r := ds(t, dir, "hi", "--runtime", "containerd", "--scripted-model", "demo")
	if r.code != 75 || !strings.Contains(r.stderr, "busy") {
		t.Errorf("exit %d, stderr %q; want 75 busy", r.code, r.stderr)
	}
}

func TestQueryHumanAndFailures(t *testing.T) {
	needBackend(t)
	dir := t.TempDir()
	r := ds(t, dir, "Create hello.py and run it", "--runtime", "containerd", "--scripted-model", "hello-python")
	if r.code != 0 || !strings.Contains(r.stdout, "→ Write hello.py") || !strings.Contains(r.stdout, "→ Bash python3 hello.py") ||
		!strings.Contains(r.stdout, "hello from sandstorm") || !strings.Contains(r.stdout, "── done") {
		t.Errorf("human output (exit %d):\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout, "\033") {
		t.Error("escape codes on a pipe")
	}
	r = ds(t, dir, "anything", "--runtime", "containerd", "--scripted-model", "model-error")
	if r.code != 1 || !strings.Contains(r.stdout, "500") || !strings.Contains(r.stderr, "agent_failed") {
		t.Errorf("model error: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	slow := filepath.Join(dir, "slow.json")
	os.WriteFile(slow, []byte(`{"turns":[{"delay_ms":30000,"text":"too late"}]}`), 0o644)
	r = ds(t, dir, "wait", "--runtime", "containerd", "--scripted-model", slow, "--timeout", "5")
	if r.code != 124 || !strings.Contains(r.stdout, "error (timeout)") {
		t.Errorf("timeout: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
}
