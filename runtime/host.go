package runtime

import (
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
