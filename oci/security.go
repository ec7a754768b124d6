package oci

import (
	"context"
	"slices"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// withUser runs the process as uid:gid with no supplementary groups.
func withUser(uid, gid uint32) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
		// The primary group is also the one supplementary group, as Docker
		// and Podman set it: the same ids on every backend.
		s.Process.User = specs.User{UID: uid, GID: gid, AdditionalGids: []uint32{gid}}
		return nil
	}
}

// withCapabilities sets every capability set to exactly caps. The list is
// built explicitly: dropping all and then adding some left none with ctr.
// Ambient (and so inheritable) carry them too, or a non-root process would
// have none effective.
func withCapabilities(caps []string) oci.SpecOpts {
	caps = slices.Clone(caps)
	slices.Sort(caps)
	caps = slices.Compact(caps)
	if caps == nil {
		caps = []string{}
	}
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
		s.Process.Capabilities = &specs.LinuxCapabilities{
			Bounding:    caps,
			Effective:   caps,
			Permitted:   caps,
			Inheritable: caps,
			Ambient:     caps,
		}
		return nil
	}
}

// withSeccomp applies sandstorm's own profile (the same on every backend),
// whatever the capabilities.
func withSeccomp(mode Seccomp, gvisor bool) oci.SpecOpts {
	if mode == SeccompUnconfined {
		return oci.WithSeccompUnconfined
	}
	profile := SeccompProfile
	if gvisor {
		profile = GVisorSeccompProfile
	}
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
		p, err := profile()
		if err != nil {
			return err
		}
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		s.Linux.Seccomp = p
		return nil
	}
}

func withRootFS(writable bool) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
		if s.Root == nil {
			s.Root = &specs.Root{Path: "rootfs"}
		}
		s.Root.Readonly = !writable
		return nil
	}
}

// MaskedPaths are hidden from the sandbox, and ReadonlyPaths read-only, on
// every backend: the lists are given to each explicitly. They are fixed
// here rather than taken from containerd's default, which varies with the
// host's CPU count and would make specs host-dependent.
var MaskedPaths = []string{
	"/proc/acpi",
	"/proc/asound",
	"/proc/interrupts",
	"/proc/kcore",
	"/proc/keys",
	"/proc/latency_stats",
	"/proc/sched_debug",
	"/proc/scsi",
	"/proc/timer_list",
	"/proc/timer_stats",
	"/sys/devices/virtual/powercap",
	"/sys/firmware",
}

// ReadonlyPaths: see MaskedPaths.
var ReadonlyPaths = []string{
	"/proc/bus",
	"/proc/fs",
	"/proc/irq",
	"/proc/sys",
	"/proc/sysrq-trigger",
}

var (
	withMaskedPaths   = oci.WithMaskedPaths(MaskedPaths)
	withReadonlyPaths = oci.WithReadonlyPaths(ReadonlyPaths)
)

// withCgroupNamespace hides the host's cgroup tree: the sandbox sees its own
// cgroup as the root.
var withCgroupNamespace = oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.CgroupNamespace})

// withNetwork joins a prepared network namespace, or keeps the fresh one from
// the default spec (loopback only).
func withNetwork(netns string) oci.SpecOpts {
	return func(ctx context.Context, c oci.Client, ctr *containers.Container, s *specs.Spec) error {
		if netns == "" {
			return nil
		}
		return oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: netns})(ctx, c, ctr, s)
	}
}
