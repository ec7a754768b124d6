// Package agentimage builds sandstorm's agent image with no registry and no
// container engine: the same image its Containerfile describes, for
// the machines (CI, development) that cannot pull a base image.
//
// Stages, each cached under CacheDir and keyed by a hash of its inputs:
//
//   - base: `debootstrap --variant=minbase bookworm` from the Debian mirror
//     the host's apt uses, then in a chroot apt-get upgrade and install of
//     Packages (Debian's Node 18 and the tools the agent uses), the purge of
//     Unneeded, the user "user" (1000:1000, home /home/user), and trimming
//     (apt lists, caches, docs, man pages, locales, duplicate files).
//     Key: suite, package lists, builder version.
//   - npm: `npm ci --omit=peer` of the committed lockfile with the host's
//     npm into /opt/sandstorm-agent, which brings the SDK, its native
//     Claude Code CLI for linux/glibc, and the npm the agent uses (linked
//     from /usr/local/bin). Key: package.json, lockfile.
//   - runner: runner.mjs next to it. Key: its bytes.
//
// The image is written as ONE tar (images/imagetar) with three layers, in
// that order, under Ref and a content tag naming the hash of every input.
// A build whose inputs match the tar already at Output only checks that and
// returns; one where only runner.mjs changed reuses both cached stages.
// Before writing, the build lists the largest paths of each layer; the tar
// must stay within Budget, the size CHANGELOG.md records with its reasons.
//
// Build needs root (debootstrap, chroot, mounts). Every mount happens in a
// private mount namespace that dies with the step, so none is ever left
// behind; a lock file in CacheDir serializes concurrent builds.
package agentimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/sandstorm-dev/sandstorm/images/imagetar"
	"github.com/sandstorm-dev/sandstorm/internal/progress"
)

const (
	// BuilderVersion is part of every cache key: bump it when a build step
	// changes so that caches built by the old steps are not reused.
	BuilderVersion = "2"

	// Repo is the image's name; Ref the reference runtimes use.
	Repo = "localhost/sandstorm-agent"
	Ref  = Repo + ":latest"

	// Suite is the Debian release the rootfs is bootstrapped from.
	Suite = "bookworm"

	DefaultCacheDir = "/var/cache/sandstorm/agent-image"
	DefaultOutput   = "build/sandstorm-agent.tar"

	UserUID  = 1000
	UserGID  = 1000
	UserHome = "/home/user"

	sdkPackage = "@anthropic-ai/claude-agent-sdk"
)

// Packages are installed into the rootfs with apt-get --no-install-recommends.
// npm is not among them: Debian's pulls in 335 node-* packages, eslint,
// webpack and the C headers node-gyp builds with (100 MB); the npm layer
// carries npm's own self-contained release instead (see package.json).
var Packages = []string{"ca-certificates", "curl", "git", "nodejs", "python3", "python3-pip", "ripgrep", "tini"}

// Unneeded are purged right after Packages are installed although git
// depends on them: Perl's full module set (45 MB), which in git only the
// legacy add--interactive script (git has run its built-in one since 2.37)
// and instaweb use. perl-base, part of every Debian system, stays, so
// /usr/bin/perl runs one-liners and scripts of its core modules. The
// package database says so truthfully: an image built on this one runs
// `apt-get -f install` (or installs perl) before other packages.
var Unneeded = []string{"perl", "perl-modules-5.36", "libperl5.36", "liberror-perl"}

// Config is the image configuration.
func Config() imagetar.Config {
	return imagetar.Config{
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"HOME=" + UserHome,
			// tini reaps orphans also when it is not PID 1 (on Kubernetes a
			// gate shell is), as a child subreaper.
			"TINI_SUBREAPER=1",
		},
		User:       fmt.Sprintf("%d:%d", UserUID, UserGID),
		WorkingDir: UserHome,
		Cmd:        RunnerCommand(),
	}
}

// Options configure Build. The zero value builds with the defaults.
type Options struct {
	// Output is the image tar's path (DefaultOutput). Next to it Build keeps
	// Output + ".inputs.json", the key of the inputs the tar was built from.
	Output string
	// CacheDir holds the stage caches and the lock (DefaultCacheDir).
	CacheDir string
	// Mirror and SecurityMirror default to the ones the host's apt uses.
	Mirror         string
	SecurityMirror string
	// Sources holds package.json, package-lock.json and runner.mjs
	// (default: Files).
	Sources fs.FS
	// NPM is the host's npm (default: "npm" from PATH).
	NPM string
	// Rebuild ignores every cache.
	Rebuild bool
	// MaxSize fails the build if the image tar is larger (default: Budget,
	// from CHANGELOG.md; negative: no limit).
	MaxSize int64
	// Log receives the phase lines and the throttled output of long
	// commands (default os.Stderr).
	Log io.Writer
	// Heartbeat is the longest silence while a phase runs (5 s).
	Heartbeat time.Duration
}

