package podman

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/sandstorm-dev/sandstorm/runtime/internal/cgroupfs"
)

// oomWatch tells whether the kernel OOM-killed a sandbox's process. Podman
// 4.3 always reports OOMKilled=false: conmon writes its "oom" marker into
// its working directory, not where Podman looks. And Podman removes the
// container's cgroup, with its OOM counter, as soon as the process exits.
//
// On cgroup v2 the per-sandbox parent cgroup outlives the container and its
// memory.events counts the OOM kills below it. On cgroup v1 counters are
// not hierarchical, so an eventfd is registered on the container cgroup's
// memory.oom_control before the process starts: the kernel signals it on
// every OOM in that cgroup, and once more when the cgroup is removed.
type oomWatch struct {
	// parent is the v2 per-sandbox cgroup; empty on v1.
	parent string
	// efd is the eventfd, ofd the open memory.oom_control (v1).
	efd, ofd int
}

// watchOOM starts watching the container cgroup leaf under parent.
func watchOOM(v2 bool, parent, leaf string) (*oomWatch, error) {
	if v2 {
		return &oomWatch{parent: parent, efd: -1, ofd: -1}, nil
	}
	dir := filepath.Join(cgroupfs.Root, "memory", leaf)
	ofd, err := unix.Open(filepath.Join(dir, "memory.oom_control"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("watch OOM kills of cgroup %s: %w", dir, err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(ofd)
		return nil, fmt.Errorf("watch OOM kills: eventfd: %w", err)
	}
	w := &oomWatch{efd: efd, ofd: ofd}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.event_control"), fmt.Appendf(nil, "%d %d", efd, ofd), 0); err != nil {
		w.close()
		return nil, fmt.Errorf("watch OOM kills of cgroup %s: %w", dir, err)
	}
	return w, nil
}

// killed reports whether an OOM kill ended the process, which exited with code.
func (w *oomWatch) killed(code int) (bool, error) {
	if w.parent != "" {
		n, err := cgroupfs.OOMKills(w.parent)
		return n > 0, err
	}
	n := readEvents(w.efd, 0)
	alive, kills := oomControl(w.ofd)
	switch {
	case alive:
		// No removal yet, so every signal was an OOM.
		return n > 0 || kills > 0, nil
	case n == 0 || code != 128+int(unix.SIGKILL):
		// An OOM signal is sent before the kill, so it would be counted;
		// and an OOM kill is a SIGKILL.
		return false, nil
	case n >= 2:
		// The removal signals once: the rest were OOMs.
		return true, nil
	}
	// One signal and the cgroup is gone: the removal, or an OOM whose
	// removal signal is still on its way (the kernel sends it from a work queue).
	return readEvents(w.efd, 100)+n >= 2, nil
}

// readEvents returns the eventfd's count, waiting up to ms milliseconds for one.
func readEvents(efd, ms int) int {
	if ms > 0 {
		fds := []unix.PollFd{{Fd: int32(efd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, ms); err != nil || n == 0 {
			return 0
		}
	}
	var b [8]byte
	if _, err := unix.Read(efd, b[:]); err != nil {
		return 0
	}
	return int(binary.NativeEndian.Uint64(b[:]))
}

// oomControl reads memory.oom_control through its open descriptor: alive is
// false once the cgroup was removed.
func oomControl(fd int) (alive bool, kills int) {
	b := make([]byte, 256)
	n, err := unix.Pread(fd, b, 0)
	if err != nil {
		return !errors.Is(err, unix.ENODEV), 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b[:n]))
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("oom_kill ")); ok {
			kills, _ = strconv.Atoi(string(v))
		}
	}
	return true, kills
}

func (w *oomWatch) close() {
	for _, fd := range []*int{&w.efd, &w.ofd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}
