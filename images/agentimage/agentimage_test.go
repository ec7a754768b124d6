package agentimage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"
)

func TestMirrorsFrom(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "sources.list.d"), 0o755))
	// This machine's layout: deb822 files, plus files apt ignores.
	must(os.WriteFile(filepath.Join(dir, "sources.list.d", "debian.sources"), []byte(`Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
`), 0o644))
	must(os.WriteFile(filepath.Join(dir, "sources.list.d", "other.list.disabled"), []byte("deb http://bad.example/debian bookworm main\n"), 0o644))
	m, s := mirrorsFrom(readHostSources(dir), "bookworm")
	if m != "http://mirror.example/debian" || s != "http://security.example/debian-security" {
		t.Errorf("deb822: %s %s", m, s)
	}

	// One-line format with options; a disabled deb822 stanza is skipped.
	dir2 := t.TempDir()
	must(os.MkdirAll(filepath.Join(dir2, "sources.list.d"), 0o755))
	must(os.WriteFile(filepath.Join(dir2, "sources.list"), []byte(`# comment
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] https://one.example/debian/ bookworm main contrib
deb http://sec.example/debian-security bookworm-security main
`), 0o644))
	must(os.WriteFile(filepath.Join(dir2, "sources.list.d", "x.sources"), []byte("Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n"), 0o644))
	m, s = mirrorsFrom(readHostSources(dir2), "bookworm")
	if m != "https://one.example/debian" || s != "http://sec.example/debian-security" {
		t.Errorf("one-line: %s %s", m, s)
	}

	// Another release on the host: a /debian URI still names the mirror.
	m, s = mirrorsFrom([]aptSource{{URI: "http://m.example/debian", Suites: []string{"trixie"}}}, "bookworm")
	if m != "http://m.example/debian" || s != FallbackSecurityMirror {
		t.Errorf("other suite: %s %s", m, s)
	}
	// Nothing Debian at all.
	m, s = mirrorsFrom(nil, "bookworm")
	if m != FallbackMirror || s != FallbackSecurityMirror {
		t.Errorf("fallback: %s %s", m, s)
	}
}