// Phase is one step of a build.
type Phase struct {
	Name     string
	Duration time.Duration
	Cached   bool
}

// Result describes the built image.
type Result struct {
	// Path of the image tar.
	Path string
	// References the tar carries: Ref and the content tag.
	References []string
	// Key is the hash of every input; the content tag is its first 12 digits.
	Key string
	// Size of the image tar in bytes.
	Size int64
	// RootfsSize is the size of the image's files (regular files, each
	// hard-linked file once), i.e. unpacked.
	RootfsSize int64
	// Cached reports that the tar at Path already matched the inputs.
	Cached bool
	// Versions of the main tools in the image (node, python3, ...), and
	// SDK / Claude Code versions.
	Versions map[string]string
	Phases   []Phase
}

type builder struct {
	opts  Options
	log   io.Writer
	rep   progress.Reporter
	res   *Result
	arch  archInfo
	in    inputs
	keys  keys
	cache string
}

type archInfo struct{ deb, npm string }

func hostArch() (archInfo, error) {
	switch runtime.GOARCH {
	case "amd64":
		return archInfo{deb: "amd64", npm: "x64"}, nil
	case "arm64":
		return archInfo{deb: "arm64", npm: "arm64"}, nil
	}
	return archInfo{}, fmt.Errorf("agentimage: unsupported architecture %s (amd64 and arm64 are)", runtime.GOARCH)
}

type inputs struct {
	packageJSON, lock, runner []byte
	sdkVersion                string
}

type keys struct{ base, npm, runner, image string }

// readInputs reads the sources and checks that package.json pins the SDK
// to exactly the version the lockfile holds.
func readInputs(src fs.FS) (inputs, error) {
	var in inputs
	var err error
	if in.packageJSON, err = fs.ReadFile(src, "package.json"); err != nil {
		return in, err
	}
	if in.lock, err = fs.ReadFile(src, "package-lock.json"); err != nil {
		return in, err
	}
	if in.runner, err = fs.ReadFile(src, "runner.mjs"); err != nil {
		return in, err
	}
	var pj struct {
		Dependencies map[string]string `json:"dependencies"`
	}
	if err := json.Unmarshal(in.packageJSON, &pj); err != nil {
		return in, fmt.Errorf("package.json: %w", err)
	}
	var lock struct {
		Packages map[string]struct {
			Version string `json:"version"`
		} `json:"packages"`
	}
	if err := json.Unmarshal(in.lock, &lock); err != nil {
		return in, fmt.Errorf("package-lock.json: %w", err)
	}
	want := pj.Dependencies[sdkPackage]
	got := lock.Packages["node_modules/"+sdkPackage].Version
	if want == "" || got == "" || want != got {
		return in, fmt.Errorf("package.json must pin %s to the exact version package-lock.json holds (package.json %q, lockfile %q)", sdkPackage, want, got)
	}
	in.sdkVersion = got
	return in, nil
}

