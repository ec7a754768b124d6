package podman

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.podman.io/podman/v6/libpod/define"
	"go.podman.io/podman/v6/pkg/bindings/containers"
	"go.podman.io/podman/v6/pkg/errorhandling"
	"go.podman.io/podman/v6/pkg/specgen"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/lifecycle"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

type box struct {
	lifecycle.Sandbox
	r     *Runtime
	ctrID string
	// cgroup is the container's own cgroup when the sandbox has a parent of its own.
	cgroup string
	// watchOOM: OOM kills are detected from the sandbox's cgroups.
	watchOOM bool
	// limits are written into the container's cgroup before it starts.
	limits []limit

	mu      sync.Mutex
	stream  *attachStream
	copied  chan struct{} // closed when all output was delivered
	copyErr error
	oom     *oomWatch
	exit    *sandbox.ExitStatus
}

// Create implements sandbox.Runtime.
func (r *Runtime) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	return lifecycle.Create(ctx, r, spec, r.steps)
}

// creation is one Create's steps (see lifecycle.Create).
type creation struct {
	r     *Runtime
	prep  sandbox.Prepared
	caps  sandbox.Enforcement
	files []sandbox.File
	p     plan
	// uid and gid are the host ids the sandbox user maps to.
	uid, gid int
	// ctrID is the container this Create made, once it made one (its name
	// may be taken by a stranger).
	ctrID    string
	warnings []string
}

// steps plans the container and finds the host ids of its user.
func (r *Runtime) steps(_ context.Context, spec sandbox.Spec, prep sandbox.Prepared, caps sandbox.Enforcement) (lifecycle.Steps, error) {
	id, pol := prep.ID, prep.Policy
	p := plan{
		id: id, image: spec.Image, args: spec.Args, env: spec.Env,
		labels: oci.Container{ID: id, SessionID: spec.SessionID, Labels: prep.Labels}.AllLabels(),
		policy: pol, mounts: pol.Mounts, rlimits: r.host.Fit(oci.Rlimits(pol)), swap: r.host.SwapAccounting,
		network: r.networkMode(pol.Network), unenforced: prep.Unenforced, seccomp: r.seccomp, ociRuntime: r.ociRuntime,
	}
	if pol.Seccomp == oci.SeccompUnconfined {
		p.seccomp = "unconfined"
	}
	uid, err := hostID(r.svc.uidMap, int(pol.UID))
	if err != nil {
		return nil, fmt.Errorf("%w: user: %w", sandbox.ErrInvalidSpec, err)
	}
	gid, err := hostID(r.svc.gidMap, int(pol.GID))
	if err != nil {
		return nil, fmt.Errorf("%w: group: %w", sandbox.ErrInvalidSpec, err)
	}
	return &creation{r: r, prep: prep, caps: caps, files: spec.Files, p: p, uid: uid, gid: gid}, nil
}

// Claim makes the scratch directory, which claims the id. The workspace
// belongs to the host ids the sandbox user maps to, so the sandbox sees it
// as its own (uid 1000 is 100999 on the host for a rootless service whose
// subordinate ids start at 100000).
func (c *creation) Claim(context.Context) (err error) {
	c.p.workspace, err = c.r.state.Claim(c.p.id, c.p.labels, c.files, c.uid, c.gid)
	return err
}

// Setup gives the sandbox a cgroup parent of its own where Podman's can
// be, and mediates its host paths for a rootless service.
func (c *creation) Setup(ctx, _ context.Context) (err error) {
	r, id := c.r, c.p.id
	if ownCgroup(r.svc, r.delegates()) {
		c.p.cgroupParent = cgroupParent(id)
		if r.svc.rootless {
			c.p.cgroupLimits = true
			owner, err := hostID(r.svc.uidMap, 0)
			if err != nil {
				return err
			}
			group, err := hostID(r.svc.gidMap, 0)
			if err != nil {
				return err
			}
			if err := delegate(c.p.cgroupParent, owner, group); err != nil {
				return err
			}
		}
	}
	if r.mediates() {
		if err := lifecycle.Checkpoint(ctx, lifecycle.Creating(id)); err != nil {
			return err
		}
		if c.p.mounts, err = r.mediate(ctx, r.state.Scratch(id), c.p.policy.Mounts); err != nil {
			return err
		}
	}
	return nil
}

