//go:build linux

// Package probe looks at a sandbox from the inside and prints its
// fingerprint: what the process may do (capabilities, no_new_privs,
// seccomp and the answer to each syscall sandstorm denies), what it sees
// (mounts, masked and read-only paths, devices, network interfaces) and
// who it is (ids, rlimits). Every line is canonical, so the fingerprints
// of two backends compare as text. It runs in the test image as
// /bin/sandstorm-probe (cmd/sandstorm-probe), a static binary.
package probe

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Paths tells the probe what to look at.
type Paths struct {
	// Mounts are the mount points whose type and flags are reported.
	Mounts []string
	// Masked must be hidden; ReadOnly must be read-only mounts.
	Masked, ReadOnly []string
}

// Write prints the fingerprint to w, one "section item: value" per line.
func Write(w io.Writer, p Paths) error {
	var b strings.Builder
	line := func(section, item, value string) { fmt.Fprintf(&b, "%s %s: %s\n", section, item, value) }

	status, err := Status()
	if err != nil {
		return err
	}
	for _, kv := range status {
		line("status", kv[0], kv[1])
	}
	for _, c := range Syscalls {
		line("syscall", c.Name, outcome(c.Call()))
	}
	for _, c := range mustWork {
		line("works", c.Name, outcome(c.Call()))
	}

	table, err := mountinfo.GetMounts(nil)
	if err != nil {
		return fmt.Errorf("mount table: %w", err)
	}
	mounts := mounts(table)
	for _, m := range p.Mounts {
		line("mount", m, mounts.describe(m))
	}
	for _, m := range p.Masked {
		line("masked", m, masked(m, mounts))
	}
	for _, m := range p.ReadOnly {
		line("readonly", m, readOnly(m, mounts))
	}

	ids, err := identity()
	if err != nil {
		return err
	}
	for _, kv := range ids {
		line("id", kv[0], kv[1])
	}
	for _, r := range rlimits {
		var l unix.Rlimit
		if err := unix.Getrlimit(r.res, &l); err != nil {
			line("rlimit", r.name, errName(err))
			continue
		}
		line("rlimit", r.name, limit(l.Cur)+":"+limit(l.Max))
	}
	devs, err := devices("/dev")
	if err != nil {
		return err
	}
	for _, d := range devs {
		line("dev", d[0], d[1])
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return fmt.Errorf("network interfaces: %w", err)
	}
	for _, i := range ifs {
		up := "down"
		if i.Flags&net.FlagUp != 0 {
			up = "up"
		}
		line("net", i.Name, up)
	}
	_, err = io.WriteString(w, b.String())
	return err
}

// Call is one syscall made with arguments chosen so that, if it is let
// through, the kernel refuses it harmlessly (EINVAL, EBADF, ESRCH, EFAULT):
// EPERM or ENOSYS then tells that the filter (or a missing capability)
// answered, and nothing changes in the sandbox either way.
type Call struct {
	Name string
	Call func() error
}

// Syscalls are the calls sandstorm denies (oci.DeniedSyscalls and
// oci.NosysSyscalls; the probe's test checks that every one is here).
var Syscalls = []Call{
	{"unshare(CLONE_NEWUSER)", func() error { return unix.Unshare(unix.CLONE_NEWUSER) }},
	{"unshare(CLONE_NEWNS)", func() error { return unix.Unshare(unix.CLONE_NEWNS) }},
	{"unshare(CLONE_NEWNET)", func() error { return unix.Unshare(unix.CLONE_NEWNET) }},
	// CLONE_THREAD without CLONE_SIGHAND is EINVAL once past the filter.
	{"clone(CLONE_NEWUSER)", raw(unix.SYS_CLONE, unix.CLONE_NEWUSER|unix.CLONE_THREAD)},
	{"clone3", raw(unix.SYS_CLONE3, 0, 0)},
	{"setns", raw(unix.SYS_SETNS, neg1, 0)},
	{"mount", func() error { return unix.Mount("none", "/nonexistent-probe", "tmpfs", 0, "") }},
	{"umount2", func() error { return unix.Unmount("/nonexistent-probe", 0) }},
	{"pivot_root", func() error { return unix.PivotRoot("/nonexistent-probe", "/nonexistent-probe") }},
	{"open_tree", raw(unix.SYS_OPEN_TREE, neg1, 0, 0)},
	{"move_mount", raw(unix.SYS_MOVE_MOUNT, neg1, 0, neg1, 0, 0)},
	{"fsopen", raw(unix.SYS_FSOPEN, 0, 0)},
	{"fsconfig", raw(unix.SYS_FSCONFIG, neg1, 0, 0, 0, 0)},
	{"fsmount", raw(unix.SYS_FSMOUNT, neg1, 0, 0)},
	{"fspick", raw(unix.SYS_FSPICK, neg1, 0, 0)},
	{"mount_setattr", raw(unix.SYS_MOUNT_SETATTR, neg1, 0, 0, 0, 0)},
	{"keyctl", raw(unix.SYS_KEYCTL, 9999)},
	{"add_key", raw(unix.SYS_ADD_KEY, 0, 0, 0, 0, 0)},
	{"request_key", raw(unix.SYS_REQUEST_KEY, 0, 0, 0, 0)},
	{"bpf", raw(unix.SYS_BPF, 9999, 0, 0)},
	{"perf_event_open", raw(unix.SYS_PERF_EVENT_OPEN, 0, 0, neg1, neg1, 0)},
	{"userfaultfd", raw(unix.SYS_USERFAULTFD, 0xffff)},
	{"io_uring_setup", raw(unix.SYS_IO_URING_SETUP, 0, 0)},
	{"io_uring_enter", raw(unix.SYS_IO_URING_ENTER, neg1, 0, 0, 0, 0, 0)},
	{"io_uring_register", raw(unix.SYS_IO_URING_REGISTER, neg1, 0, 0, 0)},
	{"ptrace", raw(unix.SYS_PTRACE, unix.PTRACE_PEEKDATA, 0x7fffffff, 0, 0)},
	// A non-zero flags argument is EINVAL.
	{"process_vm_readv", raw(unix.SYS_PROCESS_VM_READV, 0x7fffffff, 0, 0, 0, 0, 1)},
	{"process_vm_writev", raw(unix.SYS_PROCESS_VM_WRITEV, 0x7fffffff, 0, 0, 0, 0, 1)},
	{"kcmp", raw(unix.SYS_KCMP, 0x7fffffff, 0x7fffffff, 0, 0, 0)},
	{"init_module", raw(unix.SYS_INIT_MODULE, 0, 0, 0)},
	{"finit_module", raw(unix.SYS_FINIT_MODULE, neg1, 0, 0)},
	{"delete_module", raw(unix.SYS_DELETE_MODULE, 0, 0)},
	{"kexec_load", raw(unix.SYS_KEXEC_LOAD, 0, 0, 0, 0)},
	{"kexec_file_load", raw(unix.SYS_KEXEC_FILE_LOAD, neg1, neg1, 0, 0, 0)},
}