func testInputs(t *testing.T, runner, lock string) inputs {
	t.Helper()
	src := fstest.MapFS{
		"package.json":      {Data: []byte(`{"dependencies":{"@anthropic-ai/claude-agent-sdk":"1.2.3"}}`)},
		"package-lock.json": {Data: []byte(`{"packages":{"node_modules/@anthropic-ai/claude-agent-sdk":{"version":"1.2.3"}},"x":"` + lock + `"}`)},
		"runner.mjs":        {Data: []byte(runner)},
	}
	in, err := readInputs(src)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestKeys(t *testing.T) {
	arch := archInfo{deb: "amd64", npm: "x64"}
	k0, err := computeKeys(testInputs(t, "r1", "l1"), arch)
	if err != nil {
		t.Fatal(err)
	}
	kRunner, _ := computeKeys(testInputs(t, "r2", "l1"), arch)
	kLock, _ := computeKeys(testInputs(t, "r1", "l2"), arch)
	kArch, _ := computeKeys(testInputs(t, "r1", "l1"), archInfo{deb: "arm64", npm: "arm64"})

	if kRunner.base != k0.base || kRunner.npm != k0.npm || kRunner.runner == k0.runner || kRunner.image == k0.image {
		t.Errorf("runner change: %+v vs %+v", kRunner, k0)
	}
	if kLock.base != k0.base || kLock.npm == k0.npm || kLock.image == k0.image {
		t.Errorf("lockfile change: %+v vs %+v", kLock, k0)
	}
	if kArch.base == k0.base || kArch.npm == k0.npm {
		t.Errorf("arch change: %+v vs %+v", kArch, k0)
	}
	again, _ := computeKeys(testInputs(t, "r1", "l1"), arch)
	if again != k0 {
		t.Error("keys are not deterministic")
	}
}

func TestReadInputs(t *testing.T) {
	in, err := readInputs(Files)
	if err != nil {
		t.Fatalf("the committed sources: %v", err)
	}
	if in.sdkVersion != "0.3.332" {
		t.Errorf("SDK %s", in.sdkVersion)
	}
	for name, pj := range map[string]string{
		"range":    `{"dependencies":{"@anthropic-ai/claude-agent-sdk":"^1.2.3"}}`,
		"other":    `{"dependencies":{"@anthropic-ai/claude-agent-sdk":"1.2.4"}}`,
		"missing":  `{"dependencies":{}}`,
		"not json": `{`,
	} {
		src := fstest.MapFS{
			"package.json":      {Data: []byte(pj)},
			"package-lock.json": {Data: []byte(`{"packages":{"node_modules/@anthropic-ai/claude-agent-sdk":{"version":"1.2.3"}}}`)},
			"runner.mjs":        {Data: []byte("x")},
		}
		if _, err := readInputs(src); err == nil {
			t.Errorf("%s: want error", name)
		}
	}
}

func TestStreamerThrottles(t *testing.T) {
	var buf bytes.Buffer
	s := newStreamer(&buf, "job", time.Hour)
	s.lastOut = time.Now() // as right after the phase line
	for i := 0; i < 100; i++ {
		s.line("I: Retrieving package")
	}
	s.line("E: something broke")
	s.line("I: last")
	got := buf.String()
	if strings.Count(got, "\n") != 1 || !strings.Contains(got, "E: something broke") {
		t.Errorf("want only the error line at once, got %q", got)
	}
	s.lastOut = time.Now().Add(-throttleEvery)
	s.tick()
	if !strings.HasSuffix(buf.String(), "    I: last\n") {
		t.Errorf("tick should show the newest held line: %q", buf.String())
	}
	buf.Reset()
	s.finish(true)
	if !strings.Contains(buf.String(), "last output of job") || strings.Count(buf.String(), "| ") != tailLines {
		t.Errorf("failure tail: %q", buf.String())
	}

	buf.Reset()
	s2 := newStreamer(&buf, "quiet", time.Millisecond)
	time.Sleep(2 * time.Millisecond)
	s2.tick()
	if !strings.Contains(buf.String(), "quiet still running") {
		t.Errorf("heartbeat: %q", buf.String())
	}
}

func TestRunStreamsAndCancels(t *testing.T) {
	var buf syncBuffer
	b := &builder{opts: Options{Heartbeat: time.Hour}, log: &buf}
	if err := b.run(context.Background(), "echo", exec.Command("/bin/sh", "-c", "echo out; echo err >&2")); err != nil {
		t.Fatal(err)
	}
	// Throttled: of two quick lines, the newest is shown when the command ends.
	if got := buf.String(); got != "    err\n" {
		t.Errorf("output %q", got)
	}
	err := b.run(context.Background(), "false", exec.Command("/bin/sh", "-c", "echo why; exit 3"))
	if err == nil || !strings.Contains(buf.String(), "| why") {
		t.Errorf("failure: err %v, output %q", err, buf.String())
	}

	// Cancelling kills the whole process group, grandchildren included.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	err = b.run(ctx, "sleep", exec.Command("/bin/sh", "-c", "sleep 30 & sleep 30; wait"))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %v", d)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestMountsUnder(t *testing.T) {
	mps, err := mountsUnder("/proc")
	if err != nil || len(mps) == 0 || mps[len(mps)-1] != "/proc" {
		t.Errorf("mounts under /proc: %v %v", mps, err)
	}
	if mps, _ := mountsUnder(t.TempDir()); len(mps) != 0 {
		t.Errorf("a fresh directory has mounts %v", mps)
	}
	// The mount table escapes spaces, tabs and backslashes (\040, ...):
	// the paths come back as they are, the deepest first.
	if os.Geteuid() != 0 {
		t.Skip("mounting a test tmpfs needs root")
	}
	dir := t.TempDir()
	outer := filepath.Join(dir, "with space")
	inner := filepath.Join(outer, "tab\tand\\slash")
	os.Mkdir(outer, 0o755)
	if err := syscall.Mount("tmpfs", outer, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(outer, syscall.MNT_DETACH)
	os.Mkdir(inner, 0o755)
	if err := syscall.Mount("tmpfs", inner, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(inner, syscall.MNT_DETACH)
	if mps, err := mountsUnder(dir); err != nil || !slices.Equal(mps, []string{inner, outer}) {
		t.Errorf("mounts under %s: %q %v, want %q", dir, mps, err, []string{inner, outer})
	}
}

// writeTree writes each file of files (path: content) under root.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestTrim(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{
		"usr/share/doc/git/copyright":                         "c",
		"usr/share/doc/git/changelog.gz":                      "x",
		"usr/share/doc/git/contrib/x.sh":                      "x",
		"usr/share/man/man1/git.1.gz":                         "x",
		"usr/share/locale/de/LC_MESSAGES/x.mo":                "x",
		"usr/share/locale/locale.alias":                       "keep",
		"usr/share/nodejs/@types/node/index.d.ts":             "x",
		"usr/share/nodejs/acorn/package.json":                 "keep",
		"usr/lib/python3.11/__pycache__/os.cpython-311.pyc":   "x",
		"usr/lib/python3.11/os.py":                            "keep",
		"usr/lib/python3/dist-packages/a/__pycache__/b.pyc":   "x",
		"var/lib/apt/lists/deb.debian.org_dists_bookworm_Rel": "x",
		"var/cache/apt/pkgcache.bin":                          "x",
		"var/cache/apt/archives/git.deb":                      "x",
		"var/log/apt/history.log":                             "x",
		"var/log/dpkg.log":                                    "x",
		"usr/sbin/policy-rc.d":                                "x",
		"etc/resolv.conf":                                     "nameserver 10.0.0.1\n",
		"tmp/junk":                                            "x",
		"root/.bashrc":                                        "keep",
		"root/.cache/x":                                       "x",
	}
	writeTree(t, root, files)
	if err := trim(root); err != nil {
		t.Fatal(err)
	}
	for p, c := range files {
		_, err := os.Stat(filepath.Join(root, p))
		kept := err == nil
		wantKept := c == "keep" || c == "c"
		if p == "etc/resolv.conf" {
			data, _ := os.ReadFile(filepath.Join(root, p))
			if len(data) != 0 {
				t.Errorf("resolv.conf not blanked: %q", data)
			}
			continue
		}
		if kept != wantKept {
			t.Errorf("%s: kept %v, want %v", p, kept, wantKept)
		}
	}
	for _, d := range []string{"var/log/apt", "usr/share/man", "tmp"} {
		if st, err := os.Stat(filepath.Join(root, d)); err != nil || !st.IsDir() {
			t.Errorf("directory %s should stay", d)
		}
	}
}

func TestFixModes(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "a/b"), 0o700))
	must(os.WriteFile(filepath.Join(root, "a/b/exe"), nil, 0o700))
	must(os.WriteFile(filepath.Join(root, "a/f"), nil, 0o600))
	must(os.Symlink("f", filepath.Join(root, "a/link")))
	must(fixModes(root))
	for p, want := range map[string]os.FileMode{"a": 0o755, "a/b": 0o755, "a/b/exe": 0o755, "a/f": 0o644} {
		st, err := os.Stat(filepath.Join(root, p))
		must(err)
		if st.Mode().Perm() != want {
			t.Errorf("%s: %v, want %v", p, st.Mode().Perm(), want)
		}
	}
}

