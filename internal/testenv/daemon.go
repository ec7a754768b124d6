package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
)

// Containerd is a containerd daemon of a test's own, which the test may
// kill and start again: the host's containerd also serves Docker and every
// other test. Its root (images, snapshots) persists under /var/lib so the
// agent image is imported once; its state lives under /run.
type Containerd struct {
	Address string
	root    string
	state   string
	config  string
	log     string
	cmd     *exec.Cmd
	t       testing.TB
}

// StartContainerd starts the test's own containerd and stops it at cleanup.
func StartContainerd(t testing.TB) *Containerd {
	t.Helper()
	if _, err := exec.LookPath("containerd"); err != nil {
		t.Fatalf("containerd is not installed: %v", err)
	}
	state := "/run/sandstorm/test-containerd"
	d := &Containerd{
		Address: filepath.Join(state, "containerd.sock"),
		root:    "/var/lib/sandstorm/test-containerd",
		state:   state,
		config:  filepath.Join(state, "config.toml"),
		log:     filepath.Join(state, "containerd.log"),
		t:       t,
	}
	if err := os.MkdirAll(d.state, 0o711); err != nil {
		t.Fatal(err)
	}
	// CRI is not needed (and would want CNI configuration of its own).
	config := fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n", d.root, d.state, d.Address)
	if err := os.WriteFile(d.config, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Start()
	t.Cleanup(func() {
		if d.cmd != nil {
			d.cmd.Process.Signal(syscall.SIGTERM)
			d.cmd.Wait()
		}
	})
	return d
}

// Start starts the daemon and waits until it answers.
func (d *Containerd) Start() {
	d.t.Helper()
	logf, err := os.OpenFile(d.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		d.t.Fatal(err)
	}
	defer logf.Close()
	d.cmd = exec.Command("containerd", "--config", d.config)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// Its own process group: signals to the test do not reach it.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := client.New(d.Address); err == nil {
			_, verr := c.Version(context.Background())
			c.Close()
			if verr == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(d.log)
			d.t.Fatalf("the test's containerd does not answer: %s", data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill kills the daemon as a crash would (its shims, and the sandboxes,
// go on running).
func (d *Containerd) Kill() {
	d.t.Helper()
	if err := d.cmd.Process.Kill(); err != nil {
		d.t.Fatal(err)
	}
	d.cmd.Wait()
	d.cmd = nil
}
