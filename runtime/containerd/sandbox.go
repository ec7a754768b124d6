package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/errdefs"

	sboci "github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/cgroupfs"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/lifecycle"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// labelNetNS records a sandbox's network namespace so a stray can be cleaned
// up from its container alone.
const labelNetNS = "sandstorm.netns"

// leaseTTL bounds a lease a crashed create left, should no sweep find it.
const leaseTTL = time.Hour

// leaseID names the lease of sandbox id's create.
func leaseID(id string) string { return "sandstorm-" + id }

type box struct {
	lifecycle.Sandbox
	r      *Runtime
	cgroup string
	ctr    client.Container
	task   client.Task
	exitC  <-chan client.ExitStatus
	// lost is why the exit status is unknown, once it is.
	lost error
}

// Create implements sandbox.Runtime.
func (r *Runtime) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	return lifecycle.Create(ctx, r, spec, r.steps)
}

// creation is one Create's steps (see lifecycle.Create).
type creation struct {
	r     *Runtime
	prep  sandbox.Prepared
	files []sandbox.File
	img   client.Image
	sb    sboci.Container
	// labels are the container's: the sandbox's, and its network namespace.
	labels map[string]string
	opts   []oci.SpecOpts
	ctr    client.Container
}

// steps finds the image, unpacked, before anything is made.
func (r *Runtime) steps(ctx context.Context, spec sandbox.Spec, prep sandbox.Prepared, _ sandbox.Enforcement) (lifecycle.Steps, error) {
	ctx = r.ctx(ctx)
	img, err := r.client.GetImage(ctx, spec.Image)
	if err != nil {
		if notFound(err) {
			return nil, fmt.Errorf("%w: image %s in containerd namespace %s (import it first)", sandbox.ErrNotFound, spec.Image, r.cfg.Namespace)
		}
		return nil, fmt.Errorf("get image %s: %w", spec.Image, err)
	}
	if ok, err := img.IsUnpacked(ctx, r.cfg.Snapshotter); err != nil || !ok {
		if err := img.Unpack(ctx, r.cfg.Snapshotter); err != nil {
			return nil, fmt.Errorf("unpack image %s: %w", spec.Image, err)
		}
	}
	sb := sboci.Container{
		ID: prep.ID, SessionID: spec.SessionID, Args: spec.Args, Env: spec.Env,
		Labels: prep.Labels, Policy: prep.Policy,
	}
	return &creation{r: r, prep: prep, files: spec.Files, img: img, sb: sb}, nil
}

// Claim makes the scratch directory, which claims the id.
func (c *creation) Claim(context.Context) (err error) {
	p := c.sb.Policy
	c.sb.Workspace, err = c.r.state.Claim(c.sb.ID, c.sb.AllLabels(), c.files, int(p.UID), int(p.GID))
	return err
}

// Setup gives the sandbox its network namespace and builds its OCI spec.
func (c *creation) Setup(ctx, dctx context.Context) (err error) {
	r, id := c.r, c.sb.ID
	c.labels = c.sb.AllLabels()
	if c.sb.Policy.Network == sboci.NetworkBridge {
		if err := lifecycle.Checkpoint(ctx, lifecycle.Creating(id)); err != nil {
			return err
		}
		if c.sb.NetNS, err = r.net.setup(r.ctx(dctx), id, r.state.Scratch(id)); err != nil {
			return err
		}
		c.labels[labelNetNS] = c.sb.NetNS
	} else if r.runsc != "" {
		// runsc refuses a fresh namespace of its own making ("network
		// enabled in root network namespace"): it is given an empty one.
		if c.sb.NetNS, err = r.net.empty(r.state.Scratch(id)); err != nil {
			return err
		}
		c.labels[labelNetNS] = c.sb.NetNS
	}
	c.sb.GVisor = r.runsc != ""
	if c.opts, err = sboci.Options(c.sb, r.host); err != nil {
		return fmt.Errorf("%w: %w", sandbox.ErrInvalidSpec, err)
	}
	return nil
}

