package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/cgroupfs"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/lifecycle"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

type box struct {
	lifecycle.Sandbox
	r           *Runtime
	containerID string
	// oomCgroup is the sandbox's own cgroup parent, whose OOM counter
	// cross-checks Docker's report; empty when the parent is shared.
	oomCgroup string

	attach *client.HijackedResponse
	// copied is closed once all output was delivered; copyErr says why not.
	copied  chan struct{}
	copyErr error
	// stopWait ends the background wait when the sandbox is removed.
	stopWait context.CancelFunc
	// exited is closed once status or waitErr is set.
	exited  chan struct{}
	status  sandbox.ExitStatus
	waitErr error
}

// Create implements sandbox.Runtime.
func (r *Runtime) Create(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	return lifecycle.Create(ctx, r, spec, r.steps)
}

// creation is one Create's steps (see lifecycle.Create).
type creation struct {
	r     *Runtime
	prep  sandbox.Prepared
	image string
	files []sandbox.File
	sb    oci.Container
	req   request
	// containerID is the container this Create made, once it made one.
	containerID string
	warnings    []string
}

func (r *Runtime) steps(_ context.Context, spec sandbox.Spec, prep sandbox.Prepared, _ sandbox.Enforcement) (lifecycle.Steps, error) {
	sb := oci.Container{
		ID: prep.ID, SessionID: spec.SessionID, Args: spec.Args, Env: spec.Env,
		Labels: prep.Labels, Policy: prep.Policy,
	}
	return &creation{r: r, prep: prep, image: spec.Image, files: spec.Files, sb: sb}, nil
}

// Claim makes the scratch directory, which claims the id.
func (c *creation) Claim(context.Context) (err error) {
	p := c.sb.Policy
	c.sb.Workspace, err = c.r.state.Claim(c.sb.ID, c.sb.AllLabels(), c.files, int(p.UID), int(p.GID))
	return err
}

// Setup seals the sandbox's bind mounts and builds the request.
func (c *creation) Setup(context.Context, context.Context) (err error) {
	// Docker's API cannot make a bind mount nosuid,nodev: the workspace and
	// the policy's host paths are sealed so beforehand, and the daemon's
	// mounts of them inherit that. It takes root; a non-root sandstorm's
	// are not sealed (no-new-privileges still keeps setuid files from
	// granting anything).
	if os.Geteuid() == 0 {
		if err := c.r.state.Seal(c.sb.Workspace); err != nil {
			return err
		}
		if c.sb.Policy.Mounts, err = c.r.state.SealMounts(c.sb.ID, c.sb.Policy.Mounts); err != nil {
			return err
		}
		if c.r.d.Runtime == "" {
			// runc makes a bind mount read-only by remounting it with that
			// flag alone, which clears nosuid and nodev; a plain bind mount
			// of the sealed, read-only one is read-only and keeps them.
			// (runsc mounts the host path anew, and needs to be told.)
			for i := range c.sb.Policy.Mounts {
				c.sb.Policy.Mounts[i].ReadOnly = false
			}
		}
	}
	c.req = buildRequest(c.sb, c.image, c.r.d)
	return nil
}

// Make creates the container, named by the sandbox id.
func (c *creation) Make(_, dctx context.Context) error {
	id := c.sb.ID
	created, err := c.r.cli.ContainerCreate(dctx, client.ContainerCreateOptions{Name: id, Config: c.req.Config, HostConfig: c.req.Host})
	switch {
	case notFound(err):
		return fmt.Errorf("%w: image %s in docker (import it first): %w", sandbox.ErrNotFound, c.image, err)
	case cerrdefs.IsConflict(err):
		return fmt.Errorf("%w: sandbox id %s is in use: %w", sandbox.ErrInvalidSpec, id, err)
	case cerrdefs.IsInvalidArgument(err):
		return fmt.Errorf("%w: docker refused the container: %w", sandbox.ErrInvalidSpec, err)
	case err != nil:
		return fmt.Errorf("create container %s: %w", id, err)
	}
	c.containerID, c.warnings = created.ID, created.Warnings
	return nil
}

