package podman

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/cgroupfs"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// cgroupParent is the cgroup a sandbox's container cgroup is created under:
// one per sandbox, so it outlives the container (Podman removes the
// container's own cgroup as soon as the process exits) and can be found by
// the sandbox id alone.
func cgroupParent(id string) string { return oci.Container{ID: id}.CgroupPath() }

// containerCgroup is where Podman's cgroupfs manager puts the container.
func containerCgroup(parent, ctrID string) string { return parent + "/libpod-" + ctrID }

// ownCgroup tells whether sandboxes get a cgroup parent of their own: only
// a plain cgroupfs path works (systemd wants slices), and a rootless
// service can only create it when sandstorm (root) delegates it on cgroup v1.
func ownCgroup(svc service, root bool) bool {
	return svc.local && svc.cgroupfs && (!svc.rootless || (root && !svc.cgroupV2))
}

// oomUnsupported says why OOM kills cannot be detected, or "" when they can:
// sandstorm watches the sandbox's memory cgroup on this host.
func oomUnsupported(svc service, root bool) string {
	switch {
	case !svc.local:
		return "the Podman service is not on this host, so its cgroups cannot be watched"
	case !svc.cgroupfs:
		return `Podman 4 reports no OOM kill and sandstorm can only watch a per-sandbox cgroup with cgroup_manager = "cgroupfs"`
	case svc.rootless && svc.cgroupV2:
		return "a rootless service on cgroup v2 gets no per-sandbox cgroup to watch"
	case !root && !svc.cgroupV2:
		return "watching cgroup v1 OOM events needs sandstorm to run as root"
	}
	return ""
}

// delegate creates the cgroup rel in every hierarchy and gives its
// directory to uid:gid, so a rootless service (on cgroup v1) can create the
// container's cgroup in it. Its own control files stay root's.
func delegate(rel string, uid, gid int) error {
	hier, err := os.ReadDir(cgroupfs.Root)
	if err != nil {
		return fmt.Errorf("list cgroup hierarchies: %w", err)
	}
	for _, h := range hier {
		if !h.IsDir() {
			continue
		}
		dir := filepath.Join(cgroupfs.Root, h.Name())
		for _, part := range strings.Split(strings.Trim(rel, "/"), "/") {
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("create cgroup %s: %w", dir, err)
			}
			// A new v1 cpuset has no CPUs or memory nodes, and the service
			// cannot fill them in for cgroups it does not own.
			if err := inheritCpuset(dir); err != nil {
				return err
			}
		}
		if err := os.Lchown(dir, uid, gid); err != nil {
			return fmt.Errorf("delegate cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// limit is one cgroup v1 control file and the value it must hold.
type limit struct {
	file  string // relative to the hierarchy's cgroup directory
	value int64
}

// v1Limits are the files enforcing a policy's resource limits on cgroup v1.
func v1Limits(pol oci.Policy, swap bool) []limit {
	l := []limit{{"memory/memory.limit_in_bytes", pol.MemoryBytes}}
	if swap {
		// After the memory limit: memory+swap may never be below it.
		l = append(l, limit{"memory/memory.memsw.limit_in_bytes", pol.MemoryBytes})
	}
	return append(l,
		limit{"cpu/cpu.cfs_period_us", oci.CPUPeriod},
		limit{"cpu/cpu.cfs_quota_us", oci.CPUQuota(pol.CPUs)},
		limit{"pids/pids.max", pol.Pids},
	)
}

// applyLimits writes limits into the container cgroup leaf (on cgroup v1)
// and reads each back: a rootless service on cgroup v1 drops the limits,
// so sandstorm, as root, sets them itself before the process starts.
func applyLimits(leaf string, limits []limit) error {
	for _, l := range limits {
		ctrl, file, _ := strings.Cut(l.file, "/")
		p := filepath.Join(cgroupfs.Root, ctrl, leaf, file)
		want := strconv.FormatInt(l.value, 10)
		if err := os.WriteFile(p, []byte(want), 0); err != nil {
			return fmt.Errorf("%w: set %s: %w", sandbox.ErrPolicyNotApplied, p, err)
		}
		got, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("%w: read back %s: %w", sandbox.ErrPolicyNotApplied, p, err)
		}
		// The kernel keeps memory limits in whole pages.
		if strings.HasPrefix(file, "memory.") {
			want = strconv.FormatInt(l.value/pageSize*pageSize, 10)
		}
		if g := strings.TrimSpace(string(got)); g != want {
			return fmt.Errorf("%w: %s is %s, want %s", sandbox.ErrPolicyNotApplied, p, g, want)
		}
	}
	return nil
}

var pageSize = int64(os.Getpagesize())

func inheritCpuset(dir string) error {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		cur, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil || len(strings.TrimSpace(string(cur))) > 0 {
			continue // not a v1 cpuset hierarchy, or already set
		}
		parent, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
		if err != nil {
			return fmt.Errorf("read %s of %s: %w", f, filepath.Dir(dir), err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), parent, 0o644); err != nil {
			return fmt.Errorf("set %s of %s: %w", f, dir, err)
		}
	}
	return nil
}

// removeCgroup removes rel and every cgroup below it in every hierarchy.
// A cgroup whose last process is still exiting is busy for a moment: retry.
func removeCgroup(ctx context.Context, rel string) error {
	for {
		var busy []string
		for _, top := range cgroupfs.Existing(rel) {
			var dirs []string
			_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			// Children first.
			for i := len(dirs) - 1; i >= 0; i-- {
				if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
					busy = append(busy, fmt.Sprintf("%s: %v", dirs[i], err))
				}
			}
		}
		if len(busy) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove cgroup %s: %s", rel, strings.Join(busy, "; "))
		case <-time.After(10 * time.Millisecond):
		}
	}
}
