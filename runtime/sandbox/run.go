package sandbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// killWait bounds the wait for a killed sandbox's exit, so the output it
// printed before the kill is still delivered.
const killWait = 10 * time.Second

// Hooks observe the steps of Run; any may be nil.
type Hooks struct {
	// Created: the sandbox exists (create took d).
	Created func(sb Sandbox, d time.Duration)
	// Started: its process runs (start took d).
	Started func(d time.Duration)
	// Exited: the process ended and all its output was delivered. waitErr
	// is nil when it ended by itself; otherwise it was killed because the
	// timeout passed (waitErr wraps context.DeadlineExceeded) or ctx was
	// cancelled (waitErr wraps context.Canceled and ctx's cause). d is the
	// time since the start.
	Exited func(st ExitStatus, waitErr error, d time.Duration)
	// Removed: the sandbox and everything it owns are gone, or err says
	// what is left (removal took d).
	Removed func(d time.Duration, err error)
}

// Run is the one life of a sandbox: create, start, wait (at most timeout;
// 0 means none), kill and collect the exit when the wait ends early, and
// remove, on every path. It returns the exit status and, joined, whatever
// went wrong: the create or start, the early end of the wait, the removal.
func Run(ctx context.Context, rt Runtime, spec Spec, io IO, timeout time.Duration, h Hooks) (ExitStatus, error) {
	r, err := Begin(ctx, rt, spec, io, h)
	if err != nil {
		return ExitStatus{}, err
	}
	return r.Finish(ctx, timeout, h)
}

// Running is a sandbox Begin created and started; Finish ends its life.
type Running struct {
	rt      Runtime
	sb      Sandbox
	started time.Time
}

// Sandbox is the running sandbox.
func (r *Running) Sandbox() Sandbox { return r.sb }

// Begin is the first half of Run: create and start (hooks Created and
// Started). When either fails, the sandbox is removed (hook Removed) and
// the error returned.
func Begin(ctx context.Context, rt Runtime, spec Spec, io IO, h Hooks) (*Running, error) {
	t := time.Now()
	sb, err := rt.Create(ctx, spec)
	if err != nil {
		return nil, err
	}
	if h.Created != nil {
		h.Created(sb, time.Since(t))
	}
	r := &Running{rt: rt, sb: sb}
	t = time.Now()
	if err := sb.Start(ctx, io); err != nil {
		return nil, errors.Join(err, r.remove(ctx, h))
	}
	r.started = time.Now()
	if h.Started != nil {
		h.Started(r.started.Sub(t))
	}
	return r, nil
}

// Finish is the second half of Run: wait at most timeout (0: none) from
// now, kill and collect the exit when the wait ends early (hook Exited),
// and remove (hook Removed).
func (r *Running) Finish(ctx context.Context, timeout time.Duration, h Hooks) (st ExitStatus, err error) {
	defer func() { err = errors.Join(err, r.remove(ctx, h)) }()
	wctx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	st, werr := r.sb.Wait(wctx)
	if werr != nil {
		werr = stop(ctx, wctx, r.sb, timeout, werr, &st)
	}
	if h.Exited != nil {
		h.Exited(st, werr, time.Since(r.started))
	}
	return st, werr
}

func (r *Running) remove(ctx context.Context, h Hooks) error {
	t := time.Now()
	err := r.sb.Remove(context.WithoutCancel(ctx))
	if err != nil {
		remember(r.rt, r.sb.ID())
	}
	if h.Removed != nil {
		h.Removed(time.Since(t), err)
	}
	return err
}

// stop kills a sandbox whose wait failed or ended early, collects its exit
// when it can, and says why it was stopped.
func stop(ctx, wctx context.Context, sb Sandbox, timeout time.Duration, werr error, st *ExitStatus) error {
	why := werr
	switch {
	case ctx.Err() != nil:
		why = fmt.Errorf("sandbox %s cancelled: %w", sb.ID(), Cause(ctx))
	case wctx.Err() != nil:
		why = fmt.Errorf("sandbox %s timed out after %v and was killed: %w", sb.ID(), timeout, context.DeadlineExceeded)
	}
	bg := context.WithoutCancel(ctx)
	if err := sb.Kill(bg); err != nil {
		return errors.Join(why, err)
	}
	kctx, cancel := context.WithTimeout(bg, killWait)
	defer cancel()
	if got, err := sb.Wait(kctx); err == nil {
		*st = got
	}
	return why
}

// Cause is why ctx ended: its cause, always matching ctx.Err() (context.Canceled
// or context.DeadlineExceeded) with errors.Is.
func Cause(ctx context.Context) error {
	c := context.Cause(ctx)
	if errors.Is(c, ctx.Err()) {
		return c
	}
	return fmt.Errorf("%w: %w", ctx.Err(), c)
}

// unremoved holds the sandboxes of this process whose removal failed (their
// daemon was away): Sweep retries them, though their owner still runs.
var unremoved struct {
	sync.Mutex
	ids map[Runtime]map[string]bool
}

func remember(rt Runtime, id string) {
	unremoved.Lock()
	defer unremoved.Unlock()
	if unremoved.ids == nil {
		unremoved.ids = map[Runtime]map[string]bool{}
	}
	if unremoved.ids[rt] == nil {
		unremoved.ids[rt] = map[string]bool{}
	}
	unremoved.ids[rt][id] = true
}

// retryRemovals removes again what Run could not remove on rt.
func retryRemovals(ctx context.Context, rt Runtime) (removed []string, err error) {
	unremoved.Lock()
	defer unremoved.Unlock()
	var errs []error
	for id := range unremoved.ids[rt] {
		if err := rt.Remove(ctx, id); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(unremoved.ids[rt], id)
		removed = append(removed, id)
	}
	return removed, errors.Join(errs...)
}
