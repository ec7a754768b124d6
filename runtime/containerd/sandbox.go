package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"golang.org/x/sys/unix"

	sboci "github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime"
	"github.com/sandstorm-dev/sandstorm/runtime/cgroupfs"
)

// labelNetNS records a sandbox's network namespace so a stray can be cleaned
// up from its container alone.
const labelNetNS = "sandstorm.netns"

// cleanupTimeout bounds removal, which runs even after the caller's context ended.
const cleanupTimeout = 30 * time.Second

type sandbox struct {
	unenforced []runtime.Item
	r          *Runtime
	id         string
	cgroup     string
	ctr        client.Container
	task       client.Task
	exitC      <-chan client.ExitStatus
	removed    bool
}

// Create implements runtime.Runtime.
func (r *Runtime) Create(ctx context.Context, spec runtime.Spec) (_ runtime.Sandbox, err error) {
	caps, err := r.Capabilities(ctx)
	if err != nil {
		return nil, err
	}
	prep, err := runtime.Prepare(spec, caps)
	if err != nil {
		return nil, err
	}
	id, policy := prep.ID, prep.Policy
	ctx = r.ctx(ctx)
	img, err := r.client.GetImage(ctx, spec.Image)
	if err != nil {
		if notFound(err) {
			return nil, fmt.Errorf("%w: image %s in containerd namespace %s (import it first)", runtime.ErrNotFound, spec.Image, r.cfg.Namespace)
		}
		return nil, fmt.Errorf("get image %s: %w", spec.Image, err)
	}
	if ok, err := img.IsUnpacked(ctx, r.cfg.Snapshotter); err != nil || !ok {
		if err := img.Unpack(ctx, r.cfg.Snapshotter); err != nil {
			return nil, fmt.Errorf("unpack image %s: %w", spec.Image, err)
		}
	}

	// From here on, everything made so far is undone on failure.
	defer func() {
		if err != nil {
			_ = r.cleanup(ctx, id)
		}
	}()
	workspace, err := runtime.MakeScratch(r.scratch(id), spec.Files, int(policy.UID), int(policy.GID))
	if err != nil {
		return nil, fmt.Errorf("prepare workspace: %w", err)
	}
	sb := sboci.Sandbox{
		ID: id, SessionID: spec.SessionID, Args: spec.Args, Env: spec.Env,
		Labels: spec.Labels, Workspace: workspace, Policy: policy,
	}
	labels := sb.AllLabels()
	if policy.Network == sboci.NetworkBridge {
		if sb.NetNS, err = r.net.setup(ctx, id, r.scratch(id)); err != nil {
			return nil, err
		}
		labels[labelNetNS] = sb.NetNS
	}
	opts, err := sboci.Options(sb, r.host)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", runtime.ErrInvalidSpec, err)
	}
	ctr, err := r.client.NewContainer(ctx, id,
		client.WithImage(img),
		client.WithSnapshotter(r.cfg.Snapshotter),
		client.WithNewSnapshot(id, img, snapshots.WithLabels(sb.AllLabels())),
		client.WithContainerLabels(labels),
		client.WithNewSpec(append([]oci.SpecOpts{oci.WithImageConfig(img)}, opts...)...),
	)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	return &sandbox{r: r, id: id, cgroup: sb.CgroupPath(), ctr: ctr, unenforced: prep.Unenforced}, nil
}

func (s *sandbox) ID() string { return s.id }

// Unenforced implements runtime.Sandbox.
func (s *sandbox) Unenforced() []runtime.Item { return s.unenforced }

// Start implements runtime.Sandbox.
func (s *sandbox) Start(ctx context.Context, io runtime.IO) error {
	ctx = s.r.ctx(ctx)
	task, err := s.ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, orDiscard(io.Stdout), orDiscard(io.Stderr))))
	if err != nil {
		return fmt.Errorf("create task %s: %w", s.id, err)
	}
	s.task = task
	// Wait must be subscribed before Start, and outlive the caller's context.
	exitC, err := task.Wait(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("wait task %s: %w", s.id, err)
	}
	s.exitC = exitC
	if err := task.Start(ctx); err != nil {
		return fmt.Errorf("start task %s: %w", s.id, err)
	}
	return nil
}

// Wait implements runtime.Sandbox.
func (s *sandbox) Wait(ctx context.Context) (runtime.ExitStatus, error) {
	if s.exitC == nil {
		return runtime.ExitStatus{}, fmt.Errorf("sandbox %s was not started", s.id)
	}
	var st client.ExitStatus
	select {
	case st = <-s.exitC:
	case <-ctx.Done():
		return runtime.ExitStatus{}, ctx.Err()
	}
	code, at, err := st.Result()
	if err != nil {
		return runtime.ExitStatus{}, fmt.Errorf("sandbox %s exit status: %w", s.id, err)
	}
	// All output must be delivered before the exit is reported.
	s.task.IO().Wait()
	es := runtime.ExitStatus{Code: int(code), ExitedAt: at}
	if code > 128 && code < 128+65 {
		es.Signal = unix.SignalName(syscall.Signal(code - 128))
	}
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

// Kill implements runtime.Sandbox.
func (s *sandbox) Kill(ctx context.Context) error {
	if s.task == nil {
		return nil
	}
	err := s.task.Kill(s.r.ctx(ctx), syscall.SIGKILL, client.WithKillAll)
	if err != nil && !notFound(err) && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill sandbox %s: %w", s.id, err)
	}
	return nil
}

// Remove implements runtime.Sandbox.
func (s *sandbox) Remove(ctx context.Context) error {
	if s.removed {
		return nil
	}
	if err := s.r.cleanup(ctx, s.id); err != nil {
		return err
	}
	s.removed = true
	return nil
}

// cleanup removes everything sandbox id owns, whatever state it is in:
// task, container, snapshot, network, scratch directory.
func (r *Runtime) cleanup(ctx context.Context, id string) error {
	if !runtime.ValidID(id) {
		return fmt.Errorf("%w: sandbox id %q", runtime.ErrInvalidSpec, id)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx(ctx)), cleanupTimeout)
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
			if _, err := task.Delete(ctx, client.WithProcessKill); err != nil && !notFound(err) {
				errs = append(errs, fmt.Errorf("delete task %s: %w", id, err))
			}
		}
		if err := ctr.Delete(ctx, client.WithSnapshotCleanup); err != nil && !notFound(err) {
			errs = append(errs, fmt.Errorf("delete container %s: %w", id, err))
		}
	case !notFound(err):
		errs = append(errs, fmt.Errorf("load container %s: %w", id, err))
	}
	if err := r.net.teardown(ctx, id, r.scratch(id), netns); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(r.scratch(id)); err != nil {
		errs = append(errs, fmt.Errorf("remove scratch directory: %w", err))
	}
	return errors.Join(errs...)
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
