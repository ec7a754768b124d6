package oci

import (
	"context"

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

// NoFile is the open-files limit a sandbox gets for limit: lowered to the
// host's hard limit, as a higher value would make the runtime fail to start
// the process.
func (h Host) NoFile(limit uint64) uint64 {
	if h.NoFileHard > 0 && limit > h.NoFileHard {
		return h.NoFileHard
	}
	return limit
}

func withNoFile(limit uint64) oci.SpecOpts {
	return oci.WithRlimit(&specs.POSIXRlimit{Type: "RLIMIT_NOFILE", Hard: limit, Soft: limit})
}
