package agentimage

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// stamp marks a finished stage in the cache; a stage directory without one
// is never used.
type stamp struct {
	Key      string            `json:"key"`
	Created  time.Time         `json:"created"`
	Mirror   string            `json:"mirror,omitempty"`
	Versions map[string]string `json:"versions,omitempty"`
}

func readStamp(dir, key string) (stamp, bool) {
	var st stamp
	data, err := os.ReadFile(filepath.Join(dir, "stamp.json"))
	if err != nil || json.Unmarshal(data, &st) != nil || st.Key != key {
		return st, false
	}
	return st, true
}

// dpkgExcludes keeps documentation, man pages and translations out of the
// rootfs as packages are unpacked (as Debian's slim images do; copyright
// files stay), and git's servers, its mailer and scalar (2.2 MB each): an
// agent clones, fetches and pushes; it serves no repository, mails no
// patches and manages no monorepo enlistments.
const dpkgExcludes = `# sandstorm agent image: no docs, man pages or translations
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/nodejs/@types/*
# no git servers or mailers
path-exclude /usr/lib/git-core/git-daemon
path-exclude /usr/lib/git-core/git-http-backend
path-exclude /usr/lib/git-core/git-http-push
path-exclude /usr/lib/git-core/git-imap-send
path-exclude /usr/lib/git-core/git-shell
path-exclude /usr/bin/git-shell
path-exclude /usr/lib/git-core/scalar
path-exclude /usr/bin/scalar
path-exclude /usr/share/gitweb/*
`

// policyRC stops package scripts from starting services in the chroot.
const policyRC = "#!/bin/sh\nexit 101\n"

