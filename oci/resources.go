package oci

import (
	"context"
	"strings"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// CPUPeriod is the CFS period in microseconds (the kernel's default) that
// CPU quotas are expressed in, on every backend.
const CPUPeriod = 100000

// withMemory limits memory and, where the host can, forbids swap beyond it.
func withMemory(limit int64, swapAccounting bool) oci.SpecOpts {
	return func(ctx context.Context, c oci.Client, ctr *containers.Container, s *specs.Spec) error {
		if err := oci.WithMemoryLimit(uint64(limit))(ctx, c, ctr, s); err != nil {
			return err
		}
		if swapAccounting {
			return oci.WithMemorySwap(limit)(ctx, c, ctr, s)
		}
		return nil
	}
}

func withCPUs(cpus float64) oci.SpecOpts {
	return oci.WithCPUCFS(CPUQuota(cpus), CPUPeriod)
}

// CPUQuota is the CFS quota in microseconds per period for a number of cores.
func CPUQuota(cpus float64) int64 { return int64(cpus*CPUPeriod + 0.5) }

// DefaultNProc bounds the processes of the sandbox user: RLIMIT_NPROC counts
// them per host uid, across sandboxes, so it is a backstop; the pids cgroup
// limit bounds each sandbox.
const DefaultNProc = 32768

// Rlimits are the resource limits of a sandbox's process, set explicitly on
// every backend (each would otherwise pass on its daemon's own): open files
// as the policy says, processes DefaultNProc, and no core dumps (a dump is
// the agent's memory, secrets included, written where the host's
// core_pattern says). Each is lowered to the host's hard limit, as a higher
// one would make the runtime fail to start the process.
func (h Host) Rlimits(p Policy) []specs.POSIXRlimit {
	limit := func(typ string, v, hard uint64) specs.POSIXRlimit {
		if hard > 0 && v > hard {
			v = hard
		}
		return specs.POSIXRlimit{Type: typ, Hard: v, Soft: v}
	}
	return []specs.POSIXRlimit{
		limit("RLIMIT_CORE", 0, 0),
		limit("RLIMIT_NOFILE", p.NoFile, h.NoFileHard),
		limit("RLIMIT_NPROC", DefaultNProc, h.NProcHard),
	}
}

// RlimitName is the short name Docker and Podman take: "RLIMIT_NOFILE"
// (as specs and inspect output spell it) is "nofile".
func RlimitName(typ string) string {
	return strings.ToLower(strings.TrimPrefix(strings.ToUpper(typ), "RLIMIT_"))
}

func withRlimits(limits []specs.POSIXRlimit) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
		s.Process.Rlimits = limits
		return nil
	}
}
