package sandbox

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
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
	var diffs []Difference
	for _, l := range lowered {
		line, value := RlimitLine(l)
		diffs = append(diffs, Difference{
			Line: line, Value: value, OfHost: true,
			Reason: fmt.Sprintf("this host's hard %s is below the policy's, and a runtime without CAP_SYS_RESOURCE cannot raise it", l.Type),
		})
	}
	return diffs
}

// RlimitLine is a limit as the fingerprint's probe prints it: the key
// ("rlimit NOFILE") and the value ("4096:4096", "unlimited" for none).
func RlimitLine(l specs.POSIXRlimit) (key, value string) {
	v := func(n uint64) string {
		if n == oci.Unlimited {
			return "unlimited"
		}
		return strconv.FormatUint(n, 10)
	}
	return "rlimit " + strings.TrimPrefix(l.Type, "RLIMIT_"), v(l.Soft) + ":" + v(l.Hard)
}
