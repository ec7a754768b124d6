package agentimage

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// trim removes what the image does not need at run time: apt's package
// lists and caches, logs, documentation (copyright files stay), man and
// info pages, translations, Node's TypeScript declarations, Python's
// byte-code caches (as the official Python images do: Python runs without
// them and cannot write them on a read-only root anyway), and the
// build-time helpers; it blanks the host's resolv.conf that apt needed
// (runtimes provide their own).
func trim(rootfs string) error {
	r := func(rel string) string { return filepath.Join(rootfs, rel) }
	var errs []error
	removeContents := func(rel string, keep func(name string) bool) {
		ents, err := os.ReadDir(r(rel))
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
			return
		}
		for _, e := range ents {
			if keep != nil && keep(e.Name()) {
				continue
			}
			if err := os.RemoveAll(filepath.Join(r(rel), e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	removeGlob := func(pattern string) {
		ms, _ := filepath.Glob(r(pattern))
		for _, m := range ms {
			if err := os.RemoveAll(m); err != nil {
				errs = append(errs, err)
			}
		}
	}

	if err := os.Remove(r("usr/sbin/policy-rc.d")); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	removeContents("var/lib/apt/lists", nil)
	removeGlob("var/cache/apt/*.bin")
	removeGlob("var/cache/apt/archives/*.deb")
	removeContents("var/cache/apt/archives/partial", nil)
	removeGlob("var/cache/debconf/*-old")
	removeGlob("var/lib/dpkg/*-old")
	removeContents("usr/share/man", nil)
	removeContents("usr/share/info", nil)
	removeContents("usr/share/lintian", nil)
	removeContents("usr/share/linda", nil)
	removeContents("usr/share/locale", func(n string) bool { return n == "locale.alias" })
	removeContents("usr/share/nodejs/@types", nil)
	removeContents("tmp", nil)
	removeContents("var/tmp", nil)
	removeContents("root", func(n string) bool { return n == ".bashrc" || n == ".profile" })

	// Documentation: keep each package's copyright file only.
	docs, err := os.ReadDir(r("usr/share/doc"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, d := range docs {
		if !d.IsDir() {
			continue // a symlink to another package's docs
		}
		removeContents(filepath.Join("usr/share/doc", d.Name()), func(n string) bool { return n == "copyright" })
	}

	// Python byte code, compiled by the packages' postinst scripts.
	pyDirs, _ := filepath.Glob(r("usr/lib/python3*"))
	for _, d := range pyDirs {
		if err := filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if e.IsDir() && e.Name() == "__pycache__" {
				if err := os.RemoveAll(p); err != nil {
					return err
				}
				return filepath.SkipDir
			}
			return nil
		}); err != nil {
			errs = append(errs, err)
		}
	}

	// Logs: the directories stay (packages expect them), their files go.
	if err := filepath.WalkDir(r("var/log"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return os.Remove(p)
		}
		return nil
	}); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}

	for rel, content := range map[string]string{
		"etc/resolv.conf": "",
		"etc/hostname":    "localhost\n",
	} {
		if err := writeRootfsFile(rootfs, rel, content, 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	if fileExists(r("etc/machine-id")) {
		if err := writeRootfsFile(rootfs, "etc/machine-id", "", 0o444); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// fixModes makes a tree the host wrote readable by every uid, whatever the
// host's umask was: directories 0755, files 0755 if executable, else 0644.
func fixModes(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.Chmod(p, 0o755)
		case d.Type().IsRegular():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			mode := os.FileMode(0o644)
			if fi.Mode()&0o111 != 0 {
				mode = 0o755
			}
			if fi.Mode().Perm() != mode {
				return os.Chmod(p, mode)
			}
		}
		return nil
	})
}

// installTree creates root/opt/sandstorm-agent with mode 0755 all the way.
func installTree(root string) (string, error) {
	dir := filepath.Join(root, InstallDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for p := dir; p != root && len(p) > len(root); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// ensureNPM returns the cached npm layer (a directory holding
// opt/sandstorm-agent with package.json, package-lock.json, node_modules)
// for the npm key, installing it with the host's npm if needed.
func (b *builder) ensureNPM(ctx context.Context) (string, stamp, error) {
	dir := filepath.Join(b.cache, "npm", b.keys.npm[:16])
	if !b.opts.Rebuild {
		if st, ok := readStamp(dir, b.keys.npm); ok {
			b.cached("npm ci", fmt.Sprintf("%s %s, key %s", sdkPackage, b.in.sdkVersion, b.keys.npm[:12]))
			return filepath.Join(dir, "layer"), st, nil
		}
	}
	tmp, err := os.MkdirTemp(filepath.Join(b.cache, "tmp"), "npm-")
	if err != nil {
		return "", stamp{}, err
	}
	keepTmp := false
	defer func() {
		if !keepTmp {
			if err := safeRemoveAll(tmp); err != nil {
				fmt.Fprintf(b.log, "    warning: %v\n", err)
			}
		}
	}()
	layer := filepath.Join(tmp, "layer")
	install, err := installTree(layer)
	if err != nil {
		return "", stamp{}, err
	}
	for name, data := range map[string][]byte{"package.json": b.in.packageJSON, "package-lock.json": b.in.lock} {
		if err := os.WriteFile(filepath.Join(install, name), data, 0o644); err != nil {
			return "", stamp{}, err
		}
	}

	st := stamp{Key: b.keys.npm, Created: time.Now().UTC(), Versions: map[string]string{}}
	if err := b.phase("npm ci "+sdkPackage+"@"+b.in.sdkVersion, func() error {
		npm, err := exec.LookPath(b.opts.NPM)
		if err != nil {
			return fmt.Errorf("the host's npm is needed to install the SDK (npm 9 or newer; Debian's nodejs + npm packages or Node.js's own): %w", err)
		}
		out, err := exec.CommandContext(ctx, npm, "--version").Output()
		if err != nil {
			return fmt.Errorf("%s --version: %w", npm, err)
		}
		ver := strings.TrimSpace(string(out))
		if major, _ := strconv.Atoi(strings.SplitN(ver, ".", 2)[0]); major < 9 {
			return fmt.Errorf("host npm %s is too old for package-lock.json v3: npm 9 or newer is needed", ver)
		}
		st.Versions["host-npm"] = ver
		fmt.Fprintf(b.log, "    host npm %s into %s\n", ver, InstallDir)
		cmd := exec.Command(npm, "ci",
			"--omit=peer",      // peers (@anthropic-ai/sdk, MCP SDK, zod) are not needed at run time
			"--ignore-scripts", // the SDK has none; host code runs nothing from the registry
			"--no-audit", "--no-fund", "--progress=false", "--loglevel=http",
			// The image's platform, not the host's, picks the native CLI package.
			"--os=linux", "--cpu="+b.arch.npm, "--libc=glibc",
		)
		cmd.Dir = install
		cmd.Env = append(os.Environ(), "npm_config_update_notifier=false")
		return b.run(ctx, "npm ci", cmd)
	}); err != nil {
		return "", stamp{}, err
	}

	if err := b.checkSDK(install, st.Versions); err != nil {
		return "", stamp{}, err
	}
	if err := npmCommands(layer, st.Versions); err != nil {
		return "", stamp{}, err
	}
	if err := trimNPM(install); err != nil {
		return "", stamp{}, err
	}
	if err := fixModes(layer); err != nil {
		return "", stamp{}, err
	}
	if err := writeJSON(filepath.Join(tmp, "stamp.json"), st); err != nil {
		return "", stamp{}, err
	}
	if err := safeRemoveAll(dir); err != nil {
		return "", stamp{}, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", stamp{}, err
	}
	keepTmp = true
	return filepath.Join(dir, "layer"), st, nil
}

// checkSDK checks that npm installed the pinned SDK and the native CLI for
// the image's architecture and glibc.
func (b *builder) checkSDK(install string, versions map[string]string) error {
	data, err := os.ReadFile(filepath.Join(install, "node_modules", sdkPackage, "package.json"))
	if err != nil {
		return fmt.Errorf("npm ci left no %s: %w", sdkPackage, err)
	}
	var pkg struct {
		Version           string `json:"version"`
		ClaudeCodeVersion string `json:"claudeCodeVersion"`
	}
	if err := json.Unmarshal(data, &pkg); err != nil {
		return fmt.Errorf("%s/package.json: %w", sdkPackage, err)
	}
	if pkg.Version != b.in.sdkVersion {
		return fmt.Errorf("npm ci installed %s %s, want %s", sdkPackage, pkg.Version, b.in.sdkVersion)
	}
	versions["sdk"] = pkg.Version
	if pkg.ClaudeCodeVersion != "" {
		versions["claude-code"] = pkg.ClaudeCodeVersion
	}

	cli := filepath.Join(install, "node_modules", sdkPackage+"-linux-"+b.arch.npm, "claude")
	f, err := elf.Open(cli)
	if err != nil {
		return fmt.Errorf("the native Claude Code CLI for linux-%s (glibc) is missing or not an ELF binary: %w", b.arch.npm, err)
	}
	defer f.Close()
	want := map[string]elf.Machine{"x64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[b.arch.npm]
	if f.Machine != want {
		return fmt.Errorf("%s is for %v, want %v", cli, f.Machine, want)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			buf := make([]byte, p.Filesz)
			if _, err := p.ReadAt(buf, 0); err == nil && bytes.Contains(buf, []byte("musl")) {
				return fmt.Errorf("%s is linked against musl; the image has glibc", cli)
			}
		}
	}
	if st, err := os.Stat(cli); err == nil {
		fmt.Fprintf(b.log, "    %s@%s, Claude Code %s (CLI %s)\n", sdkPackage, pkg.Version, pkg.ClaudeCodeVersion, mb(st.Size()))
	}
	return nil
}

// npmCommands puts npm and npx on the image's PATH, as Node.js's own
// images do: links to the release the lockfile pins.
func npmCommands(layer string, versions map[string]string) error {
	data, err := os.ReadFile(filepath.Join(layer, InstallDir, "node_modules", "npm", "package.json"))
	if err != nil {
		return fmt.Errorf("npm ci left no npm: %w", err)
	}
	var pkg struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(data, &pkg); err != nil || pkg.Version == "" {
		return fmt.Errorf("npm/package.json: no version (%v)", err)
	}
	versions["npm"] = pkg.Version
	bin := filepath.Join(layer, "usr", "local", "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	for _, cmd := range []string{"npm", "npx"} {
		target := path.Join(InstallDir, "node_modules", "npm", "bin", cmd+"-cli.js")
		if !fileExists(filepath.Join(layer, target)) {
			return fmt.Errorf("npm %s has no %s", pkg.Version, target)
		}
		if err := os.Symlink(target, filepath.Join(bin, cmd)); err != nil {
			return err
		}
	}
	return nil
}

// trimNPM removes from the installed packages what only a reader or a
// compiler uses: npm's manual (npm help) and TypeScript declarations.
func trimNPM(install string) error {
	var errs []error
	for _, dir := range []string{"docs", "man"} {
		errs = append(errs, os.RemoveAll(filepath.Join(install, "node_modules", "npm", dir)))
	}
	errs = append(errs, filepath.WalkDir(filepath.Join(install, "node_modules"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && (strings.HasSuffix(p, ".d.ts") || strings.HasSuffix(p, ".d.mts") || strings.HasSuffix(p, ".d.cts")) {
			return os.Remove(p)
		}
		return nil
	}))
	return errors.Join(errs...)
}

// writeRunner lays out the runner layer: opt/sandstorm-agent/runner.mjs.
func (b *builder) writeRunner(root string) error {
	install, err := installTree(root)
	if err != nil {
		return err
	}
	p := filepath.Join(install, "runner.mjs")
	if err := os.WriteFile(p, b.in.runner, 0o644); err != nil {
		return err
	}
	return os.Chmod(p, 0o644)
}
