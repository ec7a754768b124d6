package runtime

import (
	"fmt"
	"os"
)

// Isolation is what stands between a sandbox and the host's kernel.
type Isolation string

const (
	// IsolationRunc: namespaces, cgroups and seccomp on the host's kernel (runc).
	IsolationRunc Isolation = "runc"
	// IsolationGVisor: gVisor's runsc, whose user-space kernel answers the
	// sandbox's system calls; here on its ptrace platform (no KVM).
	IsolationGVisor Isolation = "gvisor"
)

// Isolations lists the isolations in the order reports show them.
var Isolations = []Isolation{IsolationRunc, IsolationGVisor}

// ParseIsolation accepts "runc", "gvisor", or "" for runc.
func ParseIsolation(s string) (Isolation, error) {
	switch Isolation(s) {
	case "", IsolationRunc:
		return IsolationRunc, nil
	case IsolationGVisor:
		return IsolationGVisor, nil
	}
	return "", fmt.Errorf("%w: isolation %q: choose runc or gvisor", ErrInvalidSpec, s)
}

// DefaultRunsc is the runsc sandstorm runs for gVisor: scripts/host-setup.sh
// installs it, a wrapper of Debian's /usr/bin/runsc that adds
// --platform=ptrace (no KVM here) and --oci-seccomp (without it runsc
// ignores the spec's seccomp profile), so every backend runs the same one.
const DefaultRunsc = "/usr/local/lib/sandstorm/runsc"

// DockerGVisorRuntime is the name Docker knows DefaultRunsc by
// (dockerd --add-runtime sandstorm-runsc=/usr/local/lib/sandstorm/runsc).
const DockerGVisorRuntime = "sandstorm-runsc"

// Runsc is the runsc to run: $SANDSTORM_RUNSC, or DefaultRunsc. It must
// exist: a sandbox asked for gVisor must not silently run under runc.
func Runsc() (string, error) {
	path := DefaultRunsc
	if p := os.Getenv("SANDSTORM_RUNSC"); p != "" {
		path = p
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%w: gVisor: runsc %s: %w (scripts/host-setup.sh installs it; or set SANDSTORM_RUNSC)", ErrUnavailable, path, err)
	}
	return path, nil
}