func hashOf(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		// Length-prefixed, so that no two different part lists collide.
		fmt.Fprintf(h, "%d:", len(p))
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func computeKeys(in inputs, arch archInfo) (keys, error) {
	pkgs := append([]string(nil), Packages...)
	sort.Strings(pkgs)
	var k keys
	k.base = hashOf([]byte("base"), []byte(BuilderVersion), []byte(Suite), []byte(arch.deb), []byte(strings.Join(pkgs, " ")), []byte(strings.Join(Unneeded, " ")))
	k.npm = hashOf([]byte("npm"), []byte(BuilderVersion), []byte(arch.npm), in.packageJSON, in.lock)
	k.runner = hashOf([]byte("runner"), in.runner)
	cfg, err := json.Marshal(Config())
	if err != nil {
		return k, err
	}
	k.image = hashOf([]byte("image"), []byte(BuilderVersion), []byte(k.base), []byte(k.npm), []byte(k.runner), cfg)
	return k, nil
}

// Build builds the agent image tar, reusing whatever cache matches.
func Build(ctx context.Context, opts Options) (res Result, err error) {
	if opts.Output == "" {
		opts.Output = DefaultOutput
	}
	if opts.CacheDir == "" {
		opts.CacheDir = DefaultCacheDir
	}
	if opts.Sources == nil {
		opts.Sources = Files
	}
	if opts.NPM == "" {
		opts.NPM = "npm"
	}
	if opts.MaxSize == 0 {
		if opts.MaxSize, err = Budget(); err != nil {
			return res, fmt.Errorf("agentimage: %w", err)
		}
	}
	if opts.Log == nil {
		opts.Log = os.Stderr
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 5 * time.Second
	}
	if opts.Mirror == "" || opts.SecurityMirror == "" {
		m, s := HostMirrors(Suite)
		if opts.Mirror == "" {
			opts.Mirror = m
		}
		if opts.SecurityMirror == "" {
			opts.SecurityMirror = s
		}
	}
	b := &builder{opts: opts, log: opts.Log, rep: progress.Reporter{W: opts.Log}, res: &res}
	if b.arch, err = hostArch(); err != nil {
		return res, err
	}
	if b.in, err = readInputs(opts.Sources); err != nil {
		return res, fmt.Errorf("agentimage: %w", err)
	}
	if b.keys, err = computeKeys(b.in, b.arch); err != nil {
		return res, fmt.Errorf("agentimage: %w", err)
	}
	if b.cache, err = filepath.Abs(opts.CacheDir); err != nil {
		return res, err
	}
	if res.Path, err = filepath.Abs(opts.Output); err != nil {
		return res, err
	}
	res.Key = b.keys.image
	res.References = []string{Ref, Repo + ":" + b.keys.image[:12]}
	res.Versions = map[string]string{"sdk": b.in.sdkVersion}

	if err := b.build(ctx); err != nil {
		return res, fmt.Errorf("agentimage: %w", err)
	}
	return res, nil
}

func (b *builder) phase(name string, f func() error) error {
	done := b.rep.Phase(name)
	start := time.Now()
	err := f()
	done(err)
	b.res.Phases = append(b.res.Phases, Phase{Name: name, Duration: time.Since(start)})
	return err
}

func (b *builder) cached(name, detail string) {
	fmt.Fprintf(b.log, "==> %s: cached (%s)\n", name, detail)
	b.res.Phases = append(b.res.Phases, Phase{Name: name, Cached: true})
}

func (b *builder) build(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("the offline agent image build needs root (debootstrap, chroot, mounts)")
	}
	for _, d := range []string{b.cache, filepath.Join(b.cache, "tmp"), filepath.Join(b.cache, "base"), filepath.Join(b.cache, "npm"), filepath.Dir(b.res.Path)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}

	var unlock func()
	if err := b.phase("lock "+filepath.Join(b.cache, "lock"), func() (err error) {
		unlock, err = b.lock(ctx)
		return err
	}); err != nil {
		return err
	}
	defer unlock()

	if !b.opts.Rebuild {
		if st, ok := b.upToDate(); ok {
			b.cached("image "+b.res.Path, "inputs "+b.keys.image[:12])
			b.res.Cached = true
			b.res.Size = st.Size
			b.res.RootfsSize = st.RootfsSize
			for k, v := range st.Versions {
				b.res.Versions[k] = v
			}
			return nil
		}
	}

	// Leftovers of a killed build; the lock says none is running.
	if err := b.cleanTmp(); err != nil {
		return err
	}

	rootfs, baseStamp, err := b.ensureBase(ctx)
	if err != nil {
		return err
	}
	for k, v := range baseStamp.Versions {
		b.res.Versions[k] = v
	}
	npmLayer, npmStamp, err := b.ensureNPM(ctx)
	if err != nil {
		return err
	}
	for k, v := range npmStamp.Versions {
		b.res.Versions[k] = v
	}

	runnerDir, err := os.MkdirTemp(filepath.Join(b.cache, "tmp"), "runner-")
	if err != nil {
		return err
	}
	defer safeRemoveAll(runnerDir)
	if err := b.phase("runner", func() error { return b.writeRunner(runnerDir) }); err != nil {
		return err
	}

	layers := []imagetar.Layer{
		{Dir: rootfs},
		{Dir: npmLayer, Override: rootOwned},
		{Dir: runnerDir, Override: rootOwned},
	}
	names := []string{"1 (base rootfs)", "2 (npm)", "3 (runner)"}
	if err := b.phase("size of each layer, largest paths", func() error {
		var total int64
		for i, l := range layers {
			u, err := measure(l.Dir, largestPaths)
			if err != nil {
				return err
			}
			u.print(b.log, names[i])
			total += u.Total
		}
		b.res.RootfsSize = total
		fmt.Fprintf(b.log, "    image files: %s\n", mb(total))
		return nil
	}); err != nil {
		return err
	}

	cfg := Config()
	cfg.Labels = map[string]string{
		"org.opencontainers.image.title": "sandstorm-agent",
		"dev.sandstorm.agent.inputs":     b.keys.image,
		"dev.sandstorm.agent.sdk":        b.in.sdkVersion,
	}
	if v := b.res.Versions["claude-code"]; v != "" {
		cfg.Labels["dev.sandstorm.agent.claude-code"] = v
	}
	if err := b.phase("write "+b.res.Path, func() error {
		stop := progress.Heartbeat(b.log, "writing the image tar", b.opts.Heartbeat)
		defer stop()
		// A stale sidecar must never vouch for a half-replaced tar.
		if err := os.Remove(sidecarPath(b.res.Path)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err := imagetar.WriteFileRefs(ctx, b.res.Path, b.res.References, cfg, layers...); err != nil {
			return err
		}
		st, err := os.Stat(b.res.Path)
		if err != nil {
			return err
		}
		b.res.Size = st.Size()
		limit := ""
		if b.opts.MaxSize > 0 {
			limit = ", limit " + mb(b.opts.MaxSize)
		}
		fmt.Fprintf(b.log, "    %s: %s%s\n", b.res.Path, mb(st.Size()), limit)
		if b.opts.MaxSize > 0 && st.Size() > b.opts.MaxSize {
			os.Remove(b.res.Path)
			return fmt.Errorf("image tar is %s, over the %s limit (removed it): trim what the agent does not need (the largest paths of each layer are listed above), or say in images/agentimage/CHANGELOG.md why it grows", mb(st.Size()), mb(b.opts.MaxSize))
		}
		return b.writeSidecar(st)
	}); err != nil {
		return err
	}

	b.prune()
	return nil
}

func rootOwned(_ string, a *imagetar.Attr) {
	a.UID, a.GID = 0, 0
}

func mb(n int64) string {
	return fmt.Sprintf("%.1f MB (%.1f MiB)", float64(n)/1e6, float64(n)/(1<<20))
}

// ---- the tar's sidecar ------------------------------------------------------

type sidecar struct {
	Key            string            `json:"key"`
	BuilderVersion string            `json:"builder_version"`
	References     []string          `json:"references"`
	Size           int64             `json:"size"`
	ModTimeUnixNs  int64             `json:"mtime_unix_ns"`
	RootfsSize     int64             `json:"rootfs_size"`
	Versions       map[string]string `json:"versions"`
}

func sidecarPath(out string) string { return out + ".inputs.json" }

func (b *builder) writeSidecar(st os.FileInfo) error {
	sc := sidecar{
		Key:            b.keys.image,
		BuilderVersion: BuilderVersion,
		References:     b.res.References,
		Size:           st.Size(),
		ModTimeUnixNs:  st.ModTime().UnixNano(),
		RootfsSize:     b.res.RootfsSize,
		Versions:       b.res.Versions,
	}
	return writeJSON(sidecarPath(b.res.Path), sc)
}

// upToDate reports whether the tar at Output was built from these inputs
// and has not been replaced since.
func (b *builder) upToDate() (sidecar, bool) {
	var sc sidecar
	data, err := os.ReadFile(sidecarPath(b.res.Path))
	if err != nil || json.Unmarshal(data, &sc) != nil || sc.Key != b.keys.image {
		return sc, false
	}
	st, err := os.Stat(b.res.Path)
	if err != nil || st.Size() != sc.Size || st.ModTime().UnixNano() != sc.ModTimeUnixNs {
		return sc, false
	}
	return sc, true
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ---- lock -------------------------------------------------------------------

// lock takes an exclusive flock on CacheDir/lock, waiting (and saying so)
// while another build holds it. The kernel drops it if the process dies.
func (b *builder) lock(ctx context.Context) (func(), error) {
	path := filepath.Join(b.cache, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	waitStart := time.Now()
	lastSaid := time.Time{}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if time.Since(lastSaid) >= b.opts.Heartbeat {
			holder, _ := os.ReadFile(path)
			fmt.Fprintf(b.log, "    waiting for another agent image build (pid %s) to finish (%s)\n",
				strings.TrimSpace(string(holder)), time.Since(waitStart).Round(time.Second))
			lastSaid = time.Now()
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(fmt.Sprintf("%d\n", os.Getpid())), 0)
	return func() {
		_ = f.Truncate(0)
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

func (b *builder) cleanTmp() error {
	tmp := filepath.Join(b.cache, "tmp")
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := safeRemoveAll(filepath.Join(tmp, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// prune removes cached stages of other inputs: each is hundreds of MB.
func (b *builder) prune() {
	keep := map[string]string{"base": b.keys.base[:16], "npm": b.keys.npm[:16]}
	for stage, k := range keep {
		ents, err := os.ReadDir(filepath.Join(b.cache, stage))
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.Name() == k {
				continue
			}
			p := filepath.Join(b.cache, stage, e.Name())
			if err := safeRemoveAll(p); err != nil {
				fmt.Fprintf(b.log, "    warning: prune %s: %v\n", p, err)
			} else {
				fmt.Fprintf(b.log, "    pruned stale cache %s\n", p)
			}
		}
	}
}

// lookTool finds a host tool also in the sbin directories a non-login
// root shell may lack in PATH.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}
