// Package lifecycle holds what the backends do the same way through a
// sandbox's life: every backend's Create sequence (containerd, Docker,
// Podman and Kubernetes supply its steps), cleanup that outlives the
// caller, exit statuses, label selectors; and what the backends of one
// host share: the state folder with one scratch directory per sandbox, and
// removing a sandbox once.
package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// CleanupTimeout bounds a removal, which runs even after the caller's context ended.
const CleanupTimeout = 30 * time.Second

// CleanupContext is the context a removal runs in: ctx's values, not its
// cancellation, and at most CleanupTimeout.
func CleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), CleanupTimeout)
}

// AllEnforced is a report in which every item is enforced; backends then
// name the ones they cannot enforce here.
func AllEnforced() sandbox.Enforcement {
	caps := sandbox.Enforcement{}
	for _, it := range sandbox.AllItems {
		caps[it] = sandbox.Support{Enforced: true}
	}
	return caps
}

// Exit is the status of a process that ended with code (128+n when signal n killed it).
func Exit(code int, at time.Time, oom bool) sandbox.ExitStatus {
	es := sandbox.ExitStatus{Known: true, Code: code, ExitedAt: at, OOMKilled: oom}
	if code > 128 && code < 128+65 {
		es.Signal = unix.SignalName(syscall.Signal(code - 128))
	}
	return es
}

// Lost wraps err, the failure of a call about sandbox id, as
// sandbox.ErrUnavailable when it says the daemon cannot be reached
// (isGone, the backend's test of its client's errors): the sandbox's
// state is then unknown, not an exit or a refusal.
func Lost(err error, isGone func(error) bool) error {
	if err == nil || errors.Is(err, sandbox.ErrUnavailable) || !isGone(err) {
		return err
	}
	return fmt.Errorf("%w: %w", sandbox.ErrUnavailable, err)
}

// OrDiscard is w, or io.Discard for a stream nobody reads.
func OrDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// Selector is the label selector of List: the given labels, always on
// sandboxes sandstorm manages.
func Selector(labels map[string]string) map[string]string {
	sel := maps.Clone(labels)
	if sel == nil {
		sel = map[string]string{}
	}
	sel[oci.LabelManaged] = "true"
	return sel
}

// CheckID refuses an id that cannot name a sandbox before it becomes part of a path.
func CheckID(id string) error {
	if !sandbox.ValidID(id) {
		return fmt.Errorf("%w: sandbox id %q", sandbox.ErrInvalidSpec, id)
	}
	return nil
}

// State is a backend's state folder: one scratch directory per sandbox
// (its workspace, and whatever else the backend keeps on the host for it).
type State string

// DefaultState is the state folder of backend name.
func DefaultState(name string) State { return State(filepath.Join("/var/lib/sandstorm", name)) }

// Make creates the folder, which a sandbox user (or a rootless service's
// user) may traverse to its workspace without listing it.
func (s State) Make() error {
	if err := os.MkdirAll(string(s), scratchMode); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	return nil
}

// Scratch is sandbox id's scratch directory.
func (s State) Scratch(id string) string { return filepath.Join(string(s), id) }

// Claim creates sandbox id's scratch directory, records its labels there
// (so a sandbox whose other objects are gone can still be found and
// swept), and makes its workspace holding files, owned by uid:gid. The
// directory claims the id: when it exists already another sandbox holds
// the id, and the error wraps sandbox.ErrInvalidSpec and ErrInUse (nothing
// was made, so there is nothing to undo).
func (s State) Claim(id string, labels map[string]string, files []sandbox.File, uid, gid int) (workspace string, err error) {
	dir := s.Scratch(id)
	if err := os.Mkdir(dir, scratchMode); errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("%w: sandbox id %s: %w", sandbox.ErrInvalidSpec, id, ErrInUse)
	} else if err != nil {
		return "", fmt.Errorf("prepare workspace: %w", err)
	}
	data, err := json.Marshal(labels)
	if err != nil {
		return "", fmt.Errorf("prepare workspace: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, labelsFile), data, 0o600); err != nil {
		return "", fmt.Errorf("prepare workspace: %w", err)
	}
	workspace = filepath.Join(dir, "home")
	if err := os.Mkdir(workspace, 0o755); err != nil {
		return "", fmt.Errorf("prepare workspace: %w", err)
	}
	if err := os.Lchown(workspace, uid, gid); err != nil {
		return "", fmt.Errorf("prepare workspace: %w", err)
	}
	if err := sandbox.WriteWorkspace(workspace, files, uid, gid); err != nil {
		return "", fmt.Errorf("prepare workspace: %w", err)
	}
	return workspace, nil
}

// scratchMode lets the sandbox user (or a rootless service's user)
// traverse, but not list, a scratch directory.
const scratchMode = 0o711

// labelsFile records a sandbox's labels in its scratch directory.
const labelsFile = "labels.json"

// List returns the sandboxes whose scratch directories carry all of sel's
// labels. A directory without readable labels (a create that stopped
// right after claiming the id) counts as a managed sandbox of no session.
func (s State) List(sel map[string]string) ([]sandbox.SandboxInfo, error) {
	entries, err := os.ReadDir(string(s))
	if err != nil {
		return nil, fmt.Errorf("list state directory: %w", err)
	}
	var out []sandbox.SandboxInfo
	for _, e := range entries {
		if !e.IsDir() || !sandbox.ValidID(e.Name()) {
			continue
		}
		labels := map[string]string{oci.LabelManaged: "true"}
		if data, err := os.ReadFile(filepath.Join(s.Scratch(e.Name()), labelsFile)); err == nil {
			_ = json.Unmarshal(data, &labels)
		}
		if Matches(labels, sel) {
			out = append(out, sandbox.SandboxInfo{ID: e.Name(), SessionID: labels[oci.LabelSession], Labels: labels})
		}
	}
	return out, nil
}

