package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/engine"
	"github.com/sandstorm-dev/sandstorm/runstore"
	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
)

// unreachable points every backend's socket at nothing.
var unreachable = []string{
	"SANDSTORM_CONTAINERD_SOCKET=/nonexistent/containerd.sock",
	"SANDSTORM_DOCKER_SOCKET=unix:///nonexistent/docker.sock", "DOCKER_HOST=unix:///nonexistent/docker.sock",
	"SANDSTORM_PODMAN_SOCKET=unix:///nonexistent/podman.sock", "CONTAINER_HOST=unix:///nonexistent/podman.sock",
}

// dsEnv runs the real binary with extra environment (later values win).
func dsEnv(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(dsBinary, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "ANTHROPIC_API_KEY=", "OPENROUTER_API_KEY=", engine.SlotDirEnv+"="+slotDir, runstore.DirEnv+"="+filepath.Join(dir, "state")), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatalf("ds %v hung", args)
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{out.String(), errb.String(), code}
}

// TestStartupErrors: every way start-up can fail ends with its exit code
// and the reason, never a crash: a backend that does not answer (each of
// them, for ds PROMPT and ds serve), a configuration that is wrong.
func TestStartupErrors(t *testing.T) {
	dir := t.TempDir()
	for _, rt := range []string{"containerd", "docker", "podman", "auto"} {
		for _, args := range [][]string{{"hi", "--runtime", rt}, {"serve", "--port", "65000", "--runtime", rt}, {"sandbox", "run", "--runtime", rt, "--", "true"}} {
			r := dsEnv(t, dir, unreachable, args...)
			if r.code != 69 || !strings.Contains(r.stderr, "runtime unavailable") || strings.Contains(r.stderr, "panic") {
				t.Errorf("ds %v with no daemon: exit %d, stderr %q; want 69 with the reason", args, r.code, r.stderr)
			}
		}
	}

	bad := filepath.Join(dir, "bad-limits.yaml")
	os.WriteFile(bad, []byte("max_concurrent_agents: -1\n"), 0o644)
	r := dsEnv(t, dir, unreachable, "hi", "--config", bad)
	if r.code != 78 || !strings.Contains(r.stderr, "max_concurrent_agents") {
		t.Errorf("invalid limits: exit %d, stderr %q; want 78 naming the key", r.code, r.stderr)
	}
	r = dsEnv(t, dir, unreachable, "hi", "--config", filepath.Join(dir, "missing.yaml"))
	if r.code != 78 || !strings.Contains(r.stderr, "missing.yaml") {
		t.Errorf("missing limits file: exit %d, stderr %q; want 78", r.code, r.stderr)
	}
	proj := t.TempDir()
	os.WriteFile(filepath.Join(proj, "sandstorm.json"), []byte(`{"max_turns":"many"}`), 0o644)
	r = dsEnv(t, proj, unreachable, "hi")
	if r.code != 78 || !strings.Contains(r.stderr, "max_turns") {
		t.Errorf("invalid sandstorm.json: exit %d, stderr %q; want 78 naming the key", r.code, r.stderr)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"hi", "--runtime", "nomad"}, "unknown runtime"},
		{[]string{"hi", "--no-such-flag"}, "unknown flag"},
		{[]string{"hi", "--timeout", "ten"}, "invalid argument"},
		{[]string{"serve", "--port", "0"}, "--port"},
		{[]string{"serve", "extra"}, "unknown command"},
		{[]string{"a", "b"}, "accepts at most 1 arg"},
	} {
		r := dsEnv(t, dir, unreachable, tt.args...)
		if r.code != 64 || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("ds %v: exit %d, stderr %q; want 64 saying %q", tt.args, r.code, r.stderr, tt.want)
		}
	}
}

// TestStartupErrorsWithDaemon: a socket the user may not open, and an
// image the backend does not hold.
func TestStartupErrorsWithDaemon(t *testing.T) {
	conformance.NeedsDaemon(t, "containerd")
	sock := os.Getenv("SANDSTORM_CONTAINERD_SOCKET")
	if sock == "" {
		sock = "/run/containerd/containerd.sock"
	}
	if _, err := os.Stat(sock); err != nil {
		conformance.Unavailable(t, "containerd", err)
	}
	dir := t.TempDir()
	limits := filepath.Join(dir, "limits.yaml")
	os.WriteFile(limits, []byte("image: localhost/sandstorm-no-such-image:latest\n"), 0o644)
	r := dsEnv(t, dir, nil, "hi", "--runtime", "containerd", "--config", limits)
	if r.code != 66 || !strings.Contains(r.stderr, "ds image build") {
		t.Errorf("missing image: exit %d, stderr %q; want 66 saying how to build it", r.code, r.stderr)
	}

	// The containerd socket is root's: another user gets 69 and the reason.
	u, err := user.Lookup(envOr("SANDSTORM_ROOTLESS_USER", "sandstorm"))
	if err != nil || os.Geteuid() != 0 {
		t.Skipf("needs root and an unprivileged user to run ds as: %v", err)
	}
	binDir, err := os.MkdirTemp("", "ds-other-user-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(binDir)
	os.Chmod(binDir, 0o755)
	bin := filepath.Join(binDir, "ds")
	data, _ := os.ReadFile(dsBinary)
	os.WriteFile(bin, data, 0o755)
	cmd := exec.Command("runuser", "-u", u.Username, "--", bin, "hi", "--runtime", "containerd")
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/", "SANDSTORM_CONTAINERD_SOCKET=" + sock, "SANDSTORM_SLOT_DIR=/tmp/ds-slots-" + u.Uid}
	out, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 69 || !strings.Contains(string(out), "permission denied") {
		t.Errorf("socket without permission: exit %d, output %q; want 69 saying permission denied", cmd.ProcessState.ExitCode(), out)
	}
}
