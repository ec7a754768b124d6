package conformance

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/cap"

	"github.com/sandstorm-dev/sandstorm/images/testimage"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// statusScript prints the security fields of the sandbox's own process,
// as KEY=VALUE lines named as in /proc/self/status.
const statusScript = testimage.Probe + " -status"

// limitsScript prints the sandbox's own cgroup limits, from the v2 or v1 layout.
const limitsScript = `
first() { for f in "$@"; do if [ -r "$f" ]; then cat "$f"; return; fi; done; echo missing; }
echo "mem=$(first /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes)"
echo "cpu=$(first /sys/fs/cgroup/cpu.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us)"
echo "pids=$(first /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max)"
echo "nofile=$(ulimit -n)"
touch /sys/fs/cgroup/x 2>/dev/null && echo cgroupfs=writable || echo cgroupfs=readonly
`

// blob is binary workspace content, every byte value.
var blob = func() []byte {
	b := make([]byte, 4096)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}()

// checks are the suite's checks of one sandbox each, one per item or
// behaviour.
func checks() []check {
	return []check{
		mountsAndPaths(),
		seccompDeniesNamespaces(),
		noPrivileges(),
		listedCapabilities(),
		defaultUser(),
		userAsAsked(),
		readOnlyRoot(),
		cgroupLimits(),
		oomKill(),
		forkBomb(),
		workspaceFiles(),
		liveStdout(),
		longLine(),
		separateStderr(),
		cancelKills(),
		networkNone(),
		bridgeCheck(),
		bindMountCheck(),
	}
}

// One list of mounts and paths on every backend: the workspace
// and /tmp nosuid,nodev; the masked paths hidden, the read-only
// ones read-only.
func mountsAndPaths() check {
	return check{
		name:   "workspace and /tmp nosuid,nodev; masked and read-only paths",
		needs:  []sandbox.Item{sandbox.ItemNosuidMounts},
		script: mountsScript(),
		verify: func(t *testing.T, r result) {
			got := kv(r.stdout)
			for _, m := range []string{"/home/user", "/tmp"} {
				opts := strings.Split(got["mount"+m], ",")
				if !slices.Contains(opts, "nosuid") || !slices.Contains(opts, "nodev") {
					t.Errorf("%s is mounted %q, want nosuid,nodev", m, got["mount"+m])
				}
			}
			for _, p := range oci.MaskedPaths {
				if v, ok := got["masked"+p]; ok && v != "0" {
					t.Errorf("%s is not masked: %s bytes or entries visible", p, v)
				}
			}
			for _, p := range oci.ReadonlyPaths {
				if v, ok := got["mount"+p]; ok && !slices.Contains(strings.Split(v, ","), "ro") {
					t.Errorf("%s is mounted %q, want read-only", p, v)
				}
			}
		},
	}
}

// sandstorm's seccomp profile, the same on every backend: no new
// namespaces (a user namespace is a large kernel attack surface),
// even where a backend's own profile allows them.
func seccompDeniesNamespaces() check {
	return check{
		name:  "sandstorm's seccomp profile denies namespaces",
		needs: []sandbox.Item{sandbox.ItemSeccomp},
		script: `for ns in U m n p i u C; do
  if unshare -$ns true 2>/dev/null; then echo "unshare-$ns=allowed"; else echo "unshare-$ns=denied"; fi
done
if unshare -U -r id -u 2>/dev/null; then echo "userns-root=allowed"; else echo "userns-root=denied"; fi
if nsenter -t 1 -m true 2>/dev/null; then echo "setns=allowed"; else echo "setns=denied"; fi`,
		verify: func(t *testing.T, r result) {
			got := kv(r.stdout)
			for _, k := range []string{"unshare-U", "unshare-m", "unshare-n", "unshare-p", "unshare-i", "unshare-u", "unshare-C", "userns-root", "setns"} {
				expect(t, got, k, "denied")
			}
		},
	}
}