// Verify checks the container as the daemon reports it against the request.
func (c *creation) Verify(ctx context.Context) (sandbox.Sandbox, error) {
	id, r := c.sb.ID, c.r
	got, err := r.cli.ContainerInspect(ctx, c.containerID, client.ContainerInspectOptions{})
	if err != nil {
		return nil, fmt.Errorf("inspect container %s: %w", id, err)
	}
	if err := verify(c.req, got.Container); err != nil {
		if len(c.warnings) > 0 {
			err = fmt.Errorf("%w (daemon warnings: %v)", err, c.warnings)
		}
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	s := &box{Sandbox: lifecycle.NewSandbox(c.prep, c.sb.Workspace), r: r, containerID: c.containerID}
	if r.d.CgroupDriver == "cgroupfs" {
		s.oomCgroup = cgroupParent(r.d.CgroupDriver, id)
	}
	return s, nil
}

// Undo removes the container this Create made, if any, and the scratch
// directory; not a container of the same name it did not make.
func (c *creation) Undo(ctx context.Context) error {
	var errs []error
	if c.containerID != "" {
		errs = append(errs, c.r.removeContainer(ctx, c.sb.ID, c.containerID))
	}
	return errors.Join(append(errs, c.r.state.RemoveScratch(c.sb.ID))...)
}

// Start implements sandbox.Sandbox. Output is attached before the start, so
// none is lost, and copied live, stdout and stderr apart.
func (s *box) Start(ctx context.Context, io sandbox.IO) error {
	if s.exited != nil {
		return fmt.Errorf("sandbox %s was already started", s.ID())
	}
	step := "start sandbox " + s.ID()
	if err := lifecycle.Checkpoint(ctx, step); err != nil {
		return err
	}
	att, err := s.r.cli.ContainerAttach(ctx, s.containerID, client.ContainerAttachOptions{Stream: true, Stdout: true, Stderr: true})
	if err != nil {
		return fmt.Errorf("attach to sandbox %s: %w", s.ID(), err)
	}
	s.attach = &att.HijackedResponse
	copied := make(chan struct{})
	s.copied = copied
	go func() {
		defer close(copied)
		s.copyErr = copyOutput(lifecycle.OrDiscard(io.Stdout), lifecycle.OrDiscard(io.Stderr), att.Reader)
	}()
	if err := lifecycle.Checkpoint(ctx, step); err != nil {
		att.Close()
		return err
	}
	dctx, cancel := lifecycle.Detached(ctx)
	defer cancel()
	if _, err := s.r.cli.ContainerStart(dctx, s.containerID, client.ContainerStartOptions{}); err != nil {
		att.Close()
		return fmt.Errorf("start sandbox %s: %w", s.ID(), err)
	}
	// The wait outlives the caller's context: a later Wait still needs it.
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stopWait = stop
	s.exited = make(chan struct{})
	go s.wait(wctx)
	return nil
}

// copyOutput demultiplexes the attach stream. If a writer fails, the rest is
// drained so the sandbox never blocks on a full pipe.
func copyOutput(stdout, stderr io.Writer, stream io.Reader) error {
	_, err := stdcopy.StdCopy(stdout, stderr, stream)
	if err != nil {
		_, _ = io.Copy(io.Discard, stream)
		return err
	}
	return nil
}

// wait records how the process ended: the daemon's exit code and OOM flag,
// and the sandbox cgroup's OOM counter where Docker's flag can miss a kill.
func (s *box) wait(ctx context.Context) {
	defer close(s.exited)
	w := s.r.cli.ContainerWait(ctx, s.containerID, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	select {
	case <-w.Result:
	case err := <-w.Error:
		// The daemon's wait broke (it went away): the exit is unknown.
		s.waitErr = fmt.Errorf("%w: wait for sandbox %s: %w", sandbox.ErrUnavailable, s.ID(), err)
		return
	}
	got, err := s.r.cli.ContainerInspect(ctx, s.containerID, client.ContainerInspectOptions{})
	if err != nil {
		s.waitErr = lifecycle.Lost(fmt.Errorf("inspect sandbox %s after exit: %w", s.ID(), err), gone)
		return
	}
	if got.Container.State == nil {
		s.waitErr = fmt.Errorf("sandbox %s: the daemon reported no state after exit", s.ID())
		return
	}
	s.status = exitStatus(*got.Container.State)
	if s.oomCgroup != "" {
		if n, err := cgroupfs.OOMKills(s.oomCgroup); err == nil && n > 0 {
			s.status.OOMKilled = true
		}
	}
}

// exitStatus reads a stopped container's state.
func exitStatus(st container.State) sandbox.ExitStatus {
	at, _ := time.Parse(time.RFC3339Nano, st.FinishedAt)
	return lifecycle.Exit(st.ExitCode, at, st.OOMKilled)
}

// Wait implements sandbox.Sandbox.
func (s *box) Wait(ctx context.Context) (sandbox.ExitStatus, error) {
	if s.exited == nil {
		return sandbox.ExitStatus{}, fmt.Errorf("sandbox %s was not started", s.ID())
	}
	select {
	case <-s.exited:
	case <-ctx.Done():
		return sandbox.ExitStatus{}, ctx.Err()
	}
	if s.waitErr != nil {
		return sandbox.ExitStatus{}, s.waitErr
	}
	// All output must be delivered before the exit is reported.
	select {
	case <-s.copied:
	case <-ctx.Done():
		return sandbox.ExitStatus{}, ctx.Err()
	}
	if s.copyErr != nil {
		return s.status, fmt.Errorf("sandbox %s output: %w", s.ID(), s.copyErr)
	}
	return s.status, nil
}

// Kill implements sandbox.Sandbox. Killing the sandbox's first process ends
// its PID namespace, and so every process in it.
func (s *box) Kill(ctx context.Context) error {
	_, err := s.r.cli.ContainerKill(ctx, s.containerID, client.ContainerKillOptions{Signal: "KILL"})
	// Conflict: the container is not running, so there is nothing to kill.
	if err != nil && !notFound(err) && !cerrdefs.IsConflict(err) {
		return lifecycle.Lost(fmt.Errorf("kill sandbox %s: %w", s.ID(), err), gone)
	}
	return nil
}

// Remove implements sandbox.Sandbox.
func (s *box) Remove(ctx context.Context) error {
	return s.Removal.Do(func() error {
		err := s.r.cleanup(ctx, s.ID(), s.containerID)
		if s.attach != nil {
			s.attach.Close()
		}
		if s.stopWait != nil {
			s.stopWait()
		}
		return err
	})
}

// cleanup removes everything sandbox id owns, whatever state it is in:
// container, cgroup parent, scratch directory. containerID may be empty; the
// container is then looked up by name.
func (r *Runtime) cleanup(ctx context.Context, id, containerID string) error {
	if err := lifecycle.CheckID(id); err != nil {
		return err
	}
	ctx, cancel := lifecycle.CleanupContext(ctx)
	defer cancel()
	var errs []error
	if containerID == "" {
		c, err := r.find(ctx, id)
		switch {
		case err != nil:
			errs = append(errs, err)
		case c != nil && c.Labels[oci.LabelManaged] != "true":
			errs = append(errs, fmt.Errorf("container %s is not a sandbox (no %s label): not removing it", id, oci.LabelManaged))
		case c != nil:
			containerID = c.ID
		}
	}
	if containerID != "" {
		errs = append(errs, r.removeContainer(ctx, id, containerID))
	}
	// runc removes the container's cgroups, not the per-sandbox parent.
	for _, d := range r.cgroups(id, "") {
		if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
		}
	}
	return errors.Join(append(errs, r.state.RemoveScratch(id))...)
}

// removeContainer force-removes a container (killing it if it runs) with its
// anonymous volumes.
func (r *Runtime) removeContainer(ctx context.Context, id, containerID string) error {
	_, err := r.cli.ContainerRemove(ctx, containerID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !notFound(err) {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	return nil
}
