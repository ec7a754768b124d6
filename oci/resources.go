package oci

import (
	"context"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
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

// Unlimited is RLIM_INFINITY, as the runtime spec writes it.
const Unlimited = ^uint64(0)

// Rlimits are every resource limit of a sandbox's process, all of them set
// explicitly on every backend: one left out is inherited from the daemon,
// and several of those the kernel sizes from the host (SIGPENDING and NPROC
// from its memory), so a sandbox would differ from host to host. The values
// are at or under the kernel's own defaults, so that a runtime that cannot
// raise a limit (rootless, or the unprivileged gate on Kubernetes) can still
// set them; the probe prints each one, and TestRlimitsCoverEveryResource
// keeps this list whole.
func Rlimits(p Policy) []specs.POSIXRlimit {
	both := func(typ string, v uint64) specs.POSIXRlimit { return specs.POSIXRlimit{Type: typ, Soft: v, Hard: v} }
	return []specs.POSIXRlimit{
		// Bounded by the memory cgroup, not per process.
		both("RLIMIT_AS", Unlimited),
		// No core dumps: a dump is the agent's memory, secrets included,
		// written where the host's core_pattern says.
		both("RLIMIT_CORE", 0),
		both("RLIMIT_CPU", Unlimited),
		both("RLIMIT_DATA", Unlimited),
		// Bounded by the workspace's and /tmp's sizes.
		both("RLIMIT_FSIZE", Unlimited),
		both("RLIMIT_LOCKS", Unlimited),
		// Locked memory would escape the memory cgroup's reclaim; 64 KiB is
		// the kernel's default before 5.16, and gVisor's.
		both("RLIMIT_MEMLOCK", 64<<10),
		// The kernel's default (MQ_BYTES_MAX), the same on every host.
		both("RLIMIT_MSGQUEUE", 819200),
		// No raising of priorities, normal or real-time.
		both("RLIMIT_NICE", 0),
		both("RLIMIT_NOFILE", p.NoFile),
		both("RLIMIT_NPROC", DefaultNProc),
		both("RLIMIT_RSS", Unlimited),
		both("RLIMIT_RTPRIO", 0),
		// Only real-time tasks count it, and RTPRIO 0 allows none.
		both("RLIMIT_RTTIME", Unlimited),
		// Pending signals, counted per host uid like NPROC.
		both("RLIMIT_SIGPENDING", DefaultSigPending),
		// The usual 8 MiB stack; the hard limit stays open, as everywhere, for
		// the tools that raise their own.
		{Type: "RLIMIT_STACK", Soft: 8 << 20, Hard: Unlimited},
	}
}

// DefaultSigPending bounds the signals queued to the sandbox user: the
// kernel's default for a host of 1 GiB, well above what the agent's tools
// queue at once.
const DefaultSigPending = 4096

// Fit lowers each limit to this host's hard limit: a runtime that cannot
// raise one (rootless, or root without CAP_SYS_RESOURCE, as in some VMs and
// containers) would fail to start the process, and a daemon on this host
// has at most this process's limits when they were started alike.
func (h Host) Fit(limits []specs.POSIXRlimit) []specs.POSIXRlimit {
	fitted, _ := h.Lower(limits)
	return fitted
}

// Lower is Fit, also returning the limits it lowered.
func (h Host) Lower(limits []specs.POSIXRlimit) (fitted, lowered []specs.POSIXRlimit) {
	fitted = slices.Clone(limits)
	for i, l := range fitted {
		hard, ok := h.HardLimits[l.Type]
		if !ok || hard >= l.Hard {
			continue
		}
		l.Hard, l.Soft = hard, min(l.Soft, hard)
		fitted[i] = l
		lowered = append(lowered, l)
	}
	return fitted, lowered
}

// rlimitResources are the kernel's numbers of the limits Rlimits sets.
var rlimitResources = map[string]int{
	"RLIMIT_AS": unix.RLIMIT_AS, "RLIMIT_CORE": unix.RLIMIT_CORE, "RLIMIT_CPU": unix.RLIMIT_CPU,
	"RLIMIT_DATA": unix.RLIMIT_DATA, "RLIMIT_FSIZE": unix.RLIMIT_FSIZE, "RLIMIT_LOCKS": unix.RLIMIT_LOCKS,
	"RLIMIT_MEMLOCK": unix.RLIMIT_MEMLOCK, "RLIMIT_MSGQUEUE": unix.RLIMIT_MSGQUEUE, "RLIMIT_NICE": unix.RLIMIT_NICE,
	"RLIMIT_NOFILE": unix.RLIMIT_NOFILE, "RLIMIT_NPROC": unix.RLIMIT_NPROC, "RLIMIT_RSS": unix.RLIMIT_RSS,
	"RLIMIT_RTPRIO": unix.RLIMIT_RTPRIO, "RLIMIT_RTTIME": unix.RLIMIT_RTTIME, "RLIMIT_SIGPENDING": unix.RLIMIT_SIGPENDING,
	"RLIMIT_STACK": unix.RLIMIT_STACK,
}

// RlimitResource is the kernel's number of a limit type ("RLIMIT_NOFILE").
func RlimitResource(typ string) (int, bool) {
	r, ok := rlimitResources[typ]
	return r, ok
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