// Make creates the container and its snapshot.
func (c *creation) Make(ctx, dctx context.Context) (err error) {
	r, id := c.r, c.sb.ID
	dctx = r.ctx(dctx)
	// The lease holds the snapshot until the container does; it carries the
	// sandbox's labels, so one a crash left behind is found and removed.
	lctx, release, err := r.client.WithLease(dctx, leases.WithID(leaseID(id)), leases.WithLabels(c.sb.AllLabels()), leases.WithExpiration(leaseTTL))
	if err != nil {
		return fmt.Errorf("lease for sandbox %s: %w", id, err)
	}
	defer release(context.WithoutCancel(dctx))
	c.ctr, err = r.client.NewContainer(lctx, id,
		r.withRuntime(),
		client.WithImage(c.img),
		client.WithSnapshotter(r.cfg.Snapshotter),
		client.WithNewSnapshot(id, c.img, snapshots.WithLabels(c.sb.AllLabels())),
		// A step inside NewContainer: the snapshot exists, the container not yet.
		func(context.Context, *client.Client, *containers.Container) error {
			return lifecycle.Checkpoint(ctx, lifecycle.Creating(id))
		},
		client.WithContainerLabels(c.labels),
		client.WithNewSpec(append([]oci.SpecOpts{oci.WithImageConfig(c.img)}, c.opts...)...),
	)
	if err != nil {
		return fmt.Errorf("create container %s: %w", id, err)
	}
	return nil
}

// Verify has nothing to read back: the OCI spec is sandstorm's own, not
// a daemon's mapping of a request.
func (c *creation) Verify(context.Context) (sandbox.Sandbox, error) {
	return &box{Sandbox: lifecycle.NewSandbox(c.prep, c.sb.Workspace), r: c.r, cgroup: c.sb.CgroupPath(), ctr: c.ctr}, nil
}

// Undo removes everything of the sandbox: this Create claimed the id.
func (c *creation) Undo(ctx context.Context) error { return c.r.cleanup(ctx, c.sb.ID) }

// deleteUnstarted deletes a task that is not stopped but could not be
// killed: one runsc created and never started ("cannot signal container in
// state created"). Its process, the sandbox's, is killed by pid, and the
// task deleted once stopped.
func deleteUnstarted(ctx context.Context, task client.Task) error {
	exited, err := task.Wait(ctx)
	if err != nil {
		return err
	}
	if pid := task.Pid(); pid > 0 {
		if err := syscall.Kill(int(pid), syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill the sandbox process %d: %w", pid, err)
		}
	}
	select {
	case <-exited:
	case <-ctx.Done():
		return ctx.Err()
	}
	_, err = task.Delete(ctx)
	return err
}

// withRuntime: gVisor is runsc run by the runc v2 shim; runc is
// containerd's default runtime, left as the host configured it.
func (r *Runtime) withRuntime() client.NewContainerOpts {
	if r.runsc == "" {
		return func(context.Context, *client.Client, *containers.Container) error { return nil }
	}
	return client.WithRuntime(plugins.RuntimeRuncV2, &options.Options{BinaryName: r.runsc})
}

// Start implements sandbox.Sandbox.
func (s *box) Start(ctx context.Context, io sandbox.IO) error {
	ctx = s.r.ctx(ctx)
	step := "start sandbox " + s.ID()
	if err := lifecycle.Checkpoint(ctx, step); err != nil {
		return err
	}
	dctx, cancel := lifecycle.Detached(ctx)
	defer cancel()
	task, err := s.ctr.NewTask(dctx, cio.NewCreator(cio.WithStreams(nil, lifecycle.OrDiscard(io.Stdout), lifecycle.OrDiscard(io.Stderr))))
	if err != nil {
		return fmt.Errorf("create task %s: %w", s.ID(), err)
	}
	s.task = task
	// Wait must be subscribed before Start, and outlive the caller's context.
	exitC, err := task.Wait(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("wait task %s: %w", s.ID(), err)
	}
	s.exitC = exitC
	if err := lifecycle.Checkpoint(ctx, step); err != nil {
		return err
	}
	if err := task.Start(dctx); err != nil {
		return fmt.Errorf("start task %s: %w", s.ID(), err)
	}
	return nil
}