func TestLockSerializes(t *testing.T) {
	dir := t.TempDir()
	var log syncBuffer
	b1 := &builder{opts: Options{Heartbeat: 50 * time.Millisecond}, log: &log, cache: dir}
	b2 := &builder{opts: Options{Heartbeat: 50 * time.Millisecond}, log: &log, cache: dir}
	unlock1, err := b1.lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := b2.lock(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second lock while held: %v", err)
	}
	if !strings.Contains(log.String(), "waiting for another agent image build") {
		t.Errorf("no waiting line: %q", log.String())
	}
	unlock1()
	unlock2, err := b2.lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	unlock2()
}

func TestUpToDate(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "img.tar")
	res := &Result{Path: out}
	b := &builder{res: res, keys: keys{image: "k1"}}
	if _, ok := b.upToDate(); ok {
		t.Fatal("no tar: up to date")
	}
	if err := os.WriteFile(out, []byte("tar"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(out)
	if err := b.writeSidecar(st); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.upToDate(); !ok {
		t.Error("matching tar: not up to date")
	}
	b.keys.image = "k2"
	if _, ok := b.upToDate(); ok {
		t.Error("other inputs: up to date")
	}
	b.keys.image = "k1"
	if err := os.WriteFile(out, []byte("other"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.upToDate(); ok {
		t.Error("replaced tar: up to date")
	}
}

func TestNPMLayer(t *testing.T) {
	layer := t.TempDir()
	install := filepath.Join(layer, InstallDir)
	files := map[string]string{
		"node_modules/npm/package.json":                        `{"name":"npm","version":"10.9.9"}`,
		"node_modules/npm/bin/npm-cli.js":                      "keep",
		"node_modules/npm/bin/npx-cli.js":                      "keep",
		"node_modules/npm/lib/cli.js":                          "keep",
		"node_modules/npm/docs/content/commands/npm.md":        "x",
		"node_modules/npm/man/man1/npm.1":                      "x",
		"node_modules/npm/node_modules/tar/index.d.ts":         "x",
		"node_modules/@anthropic-ai/claude-agent-sdk/sdk.mjs":  "keep",
		"node_modules/@anthropic-ai/claude-agent-sdk/sdk.d.ts": "x",
		"node_modules/@anthropic-ai/claude-agent-sdk/x.d.mts":  "x",
	}
	writeTree(t, install, files)
	versions := map[string]string{}
	if err := npmCommands(layer, versions); err != nil {
		t.Fatal(err)
	}
	if versions["npm"] != "10.9.9" {
		t.Errorf("npm version %q", versions["npm"])
	}
	for cmd, want := range map[string]string{"npm": "/opt/sandstorm-agent/node_modules/npm/bin/npm-cli.js", "npx": "/opt/sandstorm-agent/node_modules/npm/bin/npx-cli.js"} {
		if got, err := os.Readlink(filepath.Join(layer, "usr/local/bin", cmd)); err != nil || got != want {
			t.Errorf("usr/local/bin/%s -> %q (%v), want %q", cmd, got, err, want)
		}
	}
	if err := trimNPM(install); err != nil {
		t.Fatal(err)
	}
	for p, c := range files {
		_, err := os.Stat(filepath.Join(install, p))
		if kept, want := err == nil, c != "x"; kept != want {
			t.Errorf("%s: kept %v, want %v", p, kept, want)
		}
	}

	if err := npmCommands(t.TempDir(), map[string]string{}); err == nil || !strings.Contains(err.Error(), "no npm") {
		t.Errorf("a layer without npm: %v", err)
	}
}

// TestContainerfileInStep: the Containerfile, for hosts with a registry,
// installs, purges and leaves out what the offline build does.
func TestContainerfileInStep(t *testing.T) {
	data, err := os.ReadFile("Containerfile")
	if err != nil {
		t.Fatal(err)
	}
	cf := string(data)
	var want []string
	for _, line := range strings.Split(dpkgExcludes, "\n") {
		if strings.HasPrefix(line, "path-") {
			want = append(want, "'"+line+"'")
		}
	}
	want = append(want, "install \\\n      "+strings.Join(Packages, " ")+" \\\n",
		"dpkg --purge --force-depends "+strings.Join(Unneeded, " "),
		"ln -s "+InstallDir+"/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm",
		"ln -s "+InstallDir+"/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx")
	for _, w := range want {
		if !strings.Contains(cf, w) {
			t.Errorf("the Containerfile lacks %q", w)
		}
	}
}
