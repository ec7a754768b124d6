package oci

import (
	"context"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// cpuPeriod is the CFS period in microseconds (the kernel's default).
const cpuPeriod = 100000

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
	return oci.WithCPUCFS(CPUQuota(cpus), cpuPeriod)
}

// CPUQuota is the CFS quota in microseconds per period for a number of cores.
func CPUQuota(cpus float64) int64 { return int64(cpus*cpuPeriod + 0.5) }

// withNoFile sets the open-files limit, lowered to the host's hard limit: a
// higher value would make the runtime fail to start the process.
func withNoFile(limit, hostHard uint64) oci.SpecOpts {
	if hostHard > 0 && limit > hostHard {
		limit = hostHard
	}
	return oci.WithRlimit(&specs.POSIXRlimit{Type: "RLIMIT_NOFILE", Hard: limit, Soft: limit})
}