// ensureBase returns the cached base rootfs for the base key, building it
// if needed.
func (b *builder) ensureBase(ctx context.Context) (string, stamp, error) {
	dir := filepath.Join(b.cache, "base", b.keys.base[:16])
	if !b.opts.Rebuild {
		if st, ok := readStamp(dir, b.keys.base); ok {
			b.cached("base rootfs", fmt.Sprintf("%s %s, key %s, built %s", Suite, b.arch.deb, b.keys.base[:12], st.Created.Format(time.RFC3339)))
			return filepath.Join(dir, "rootfs"), st, nil
		}
	}

	tmp, err := os.MkdirTemp(filepath.Join(b.cache, "tmp"), "base-")
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
	rootfs := filepath.Join(tmp, "rootfs")

	fmt.Fprintf(b.log, "    Debian mirror %s, security %s\n", b.opts.Mirror, b.opts.SecurityMirror)
	var debootstrap string
	if debootstrap, err = lookTool("debootstrap"); err != nil {
		if err := b.phase("install debootstrap", func() error { return b.installHostPackage(ctx, "debootstrap") }); err != nil {
			return "", stamp{}, err
		}
		if debootstrap, err = lookTool("debootstrap"); err != nil {
			return "", stamp{}, err
		}
	}

	if err := b.phase("debootstrap "+Suite, func() error {
		args := []string{"--variant=minbase", "--arch=" + b.arch.deb}
		if kr := "/usr/share/keyrings/debian-archive-keyring.gpg"; fileExists(kr) {
			args = append(args, "--keyring="+kr)
		}
		args = append(args, Suite, rootfs, b.opts.Mirror)
		cmd := exec.Command(debootstrap, args...)
		cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
		privateMounts(cmd) // debootstrap mounts /proc and /sys in its target
		err := b.run(ctx, "debootstrap", cmd)
		return errors.Join(err, checkNoMounts(rootfs))
	}); err != nil {
		return "", stamp{}, err
	}

	if err := b.phase("apt-get install "+strings.Join(Packages, " "), func() error {
		if err := b.prepareApt(rootfs); err != nil {
			return err
		}
		apt := "apt-get -q -o Dpkg::Use-Pty=0 -o APT::Color=0 -o Acquire::Languages=none -o Dpkg::Options::=--force-unsafe-io"
		script := strings.Join([]string{
			apt + " --error-on=any update", // a mirror that fails must fail the build, not drop security updates
			apt + " -y upgrade",
			apt + " -y --no-install-recommends install " + strings.Join(Packages, " "),
			"dpkg --purge --force-depends " + strings.Join(Unneeded, " "),
			apt + " clean",
		}, "\n")
		return b.chroot(ctx, "apt-get", rootfs, script)
	}); err != nil {
		return "", stamp{}, err
	}

	if err := b.phase(fmt.Sprintf("user user (%d:%d, %s)", UserUID, UserGID, UserHome), func() error {
		script := fmt.Sprintf("groupadd --gid %d user\nuseradd --uid %d --gid %d --create-home --home-dir %s --shell /bin/bash user",
			UserGID, UserUID, UserGID, UserHome)
		return b.chroot(ctx, "useradd", rootfs, script)
	}); err != nil {
		return "", stamp{}, err
	}

	if err := b.phase("trim", func() error {
		before, _ := dirSize(rootfs)
		if err := trim(rootfs); err != nil {
			return err
		}
		// Packages ship identical copies (git as /usr/bin/git and in
		// /usr/lib/git-core): one file each, hard-linked, which the layer
		// tar keeps as links.
		if err := b.chroot(ctx, "hardlink", rootfs, "hardlink --quiet --ignore-time /usr"); err != nil {
			return err
		}
		after, err := dirSize(rootfs)
		if err != nil {
			return err
		}
		fmt.Fprintf(b.log, "    base rootfs %s -> %s\n", mb(before), mb(after))
		return nil
	}); err != nil {
		return "", stamp{}, err
	}

	st := stamp{Key: b.keys.base, Created: time.Now().UTC(), Mirror: b.opts.Mirror}
	if err := b.phase("verify tools", func() (err error) {
		st.Versions, err = b.toolVersions(ctx, rootfs)
		return err
	}); err != nil {
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
	return filepath.Join(dir, "rootfs"), st, nil
}

// installHostPackage installs a Debian package on the build host, updating
// the package lists once if the first attempt fails.
func (b *builder) installHostPackage(ctx context.Context, pkg string) error {
	install := func() error {
		cmd := exec.Command("apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0", "--no-install-recommends", "install", pkg)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return b.run(ctx, "apt-get install "+pkg, cmd)
	}
	if err := install(); err == nil {
		return nil
	}
	cmd := exec.Command("apt-get", "-q", "-o", "Dpkg::Use-Pty=0", "update")
	if err := b.run(ctx, "apt-get update", cmd); err != nil {
		return err
	}
	return install()
}

// prepareApt points the rootfs's apt at the suite, its updates and its
// security updates, keeps docs out, lets apt resolve names and stops
// services from being started.
func (b *builder) prepareApt(rootfs string) error {
	sources := fmt.Sprintf("deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n",
		b.opts.Mirror, Suite, b.opts.Mirror, Suite, b.opts.SecurityMirror, Suite)
	files := []struct {
		path, content string
		mode          os.FileMode
	}{
		{"etc/apt/sources.list", sources, 0o644},
		{"etc/dpkg/dpkg.cfg.d/sandstorm-slim", dpkgExcludes, 0o644},
		{"usr/sbin/policy-rc.d", policyRC, 0o755},
	}
	if resolv, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		files = append(files, struct {
			path, content string
			mode          os.FileMode
		}{"etc/resolv.conf", string(resolv), 0o644})
	}
	for _, f := range files {
		if err := writeRootfsFile(rootfs, f.path, f.content, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// writeRootfsFile replaces rel inside rootfs, never following a symlink
// planted there.
func writeRootfsFile(rootfs, rel, content string, mode os.FileMode) error {
	p := filepath.Join(rootfs, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		return err
	}
	return os.Chmod(p, mode)
}

// toolVersions runs each tool once in the rootfs: proof that it works
// there, and versions for the result.
func (b *builder) toolVersions(ctx context.Context, rootfs string) (map[string]string, error) {
	out := filepath.Join(rootfs, "tmp", ".sandstorm-versions")
	defer os.Remove(out)
	script := `{
echo "node $(node --version)"
echo "python3 $(python3 --version 2>&1 | cut -d' ' -f2)"
echo "git $(git --version | cut -d' ' -f3)"
echo "ripgrep $(rg --version | sed -n 1p | cut -d' ' -f2)"
echo "curl $(curl --version | sed -n 1p | cut -d' ' -f2)"
echo "user $(id -u user):$(id -g user):$(getent passwd user | cut -d: -f6)"
} > /tmp/.sandstorm-versions`
	if err := b.chroot(ctx, "tool versions", rootfs, script); err != nil {
		return nil, err
	}
	f, err := os.Open(out)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	v := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, val, _ := strings.Cut(sc.Text(), " ")
		if val == "" {
			return nil, fmt.Errorf("rootfs: %s --version printed nothing", k)
		}
		v[k] = val
		fmt.Fprintf(b.log, "    %s %s\n", k, val)
	}
	if want := fmt.Sprintf("%d:%d:%s", UserUID, UserGID, UserHome); v["user"] != want {
		return nil, fmt.Errorf("rootfs: user is %q, want %q", v["user"], want)
	}
	delete(v, "user")
	return v, sc.Err()
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
