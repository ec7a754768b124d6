// Package sandbox is the one interface every sandbox backend implements
// (containerd, Docker, Podman root and rootless, each under runc or gVisor,
// and Kubernetes, a Pod per sandbox), the report of what each really
// enforces, and the policy every one of them applies; runtime/conformance
// proves it inside real sandboxes.
package sandbox

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/sandstorm-dev/sandstorm/oci"
)

// The error vocabulary shared by every backend. Callers map these to HTTP
// statuses and exit codes in one place.
var (
	// ErrUnavailable: the backend's daemon cannot be reached.
	ErrUnavailable = errors.New("runtime unavailable")
	// ErrNotFound: no such sandbox or image.
	ErrNotFound = errors.New("not found")
	// ErrNotEnforceable: the policy needs an item this backend cannot enforce here.
	ErrNotEnforceable = errors.New("policy item not enforceable")
	// ErrInvalidSpec: the request itself is wrong (paths, sizes, policy values).
	ErrInvalidSpec = errors.New("invalid sandbox spec")
	// ErrPolicyNotApplied: the backend accepted a sandbox but dropped or changed a setting.
	ErrPolicyNotApplied = errors.New("policy not applied by backend")
	// ErrNoCapacity: the backend's own limit of sandboxes (a cluster's,
	// shared by every sandstorm using it) left no room in time.
	ErrNoCapacity = errors.New("no capacity for another sandbox")
)

// Spec is a request for one sandbox.
type Spec struct {
	// ID names the sandbox; empty means one is generated.
	ID string
	// SessionID labels everything the sandbox owns, for listing and reaping.
	SessionID string
	// Image is a full image reference already present in the backend.
	Image string
	// Args is the command; it replaces the image's entrypoint and command.
	Args []string
	// Env is added to the image's environment, as KEY=VALUE.
	Env []string
	// Labels are extra labels; the managed and session labels are always set.
	Labels map[string]string
	// Files are written into the workspace before the process starts.
	Files []File
	// Policy is the security and resource policy; zero fields take safe defaults.
	Policy oci.Policy
	// AllowUnenforced lists the policy items the caller accepts running
	// without when this backend cannot enforce them. Anything else fails closed.
	AllowUnenforced []Item
}

// File is one file placed in the workspace, owned by the sandbox user.
type File struct {
	// Path is relative to the workspace; no absolute paths, no "..".
	Path    string
	Content []byte
	// Mode is the permission bits; 0 means 0644.
	Mode fs.FileMode
}

// IO receives the sandbox's output streams, live and separately.
type IO struct {
	Stdout io.Writer
	Stderr io.Writer
}

// ExitStatus is how a sandbox's process ended. Its zero value is an exit
// nobody saw: Known is false when the backend lost track of the process
// (its daemon went away), and Code then means nothing.
type ExitStatus struct {
	Known bool
	Code  int
	// Signal is set when the process was killed by a signal (Code is then 128+n).
	Signal string
	// OOMKilled is true when the kernel's OOM killer ended the process.
	OOMKilled bool
	ExitedAt  time.Time
}

// Runtime is one container backend.
type Runtime interface {
	// Name is the backend's name as users select it ("containerd", ...).
	Name() string
	// Info describes the backend: version, socket, root or rootless.
	Info(ctx context.Context) (Info, error)
	// Enforcement reports which policy items this backend enforces on this host.
	Enforcement(ctx context.Context) (Enforcement, error)
	// ImportImage loads an image tar (OCI layout with a Docker manifest.json)
	// and returns the references it now holds.
	ImportImage(ctx context.Context, r io.Reader) ([]string, error)
	// Create prepares a sandbox without starting it. It fails closed with
	// ErrNotEnforceable when the policy needs an item the backend cannot enforce.
	Create(ctx context.Context, spec Spec) (Sandbox, error)
	// List returns the sandboxes carrying all the given labels.
	List(ctx context.Context, labels map[string]string) ([]SandboxInfo, error)
	// Remove deletes the sandbox with this id and everything it owns, running
	// or not (used to reap strays after a crash). Removing a missing sandbox is not an error.
	Remove(ctx context.Context, id string) error
	// Leftovers names anything of sandbox id (of session sessionID) still on
	// the host after its removal: containers, tasks, snapshots, cgroups,
	// network namespaces, scratch directories.
	Leftovers(ctx context.Context, id, sessionID string) ([]string, error)
	Close() error
}