// Matches reports whether have carries every label of want.
func Matches(have, want map[string]string) bool {
	for k, v := range want {
		if w, ok := have[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// Merge lists each sandbox of the lists once, by id, as the first list
// holding it has it: a sandbox is listed once whichever of its objects
// were found.
func Merge(lists ...[]sandbox.SandboxInfo) []sandbox.SandboxInfo {
	var out []sandbox.SandboxInfo
	seen := map[string]bool{}
	for _, list := range lists {
		for _, s := range list {
			if !seen[s.ID] {
				seen[s.ID] = true
				out = append(out, s)
			}
		}
	}
	return out
}

// ErrInUse: another sandbox holds the id.
var ErrInUse = errors.New("in use by another sandbox")

// Seal bind-mounts a workspace onto itself, nosuid and nodev, for a
// backend whose mounts cannot carry those flags (Docker's API): the bind
// mount the daemon makes of it inherits them.
func (s State) Seal(workspace string) error {
	if err := sealAt(workspace, workspace, 0); err != nil {
		return fmt.Errorf("seal workspace: %w", err)
	}
	return nil
}

// SealMounts does for a policy's host paths what Seal does for the
// workspace, without touching the host's own mounts: each source is bound,
// nosuid and nodev (and read-only if so asked), at a point in sandbox id's
// scratch directory, and the returned mounts name those points.
// RemoveScratch detaches them.
func (s State) SealMounts(id string, mounts []oci.Mount) ([]oci.Mount, error) {
	if len(mounts) == 0 {
		return nil, nil
	}
	dir := filepath.Join(s.Scratch(id), "mounts")
	if err := os.Mkdir(dir, scratchMode); err != nil {
		return nil, fmt.Errorf("seal mounts: %w", err)
	}
	out := make([]oci.Mount, len(mounts))
	for i, m := range mounts {
		st, err := os.Stat(m.Source)
		if err != nil {
			return nil, fmt.Errorf("seal mount %s: %w", m.Target, err)
		}
		point := filepath.Join(dir, fmt.Sprint(i))
		// A bind mount needs a point of its source's kind: a directory, or
		// a file for anything else (a Unix socket, a regular file).
		if st.IsDir() {
			err = os.Mkdir(point, 0o700)
		} else {
			err = os.WriteFile(point, nil, 0o600)
		}
		var ro uintptr
		if m.ReadOnly {
			ro = unix.MS_RDONLY
		}
		if err == nil {
			err = sealAt(m.Source, point, ro)
		}
		if err != nil {
			return nil, fmt.Errorf("seal mount %s: %w", m.Target, err)
		}
		out[i] = m
		out[i].Source = point
	}
	return out, nil
}

// sealAt binds source at point, then makes that mount nosuid and nodev,
// with the extra flags.
func sealAt(source, point string, flags uintptr) error {
	if err := unix.Mount(source, point, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	if err := unix.Mount("", point, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV|flags, ""); err != nil {
		_ = unix.Unmount(point, unix.MNT_DETACH)
		return err
	}
	return nil
}

// mounts lists the mount points under sandbox id's scratch directory,
// deepest first.
func (s State) mounts(id string) ([]string, error) {
	found, err := mountinfo.GetMounts(mountinfo.PrefixFilter(s.Scratch(id)))
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	var points []string
	for _, m := range found {
		points = append(points, m.Mountpoint)
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	return points, nil
}

// RemoveScratch removes sandbox id's scratch directory, detaching what is
// mounted in it first.
func (s State) RemoveScratch(id string) error {
	points, err := s.mounts(id)
	if err != nil {
		return err
	}
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmount %s: %w", p, err)
		}
	}
	if err := os.RemoveAll(s.Scratch(id)); err != nil {
		return fmt.Errorf("remove scratch directory: %w", err)
	}
	return nil
}

// Leftovers names sandbox id's scratch directory and what is mounted in
// it, if they are still there.
func (s State) Leftovers(id string) []string {
	var left []string
	if points, err := s.mounts(id); err == nil {
		for _, p := range points {
			left = append(left, "mount "+p)
		}
	}
	if _, err := os.Stat(s.Scratch(id)); err == nil {
		left = append(left, "scratch directory "+s.Scratch(id))
	}
	return left
}

// Once runs a sandbox's removal until it has succeeded once; later calls
// do nothing. It is safe for concurrent use.
type Once struct {
	mu   sync.Mutex
	done bool
}

// Do runs remove unless an earlier call succeeded.
func (o *Once) Do(remove func() error) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done {
		return nil
	}
	if err := remove(); err != nil {
		return err
	}
	o.done = true
	return nil
}

// Sandbox is what every backend's sandbox holds; backends embed it.
type Sandbox struct {
	id         string
	unenforced []sandbox.Item
	workspace  string
	// Removal runs the sandbox's removal once.
	Removal Once
}

// NewSandbox is the common part of the sandbox Create prepared, whose
// workspace is the host directory workspace.
func NewSandbox(p sandbox.Prepared, workspace string) Sandbox {
	return Sandbox{id: p.ID, unenforced: p.Unenforced, workspace: workspace}
}

// Workspace implements sandbox.Sandbox.
func (s *Sandbox) Workspace() (*os.Root, error) {
	root, err := os.OpenRoot(s.workspace)
	if err != nil {
		return nil, fmt.Errorf("workspace of %s: %w", s.id, err)
	}
	return root, nil
}

// ID implements sandbox.Sandbox.
func (s *Sandbox) ID() string { return s.id }

// Unenforced implements sandbox.Sandbox.
func (s *Sandbox) Unenforced() []sandbox.Item { return s.unenforced }
