package runtime

import (
	"os"
	"path/filepath"
	"syscall"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/cgroupfs"
)

// DetectHost reads what this host allows, so specs fit it.
func DetectHost() oci.Host {
	var h oci.Host
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil {
		h.NoFileHard = rl.Max
	}
	// v1 memsw accounting, or v2's swap.max on any child cgroup.
	for _, pattern := range []string{"memory/memory.memsw.limit_in_bytes", "*/memory.swap.max"} {
		if m, _ := filepath.Glob(filepath.Join(cgroupfs.Root, pattern)); len(m) > 0 {
			h.SwapAccounting = true
		}
	}
	return h
}

// scratchMode lets the sandbox user traverse, but not list, scratch parents.
const scratchMode = 0o711

// MakeScratch creates dir (the sandbox's host scratch directory) and its
// workspace subdirectory home/, owned by uid:gid, holding files.
func MakeScratch(dir string, files []File, uid, gid int) (workspace string, err error) {
	if err := os.MkdirAll(filepath.Dir(dir), scratchMode); err != nil {
		return "", err
	}
	if err := os.Mkdir(dir, scratchMode); err != nil {
		return "", err
	}
	workspace = filepath.Join(dir, "home")
	if err := os.Mkdir(workspace, 0o755); err != nil {
		return "", err
	}
	if err := os.Lchown(workspace, uid, gid); err != nil {
		return "", err
	}
	return workspace, WriteWorkspace(workspace, files, uid, gid)
}