func noPrivileges() check {
	return check{
		name:   "no capabilities, no new privileges, seccomp filter",
		needs:  []sandbox.Item{sandbox.ItemCapabilities, sandbox.ItemNoNewPrivileges, sandbox.ItemSeccomp},
		script: statusScript,
		verify: func(t *testing.T, r result) {
			got := kv(r.stdout)
			for _, k := range []string{"CapEff", "CapPrm", "CapBnd", "CapAmb"} {
				expect(t, got, k, "0000000000000000")
			}
			expect(t, got, "NoNewPrivs", "1")
			expect(t, got, "Seccomp", "2")
		},
	}
}

func listedCapabilities() check {
	return check{
		name:   "exactly the listed capabilities",
		needs:  []sandbox.Item{sandbox.ItemCapabilities, sandbox.ItemGrantCapabilities},
		policy: oci.Policy{Capabilities: []string{"CAP_NET_BIND_SERVICE", "CAP_CHOWN"}},
		script: statusScript,
		verify: func(t *testing.T, r result) {
			got := kv(r.stdout)
			for _, k := range []string{"CapEff", "CapPrm", "CapBnd"} {
				v, err := strconv.ParseUint(got[k], 16, 64)
				if err != nil {
					t.Fatalf("%s = %q: %v", k, got[k], err)
				}
				names, _ := cap.FromBitmap(v)
				slices.Sort(names)
				if want := []string{"CAP_CHOWN", "CAP_NET_BIND_SERVICE"}; !slices.Equal(names, want) {
					t.Errorf("%s = %v, want %v", k, names, want)
				}
			}
		},
	}
}

func defaultUser() check {
	return check{
		name:   "default user is uid and gid 1000",
		needs:  []sandbox.Item{sandbox.ItemUser},
		script: `echo uid=$(id -u); echo gid=$(id -g); echo groups=$(id -G)`,
		verify: func(t *testing.T, r result) {
			got := kv(r.stdout)
			expect(t, got, "uid", "1000")
			expect(t, got, "gid", "1000")
			expect(t, got, "groups", "1000")
		},
	}
}

func userAsAsked() check {
	return check{
		name:   "user as asked",
		needs:  []sandbox.Item{sandbox.ItemUser},
		policy: oci.Policy{UID: 1234, GID: 2345},
		script: `echo uid=$(id -u); echo gid=$(id -g); echo home=$(stat -c %u:%g /home/user)`,
		verify: func(t *testing.T, r result) {
			got := kv(r.stdout)
			expect(t, got, "uid", "1234")
			expect(t, got, "gid", "2345")
			expect(t, got, "home", "1234:2345")
		},
	}
}

func readOnlyRoot() check {
	return check{
		name:  "read-only root, writable /tmp and workspace",
		needs: []sandbox.Item{sandbox.ItemReadOnlyRoot},
		script: `
try() { if touch "$1" 2>/dev/null; then echo "$2=writable"; else echo "$2=readonly"; fi; }
try /rootfile root; try /etc/rootfile etc; try /tmp/f tmp; try /home/user/f workspace
echo pwd=$(pwd)`,
		verify: func(t *testing.T, r result) {
			got := kv(r.stdout)
			expect(t, got, "root", "readonly")
			expect(t, got, "etc", "readonly")
			expect(t, got, "tmp", "writable")
			expect(t, got, "workspace", "writable")
			expect(t, got, "pwd", oci.Workspace)
		},
	}
}

func cgroupLimits() check {
	return check{
		name:   "limits visible in the sandbox's own cgroup",
		needs:  []sandbox.Item{sandbox.ItemMemoryLimit, sandbox.ItemCPULimit, sandbox.ItemPidsLimit, sandbox.ItemNoFileLimit},
		policy: oci.Policy{MemoryBytes: 96 << 20, CPUs: 0.5, Pids: 77, NoFile: 1500},
		script: limitsScript,
		verify: func(t *testing.T, r result) {
			got := kv(r.stdout)
			expect(t, got, "mem", itoa(96<<20))
			if c := got["cpu"]; c != "50000" && c != "50000 100000" {
				t.Errorf("cpu = %q, want a 50000us quota", c)
			}
			expect(t, got, "pids", "77")
			expect(t, got, "nofile", "1500")
			expect(t, got, "cgroupfs", "readonly")
		},
	}
}

