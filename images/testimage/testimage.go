// Package testimage builds sandstorm's tiny runtime test image: a static
// busybox with its applets, root and an unprivileged "user" (1000:1000).
// No registry is reachable on CI, so the image is built from the host's
// busybox and imported into each runtime from an imagetar tar.
package testimage

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/sandstorm-dev/sandstorm/images/imagetar"
)

const (
	// Ref is the reference the test image is imported under in every runtime.
	Ref = "localhost/sandstorm-test:latest"
	// DefaultBusybox is where Debian's busybox-static installs the binary.
	DefaultBusybox = "/bin/busybox"

	// Probe is where the image holds the sandbox probe (cmd/sandstorm-probe).
	Probe = "/bin/sandstorm-probe"

	// UserUID and UserGID identify the unprivileged "user" account.
	UserUID = 1000
	UserGID = 1000
)

// Config is the test image's configuration.
func Config() imagetar.Config {
	return imagetar.Config{
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Cmd:        []string{"/bin/sh"},
		WorkingDir: "/home/user",
	}
}

// CheckStatic returns an error unless path is an ELF executable without a
// program interpreter. A dynamically linked busybox would fail inside the
// image, which has no libc, with a confusing "no such file or directory".
func CheckStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: not a readable ELF executable (for busybox, install Debian's busybox-static): %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			interp, _ := io.ReadAll(io.LimitReader(p.Open(), 4096))
			return fmt.Errorf("%s is dynamically linked (interpreter %s) but the test image has no libc: for busybox install Debian's busybox-static (apt-get install busybox-static) or pass a static one; build the probe with CGO_ENABLED=0",
				path, strings.TrimRight(string(interp), "\x00"))
		}
	}
	return nil
}

// Applets returns the applet names busybox reports with --list.
func Applets(ctx context.Context, busybox string) ([]string, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, busybox, "--list")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w: %s", busybox, err, strings.TrimSpace(stderr.String()))
	}
	var applets []string
	for _, name := range strings.Fields(string(out)) {
		// Applets are bare names; anything else would escape /bin.
		if name == "busybox" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
			continue
		}
		applets = append(applets, name)
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("%s --list printed no applets", busybox)
	}
	return applets, nil
}

// BuildRootfs fills the empty directory dir with the test rootfs, copying
// the static busybox at busybox (DefaultBusybox if empty). Ownership on disk
// is whatever the caller's is; Layer assigns the image's ownership, so this
// works without root.
func BuildRootfs(ctx context.Context, dir, busybox string) error {
	if busybox == "" {
		busybox = DefaultBusybox
	}
	if err := CheckStatic(busybox); err != nil {
		return err
	}
	applets, err := Applets(ctx, busybox)
	if err != nil {
		return err
	}

	// Explicit chmod after each mkdir: the umask must not leak into the image.
	dirs := []struct {
		path string
		mode fs.FileMode
	}{
		{"bin", 0o755},
		{"etc", 0o755},
		{"dev", 0o755},
		{"proc", 0o755},
		{"sys", 0o755},
		{"root", 0o700},
		{"tmp", 0o777 | fs.ModeSticky},
		{"home", 0o755},
		{"home/user", 0o755},
	}
	for _, d := range dirs {
		p := filepath.Join(dir, d.path)
		if err := os.Mkdir(p, 0o700); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
		if err := os.Chmod(p, d.mode); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}

	if err := copyExecutable(busybox, filepath.Join(dir, "bin", "busybox")); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	for _, a := range applets {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil {
			return fmt.Errorf("rootfs: applet %s: %w", a, err)
		}
	}

	files := []struct {
		path, content string
	}{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"},
		{"etc/group", "root:x:0:\nuser:x:1000:\n"},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.path)
		if err := os.WriteFile(p, []byte(f.content), 0o600); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
		if err := os.Chmod(p, 0o644); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}
	return nil
}

// AddProbe copies the static probe binary at probe (built from
// cmd/sandstorm-probe) into a rootfs made by BuildRootfs, at Probe.
func AddProbe(dir, probe string) error {
	if err := CheckStatic(probe); err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	if err := copyExecutable(probe, filepath.Join(dir, Probe)); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	return nil
}

// Layer turns a rootfs made by BuildRootfs into the image layer: everything
// root-owned except /home/user, which belongs to user.
func Layer(dir string) imagetar.Layer {
	return imagetar.Layer{
		Dir: dir,
		Override: func(path string, a *imagetar.Attr) {
			a.UID, a.GID = 0, 0
			if path == "home/user" {
				a.UID, a.GID = UserUID, UserGID
			}
		},
	}
}

func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o700)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Chmod(0o755); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
