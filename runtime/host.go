package runtime

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

// Rlimits are p's resource limits (oci.Rlimits) as a backend sets them:
// as they are where its runtime runs privileged; lowered to this host's
// hard limits where it cannot raise one (rootless: a higher one would make
// it fail to start the process), with a Difference for each one lowered.
func Rlimits(h oci.Host, rootless bool, p oci.Policy) ([]specs.POSIXRlimit, []Difference) {
	if !rootless {
		return oci.Rlimits(p), nil
	}
	fitted, lowered := h.Fit(oci.Rlimits(p))
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
			Reason: fmt.Sprintf("rootless: %s cannot be raised above this host's hard limit", l.Type),
		})
	}
	return fitted, diffs
}
