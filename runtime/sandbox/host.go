package sandbox

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/cgroupfs"
)

// DetectHost reads what this host allows, so specs fit it.
func DetectHost() oci.Host {
	h := oci.Host{HardLimits: map[string]uint64{}}
	for _, l := range oci.Rlimits(oci.Policy{}) {
		var rl unix.Rlimit
		if res, ok := oci.RlimitResource(l.Type); ok && unix.Getrlimit(res, &rl) == nil {
			h.HardLimits[l.Type] = rl.Max
		}
	}
	// v1 memsw accounting, or v2's swap.max on any child cgroup.
	for _, pattern := range []string{"memory/memory.memsw.limit_in_bytes", "*/memory.swap.max"} {
		if m, _ := filepath.Glob(filepath.Join(cgroupfs.Root, pattern)); len(m) > 0 {
			h.SwapAccounting = true
		}
	}
	return h
}

// Lowered are the Differences of the default policy's limits that this host
// does not allow (oci.Host.Fit), as the probe prints them: every backend
// that fits its limits to the host reports them in its Info.
func Lowered(h oci.Host) []Difference {
	_, lowered := h.Lower(oci.Rlimits(oci.Policy{}.WithDefaults()))
	value := func(v uint64) string {
		if v == oci.Unlimited {
			return "unlimited"
		}
		return strconv.FormatUint(v, 10)
	}
	var diffs []Difference
	for _, l := range lowered {
		diffs = append(diffs, Difference{
			Line: "rlimit " + strings.TrimPrefix(l.Type, "RLIMIT_"), Value: value(l.Soft) + ":" + value(l.Hard), OfHost: true,
			Reason: fmt.Sprintf("this host's hard %s is below the policy's, and a runtime without CAP_SYS_RESOURCE cannot raise it", l.Type),
		})
	}
	return diffs
}
