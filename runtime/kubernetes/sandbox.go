package kubernetes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/internal/lifecycle"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

type podClient = typedcorev1.PodInterface

// errPodGone: the Pod was deleted while we waited on it.
var errPodGone = errors.New("pod is gone")

type box struct {
	rt         *Runtime
	id         string
	unenforced []sandbox.Item
	scratch    string

	mu      sync.Mutex
	started bool
	// done is closed when the attach ended: every byte of output was delivered.
	done      chan struct{}
	streamErr error
}

func (s *box) ID() string                 { return s.id }
func (s *box) Unenforced() []sandbox.Item { return s.unenforced }

// waitPod watches Pod name until done says so; errPodGone when it is deleted.
func (r *Runtime) waitPod(ctx context.Context, name string, done func(*corev1.Pod) (bool, error)) (*corev1.Pod, error) {
	for {
		p, err := r.pods().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, errPodGone
		}
		if err != nil {
			return nil, err
		}
		if ok, err := done(p); ok || err != nil {
			return p, err
		}
		w, err := r.pods().Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name, ResourceVersion: p.ResourceVersion})
		if err != nil {
			return nil, err
		}
		for ev := range w.ResultChan() {
			if ev.Type == watch.Deleted {
				w.Stop()
				return nil, errPodGone
			}
			p, isPod := ev.Object.(*corev1.Pod)
			if !isPod {
				break
			}
			if ok, err := done(p); ok || err != nil {
				w.Stop()
				return p, err
			}
		}
		w.Stop()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// startFailures are container waiting reasons that will not resolve by
// themselves.
var startFailures = map[string]bool{
	"ErrImagePull": true, "ImagePullBackOff": true, "ErrImageNeverPull": true, "InvalidImageName": true,
	"CreateContainerConfigError": true, "CreateContainerError": true, "RunContainerError": true, "CrashLoopBackOff": true,
}

// startFailure is a container that will not start; an image that cannot
// be pulled is sandbox.ErrNotFound, as on the other backends.
func startFailure(pod, container string, w *corev1.ContainerStateWaiting) error {
	err := fmt.Errorf("pod %s: container %s: %s: %s", pod, container, w.Reason, w.Message)
	if strings.Contains(w.Reason, "Image") {
		return fmt.Errorf("%w: %w", sandbox.ErrNotFound, err)
	}
	return err
}

// ready waits until both containers run (the sandbox's waits at its gate),
// at most StartTimeout.
func (s *box) ready(ctx context.Context) error {
	wctx, cancel := context.WithTimeout(ctx, s.rt.cfg.StartTimeout)
	defer cancel()
	var last *corev1.Pod
	_, err := s.rt.waitPod(wctx, s.id, func(p *corev1.Pod) (bool, error) {
		last = p
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			return false, fmt.Errorf("pod %s ended before its process started: %s %s", s.id, p.Status.Reason, p.Status.Message)
		}
		for _, c := range p.Status.InitContainerStatuses {
			if w := c.State.Waiting; w != nil && startFailures[w.Reason] {
				return false, startFailure(s.id, c.Name, w)
			}
			if t := c.State.Terminated; t != nil && t.ExitCode != 0 {
				return false, fmt.Errorf("pod %s: init container %s failed: %s (exit %d) %s", s.id, c.Name, t.Reason, t.ExitCode, t.Message)
			}
		}
		running := 0
		for _, c := range p.Status.ContainerStatuses {
			if w := c.State.Waiting; w != nil && startFailures[w.Reason] {
				return false, startFailure(s.id, c.Name, w)
			}
			if t := c.State.Terminated; t != nil {
				return false, fmt.Errorf("pod %s: container %s ended before its process started: %s (exit %d) %s", s.id, c.Name, t.Reason, t.ExitCode, t.Message)
			}
			if c.State.Running != nil {
				running++
			}
		}
		return running == 2, nil
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		why := "its containers did not start"
		if last != nil {
			for _, c := range last.Status.Conditions {
				if c.Type == corev1.PodScheduled && c.Status != corev1.ConditionTrue {
					why = "no node could take it: " + c.Message
				}
			}
		}
		return fmt.Errorf("%w: kubernetes: pod %s not running within %v: %s", sandbox.ErrUnavailable, s.id, s.rt.cfg.StartTimeout, why)
	case errors.Is(err, errPodGone):
		return fmt.Errorf("kubernetes: pod %s was deleted before it started", s.id)
	}
	return s.rt.apiErr("start Pod "+s.id, err)
}