// Make creates the container, named by the sandbox id.
func (c *creation) Make(ctx, dctx context.Context) error {
	resp, err := containers.CreateWithSpec(c.r.ctx(dctx), c.p.specgen(), nil)
	if err != nil {
		return c.r.imageErr(ctx, c.p.image, fmt.Errorf("create container %s: %w", c.p.id, err))
	}
	c.ctrID, c.warnings = resp.ID, resp.Warnings
	return nil
}

// Verify checks the container as the service reports it against the plan.
func (c *creation) Verify(ctx context.Context) (sandbox.Sandbox, error) {
	r, p := c.r, c.p
	got, err := containers.Inspect(r.ctx(ctx), c.ctrID, nil)
	if err != nil {
		return nil, fmt.Errorf("inspect container %s: %w", p.id, err)
	}
	if bad := p.verify(got); len(bad) > 0 {
		msg := strings.Join(bad, "; ")
		if len(c.warnings) > 0 {
			msg += "; podman warned: " + strings.Join(c.warnings, "; ")
		}
		return nil, fmt.Errorf("%w: podman %s dropped or changed: %s", sandbox.ErrPolicyNotApplied, r.svc.version, msg)
	}
	sb := &box{Sandbox: lifecycle.NewSandbox(c.prep, p.workspace), r: r, ctrID: c.ctrID}
	if p.cgroupParent != "" {
		sb.cgroup = containerCgroup(p.cgroupParent, c.ctrID)
		sb.watchOOM = c.caps.Enforced(sandbox.ItemOOMDetection)
		if p.cgroupLimits {
			sb.limits = v1Limits(p.policy, p.swap)
		}
	}
	return sb, nil
}

// Undo removes what this Create made: the container only if it made it.
func (c *creation) Undo(ctx context.Context) error { return c.r.cleanup(ctx, c.p.id, c.ctrID != "") }

// networkMode is Podman's network mode for a policy's network.
func (r *Runtime) networkMode(n oci.Network) string {
	switch {
	case n != oci.NetworkBridge:
		return string(specgen.NoNetwork)
	case !r.svc.rootless:
		return string(specgen.Bridge)
	case r.svc.pasta:
		return string(specgen.Pasta)
	}
	return "slirp4netns"
}

// imageErr turns a failure into ErrNotFound when the image is missing:
// Podman 4.3 answers a create from an unknown image with a plain 500.
func (r *Runtime) imageErr(ctx context.Context, image string, err error) error {
	if ok, xerr := r.HasImage(ctx, image); xerr == nil && !ok {
		return fmt.Errorf("%w: image %s in podman (import it first)", sandbox.ErrNotFound, image)
	}
	return err
}

// Start implements sandbox.Sandbox.
func (s *box) Start(ctx context.Context, io sandbox.IO) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stream != nil {
		return fmt.Errorf("sandbox %s already started", s.ID())
	}
	step := "start sandbox " + s.ID()
	if err := lifecycle.Checkpoint(ctx, step); err != nil {
		return err
	}
	stream, err := s.r.attach(ctx, s.ctrID)
	if err != nil {
		return err
	}
	// The container now exists in the kernel (its cgroup too) but has not run.
	if err := applyLimits(s.cgroup, s.limits); err != nil {
		stream.close()
		return err
	}
	if s.watchOOM {
		if s.oom, err = watchOOM(s.r.svc.cgroupV2, cgroupParent(s.ID()), s.cgroup); err != nil {
			stream.close()
			return err
		}
	}
	if err := lifecycle.Checkpoint(ctx, step); err != nil {
		stream.close()
		return err
	}
	dctx, cancel := lifecycle.Detached(ctx)
	defer cancel()
	if err := containers.Start(s.r.ctx(dctx), s.ctrID, nil); err != nil {
		stream.close()
		return fmt.Errorf("start container %s: %w", s.ID(), err)
	}
	s.stream = stream
	s.copied = make(chan struct{})
	go func() {
		defer close(s.copied)
		s.copyErr = stream.copy(io.Stdout, io.Stderr)
	}()
	return nil
}