// mustWork are calls agents' tools need: the profile must let them through.
var mustWork = []Call{
	{"fork+exec", func() error { return exec.Command("/bin/true").Run() }},
	{"socket(AF_INET)", socket(unix.AF_INET)},
	{"socket(AF_INET6)", socket(unix.AF_INET6)},
	{"socket(AF_UNIX)", socket(unix.AF_UNIX)},
	{"pipe2", func() error {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return err
		}
		return errors.Join(unix.Close(p[0]), unix.Close(p[1]))
	}},
	{"epoll_create1", fd(func() (int, error) { return unix.EpollCreate1(unix.EPOLL_CLOEXEC) })},
	{"eventfd2", fd(func() (int, error) { return unix.Eventfd(0, unix.EFD_CLOEXEC) })},
	{"inotify_init1", fd(func() (int, error) { return unix.InotifyInit1(unix.IN_CLOEXEC) })},
	{"memfd_create", fd(func() (int, error) { return unix.MemfdCreate("probe", unix.MFD_CLOEXEC) })},
	{"getrandom", func() error {
		_, err := unix.Getrandom(make([]byte, 16), 0)
		return err
	}},
}

// neg1 is -1 as a syscall argument (an invalid file descriptor).
const neg1 = ^uintptr(0)

func raw(nr uintptr, args ...uintptr) func() error {
	var a [6]uintptr
	copy(a[:], args)
	return func() error {
		_, _, e := unix.Syscall6(nr, a[0], a[1], a[2], a[3], a[4], a[5])
		if e != 0 {
			return e
		}
		return nil
	}
}

func socket(family int) func() error {
	return fd(func() (int, error) { return unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0) })
}

func fd(open func() (int, error)) func() error {
	return func() error {
		fd, err := open()
		if err != nil {
			return err
		}
		return unix.Close(fd)
	}
}

func outcome(err error) string {
	if err == nil {
		return "ok"
	}
	return errName(err)
}

func errName(err error) string {
	var e unix.Errno
	if errors.As(err, &e) {
		if n := unix.ErrnoName(e); n != "" {
			return n
		}
		return "errno " + strconv.Itoa(int(e))
	}
	return "error (" + err.Error() + ")"
}

// Status is the process's capability sets (as /proc/self/status shows
// them, hex), NoNewPrivs and Seccomp mode, asked of the kernel with capget
// and prctl: gVisor's /proc/self/status lacks some of these lines.
func Status() ([][2]string, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("capget: %w", err)
	}
	set := func(lo, hi uint32) string { return fmt.Sprintf("%016x", uint64(hi)<<32|uint64(lo)) }
	var bnd, amb uint64
	for c := 0; c < 64; c++ {
		// Both answer EINVAL past the last capability the kernel knows.
		if r, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); err == nil && r == 1 {
			bnd |= 1 << c
		}
		if r, err := unix.PrctlRetInt(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_IS_SET, uintptr(c), 0, 0); err == nil && r == 1 {
			amb |= 1 << c
		}
	}
	nnp, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
	if err != nil {
		return nil, fmt.Errorf("PR_GET_NO_NEW_PRIVS: %w", err)
	}
	seccomp, err := unix.PrctlRetInt(unix.PR_GET_SECCOMP, 0, 0, 0, 0)
	if err != nil {
		return nil, fmt.Errorf("PR_GET_SECCOMP: %w", err)
	}
	return [][2]string{
		{"CapInh", set(data[0].Inheritable, data[1].Inheritable)},
		{"CapPrm", set(data[0].Permitted, data[1].Permitted)},
		{"CapEff", set(data[0].Effective, data[1].Effective)},
		{"CapBnd", fmt.Sprintf("%016x", bnd)},
		{"CapAmb", fmt.Sprintf("%016x", amb)},
		{"NoNewPrivs", strconv.Itoa(nnp)},
		{"Seccomp", strconv.Itoa(seccomp)},
	}, nil
}