// Sandbox is one created sandbox.
type Sandbox interface {
	ID() string
	// Unenforced lists the policy items this sandbox runs without, because
	// the backend cannot enforce them and the caller allowed that.
	Unenforced() []Item
	// Start starts the process; its output is copied to io as it is produced.
	Start(ctx context.Context, io IO) error
	// Wait blocks until the process exits and all its output was delivered.
	Wait(ctx context.Context) (ExitStatus, error)
	// Workspace opens the workspace as the process left it, to read what it
	// made; the caller closes it, before Remove. The root keeps every path
	// inside (symlinks out of it are refused).
	Workspace() (*os.Root, error)
	// Kill sends SIGKILL to every process of the sandbox.
	Kill(ctx context.Context) error
	// Remove deletes the sandbox and everything it owns; it kills first if
	// needed and is safe to call more than once.
	Remove(ctx context.Context) error
}

// ImageChecker is implemented by backends that can tell cheaply whether an
// image is present, so a large image is not imported again.
type ImageChecker interface {
	HasImage(ctx context.Context, ref string) (bool, error)
}

// SandboxInfo is a sandbox found by List.
type SandboxInfo struct {
	ID        string
	SessionID string
	Labels    map[string]string
	Running   bool
}

// Info describes a backend instance.
type Info struct {
	Name     string
	Version  string
	Socket   string
	Rootless bool
	// Isolation is the isolation this instance runs sandboxes with.
	Isolation Isolation
	// Differences are where this backend's sandboxes differ, seen from the
	// inside, from the one fingerprint every backend's must have (see
	// runtime/conformance/probe), because it cannot do otherwise.
	Differences []Difference
}

// Label names the instance in reports: "podman-rootless" for a rootless
// one, "docker+gvisor" for one running gVisor.
func (i Info) Label() string {
	l := i.Name
	if i.Rootless {
		l += "-rootless"
	}
	if i.Isolation != "" && i.Isolation != IsolationRunc {
		l += "+" + string(i.Isolation)
	}
	return l
}

// SameDaemon reports whether two instances talk to one daemon (whatever
// isolation each runs): they hold the same sandboxes.
func (i Info) SameDaemon(o Info) bool {
	return i.Name == o.Name && i.Socket == o.Socket && i.Rootless == o.Rootless
}

// Difference is one line of the sandbox fingerprint that a backend cannot
// make as the golden one says, with what it shows instead and why.
type Difference struct {
	// Line is the fingerprint line's key ("mount /dev"); Value what the backend's sandboxes show.
	Line, Value string
	Reason      string
	// OfHost: the value is this host's, not the backend's (a limit it cannot
	// raise to the policy's, lowered to the host's own): no golden file can
	// hold it, so the conformance suite takes it from here.
	OfHost bool
}

// Reap removes every sandbox carrying the given labels (strays after a
// crash) and returns how many were removed.
func Reap(ctx context.Context, rt Runtime, labels map[string]string) (int, error) {
	found, err := rt.List(ctx, labels)
	if err != nil {
		return 0, err
	}
	var errs []error
	n := 0
	for _, s := range found {
		if err := rt.Remove(ctx, s.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// ValidID reports whether id can name a sandbox: it becomes part of host
// paths, so only [A-Za-z0-9_.-], starting with an alphanumeric, 1-64 long.
func ValidID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i, r := range id {
		alnum := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if !alnum && (i == 0 || (r != '_' && r != '.' && r != '-')) {
			return false
		}
	}
	return true
}
