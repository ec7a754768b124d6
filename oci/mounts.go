package oci

import (
	"context"
	"fmt"
	"slices"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// withTmp gives a writable, size-bounded /tmp: agent tools need one even
// with a read-only root.
func withTmp(size int64) oci.SpecOpts {
	return oci.WithMounts([]specs.Mount{{
		Destination: "/tmp",
		Type:        "tmpfs",
		Source:      "tmpfs",
		Options:     []string{"nosuid", "nodev", "mode=1777", fmt.Sprintf("size=%d", size)},
	}})
}

// withDevNoexec: nothing in /dev is a program (Podman's /dev is so too).
func withDevNoexec(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
	for i, m := range s.Mounts {
		if m.Destination == "/dev" && !slices.Contains(m.Options, "noexec") {
			s.Mounts[i].Options = append(slices.Clone(m.Options), "noexec")
		}
	}
	return nil
}

func withWorkspace(hostDir string) oci.SpecOpts {
	return oci.WithMounts([]specs.Mount{{
		Destination: Workspace,
		Type:        "bind",
		Source:      hostDir,
		Options:     []string{"rbind", "rw", "nosuid", "nodev"},
	}})
}

// withCgroupfsReadOnly lets the sandbox read its own limits; the default spec
// has no /sys/fs/cgroup mount.
var withCgroupfsReadOnly = oci.WithMounts([]specs.Mount{{
	Destination: "/sys/fs/cgroup",
	Type:        "cgroup",
	Source:      "cgroup",
	Options:     []string{"nosuid", "noexec", "nodev", "relatime", "ro"},
}})

func withBindMounts(mounts []Mount) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
		for _, m := range mounts {
			opts := []string{"rbind", "nosuid", "nodev", "rw"}
			if m.ReadOnly {
				opts[3] = "ro"
			}
			s.Mounts = append(s.Mounts, specs.Mount{Destination: m.Target, Type: "bind", Source: m.Source, Options: opts})
		}
		return nil
	}
}