func oomKill() check {
	return check{
		name:   "memory hog is OOM-killed and reported as OOM",
		needs:  []sandbox.Item{sandbox.ItemMemoryLimit},
		policy: oci.Policy{MemoryBytes: 48 << 20},
		script: `awk 'BEGIN { s = "0123456789abcdef"; while (1) s = s s }'`,
		verify: func(t *testing.T, r result) {
			// A backend that reports no OOM detection must still stop the
			// hog, by SIGKILL; it need not say why.
			if !r.caps.Enforced(sandbox.ItemOOMDetection) {
				t.Logf("OOM kills are not reported here (%s): the hog must be killed all the same", r.caps[sandbox.ItemOOMDetection].Reason)
				if r.exit.Code != 137 {
					t.Errorf("exit %+v, want killed by SIGKILL (stderr %q)", r.exit, r.stderr)
				}
				return
			}
			if !r.exit.OOMKilled {
				t.Errorf("exit %+v, want OOMKilled (stderr %q)", r.exit, r.stderr)
			}
			if r.exit.Code == 0 {
				t.Errorf("exit code 0 after OOM kill")
			}
		},
	}
}

func forkBomb() check {
	return check{
		name:   "fork bomb stops at the pids limit, host stays responsive",
		needs:  []sandbox.Item{sandbox.ItemPidsLimit},
		policy: oci.Policy{Pids: 40},
		script: `n=0; while [ $n -lt 1000 ]; do sleep 60 & n=$((n+1)); echo "forked=$n"; done`,
		drive: func(t *testing.T, ctx context.Context, sb sandbox.Sandbox) result {
			var out, errb syncBuffer
			if err := sb.Start(ctx, sandbox.IO{Stdout: &out, Stderr: &errb}); err != nil {
				t.Fatalf("start: %v", err)
			}
			hostResponsive(t)
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			st, err := sb.Wait(wctx)
			if err != nil {
				// The shell may survive failed forks with its children asleep.
				_ = sb.Kill(ctx)
				st, err = sb.Wait(ctx)
			}
			if err != nil {
				t.Fatalf("wait: %v", err)
			}
			return result{stdout: out.String(), stderr: errb.String(), exit: st}
		},
		verify: func(t *testing.T, r result) {
			lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
			n, _ := strconv.Atoi(kv(lines[len(lines)-1])["forked"])
			if n == 0 || n >= 40 {
				t.Errorf("forked %d processes, want between 1 and the limit 40", n)
			}
			if !strings.Contains(r.stderr, "fork") && !strings.Contains(r.stderr, "Resource temporarily unavailable") {
				t.Errorf("no fork failure reported on stderr: %q", r.stderr)
			}
		},
	}
}

func workspaceFiles() check {
	return check{
		name:  "workspace files arrive with content, mode and owner",
		files: []sandbox.File{{Path: "hello.txt", Content: []byte("hello\n")}, {Path: "bin/run.sh", Content: []byte("#!/bin/sh\necho ran\n"), Mode: 0o755}, {Path: "data/deep/blob.bin", Content: blob, Mode: 0o600}},
		script: `for f in hello.txt bin/run.sh data/deep/blob.bin bin data/deep; do echo "$f=$(stat -c '%a %u %g' $f)"; done
echo hello.content=$(cat hello.txt); echo run=$(./bin/run.sh); echo blob.sha=$(sha256sum data/deep/blob.bin | cut -d' ' -f1)
echo "hello.txt" >> hello.txt && echo edit=ok`,
		verify: func(t *testing.T, r result) {
			got := kv(r.stdout)
			expect(t, got, "hello.txt", "644 1000 1000")
			expect(t, got, "bin/run.sh", "755 1000 1000")
			expect(t, got, "data/deep/blob.bin", "600 1000 1000")
			expect(t, got, "bin", "755 1000 1000")
			expect(t, got, "data/deep", "755 1000 1000")
			expect(t, got, "hello.content", "hello")
			expect(t, got, "run", "ran")
			sum := sha256.Sum256(blob)
			expect(t, got, "blob.sha", hex.EncodeToString(sum[:]))
			expect(t, got, "edit", "ok")
		},
	}
}

