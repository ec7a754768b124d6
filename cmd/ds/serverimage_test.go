package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/images/serverimage"
)

// TestServerImage builds the image of ds serve offline (ds image build
// --server), runs it in Docker the way deploy/compose.yaml does, beside
// the host's containerd, and runs a real agent through it; docker stop
// removes every sandbox it made.
func TestServerImage(t *testing.T) {
	const backend = "containerd"
	rt := agentBackend(t, backend)
	agentBackend(t, "docker")
	dir := t.TempDir()
	tar := filepath.Join(dir, "server.tar")
	if r := ds(t, dir, "image", "build", "--server", "-o", tar, "--no-import"); r.code != 0 || !strings.Contains(r.stderr, serverimage.Repo) {
		t.Fatalf("ds image build --server: %+v", r)
	}
	if r := ds(t, dir, "image", "import", "--runtime", "docker", tar); r.code != 0 {
		t.Fatalf("ds image import: %+v", r)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	key := strings.Repeat("s", 40)
	name := fmt.Sprintf("sandstorm-server-test-%d", port)
	docker := func(args ...string) (string, error) {
		host := os.Getenv("SANDSTORM_DOCKER_SOCKET")
		if host == "" {
			host = "unix:///var/run/docker.sock"
		}
		cmd := exec.Command("docker", append([]string{"-H", host}, args...)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return strings.TrimSpace(out.String()), err
	}
	out, err := docker("run", "-d", "--name", name, "--pid=host", "-p", fmt.Sprintf("127.0.0.1:%d:8000", port),
		"-v", "/run/containerd:/run/containerd", "-v", "/var/lib/containerd:/var/lib/containerd:ro",
		"-v", "/run/sandstorm:/run/sandstorm", "-v", "/var/lib/sandstorm:/var/lib/sandstorm",
		"-e", "SANDSTORM_API_KEY="+key,
		serverimage.Ref, "serve", "--host", "0.0.0.0", "--runtime", backend, "--scripted-model", "hello-python", "--log-format", "json")
	if err != nil {
		t.Fatalf("docker run: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := docker("logs", name)
			t.Logf("the server's log:\n%s", logs)
		}
		docker("rm", "-f", name)
		// The image is the test's: it goes too, each build's tag with it.
		if ids, err := docker("images", "-q", "--filter", "reference="+serverimage.Repo); err == nil && ids != "" {
			docker(append([]string{"rmi", "-f"}, strings.Fields(ids)...)...)
		}
	})
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get(url + "/health"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server in its container never answered")
		}
	}
	pidText, err := docker("inspect", "-f", "{{.State.Pid}}", name)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	fmt.Sscan(pidText, &pid)

	req, _ := http.NewRequestWithContext(context.Background(), "POST", url+"/query", strings.NewReader(`{"prompt":"Create hello.py and run it"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`"subtype":"success"`, `"path":"hello.py"`, `"event":"removed"`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("the run through the server's image lacks %s:\n%s", want, body)
		}
	}
	// Its warm pool refills: the server owns sandboxes and sessions.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if sb, ss := owned(t, rt, pid); len(sb) > 0 && len(ss) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server (pid %d) owns no sandbox a minute after its run", pid)
		}
	}
	if out, err := docker("stop", "-t", "90", name); err != nil {
		t.Fatalf("docker stop: %v: %s", err, out)
	}
	if sb, ss := owned(t, rt, pid); len(sb) != 0 || len(ss) != 0 {
		t.Errorf("after docker stop the server's objects remain: %v %v", sb, ss)
	}
	os.Remove(tar)
}
