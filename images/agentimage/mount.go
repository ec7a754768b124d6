package agentimage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/moby/sys/mountinfo"
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
	found, err := mountinfo.GetMounts(mountinfo.PrefixFilter(filepath.Clean(dir)))
	if err != nil {
		return nil, err
	}
	mps := make([]string, 0, len(found))
	for _, m := range found {
		mps = append(mps, m.Mountpoint)
	}
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	return mps, nil
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