func liveStdout() check {
	return check{
		name:   "stdout arrives while the process still runs",
		script: `echo first; sleep 4; echo second`,
		drive: func(t *testing.T, ctx context.Context, sb sandbox.Sandbox) result {
			firstSeen := make(chan struct{})
			var once bool
			out := &syncBuffer{onWrite: func(p []byte) {
				if !once && bytes.Contains(p, []byte("first")) {
					once = true
					close(firstSeen)
				}
			}}
			var errb syncBuffer
			if err := sb.Start(ctx, sandbox.IO{Stdout: out, Stderr: &errb}); err != nil {
				t.Fatalf("start: %v", err)
			}
			exited := make(chan result, 1)
			go func() {
				st, err := sb.Wait(ctx)
				if err != nil {
					t.Errorf("wait: %v", err)
				}
				exited <- result{stdout: out.String(), stderr: errb.String(), exit: st}
			}()
			select {
			case <-firstSeen:
			case r := <-exited:
				t.Fatalf("process exited before its first line arrived: %q", r.stdout)
			}
			select {
			case r := <-exited:
				t.Fatalf("exit reported together with the first line, output was not live: %q", r.stdout)
			default:
			}
			return <-exited
		},
		verify: func(t *testing.T, r result) {
			if r.stdout != "first\nsecond\n" {
				t.Errorf("stdout %q", r.stdout)
			}
		},
	}
}

func longLine() check {
	return check{
		name:   "a single 4 MiB line arrives intact",
		script: `head -c 4194304 /dev/zero | tr '\0' 'a'; echo`,
		verify: func(t *testing.T, r result) {
			want := strings.Repeat("a", 4<<20) + "\n"
			if r.stdout != want {
				t.Errorf("got %d bytes (%d newlines), want one line of 4 MiB", len(r.stdout), strings.Count(r.stdout, "\n"))
			}
		},
	}
}

func separateStderr() check {
	return check{
		name:   "stderr stays separate",
		script: `echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 3`,
		verify: func(t *testing.T, r result) {
			if r.stdout != "out1\nout2\n" || r.stderr != "err1\nerr2\n" {
				t.Errorf("stdout %q stderr %q", r.stdout, r.stderr)
			}
			if r.exit.Code != 3 || r.exit.OOMKilled || r.exit.Signal != "" {
				t.Errorf("exit %+v, want code 3", r.exit)
			}
		},
	}
}

func cancelKills() check {
	return check{
		name:   "cancel kills within 2 s",
		script: `trap '' TERM; echo ready; sleep 600`,
		drive: func(t *testing.T, ctx context.Context, sb sandbox.Sandbox) result {
			ready := make(chan struct{})
			var once bool
			out := &syncBuffer{onWrite: func(p []byte) {
				if !once && bytes.Contains(p, []byte("ready")) {
					once = true
					close(ready)
				}
			}}
			if err := sb.Start(ctx, sandbox.IO{Stdout: out, Stderr: io.Discard}); err != nil {
				t.Fatalf("start: %v", err)
			}
			<-ready
			wctx, cancel := context.WithCancel(ctx)
			cancel()
			if _, err := sb.Wait(wctx); err == nil {
				t.Fatal("wait on a cancelled context returned no error while the process runs")
			}
			start := time.Now()
			if err := sb.Kill(ctx); err != nil {
				t.Fatalf("kill: %v", err)
			}
			kctx, kcancel := context.WithTimeout(ctx, 2*time.Second)
			defer kcancel()
			st, err := sb.Wait(kctx)
			if err != nil {
				t.Fatalf("not dead %v after kill: %v", time.Since(start), err)
			}
			return result{stdout: out.String(), exit: st}
		},
		verify: func(t *testing.T, r result) {
			if r.exit.Signal != "SIGKILL" {
				t.Errorf("exit %+v, want killed by SIGKILL", r.exit)
			}
		},
	}
}

func networkNone() check {
	return check{
		name:   "network none has only loopback",
		needs:  []sandbox.Item{sandbox.ItemNetworkNone},
		script: `echo ifaces=$(ls /sys/class/net | tr '\n' ' ')`,
		verify: func(t *testing.T, r result) {
			expect(t, kv(r.stdout), "ifaces", "lo")
		},
	}
}

