package podman

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// A rootless service's user cannot reach most host paths a policy names
// (t.TempDir, a home directory: a parent with mode 0700 is enough), and
// bind mounts sandstorm makes on the host do not reach the service's own
// mount namespace (the host's mounts are private). So sandstorm, as root,
// clones each source as it sees it (open_tree) and attaches the clone,
// inside the service's mount namespace, onto a placeholder in the sandbox's
// scratch directory, which the service's user can traverse.

// mediatedDir holds the placeholders in a sandbox's scratch directory.
func mediatedDir(scratch string) string { return filepath.Join(scratch, "mnt") }

// mediate mounts every source where the rootless service can reach it and
// returns the mounts with those sources.
func (r *Runtime) mediate(ctx context.Context, scratch string, mounts []oci.Mount) ([]oci.Mount, error) {
	if len(mounts) == 0 {
		return nil, nil
	}
	pid, err := r.servicePID(ctx)
	if err != nil {
		return nil, err
	}
	dir := mediatedDir(scratch)
	if err := os.Mkdir(dir, 0o711); err != nil {
		return nil, fmt.Errorf("create mount placeholders: %w", err)
	}
	out := make([]oci.Mount, len(mounts))
	clones := make([]int, 0, len(mounts))
	defer func() {
		for _, fd := range clones {
			unix.Close(fd)
		}
	}()
	for i, m := range mounts {
		fi, err := os.Stat(m.Source)
		if err != nil {
			return nil, fmt.Errorf("%w: mount source %s: %w", sandbox.ErrInvalidSpec, m.Source, err)
		}
		out[i] = m
		out[i].Source = filepath.Join(dir, strconv.Itoa(i))
		if fi.IsDir() {
			err = os.Mkdir(out[i].Source, 0o755)
		} else {
			err = os.WriteFile(out[i].Source, nil, 0o644)
		}
		if err != nil {
			return nil, fmt.Errorf("create mount placeholder: %w", err)
		}
		fd, err := unix.OpenTree(unix.AT_FDCWD, m.Source, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
		if err != nil {
			return nil, fmt.Errorf("clone mount source %s: %w", m.Source, err)
		}
		clones = append(clones, fd)
		if m.ReadOnly {
			attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
			if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr); err != nil {
				return nil, fmt.Errorf("make clone of %s read-only: %w", m.Source, err)
			}
		}
	}
	err = inMountNamespace(pid, func() error {
		for i, fd := range clones {
			if err := unix.MoveMount(fd, "", unix.AT_FDCWD, out[i].Source, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
				return fmt.Errorf("attach %s in the service's mount namespace: %w", mounts[i].Source, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// unmediate detaches the placeholders' mounts of scratch directory scratch.
func (r *Runtime) unmediate(ctx context.Context, scratch string) error {
	pid, mounted, err := r.mediated(ctx, scratch)
	if err != nil || len(mounted) == 0 {
		return err
	}
	return inMountNamespace(pid, func() error {
		var errs []error
		for _, m := range mounted {
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("unmount %s in the service's mount namespace: %w", m, err))
			}
		}
		return errors.Join(errs...)
	})
}

// mediatedMounts lists the placeholder mounts of sandbox id still attached.
func (r *Runtime) mediatedMounts(ctx context.Context, id string) ([]string, error) {
	_, mounted, err := r.mediated(ctx, r.state.Scratch(id))
	return mounted, err
}

func (r *Runtime) mediated(ctx context.Context, scratch string) (int, []string, error) {
	if !r.mediates() {
		return 0, nil, nil
	}
	pid, err := r.servicePID(ctx)
	if err != nil {
		return 0, nil, err
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return 0, nil, fmt.Errorf("read the service's mounts: %w", err)
	}
	defer f.Close()
	prefix := mediatedDir(scratch) + "/"
	mounts, err := mountinfo.GetMountsFromReader(f, func(m *mountinfo.Info) (skip, stop bool) {
		return !strings.HasPrefix(m.Mountpoint, prefix), false
	})
	if err != nil {
		return 0, nil, fmt.Errorf("read the service's mounts: %w", err)
	}
	found := make([]string, 0, len(mounts))
	for _, m := range mounts {
		found = append(found, m.Mountpoint)
	}
	return pid, found, nil
}

// mediates tells whether policy mounts go through placeholders: for a
// rootless service on this host, when sandstorm is root.
func (r *Runtime) mediates() bool {
	return r.svc.rootless && r.svc.local && os.Geteuid() == 0
}

// servicePID finds the service process from its socket's peer credentials
// and checks that it runs in a user namespace of its own, as rootless
// Podman does (a socket-activated service would answer with systemd's pid).
func (r *Runtime) servicePID(ctx context.Context) (int, error) {
	path := strings.TrimPrefix(r.cfg.Socket, "unix://")
	c, err := (&net.Dialer{}).DialContext(ctx, "unix", path)
	if err != nil {
		return 0, fmt.Errorf("%w: dial %s: %w", sandbox.ErrUnavailable, path, err)
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, fmt.Errorf("peer of %s: %w", path, cerr)
	}
	theirs, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", cred.Pid))
	ours, err2 := os.Readlink("/proc/self/ns/user")
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("user namespace of the service: %w", err)
	}
	if theirs == ours {
		return 0, fmt.Errorf("the process serving %s (pid %d) is not in the rootless service's user namespace", path, cred.Pid)
	}
	return int(cred.Pid), nil
}

// inMountNamespace runs fn on a thread that joined process pid's mount
// namespace. The thread is never handed back to the Go scheduler: it ends
// with its goroutine.
func inMountNamespace(pid int, fn func() error) error {
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return fmt.Errorf("open the service's mount namespace: %w", err)
	}
	defer ns.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Go threads share their filesystem context, which setns refuses.
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare filesystem context: %w", err)
			return
		}
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNS); err != nil {
			errc <- fmt.Errorf("enter the service's mount namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