// Wait implements sandbox.Sandbox.
func (s *box) Wait(ctx context.Context) (sandbox.ExitStatus, error) {
	s.mu.Lock()
	copied := s.copied
	s.mu.Unlock()
	if copied == nil {
		return sandbox.ExitStatus{}, fmt.Errorf("sandbox %s was not started", s.ID())
	}
	// The stream ends when the process has exited and its output is drained.
	select {
	case <-copied:
	case <-ctx.Done():
		return sandbox.ExitStatus{}, ctx.Err()
	case <-s.r.watch.lost():
		return sandbox.ExitStatus{}, fmt.Errorf("%w: sandbox %s: the podman service at %s stopped answering", sandbox.ErrUnavailable, s.ID(), s.r.cfg.Socket)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exit != nil {
		return *s.exit, nil
	}
	if s.copyErr != nil {
		return sandbox.ExitStatus{}, lifecycle.Lost(fmt.Errorf("sandbox %s output: %w", s.ID(), s.copyErr), gone)
	}
	st, err := s.r.exited(ctx, s.ctrID)
	if err != nil {
		return sandbox.ExitStatus{}, lifecycle.Lost(fmt.Errorf("sandbox %s exit status: %w", s.ID(), err), gone)
	}
	es := lifecycle.Exit(int(st.ExitCode), st.FinishedAt, st.OOMKilled)
	if s.oom != nil {
		oom, err := s.oom.killed(es.Code)
		if err != nil {
			return sandbox.ExitStatus{}, fmt.Errorf("sandbox %s: %w", s.ID(), err)
		}
		es.OOMKilled = es.OOMKilled || oom
		s.oom.close()
	}
	s.exit = &es
	return es, nil
}

// exited returns the state of a container whose output stream ended. The
// exit file conmon writes can trail the end of the stream by a moment;
// Podman's own wait endpoint would also wait for the cleanup process.
func (r *Runtime) exited(ctx context.Context, ctrID string) (*define.InspectContainerState, error) {
	delay := 2 * time.Millisecond
	for {
		got, err := containers.Inspect(r.ctx(ctx), ctrID, nil)
		if err != nil {
			return nil, err
		}
		if st := got.State; st != nil && (st.Status == "stopped" || st.Status == "exited") {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// Kill implements sandbox.Sandbox.
func (s *box) Kill(ctx context.Context) error {
	err := containers.Kill(s.r.ctx(ctx), s.ctrID, new(containers.KillOptions).WithSignal("SIGKILL"))
	var em *errorhandling.ErrorModel
	if err != nil && !(errors.As(err, &em) && (em.ResponseCode == http.StatusNotFound || em.ResponseCode == http.StatusConflict)) {
		return lifecycle.Lost(fmt.Errorf("kill sandbox %s: %w", s.ID(), err), gone)
	}
	return nil
}

// Remove implements sandbox.Sandbox.
func (s *box) Remove(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Removal.Do(func() error {
		if err := s.r.cleanup(ctx, s.ID(), true); err != nil {
			return err
		}
		if s.stream != nil {
			// The container is gone, so the stream has ended: let the copy
			// finish so nothing is written to the caller's writers after Remove.
			s.stream.close()
			<-s.copied
		}
		if s.oom != nil {
			s.oom.close()
		}
		return nil
	})
}

// cleanup removes everything sandbox id owns, whatever state it is in:
// container (unless not ours), placeholder mounts, cgroups, scratch directory.
func (r *Runtime) cleanup(ctx context.Context, id string, container bool) error {
	if err := lifecycle.CheckID(id); err != nil {
		return err
	}
	ctx, cancel := lifecycle.CleanupContext(ctx)
	defer cancel()
	var errs []error
	if container {
		_, err := containers.Remove(r.ctx(ctx), id, new(containers.RemoveOptions).WithForce(true).WithVolumes(true).WithTimeout(0))
		if err != nil && !notFound(err) {
			// Its process may still run (the service is away): its cgroup
			// and workspace stay for a later removal, which finds it again.
			return lifecycle.Lost(fmt.Errorf("remove container %s: %w", id, err), gone)
		}
	}
	if err := r.unmediate(ctx, r.state.Scratch(id)); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroup(ctx, cgroupParent(id)); err != nil {
		errs = append(errs, err)
	}
	// Safe even with a placeholder still mounted: that mount exists only in
	// the service's namespace, where removing its mount point detaches it.
	return errors.Join(append(errs, r.state.RemoveScratch(id))...)
}
