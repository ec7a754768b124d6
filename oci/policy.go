// Package oci holds the sandbox policy (what a sandbox may do and use) and
// builds the OCI runtime spec that enforces it.
package oci

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/pkg/cap"
)

// Workspace is where the agent works; it is writable and owned by the agent user.
const Workspace = "/home/user"

// Network is a sandbox's network mode.
type Network string

const (
	// NetworkNone gives the sandbox its own network namespace with only loopback.
	NetworkNone Network = "none"
	// NetworkBridge attaches the sandbox to a NAT bridge for egress.
	NetworkBridge Network = "bridge"
)

// Seccomp names a seccomp profile.
type Seccomp string

const (
	// SeccompDefault is the runtime's default profile.
	SeccompDefault Seccomp = "default"
	// SeccompUnconfined disables seccomp; only for an explicit caller choice.
	SeccompUnconfined Seccomp = "unconfined"
)

// Mount is a host path bind-mounted into the sandbox (a directory or a Unix socket).
type Mount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Policy is a sandbox's security and resource policy. The zero value of every
// field means the safe default (see Defaults), so callers only set what they change.
type Policy struct {
	// UID and GID of the sandbox's process; 0 means the default 1000.
	// Running as root is not expressible on purpose.
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	// Capabilities the process keeps (e.g. "CAP_NET_BIND_SERVICE"); none by default.
	Capabilities []string `json:"capabilities,omitempty"`
	Seccomp      Seccomp  `json:"seccomp"`
	// WritableRoot makes the root filesystem writable; read-only by default.
	WritableRoot bool `json:"writable_root,omitempty"`
	// MemoryBytes is the memory limit (swap is not allowed beyond it).
	MemoryBytes int64 `json:"memory_bytes"`
	// CPUs is the CPU quota in cores (e.g. 0.5, 2).
	CPUs float64 `json:"cpus"`
	// Pids is the maximum number of processes and threads.
	Pids int64 `json:"pids"`
	// NoFile is the open-files limit (RLIMIT_NOFILE, soft and hard).
	NoFile uint64 `json:"nofile"`
	// TmpBytes is the size of the tmpfs at /tmp.
	TmpBytes int64 `json:"tmp_bytes"`
	// Hostname of the sandbox.
	Hostname string  `json:"hostname"`
	Network  Network `json:"network"`
	// Mounts are the only host paths the sandbox sees (besides its workspace).
	Mounts []Mount `json:"mounts,omitempty"`
}

// Default values of a Policy.
const (
	DefaultUID         = 1000
	DefaultGID         = 1000
	DefaultMemoryBytes = 4 << 30
	DefaultCPUs        = 2
	DefaultPids        = 512
	DefaultNoFile      = 4096
	// MaxNoFile is the kernel's default fs.nr_open: no process gets more.
	MaxNoFile       = 1 << 20
	DefaultTmpBytes = 512 << 20
	DefaultHostname = "sandbox"
)

// WithDefaults returns p with every unset field given its safe default.
func (p Policy) WithDefaults() Policy {
	if p.UID == 0 {
		p.UID = DefaultUID
	}
	if p.GID == 0 {
		p.GID = DefaultGID
	}
	if p.Seccomp == "" {
		p.Seccomp = SeccompDefault
	}
	if p.MemoryBytes == 0 {
		p.MemoryBytes = DefaultMemoryBytes
	}
	if p.CPUs == 0 {
		p.CPUs = DefaultCPUs
	}
	if p.Pids == 0 {
		p.Pids = DefaultPids
	}
	if p.NoFile == 0 {
		p.NoFile = DefaultNoFile
	}
	if p.TmpBytes == 0 {
		p.TmpBytes = DefaultTmpBytes
	}
	if p.Hostname == "" {
		p.Hostname = DefaultHostname
	}
	if p.Network == "" {
		p.Network = NetworkNone
	}
	return p
}

// ErrInvalidPolicy is wrapped by every Validate error.
var ErrInvalidPolicy = errors.New("invalid sandbox policy")

// Paths the spec itself owns: a bind mount may not replace or hide them.
var reservedTargets = []string{"/proc", "/sys", "/dev", "/tmp", Workspace}

// Kernel filesystems nothing may be mounted inside.
var kernelTargets = []string{"/proc", "/sys", "/dev"}

// Validate reports the first field of a defaulted policy that is out of range.
func (p Policy) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalidPolicy, field, fmt.Sprintf(format, args...))
	}
	switch {
	case p.MemoryBytes < 16<<20:
		return bad("memory", "%d bytes is below the 16 MiB minimum", p.MemoryBytes)
	case p.CPUs < 0.01 || p.CPUs > 1024:
		return bad("cpus", "%g is outside 0.01..1024", p.CPUs)
	case p.Pids < 8 || p.Pids > 1<<22:
		return bad("pids", "%d is outside 8..4194304", p.Pids)
	case p.NoFile < 64 || p.NoFile > MaxNoFile:
		return bad("nofile", "%d is outside 64..%d", p.NoFile, MaxNoFile)
	case p.TmpBytes < 1<<20:
		return bad("tmp", "%d bytes is below 1 MiB", p.TmpBytes)
	case p.Seccomp != SeccompDefault && p.Seccomp != SeccompUnconfined:
		return bad("seccomp", "%q is not one of default, unconfined", p.Seccomp)
	case p.Network != NetworkNone && p.Network != NetworkBridge:
		return bad("network", "%q is not one of none, bridge", p.Network)
	case !validHostname(p.Hostname):
		return bad("hostname", "%q is not a valid hostname", p.Hostname)
	}
	known := cap.Known()
	for _, c := range p.Capabilities {
		if !slices.Contains(known, c) {
			return bad("capabilities", "%q is not a Linux capability (write it as CAP_NAME)", c)
		}
	}
	for _, m := range p.Mounts {
		if !path.IsAbs(m.Source) || !path.IsAbs(m.Target) {
			return bad("mounts", "%q -> %q: source and target must be absolute paths", m.Source, m.Target)
		}
		if path.Clean(m.Target) != m.Target || path.Clean(m.Source) != m.Source {
			return bad("mounts", "%q -> %q: paths must be clean (no .., no trailing /)", m.Source, m.Target)
		}
		if m.Target == "/" {
			return bad("mounts", "target / would replace the root filesystem")
		}
		for _, r := range reservedTargets {
			if m.Target == r || isUnder(r, m.Target) {
				return bad("mounts", "target %q would hide %s, which the sandbox spec owns", m.Target, r)
			}
		}
		for _, k := range kernelTargets {
			if isUnder(m.Target, k) {
				return bad("mounts", "target %q is inside the kernel filesystem %s", m.Target, k)
			}
		}
	}
	return nil
}

func validHostname(h string) bool {
	if h == "" || len(h) > 63 {
		return false
	}
	for i, r := range h {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || (r == '-' && i > 0 && i < len(h)-1)
		if !ok {
			return false
		}
	}
	return true
}

// isUnder reports whether p lies strictly below dir.
func isUnder(p, dir string) bool { return strings.HasPrefix(p, dir+"/") }