// Wait implements sandbox.Sandbox.
func (s *box) Wait(ctx context.Context) (sandbox.ExitStatus, error) {
	if s.exitC == nil {
		return sandbox.ExitStatus{}, fmt.Errorf("sandbox %s was not started", s.ID())
	}
	if s.lost != nil {
		return sandbox.ExitStatus{}, s.lost
	}
	var st client.ExitStatus
	var ok bool
	select {
	case st, ok = <-s.exitC:
	case <-ctx.Done():
		return sandbox.ExitStatus{}, ctx.Err()
	}
	code, at, err := st.Result()
	if !ok {
		err = errors.New("the exit channel closed without a status")
	}
	if err != nil {
		// The daemon went away (or the wait broke): the exit is unknown, and
		// stays so; the client's channel is closed now and would read as 0.
		s.lost = fmt.Errorf("%w: sandbox %s: lost its exit status: %w", sandbox.ErrUnavailable, s.ID(), err)
		return sandbox.ExitStatus{}, s.lost
	}
	// All output must be delivered before the exit is reported, within ctx:
	// a process's output can stay open after it (a child holding it).
	ioDone := make(chan struct{})
	go func() { s.task.IO().Wait(); close(ioDone) }()
	select {
	case <-ioDone:
	case <-ctx.Done():
		return sandbox.ExitStatus{}, ctx.Err()
	}
	es := lifecycle.Exit(int(code), at, false)
	// The cgroup outlives the process until the task is deleted, so its OOM
	// counter can still be read here.
	if n, err := cgroupfs.OOMKills(s.cgroup); err == nil && n > 0 {
		es.OOMKilled = true
	}
	// The result stays available to a later Wait.
	ch := make(chan client.ExitStatus, 1)
	ch <- st
	s.exitC = ch
	return es, nil
}

// Kill implements sandbox.Sandbox.
func (s *box) Kill(ctx context.Context) error {
	if s.task == nil {
		return nil
	}
	err := s.task.Kill(s.r.ctx(ctx), syscall.SIGKILL, client.WithKillAll)
	if err != nil && !notFound(err) && !errors.Is(err, os.ErrProcessDone) {
		return lifecycle.Lost(fmt.Errorf("kill sandbox %s: %w", s.ID(), err), gone)
	}
	return nil
}

// Remove implements sandbox.Sandbox.
func (s *box) Remove(ctx context.Context) error {
	return s.Removal.Do(func() error { return s.r.cleanup(ctx, s.ID()) })
}

// cleanup removes everything sandbox id owns, whatever state it is in:
// task, container, snapshot, network, scratch directory.
func (r *Runtime) cleanup(ctx context.Context, id string) error {
	if err := lifecycle.CheckID(id); err != nil {
		return err
	}
	ctx, cancel := lifecycle.CleanupContext(r.ctx(ctx))
	defer cancel()
	var errs []error
	netns := ""
	ctr, err := r.client.LoadContainer(ctx, id)
	switch {
	case err == nil:
		if l, err := ctr.Labels(ctx); err == nil {
			netns = l[labelNetNS]
		}
		if task, err := ctr.Task(ctx, nil); err == nil {
			_, err := task.Delete(ctx, client.WithProcessKill)
			if err != nil && !notFound(err) {
				// runsc cannot signal a sandbox that has exited ("sandbox
				// is not running"): deleting without the kill removes it.
				if _, err = task.Delete(ctx); errdefs.IsFailedPrecondition(err) {
					err = deleteUnstarted(ctx, task)
				}
			}
			if err != nil && !notFound(err) {
				errs = append(errs, fmt.Errorf("delete task %s: %w", id, err))
			}
		}
		if err := ctr.Delete(ctx, client.WithSnapshotCleanup); err != nil && !notFound(err) {
			errs = append(errs, fmt.Errorf("delete container %s: %w", id, err))
		}
	case !notFound(err):
		errs = append(errs, fmt.Errorf("load container %s: %w", id, err))
	}
	// The snapshot goes with its container, except when the container was
	// never made (or not wholly): it is removed by its key, the id; and the
	// lease a create cut short left.
	if err := r.client.SnapshotService(r.cfg.Snapshotter).Remove(ctx, id); err != nil && !notFound(err) {
		errs = append(errs, fmt.Errorf("remove snapshot %s: %w", id, err))
	}
	if err := r.client.LeasesService().Delete(ctx, leases.Lease{ID: leaseID(id)}); err != nil && !notFound(err) {
		errs = append(errs, fmt.Errorf("remove lease %s: %w", leaseID(id), err))
	}
	if err := r.net.teardown(ctx, id, r.state.Scratch(id), netns); err != nil {
		errs = append(errs, err)
	}
	if err := r.state.RemoveScratch(id); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