// stream connects to a streaming subresource (attach, exec) of the Pod:
// over WebSocket, or SPDY for an API server that does not upgrade.
func (s *box) stream(ctx context.Context, sub string, params kruntime.Object, o remotecommand.StreamOptions) error {
	req := s.rt.client.CoreV1().RESTClient().Post().Namespace(s.rt.cfg.Namespace).Resource("pods").Name(s.id).SubResource(sub).
		VersionedParams(params, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(s.rt.rest, "GET", req.URL().String())
	if err != nil {
		return err
	}
	spdy, err := remotecommand.NewSPDYExecutor(s.rt.rest, "POST", req.URL())
	if err != nil {
		return err
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return err
	}
	return exec.StreamWithContext(ctx, o)
}

// exec runs cmd in container, with stdin, and returns its stdout.
func (s *box) exec(ctx context.Context, container string, cmd []string, stdin io.Reader, stdout io.Writer) error {
	var stderr bytes.Buffer
	err := s.stream(ctx, "exec", &corev1.PodExecOptions{Container: container, Command: cmd, Stdin: stdin != nil, Stdout: stdout != nil, Stderr: true},
		remotecommand.StreamOptions{Stdin: stdin, Stdout: stdout, Stderr: &stderr})
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return fmt.Errorf("%s: %w: %s", strings.Join(cmd, " "), err, msg)
		}
		return fmt.Errorf("%s: %w", strings.Join(cmd, " "), err)
	}
	return nil
}

// Start attaches to the sandbox container and opens its gate: the process
// starts only once its output has somewhere to go.
func (s *box) Start(ctx context.Context, streams sandbox.IO) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return fmt.Errorf("sandbox %s already started", s.id)
	}
	s.started = true
	s.mu.Unlock()
	stdin, gateW := io.Pipe()
	// The attach outlives Start: it ends with the process, or with Remove.
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		defer cancel()
		err := s.stream(actx, "attach", &corev1.PodAttachOptions{Container: sandboxContainer, Stdin: true, Stdout: true, Stderr: true},
			remotecommand.StreamOptions{Stdin: stdin, Stdout: lifecycle.OrDiscard(streams.Stdout), Stderr: lifecycle.OrDiscard(streams.Stderr)})
		stdin.CloseWithError(io.EOF)
		s.mu.Lock()
		s.streamErr = err
		s.mu.Unlock()
		close(s.done)
	}()
	opened := make(chan error, 1)
	go func() {
		// The pipe hands the line over only once the attach reads it.
		_, err := gateW.Write([]byte("go\n"))
		gateW.Close()
		opened <- err
	}()
	select {
	case err := <-opened:
		if err != nil {
			return fmt.Errorf("kubernetes: attach to pod %s: %w", s.id, s.attachErr(err))
		}
		return nil
	case <-ctx.Done():
		cancel()
		return ctx.Err()
	}
}

func (s *box) attachErr(err error) error {
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streamErr != nil {
		return s.rt.apiErr("attach", s.streamErr)
	}
	return err
}

