package sandbox

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

// GVisorUnenforced are the policy items runsc does not enforce here, on any
// backend, each with the reason; a backend running gVisor reports them so,
// and a policy needing one fails closed unless the caller allows it.
func GVisorUnenforced() map[Item]string {
	return map[Item]string{
		ItemGrantCapabilities: "gVisor (runsc 20221219) gives a non-root user no ambient capabilities: listed ones stay out of its effective set",
		ItemPidsLimit: "gVisor's processes are not host processes: the pids cgroup bounds runsc's own threads, " +
			"not the sandbox's processes (the memory limit still bounds a fork bomb)",
		ItemNosuidMounts: "gVisor (runsc 20221219) has no nosuid or nodev mount flags",
		ItemOOMDetection: "gVisor's kernel may kill an out-of-memory process itself (exit 137) before the host's OOM killer acts, " +
			"so a kill is not always told from another SIGKILL",
		ItemNetworkBridge: "runsc 20221219 takes any network namespace for the host's on kernels that " +
			"namespace net.core.rmem_default (6.x) and refuses it, so it runs with --network=none: loopback only",
	}
}

// DefaultRunsc is the runsc sandstorm runs for gVisor: scripts/host-setup.sh
// installs it, a wrapper of Debian's /usr/bin/runsc that adds
// --platform=ptrace (no KVM here), --oci-seccomp (without it runsc ignores
// the spec's seccomp profile), --network=none (see GVisorUnenforced) and
// --host-uds=open (the agent reaches its gateway through a mounted Unix
// socket), so every backend runs the same one.
const DefaultRunsc = "/usr/local/lib/sandstorm/runsc"

// GVisorRuntime is the name Docker and Podman know DefaultRunsc by
// (dockerd --add-runtime sandstorm-runsc=/usr/local/lib/sandstorm/runsc;
// [engine.runtimes] in containers.conf). Both take a runtime by name only.
const GVisorRuntime = "sandstorm-runsc"

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
