package oci

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"slices"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// seccompJSON is sandstorm's seccomp profile, the same on every backend:
// the runtime-default allow-list for a process with no capabilities
// (containerd's, the one Docker and Podman started from), with ptrace and
// process_vm_* removed, and, denied by name so that reading the file says
// so, what an agent never needs and exploits love (see DeniedSyscalls).
// TestSeccompProfile regenerates it (go test ./oci -run Seccomp -update).
//
//go:embed seccomp.json
var seccompJSON []byte

// DeniedSyscalls are refused with EPERM whatever the capabilities:
// namespaces and mounts (a sandbox must stay in its own), keyrings, BPF,
// perf, userfaultfd, io_uring, tracing, kernel modules and kexec. Creating
// namespaces through clone's flags is refused by an argument filter, and
// clone3 answers ENOSYS (NosysSyscalls) so that libc falls back to clone.
// io_uring answers EPERM, as in the runtime default: with ENOSYS the
// Claude Code CLI took 115 ms longer to its first message.
var DeniedSyscalls = []string{
	"unshare", "setns",
	"mount", "umount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
	"keyctl", "add_key", "request_key",
	"bpf", "perf_event_open", "userfaultfd",
	"io_uring_setup", "io_uring_enter", "io_uring_register",
	"ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
	"init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
}

// NosysSyscalls answer ENOSYS: glibc falls back from clone3 to clone.
var NosysSyscalls = []string{"clone3"}

// SeccompProfile returns sandstorm's seccomp profile, a copy of its own
// for each caller.
func SeccompProfile() (*specs.LinuxSeccomp, error) {
	var p specs.LinuxSeccomp
	if err := json.Unmarshal(seccompJSON, &p); err != nil {
		return nil, fmt.Errorf("sandstorm seccomp profile: %w", err)
	}
	return &p, nil
}

// GVisorSeccompProfile is the profile for a sandbox under gVisor. runsc
// (--oci-seccomp) answers every errno rule with EPERM, which for clone3
// would keep libc from falling back to clone: no thread could start.
// gVisor has no clone3 and answers ENOSYS itself (its fingerprint shows
// it), so the NosysSyscalls rule lets them through to it instead.
func GVisorSeccompProfile() (*specs.LinuxSeccomp, error) {
	p, err := SeccompProfile()
	if err != nil {
		return nil, err
	}
	for i, s := range p.Syscalls {
		if slices.ContainsFunc(s.Names, func(n string) bool { return slices.Contains(NosysSyscalls, n) }) {
			p.Syscalls[i].Action, p.Syscalls[i].ErrnoRet = specs.ActAllow, nil
		}
	}
	return p, nil
}

// SeccompJSON is the profile as JSON, for backends that take it so
// (Docker's seccomp= security option, a file for Podman).
func SeccompJSON() []byte { return append([]byte(nil), seccompJSON...) }