// Wait waits for the attach to end (all output delivered) and the sandbox
// container to be terminated, and reads how it ended from its status.
func (s *box) Wait(ctx context.Context) (sandbox.ExitStatus, error) {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if !started {
		return sandbox.ExitStatus{}, fmt.Errorf("sandbox %s was not started", s.id)
	}
	select {
	case <-s.done:
	case <-ctx.Done():
		return sandbox.ExitStatus{}, ctx.Err()
	}
	s.mu.Lock()
	streamErr := s.streamErr
	s.mu.Unlock()
	wctx := ctx
	if streamErr != nil {
		// An attach that ended in an error while the process ended too is
		// told apart by the status, which the kubelet updates within its
		// relist (1 s); one whose process runs on broke: the output is lost
		// from here, and so is the run.
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, attachGrace)
		defer cancel()
	}
	term, err := s.terminated(wctx)
	if streamErr != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return sandbox.ExitStatus{}, fmt.Errorf("%w: kubernetes: the attach to pod %s broke: %w", sandbox.ErrUnavailable, s.id, streamErr)
	}
	if errors.Is(err, errPodGone) {
		return sandbox.ExitStatus{}, fmt.Errorf("%w: kubernetes: pod %s was deleted before its exit was seen", sandbox.ErrUnavailable, s.id)
	}
	if err != nil {
		if ctx.Err() != nil {
			return sandbox.ExitStatus{}, ctx.Err()
		}
		return sandbox.ExitStatus{}, s.rt.apiErr("wait for pod "+s.id, err)
	}
	return lifecycle.Exit(int(term.ExitCode), term.FinishedAt.Time, term.Reason == "OOMKilled"), nil
}

// attachGrace is how long a broken attach waits for the status to say the
// process ended.
const attachGrace = 5 * time.Second

// terminated waits until the sandbox container's status says it ended.
func (s *box) terminated(ctx context.Context) (*corev1.ContainerStateTerminated, error) {
	var term *corev1.ContainerStateTerminated
	_, err := s.rt.waitPod(ctx, s.id, func(p *corev1.Pod) (bool, error) {
		for _, c := range p.Status.ContainerStatuses {
			if c.Name == sandboxContainer && c.State.Terminated != nil {
				term = c.State.Terminated
				return true, nil
			}
		}
		return false, nil
	})
	return term, err
}

// Kill sends SIGKILL to every process of the sandbox but its gate, which
// then exits with the process's status.
func (s *box) Kill(ctx context.Context) error {
	err := s.exec(ctx, sandboxContainer, []string{"/bin/sh", "-c", "kill -9 -1"}, nil, io.Discard)
	// Its kill ends the process, then the gate, then the container, whose
	// end takes the exec's shell along (137): the kill was done.
	var exit utilexec.ExitError
	if err == nil || errors.As(err, &exit) && exit.ExitStatus() == 128+9 {
		return nil
	}
	// Otherwise the container may have ended on its own while the exec
	// started, and there is nothing left to kill.
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, werr := s.terminated(wctx); werr == nil || errors.Is(werr, errPodGone) {
		return nil
	}
	return s.rt.apiErr("kill sandbox "+s.id, err)
}

// Remove deletes the Pod and the workspace copy; it is safe to call again.
func (s *box) Remove(ctx context.Context) error {
	return s.rt.remove(ctx, s.id, s.scratch)
}

// Workspace copies the workspace out of the keeper (once) and opens the copy.
func (s *box) Workspace() (*os.Root, error) {
	dir := filepath.Join(s.scratch, "workspace")
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := s.getFiles(ctx, dir); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("kubernetes: copy the workspace out of pod %s: %w", s.id, err)
		}
	}
	return os.OpenRoot(dir)
}

// putFiles writes files into the workspace through the keeper, as the
// sandbox user: a tar stream into tar.
func (s *box) putFiles(ctx context.Context, files []sandbox.File) error {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(pw, files)) }()
	err := s.exec(ctx, keeperContainer, []string{"tar", "-x", "-o", "-f", "-", "-C", oci.Workspace}, pr, io.Discard)
	pr.Close()
	return err
}

// getFiles reads the workspace out of the keeper into dir.
func (s *box) getFiles(ctx context.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := readTar(pr, dir)
		if err == nil {
			// tar pads its archive past the end marker readTar stops at.
			_, err = io.Copy(io.Discard, pr)
		}
		pr.CloseWithError(err)
		done <- err
	}()
	err := s.exec(ctx, keeperContainer, []string{"tar", "-c", "-f", "-", "-C", oci.Workspace, "."}, nil, pw)
	pw.CloseWithError(err)
	return errors.Join(err, <-done)
}
