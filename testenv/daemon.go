package testenv

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
)

// Daemon is a container daemon of a test's own, which the test may kill
// and start again: the host's daemons serve every other test (and the
// host's containerd serves Docker too).
type Daemon struct {
	// Address is where the daemon listens.
	Address string
	args    []string
	ready   func() error
	log     string
	cmd     *exec.Cmd
	t       testing.TB
}

// StartContainerd starts a containerd of the test's own. Its root (images,
// snapshots) persists under /var/lib so the agent image is imported once;
// its state lives under /run.
func StartContainerd(t testing.TB) *Daemon {
	t.Helper()
	state := "/run/sandstorm/test-containerd"
	if err := os.MkdirAll(state, 0o711); err != nil {
		t.Fatal(err)
	}
	addr := filepath.Join(state, "containerd.sock")
	// CRI is not needed (and would want CNI configuration of its own).
	config := fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = %q\n",
		"/var/lib/sandstorm/test-containerd", state, addr)
	if err := os.WriteFile(filepath.Join(state, "config.toml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return start(t, &Daemon{Address: addr, args: []string{"containerd", "--config", filepath.Join(state, "config.toml")},
		log: filepath.Join(state, "containerd.log"), ready: func() error {
			c, err := client.New(addr)
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Version(context.Background())
			return err
		}})
}

// StartPodman starts a Podman API service of the test's own, as root, on
// the host's root storage (the containers it runs outlive it, as they do
// the host's service), in /run/sandstorm/<name>, with Podman's global
// flags (e.g. --runtime) before the command.
func StartPodman(t testing.TB, name string, flags ...string) *Daemon {
	t.Helper()
	dir := filepath.Join("/run/sandstorm", name)
	if err := os.MkdirAll(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "podman.sock")
	args := append(append([]string{"podman"}, flags...), "system", "service", "--time=0", "unix://"+sock)
	return start(t, &Daemon{Address: "unix://" + sock, args: args,
		log: filepath.Join(dir, "podman.log"), ready: func() error {
			c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			}}}
			resp, err := c.Get("http://d/_ping")
			if err != nil {
				return err
			}
			resp.Body.Close()
			return nil
		}})
}

// start starts d and stops it at the test's cleanup.
func start(t testing.TB, d *Daemon) *Daemon {
	t.Helper()
	if _, err := exec.LookPath(d.args[0]); err != nil {
		t.Fatalf("%s is not installed: %v", d.args[0], err)
	}
	d.t = t
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
func (d *Daemon) Start() {
	d.t.Helper()
	logf, err := os.OpenFile(d.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		d.t.Fatal(err)
	}
	defer logf.Close()
	d.cmd = exec.Command(d.args[0], d.args[1:]...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// Its own process group: signals to the test do not reach it.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := d.ready()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(d.log)
			d.t.Fatalf("the test's %s does not answer (%v): %s", d.args[0], err, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill kills the daemon as a crash would (containerd's shims and Podman's
// conmon, and so the sandboxes, go on running).
func (d *Daemon) Kill() {
	d.t.Helper()
	if err := d.cmd.Process.Kill(); err != nil {
		d.t.Fatal(err)
	}
	d.cmd.Wait()
	d.cmd = nil
}