// mounts is the process's mount table, in mountinfo's order.
type mounts []*mountinfo.Info

// at is the mount on top at point (the last one listed), if any.
func (ms mounts) at(point string) (*mountinfo.Info, bool) {
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].Mountpoint == point {
			return ms[i], true
		}
	}
	return nil, false
}

// opts are the mount's own (per-mount) options.
func opts(m *mountinfo.Info) []string { return strings.Split(m.Options, ",") }

// describe is a mount's type and its security-relevant flags, in a fixed order.
func (ms mounts) describe(point string) string {
	m, ok := ms.at(point)
	if !ok {
		return "not a mount"
	}
	return m.FSType + " " + flags(opts(m))
}

func flags(opts []string) string {
	out := []string{"rw"}
	if slices.Contains(opts, "ro") {
		out[0] = "ro"
	}
	for _, f := range []string{"nosuid", "nodev", "noexec"} {
		if slices.Contains(opts, f) {
			out = append(out, f)
		}
	}
	return strings.Join(out, ",")
}

// masked reports how path is hidden: a file covered by /dev/null, or a
// directory covered by an empty read-only tmpfs.
func masked(path string, ms mounts) string {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return errName(err)
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFCHR && unix.Major(st.Rdev) == 1 && unix.Minor(st.Rdev) == 3:
		return "masked (/dev/null)"
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		if m, ok := ms.at(path); ok && m.FSType == "tmpfs" && slices.Contains(opts(m), "ro") {
			if entries, err := os.ReadDir(path); err == nil && len(entries) == 0 {
				return "masked (empty read-only tmpfs)"
			}
		}
	}
	return "VISIBLE"
}

func readOnly(path string, ms mounts) string {
	if _, err := os.Lstat(path); err != nil {
		return errName(err)
	}
	m, ok := ms.at(path)
	if !ok {
		return "not a mount"
	}
	return flags(opts(m))
}

func identity() ([][2]string, error) {
	r, e, s := unix.Getresuid()
	uids := fmt.Sprintf("%d %d %d", r, e, s)
	r, e, s = unix.Getresgid()
	gids := fmt.Sprintf("%d %d %d", r, e, s)
	groups, err := unix.Getgroups()
	if err != nil {
		return nil, fmt.Errorf("getgroups: %w", err)
	}
	slices.Sort(groups)
	g := make([]string, len(groups))
	for i, n := range groups {
		g[i] = strconv.Itoa(n)
	}
	return [][2]string{{"uid (real effective saved)", uids}, {"gid (real effective saved)", gids}, {"groups", "[" + strings.Join(g, " ") + "]"}}, nil
}

var rlimits = []struct {
	name string
	res  int
}{
	{"AS", unix.RLIMIT_AS}, {"CORE", unix.RLIMIT_CORE}, {"CPU", unix.RLIMIT_CPU},
	{"DATA", unix.RLIMIT_DATA}, {"FSIZE", unix.RLIMIT_FSIZE}, {"LOCKS", unix.RLIMIT_LOCKS},
	{"MEMLOCK", unix.RLIMIT_MEMLOCK}, {"MSGQUEUE", unix.RLIMIT_MSGQUEUE}, {"NICE", unix.RLIMIT_NICE},
	{"NOFILE", unix.RLIMIT_NOFILE}, {"NPROC", unix.RLIMIT_NPROC}, {"RSS", unix.RLIMIT_RSS},
	{"RTPRIO", unix.RLIMIT_RTPRIO}, {"RTTIME", unix.RLIMIT_RTTIME}, {"SIGPENDING", unix.RLIMIT_SIGPENDING},
	{"STACK", unix.RLIMIT_STACK},
}

func limit(v uint64) string {
	if v == unix.RLIM_INFINITY {
		return "unlimited"
	}
	return strconv.FormatUint(v, 10)
}

// devices lists the device nodes and links under root, with their numbers.
func devices(root string) ([][2]string, error) {
	var out [][2]string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // an unreadable subtree is not a device
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return nil
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFCHR:
			out = append(out, [2]string{path, fmt.Sprintf("char %d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))})
		case unix.S_IFBLK:
			out = append(out, [2]string{path, fmt.Sprintf("block %d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))})
		case unix.S_IFLNK:
			target, _ := os.Readlink(path)
			out = append(out, [2]string{path, "-> " + target})
		}
		return nil
	})
	return out, err
}
