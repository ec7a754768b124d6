package conformance

import (
	"context"
	_ "embed"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"

	"github.com/sandstorm-dev/sandstorm/images/testimage"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// goldenFingerprint is what the probe must print in every backend's
// sandbox. Lines starting with "[backend]" are the differences a backend
// cannot avoid (sandbox.Info.Differences), each followed by its reason.
//
//go:embed testdata/fingerprint.golden
var goldenFingerprint string

// goldenGVisor is the same for gVisor: another kernel answers, so it is
// its own file; the policy's items must still hold in it.
//
//go:embed testdata/fingerprint-gvisor.golden
var goldenGVisor string

var fingerprintOut = flag.String("fingerprint.out", "", "also write the probe's fingerprint of this backend to this `file`")

// fingerprintMounts are the mount points the fingerprint reports.
var fingerprintMounts = []string{"/", "/dev", "/dev/shm", "/tmp", oci.Workspace, "/run/sandstorm", "/sys", "/sys/fs/cgroup", "/proc"}

// fingerprint runs the probe in a sandbox with the default policy and a
// read-only host directory at /run/sandstorm (as an agent run has), and
// compares what it prints, line by line, with the golden fingerprint as it
// stands for this backend; the differences the golden file lists for it
// must be the ones its Info reports.
func fingerprint(t *testing.T, rt sandbox.Runtime, caps sandbox.Enforcement) {
	info, err := rt.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	text := goldenFingerprint
	if info.Isolation == sandbox.IsolationGVisor {
		text = goldenGVisor
	}
	golden, err := parseGolden(text)
	if err != nil {
		t.Fatal(err)
	}
	// Within one golden file a backend is named without its isolation.
	label := strings.TrimSuffix(info.Label(), "+"+string(info.Isolation))
	want := golden.forBackend(label)
	listed := golden.differences[label]
	var reported []string
	for _, d := range info.Differences {
		if d.Reason == "" {
			t.Errorf("%s reports a difference without a reason: %+v", info.Label(), d)
		}
		if d.OfHost {
			// This host's value (a limit the backend could not raise): no
			// golden file can hold it, so the sandbox must show it as Info says.
			want.lines[d.Line] = d.Value
			continue
		}
		reported = append(reported, d.Line+": "+d.Value)
	}
	slices.Sort(listed)
	slices.Sort(reported)
	if !slices.Equal(listed, reported) {
		t.Errorf("the golden fingerprint lists %q for %s, its Info reports %q: both must name the same differences", listed, info.Label(), reported)
	}

	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := want.hostFilesystems(map[string]string{stateFS: stateDir, nodeFS: nodeDir, tmpFS: dir}); err != nil {
		t.Fatal(err)
	}
	c := check{
		policy: oci.Policy{Mounts: []oci.Mount{{Source: dir, Target: "/run/sandstorm", ReadOnly: true}}},
		script: testimage.Probe + " -mounts " + strings.Join(fingerprintMounts, ",") +
			" -masked " + strings.Join(oci.MaskedPaths, ",") + " -readonly " + strings.Join(oci.ReadonlyPaths, ","),
	}
	r := runCheck(t, rt, c, unexercised(caps, c))
	if r.exit.Code != 0 {
		t.Fatalf("probe exit %+v, stderr %q", r.exit, r.stderr)
	}
	if *fingerprintOut != "" {
		if err := os.WriteFile(*fingerprintOut, []byte(r.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := parseGolden(r.stdout)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range diffLines(want, got.lines) {
		t.Error(d)
	}
	if t.Failed() {
		t.Logf("the probe printed:\n%s", r.stdout)
	}
}

// The golden files' words for a filesystem type the host chooses: a bind
// mount shows its source's filesystem (ext4 here; xfs, btrfs or tmpfs
// elsewhere). stateFS is that of stateDir, where every backend keeps its
// workspaces by default; nodeFS that of nodeDir, where the project's
// Kubernetes node keeps its emptyDirs (scripts/k8s-up.sh); tmpFS that of
// the test's temporary directory, bound at /run/sandstorm.
const (
	stateFS  = "state-fs"
	nodeFS   = "node-fs"
	tmpFS    = "tmp-fs"
	stateDir = "/var/lib/sandstorm"
	nodeDir  = "/var/lib/sandstorm/k8s"
)

// hostFilesystems puts in each line's first word that names a host's
// filesystem (a key of paths) the type of the filesystem that holds its
// path on this host.
func (g golden) hostFilesystems(paths map[string]string) error {
	mounts, err := mountinfo.GetMounts(nil)
	if err != nil {
		return fmt.Errorf("this host's mounts: %w", err)
	}
	for k, v := range g.lines {
		word, rest, _ := strings.Cut(v, " ")
		path, ok := paths[word]
		if !ok {
			continue
		}
		fs, err := filesystemOf(mounts, path)
		if err != nil {
			return err
		}
		g.lines[k] = strings.TrimSpace(fs + " " + rest)
	}
	return nil
}

// filesystemOf is the type of the filesystem mounted deepest above path.
func filesystemOf(mounts []*mountinfo.Info, path string) (string, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("the filesystem of %s: %w", path, err)
	}
	best := ""
	fs := ""
	for _, m := range mounts {
		inside := real == m.Mountpoint || strings.HasPrefix(real, strings.TrimSuffix(m.Mountpoint, "/")+"/")
		if inside && len(m.Mountpoint) >= len(best) {
			best, fs = m.Mountpoint, m.FSType
		}
	}
	if fs == "" {
		return "", fmt.Errorf("the filesystem of %s: no mount holds it", path)
	}
	return fs, nil
}

// golden is a parsed fingerprint: its lines in order, and per backend the
// lines it shows instead.
type golden struct {
	keys        []string
	lines       map[string]string
	overrides   map[string]map[string]string
	differences map[string][]string
}

// parseGolden reads "key: value" lines; "[backend] key: value" lines are a
// backend's differences, and the lines after one starting with "#" its reason.
func parseGolden(s string) (golden, error) {
	g := golden{lines: map[string]string{}, overrides: map[string]map[string]string{}, differences: map[string][]string{}}
	for n, l := range strings.Split(s, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		backend := ""
		if rest, ok := strings.CutPrefix(l, "["); ok {
			var found bool
			if backend, l, found = strings.Cut(rest, "] "); !found {
				return golden{}, fmt.Errorf("fingerprint line %d: %q: want [backend] key: value", n+1, l)
			}
		}
		k, v, ok := strings.Cut(l, ": ")
		if !ok {
			return golden{}, fmt.Errorf("fingerprint line %d: %q: want key: value", n+1, l)
		}
		if backend != "" {
			if g.overrides[backend] == nil {
				g.overrides[backend] = map[string]string{}
			}
			g.overrides[backend][k] = v
			g.differences[backend] = append(g.differences[backend], k+": "+v)
			continue
		}
		if _, dup := g.lines[k]; dup {
			return golden{}, fmt.Errorf("fingerprint line %d: %q given twice", n+1, k)
		}
		g.keys = append(g.keys, k)
		g.lines[k] = v
	}
	return g, nil
}

// forBackend is the fingerprint a backend's sandbox must show.
func (g golden) forBackend(label string) golden {
	out := golden{keys: g.keys, lines: map[string]string{}}
	for k, v := range g.lines {
		out.lines[k] = v
	}
	for k, v := range g.overrides[label] {
		out.lines[k] = v
	}
	return out
}

// diffLines lists every line of got that differs from want, by key.
func diffLines(want golden, got map[string]string) []string {
	var out []string
	for _, k := range want.keys {
		switch g, ok := got[k]; {
		case !ok:
			out = append(out, k+": missing, want "+want.lines[k])
		case g != want.lines[k]:
			out = append(out, k+": "+g+", want "+want.lines[k])
		}
	}
	var extra []string
	for k, v := range got {
		if _, ok := want.lines[k]; !ok {
			extra = append(extra, k+": "+v+", not in the golden fingerprint")
		}
	}
	slices.Sort(extra)
	return append(out, extra...)
}
