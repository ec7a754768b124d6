package lifecycle

import (
	"context"
	"errors"
	"fmt"

	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

// EnforcementSource is what reports the items a backend enforces.
type EnforcementSource interface {
	Enforcement(ctx context.Context) (sandbox.Enforcement, error)
}

// Steps are one backend's part of a Create. Create calls each at most
// once, in the order below, and Undo only after Claim succeeded.
type Steps interface {
	// Claim takes the sandbox's id (a scratch directory, an API object).
	// When it fails nothing was made, so nothing is undone: the id may be
	// another sandbox's.
	Claim(dctx context.Context) error
	// Setup makes what the sandbox needs before the daemon makes it (a
	// network, sealed mounts, a cgroup), calling Checkpoint with
	// Creating's step before each daemon call of its own.
	Setup(ctx, dctx context.Context) error
	// Make has the daemon make the sandbox, in dctx; ctx only for
	// Checkpoint.
	Make(ctx, dctx context.Context) error
	// Verify reads back what the daemon made, where the backend can,
	// checks it against the policy, and returns the sandbox.
	Verify(ctx context.Context) (sandbox.Sandbox, error)
	// Undo removes what this Create made, and only that: after a name
	// conflict in Make, not the sandbox holding the name.
	Undo(ctx context.Context) error
}

// Plan makes a Create's Steps from the prepared spec, making nothing: it
// is where a Create fails that needs no undo (an image missing, a user
// with no host id).
type Plan func(ctx context.Context, spec sandbox.Spec, prep sandbox.Prepared, caps sandbox.Enforcement) (Steps, error)

// Create is every backend's Create: the backend's capabilities and
// sandbox.Prepare (defaults, validation, fail closed), then plan's steps,
// with a Checkpoint before Claim, after Setup and after Make. From Claim
// on, every daemon call runs detached (see Detached) and a failure
// undoes what was made, in a context the caller's cancellation does not
// cut.
func Create(ctx context.Context, src EnforcementSource, spec sandbox.Spec, plan Plan) (_ sandbox.Sandbox, err error) {
	caps, err := src.Enforcement(ctx)
	if err != nil {
		return nil, err
	}
	prep, err := sandbox.Prepare(spec, caps)
	if err != nil {
		return nil, err
	}
	steps, err := plan(ctx, spec, prep, caps)
	if err != nil {
		return nil, err
	}
	step := Creating(prep.ID)
	if err := Checkpoint(ctx, step); err != nil {
		return nil, err
	}
	dctx, cancel := Detached(ctx)
	defer cancel()
	if err := steps.Claim(dctx); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			cctx, cancel := CleanupContext(ctx)
			defer cancel()
			err = errors.Join(err, steps.Undo(cctx))
		}
	}()
	if err := steps.Setup(ctx, dctx); err != nil {
		return nil, err
	}
	if err := Checkpoint(ctx, step); err != nil {
		return nil, err
	}
	if err := steps.Make(ctx, dctx); err != nil {
		return nil, err
	}
	if err := Checkpoint(ctx, step); err != nil {
		return nil, err
	}
	return steps.Verify(ctx)
}

// Creating is the step every Checkpoint of sandbox id's Create names.
func Creating(id string) string { return "create sandbox " + id }

// Detached is the context of a daemon call that makes an object of a
// sandbox: it is not cut by the caller's cancellation (a call cancelled
// half-way can still complete on the daemon, after the undo has run, and
// leave an object behind), only bounded by CleanupTimeout. Create and Start
// call Checkpoint between such calls to honour a cancellation.
func Detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return CleanupContext(ctx)
}

type checkpointKey struct{}

// Checkpoint returns an error wrapping ctx's cause when ctx has ended; the
// point a Create or Start reaches between two daemon calls.
func Checkpoint(ctx context.Context, step string) error {
	if f, ok := ctx.Value(checkpointKey{}).(func(string)); ok {
		f(step)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", step, sandbox.Cause(ctx))
	}
	return nil
}

// WithCheckpoints calls f at every Checkpoint reached with ctx: tests
// cancel there, at each step in turn.
func WithCheckpoints(ctx context.Context, f func(step string)) context.Context {
	return context.WithValue(ctx, checkpointKey{}, f)
}
