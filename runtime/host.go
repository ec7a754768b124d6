package runtime

import (
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/cgroupfs"
)

// DetectHost reads what this host allows, so specs fit it.
func DetectHost() oci.Host {
	var h oci.Host
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil {
		h.NoFileHard = rl.Max
	}
	if err := unix.Getrlimit(unix.RLIMIT_NPROC, &rl); err == nil {
		h.NProcHard = rl.Max
	}
	// v1 memsw accounting, or v2's swap.max on any child cgroup.
	for _, pattern := range []string{"memory/memory.memsw.limit_in_bytes", "*/memory.swap.max"} {
		if m, _ := filepath.Glob(filepath.Join(cgroupfs.Root, pattern)); len(m) > 0 {
			h.SwapAccounting = true
		}
	}
	return h
}
