package conformance

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// TestGoldenFilesHoldNoHostValue fails here, on the machine that would
// write a host's value into a golden file, rather than on the next machine:
// it reads what a sandbox could inherit from this host (the test process's
// resource limits, as a daemon it started would pass them on; the CPU
// count; the memory; the hostname; the kernel release) and looks for each
// in every golden file of the module. A value the policy sets itself (an
// rlimit of oci.Rlimits) is no host value, and a fingerprint's rlimit line
// must be the policy's.
func TestGoldenFilesHoldNoHostValue(t *testing.T) {
	root := moduleRoot(t)
	values := hostValues(t)
	policyLimits := map[string]string{}
	for _, l := range oci.Rlimits(oci.Policy{}.WithDefaults()) {
		k, v := sandbox.RlimitLine(l)
		policyLimits[k] = v
	}
	for _, path := range goldenFiles(t, root) {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, path)
		for n, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			if k, v, ok := strings.Cut(line, ": "); ok && strings.HasPrefix(k, "rlimit ") {
				if want := policyLimits[k]; v != want {
					t.Errorf("%s:%d: %s is %s, the policy's is %s: a limit the policy does not set is the host's", rel, n+1, k, v, want)
				}
			}
			if m := tempPath.FindString(line); m != "" {
				t.Errorf("%s:%d: %q is a temporary directory of this machine: normalise it in the test that writes the file", rel, n+1, m)
			}
			seen := map[string]bool{}
			for _, tok := range tokens(line) {
				if what, ok := values[tok]; ok && !seen[tok] {
					seen[tok] = true
					t.Errorf("%s:%d: %q is this host's %s, which the policy does not set: set it in the policy, or normalise it in the test that writes the file", rel, n+1, tok, what)
				}
			}
		}
	}
}

// hostValues maps each value of this host a sandbox could inherit to what
// it is. Left out, so that the test holds on every host and not only on
// this one: the values the policy gives itself; round numbers (a power of
// two or a multiple of 100: what distributions and admins configure, 1024
// open files, and what tests write, a quota of 50000), which match others
// by chance, while what the kernel sizes from the machine (SIGPENDING,
// NPROC, the memory) is not round; values of one or two characters (the
// CPU count of a small host: the probe prints none, the policy sets the
// CPU quota); a hostname that is a plain word ("debian", "runner"), which
// a golden file may hold for its own reasons; the system's users (uids
// under 1000, nobody).
func hostValues(t *testing.T) map[string]string {
	t.Helper()
	policy := map[string]bool{"unlimited": true}
	for _, l := range oci.Rlimits(oci.Policy{}.WithDefaults()) {
		for _, v := range []uint64{l.Soft, l.Hard} {
			// Also in the units ulimit counts in (the Kubernetes gate's words).
			for _, unit := range []uint64{1, 512, 1024} {
				if v != oci.Unlimited && v%unit == 0 {
					policy[strconv.FormatUint(v/unit, 10)] = true
				}
			}
		}
	}
	policy[strconv.Itoa(oci.DefaultUID)], policy[strconv.Itoa(oci.DefaultGID)] = true, true
	out := map[string]string{}
	add := func(v, what string) {
		if len(v) > 2 && !policy[v] && !round(v) {
			out[v] = what
		}
	}
	for _, l := range oci.Rlimits(oci.Policy{}) {
		res, _ := oci.RlimitResource(l.Type)
		var rl unix.Rlimit
		if err := unix.Getrlimit(res, &rl); err != nil {
			t.Fatal(err)
		}
		_, v := sandbox.RlimitLine(specs.POSIXRlimit{Type: l.Type, Soft: rl.Cur, Hard: rl.Max})
		soft, hard, _ := strings.Cut(v, ":")
		add(soft, l.Type+" (soft)")
		add(hard, l.Type+" (hard)")
	}
	add(strconv.Itoa(runtime.NumCPU()), "CPU count")
	if kb := memTotalKB(t); kb > 0 {
		add(strconv.FormatUint(kb, 10), "memory in KiB")
		add(strconv.FormatUint(kb<<10, 10), "memory in bytes")
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	if name := unix.ByteSliceToString(u.Nodename[:]); strings.ContainsAny(name, "0123456789-.") {
		add(name, "hostname")
	}
	add(unix.ByteSliceToString(u.Release[:]), "kernel release")
	for _, f := range []string{"/proc/sys/kernel/random/boot_id", "/etc/machine-id"} {
		if id, err := os.ReadFile(f); err == nil {
			add(strings.TrimSpace(string(id)), f)
		}
	}
	// The ids of this host's users: a golden file's ids must be the policy's.
	if passwd, err := os.ReadFile("/etc/passwd"); err == nil {
		for _, l := range strings.Split(string(passwd), "\n") {
			f := strings.Split(l, ":")
			if len(f) < 4 {
				continue
			}
			if uid, err := strconv.Atoi(f[2]); err == nil && uid >= 1000 && uid != 65534 {
				add(f[2], "uid of the local user "+f[0])
				add(f[3], "gid of the local user "+f[0])
			}
		}
	}
	return out
}

// round reports whether v is a power of two or a multiple of 100.
func round(v string) bool {
	n, err := strconv.ParseUint(v, 10, 64)
	return err == nil && (n&(n-1) == 0 || n%100 == 0)
}

// tempPath is a directory a test made (t.TempDir, os.MkdirTemp): its name
// holds a random number.
var tempPath = regexp.MustCompile(`/(tmp|var/tmp)/[^\s"]*[0-9]{6,}`)

func memTotalKB(t *testing.T) uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "MemTotal:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb
		}
	}
	return 0
}

// tokens splits a line into the words and numbers a value could be: runs
// of letters, digits, dots, dashes and underscores.
func tokens(line string) []string {
	return strings.FieldsFunc(line, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_')
	})
}

// goldenFiles are the files tests compare output with: everything under a
// testdata directory, the fingerprints, the seccomp profile and the OpenAPI
// document.
func goldenFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "build" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.Contains(filepath.ToSlash(path), "/testdata/") || strings.HasSuffix(name, ".golden") || name == "openapi.json" || name == "seccomp.json" {
			out = append(out, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("no golden files found under " + root)
	}
	return out
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}
