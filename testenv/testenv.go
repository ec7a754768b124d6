// Package testenv gives integration tests the real parts they need: the
// agent image in a backend, and the backend itself (a failure in CI when
// required, a skip on a developer machine without it).
package testenv

import (
	"cmp"
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/sandstorm-dev/sandstorm/runtime/conformance"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

var imported sync.Map

// AgentImageTar is the image `make agentimage` builds ($SANDSTORM_AGENT_IMAGE overrides).
func AgentImageTar(t testing.TB) string {
	if p := os.Getenv("SANDSTORM_AGENT_IMAGE"); p != "" {
		return p
	}
	tar, err := conformance.ImageTarPath()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(filepath.Dir(tar), "sandstorm-agent.tar")
}

// EnsureAgentImage imports the agent image into rt once per test binary,
// unless rt already holds it.
func EnsureAgentImage(t testing.TB, rt sandbox.Runtime, key string) {
	t.Helper()
	if _, done := imported.Load(key); done {
		return
	}
	// Test binaries of several packages run at once; the first imports, the
	// others wait and then find the image there (concurrent imports of one
	// image can collide in the daemon).
	if err := os.MkdirAll("/run/sandstorm", 0o711); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile("/run/sandstorm/test-image-import.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if err := sandbox.EnsureImage(context.Background(), rt, AgentImageTar(t), logWriter{t}); err != nil {
		t.Fatalf("agent image: %v (build it with `make agentimage`)", err)
	}
	imported.Store(key, true)
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// PodmanSocket is the socket of the root (rootless false) or rootless
// Podman service the tests use: $SANDSTORM_PODMAN_SOCKET or
// $SANDSTORM_PODMAN_ROOTLESS_SOCKET (host-setup.sh writes both), else the
// default socket of the root service, or of the rootless user
// ($SANDSTORM_ROOTLESS_USER, default sandstorm) as found on this host.
func PodmanSocket(rootless bool) string {
	if !rootless {
		return cmp.Or(os.Getenv("SANDSTORM_PODMAN_SOCKET"), "unix:///run/podman/podman.sock")
	}
	if s := os.Getenv("SANDSTORM_PODMAN_ROOTLESS_SOCKET"); s != "" {
		return s
	}
	u, err := user.Lookup(cmp.Or(os.Getenv("SANDSTORM_ROOTLESS_USER"), "sandstorm"))
	if err != nil {
		return "unix:///nonexistent/rootless-podman.sock"
	}
	return "unix://" + filepath.Join("/run/user", u.Uid, "podman", "podman.sock")
}

// SmallDisk mounts a tmpfs of size (e.g. "2m") for the test, to fill: a
// full disk. It skips the test when it cannot (not root).
func SmallDisk(t testing.TB, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v %s", err, out)
	}
	// Registered after TempDir's: unmounted before it is removed, and after
	// whatever the test opens on it later is closed.
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return dir
}