// mountsScript prints the options of the workspace, /tmp and read-only
// path mounts and, for each masked path present, what can be read of it.
func mountsScript() string {
	s := `for m in /home/user /tmp ` + strings.Join(oci.ReadonlyPaths, " ") + `; do awk -v m="$m" '$5 == m { print "mount" m "=" $6; exit }' /proc/self/mountinfo; done
`
	for _, p := range oci.MaskedPaths {
		s += fmt.Sprintf(`if [ -d %[1]s ]; then echo "masked%[1]s=$(ls -A %[1]s 2>/dev/null | wc -l)"; elif [ -e %[1]s ]; then echo "masked%[1]s=$(head -c 1 %[1]s 2>/dev/null | wc -c)"; fi
`, p)
	}
	return s
}

// bindMountCheck mounts a host directory read-only and a host Unix socket:
// the only host paths a sandbox may see are those its policy names.
func bindMountCheck() check {
	c := check{
		name:  "host directory and Unix socket mounted as the policy names",
		needs: []sandbox.Item{sandbox.ItemBindMounts},
		script: `echo data=$(cat /mnt/data/hello.txt)
touch /mnt/data/new 2>/dev/null && echo datadir=writable || echo datadir=readonly
echo sock=$(stat -c %F /run/host.sock)
echo scratch=$(ls /mnt/scratch)`,
	}
	c.setup = func(t *testing.T, c *check) {
		dir := t.TempDir()
		data, scratch := filepath.Join(dir, "data"), filepath.Join(dir, "scratch")
		for _, d := range []string{dir, data, scratch} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(data, "hello.txt"), []byte("from-host\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(scratch, "marker"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(dir, "host.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		if err := os.Chmod(sock, 0o666); err != nil {
			t.Fatal(err)
		}
		c.policy.Mounts = []oci.Mount{
			{Source: data, Target: "/mnt/data", ReadOnly: true},
			{Source: scratch, Target: "/mnt/scratch"},
			{Source: sock, Target: "/run/host.sock"},
		}
	}
	c.verify = func(t *testing.T, r result) {
		got := kv(r.stdout)
		expect(t, got, "data", "from-host")
		expect(t, got, "datadir", "readonly")
		expect(t, got, "sock", "socket")
		expect(t, got, "scratch", "marker")
	}
	return c
}

// bridgeCheck dials a listener on the host through the sandbox's default
// gateway, which is an address of this machine.
func bridgeCheck() check {
	var got chan string
	c := check{
		name:   "bridge has an address, a default route and reaches the gateway",
		needs:  []sandbox.Item{sandbox.ItemNetworkBridge},
		policy: oci.Policy{Network: oci.NetworkBridge},
	}
	c.setup = func(t *testing.T, c *check) {
		l, port := listenOnHost(t)
		t.Cleanup(func() { l.Close() })
		got = make(chan string, 1)
		go func() {
			conn, err := l.Accept()
			if err != nil {
				got <- "accept: " + err.Error()
				return
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
			b, _ := io.ReadAll(conn)
			got <- string(b)
		}()
		c.script = fmt.Sprintf(`gw=$(ip route | awk '/^default/ { print $3 }'); echo "gw=$gw"
dev=$(ip route | awk '/^default/ { print $5 }'); echo "addr=$(ip -4 addr show "$dev" | grep inet)"
echo hello-from-sandbox | nc -w 5 "$gw" %d`, port)
	}
	c.verify = func(t *testing.T, r result) {
		kvs := kv(r.stdout)
		if !strings.Contains(kvs["addr"], "inet ") {
			t.Errorf("no IPv4 address on the default route's interface: %q", kvs["addr"])
		}
		if kvs["gw"] == "" {
			t.Errorf("no default route: %q (stderr %q)", r.stdout, r.stderr)
		}
		select {
		case msg := <-got:
			if strings.TrimSpace(msg) != "hello-from-sandbox" {
				t.Errorf("listener on the gateway received %q", msg)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("nothing reached the listener on the gateway (stderr %q)", r.stderr)
		}
	}
	return c
}
