package agentimage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Every command that mounts something (debootstrap mounts /proc and /sys in
// its target; the chroot steps mount /proc and bind /dev) runs in a private
// mount namespace of its own: the kernel drops those mounts when the last
// process in the namespace exits, whether the step succeeded, failed or the
// builder was killed. Nothing is ever mounted in the host's namespace, and
// mountsUnder double-checks that before any directory is removed.

// privateMounts makes cmd start in a new mount namespace. Go's runtime
// also makes the child's view of / recursively private, so its mounts do
// not propagate back to the host.
func privateMounts(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Unshareflags |= syscall.CLONE_NEWNS
}

// chrootEnv is the whole environment of commands run in the rootfs.
var chrootEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"LC_ALL=C",
	"DEBIAN_FRONTEND=noninteractive",
	"DEBCONF_NONINTERACTIVE_SEEN=true",
}

// chrootScript mounts /proc and binds /dev into the rootfs ($1), then runs
// the given shell script ($2) chrooted there. It runs in a private mount
// namespace (privateMounts), so the mounts vanish with it.
const chrootScript = `set -eu
root=$1
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
exec chroot "$root" /usr/bin/env -i ` + "$ENVLIST" + ` /bin/sh -eu -c "$2"
`

// chroot runs script with /bin/sh inside rootfs.
func (b *builder) chroot(ctx context.Context, label, rootfs, script string) error {
	envList := make([]string, len(chrootEnv))
	for i, e := range chrootEnv {
		envList[i] = shellQuote(e)
	}
	wrapper := strings.Replace(chrootScript, "$ENVLIST", strings.Join(envList, " "), 1)
	cmd := exec.Command("/bin/sh", "-c", wrapper, "sh", rootfs, script)
	cmd.Env = chrootEnv
	privateMounts(cmd)
	err := b.run(ctx, label, cmd)
	if lerr := checkNoMounts(rootfs); lerr != nil {
		err = errors.Join(err, lerr)
	}
	return err
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// mountsUnder lists the mount points at or below dir in this process's
// mount namespace, deepest first.
func mountsUnder(dir string) ([]string, error) {
	dir = filepath.Clean(dir)
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var found []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			found = append(found, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	sort.Slice(found, func(i, j int) bool { return len(found[i]) > len(found[j]) })
	return found, nil
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, ...) of
// /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder detaches every mount at or below dir.
func unmountUnder(dir string) error {
	mps, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, mp := range mps {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// checkNoMounts fails if anything is still mounted under dir in the host's
// namespace, after trying to unmount it.
func checkNoMounts(dir string) error {
	mps, err := mountsUnder(dir)
	if err != nil || len(mps) == 0 {
		return err
	}
	if err := unmountUnder(dir); err != nil {
		return fmt.Errorf("mounts left under %s: %v: %w", dir, mps, err)
	}
	if left, _ := mountsUnder(dir); len(left) > 0 {
		return fmt.Errorf("mounts left under %s: %v", dir, left)
	}
	return nil
}

// safeRemoveAll removes dir, first making sure nothing is mounted below it:
// os.RemoveAll would otherwise descend into a bind mount of, say, /dev.
func safeRemoveAll(dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := checkNoMounts(dir); err != nil {
		return fmt.Errorf("refusing to remove %s: %w", dir, err)
	}
	return os.RemoveAll(dir)
}
