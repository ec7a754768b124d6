// Package sandbox runs one command in one fresh sandbox from start to
// removal: every exit path (success, error, timeout, cancel) removes it.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/sandstorm-dev/sandstorm/images/testimage"
	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/progress"
	"github.com/sandstorm-dev/sandstorm/runtime"
)

// TestImage is the tiny busybox image `make testimage` builds.
const TestImage = testimage.Ref

// RunOptions describe one run.
type RunOptions struct {
	Image string
	// ImportTar, if set, is imported into the backend first.
	ImportTar       string
	Args            []string
	Env             []string
	Files           []runtime.File
	Policy          oci.Policy
	AllowUnenforced []runtime.Item
	// Timeout kills the sandbox when reached; 0 means none.
	Timeout        time.Duration
	Stdout, Stderr io.Writer
	// Progress receives phase lines; nil discards them.
	Progress io.Writer
}

// Run imports (if asked), creates, starts and waits for one sandbox, then
// removes it whatever happened.
func Run(ctx context.Context, rt runtime.Runtime, o RunOptions) (st runtime.ExitStatus, err error) {
	rep := progress.Reporter{W: o.Progress}
	if rep.W == nil {
		rep.W = io.Discard
	}
	if o.ImportTar != "" {
		if err := importTar(ctx, rt, o.ImportTar, rep); err != nil {
			return st, err
		}
	}
	done := rep.Phase("create sandbox on " + rt.Name())
	sb, err := rt.Create(ctx, runtime.Spec{
		SessionID: runtime.NewID(), Image: o.Image, Args: o.Args, Env: o.Env,
		Files: o.Files, Policy: o.Policy, AllowUnenforced: o.AllowUnenforced,
	})
	done(err)
	if err != nil {
		return st, err
	}
	if u := sb.Unenforced(); len(u) > 0 {
		fmt.Fprintf(rep.W, "==> warning: %s does not enforce %v here; running without them as allowed\n", rt.Name(), u)
	}
	defer func() {
		done := rep.Phase("remove sandbox " + sb.ID())
		rerr := sb.Remove(context.WithoutCancel(ctx))
		done(rerr)
		err = errors.Join(err, rerr)
	}()
	if err := sb.Start(ctx, runtime.IO{Stdout: o.Stdout, Stderr: o.Stderr}); err != nil {
		return st, err
	}
	wctx := ctx
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	st, err = sb.Wait(wctx)
	if err == nil {
		return st, nil
	}
	// Cancelled or timed out: kill, and collect the exit so output is flushed.
	if kerr := sb.Kill(context.WithoutCancel(ctx)); kerr != nil {
		return st, errors.Join(err, kerr)
	}
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	st, _ = sb.Wait(kctx)
	if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return st, fmt.Errorf("sandbox timed out after %v and was killed: %w", o.Timeout, err)
	}
	return st, fmt.Errorf("sandbox cancelled: %w", err)
}

func importTar(ctx context.Context, rt runtime.Runtime, path string, rep progress.Reporter) error {
	done := rep.Phase(fmt.Sprintf("import %s into %s", path, rt.Name()))
	f, err := os.Open(path)
	if err != nil {
		done(err)
		return fmt.Errorf("%w: image tar: %w", runtime.ErrInvalidSpec, err)
	}
	defer f.Close()
	names, err := rt.ImportImage(ctx, f)
	done(err)
	if err == nil {
		fmt.Fprintf(rep.W, "==> imported %v\n", names)
	}
	return err
}
