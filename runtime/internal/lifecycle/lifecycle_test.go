package lifecycle

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime/sandbox"
)

func TestClaim(t *testing.T) {
	s := State(filepath.Join(t.TempDir(), "state"))
	if err := s.Make(); err != nil {
		t.Fatal(err)
	}
	uid, gid := os.Getuid(), os.Getgid()
	labels := map[string]string{oci.LabelManaged: "true", oci.LabelSession: "sess-1"}
	ws, err := s.Claim("sb-1", labels, []sandbox.File{{Path: "a/b.txt", Content: []byte("x")}}, uid, gid)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(ws, "a", "b.txt")); err != nil || string(b) != "x" {
		t.Errorf("workspace file: %q %v", b, err)
	}
	// A second claim of the id is refused and leaves the first intact.
	if _, err := s.Claim("sb-1", nil, nil, uid, gid); !errors.Is(err, sandbox.ErrInvalidSpec) || !errors.Is(err, ErrInUse) {
		t.Errorf("second claim = %v, want ErrInvalidSpec and ErrInUse", err)
	}
	if len(s.Leftovers("sb-1")) != 1 {
		t.Errorf("claimed scratch not reported: %v", s.Leftovers("sb-1"))
	}
	// A scratch directory alone is found by its labels, and one whose
	// labels are unreadable counts as managed.
	os.Mkdir(s.Scratch("sb-2"), 0o711)
	for _, tt := range []struct {
		sel  map[string]string
		want int
	}{
		{Selector(nil), 2},
		{Selector(map[string]string{oci.LabelSession: "sess-1"}), 1},
		{Selector(map[string]string{oci.LabelSession: "other"}), 0},
	} {
		found, err := s.List(tt.sel)
		if err != nil || len(found) != tt.want {
			t.Errorf("List(%v) = %v, %v; want %d", tt.sel, found, err, tt.want)
		}
	}
	os.Remove(s.Scratch("sb-2"))
	if err := s.RemoveScratch("sb-1"); err != nil || len(s.Leftovers("sb-1")) != 0 {
		t.Errorf("remove: %v, left %v", err, s.Leftovers("sb-1"))
	}
}

func TestExit(t *testing.T) {
	if es := Exit(137, time.Time{}, true); es.Signal != "SIGKILL" || !es.OOMKilled {
		t.Errorf("137: %+v", es)
	}
	if es := Exit(1, time.Time{}, false); es.Signal != "" {
		t.Errorf("1: %+v", es)
	}
}

func TestSelector(t *testing.T) {
	if sel := Selector(nil); len(sel) != 1 || sel[oci.LabelManaged] != "true" {
		t.Errorf("default selector %v", sel)
	}
	in := map[string]string{oci.LabelSession: "s"}
	if sel := Selector(in); len(sel) != 2 || len(in) != 1 {
		t.Errorf("selector %v changed its input %v", sel, in)
	}
}

func TestOnce(t *testing.T) {
	var o Once
	n := 0
	fail := true
	remove := func() error {
		n++
		if fail {
			return errors.New("busy")
		}
		return nil
	}
	if o.Do(remove) == nil {
		t.Fatal("failure not returned")
	}
	fail = false
	if err := o.Do(remove); err != nil {
		t.Fatal(err)
	}
	if err := o.Do(remove); err != nil || n != 2 {
		t.Errorf("ran %d times after success", n)
	}
}

func TestCheckpoint(t *testing.T) {
	var steps []string
	ctx, cancel := context.WithCancel(WithCheckpoints(context.Background(), func(s string) { steps = append(steps, s) }))
	if err := Checkpoint(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := Checkpoint(ctx, "two"); !errors.Is(err, context.Canceled) {
		t.Errorf("after cancel: %v", err)
	}
	if len(steps) != 2 {
		t.Errorf("steps %v", steps)
	}
}

// fakeSteps records what Create calls, and fails where told.
type fakeSteps struct {
	calls []string
	fail  string
	// cancelIn cancels the caller's context midway through that step.
	cancelIn string
	cancel   context.CancelFunc
	// cut: a daemon call was cut by that cancellation.
	cut      bool
	undoLive bool
}

func (f *fakeSteps) step(name string, dctx context.Context) error {
	f.calls = append(f.calls, name)
	if f.cancelIn == name {
		f.cancel()
		f.cut = dctx.Err() != nil
	}
	if f.fail == name {
		return errors.New(name + " failed")
	}
	return nil
}

func (f *fakeSteps) Claim(dctx context.Context) error    { return f.step("claim", dctx) }
func (f *fakeSteps) Setup(_, dctx context.Context) error { return f.step("setup", dctx) }
func (f *fakeSteps) Make(_, dctx context.Context) error  { return f.step("make", dctx) }
func (f *fakeSteps) Verify(context.Context) (sandbox.Sandbox, error) {
	if err := f.step("verify", nil); err != nil {
		return nil, err
	}
	return made, nil
}

// made is the sandbox fakeSteps' Verify returns: the methods Create never calls are left out.
var made = struct{ sandbox.Sandbox }{}

func (f *fakeSteps) Undo(ctx context.Context) error {
	f.undoLive = ctx.Err() == nil
	return f.step("undo", nil)
}

type allCaps struct{}

func (allCaps) Enforcement(context.Context) (sandbox.Enforcement, error) { return AllEnforced(), nil }

func TestCreate(t *testing.T) {
	tests := []struct {
		name string
		fail string
		// cancelAt cancels the caller's context at the nth checkpoint (from 1).
		cancelAt int
		cancelIn string
		want     []string
		wantErr  []string
	}{
		{"every step", "", 0, "", []string{"claim", "setup", "make", "verify"}, nil},
		{"claim fails: nothing to undo", "claim", 0, "", []string{"claim"}, []string{"claim failed"}},
		{"setup fails", "setup", 0, "", []string{"claim", "setup", "undo"}, []string{"setup failed"}},
		{"make fails", "make", 0, "", []string{"claim", "setup", "make", "undo"}, []string{"make failed"}},
		{"verify fails", "verify", 0, "", []string{"claim", "setup", "make", "verify", "undo"}, []string{"verify failed"}},
		{"undo fails too", "undo", 3, "", []string{"claim", "setup", "make", "undo"}, []string{"context canceled", "undo failed"}},
		{"cancelled before claim", "", 1, "", nil, []string{"context canceled"}},
		{"cancelled after setup", "", 2, "", []string{"claim", "setup", "undo"}, []string{"context canceled"}},
		{"cancelled after make", "", 3, "", []string{"claim", "setup", "make", "undo"}, []string{"context canceled"}},
		{"cancelled during claim: it completes, then is undone", "", 0, "claim", []string{"claim", "setup", "undo"}, []string{"context canceled"}},
		{"cancelled during make: it completes, then is undone", "", 0, "make", []string{"claim", "setup", "make", "undo"}, []string{"context canceled"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			n := 0
			ctx = WithCheckpoints(ctx, func(step string) {
				if step != Creating("sb-1") {
					t.Errorf("checkpoint %q", step)
				}
				if n++; n == tt.cancelAt {
					cancel()
				}
			})
			f := &fakeSteps{fail: tt.fail, cancelIn: tt.cancelIn, cancel: cancel}
			plan := func(context.Context, sandbox.Spec, sandbox.Prepared, sandbox.Enforcement) (Steps, error) {
				return f, nil
			}
			spec := sandbox.Spec{ID: "sb-1", SessionID: "s", Image: "img", Args: []string{"true"}}
			sb, err := Create(ctx, allCaps{}, spec, plan)
			if !slices.Equal(f.calls, tt.want) {
				t.Errorf("calls %v, want %v", f.calls, tt.want)
			}
			if f.cut {
				t.Errorf("the caller's cancellation cut %s's daemon call", tt.cancelIn)
			}
			if slices.Contains(f.calls, "undo") && !f.undoLive {
				t.Error("undo ran in the caller's ended context")
			}
			if len(tt.wantErr) == 0 {
				if err != nil || sb != made {
					t.Errorf("Create = %v, %v", sb, err)
				}
				return
			}
			if (tt.cancelAt > 0 || tt.cancelIn != "") && !errors.Is(err, context.Canceled) {
				t.Errorf("error %v, want a cancellation", err)
			}
			for _, w := range tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v, want it to say %q", err, w)
				}
			}
		})
	}
}

func TestCreatePrepares(t *testing.T) {
	planned := false
	plan := func(context.Context, sandbox.Spec, sandbox.Prepared, sandbox.Enforcement) (Steps, error) {
		planned = true
		return &fakeSteps{}, nil
	}
	_, err := Create(context.Background(), allCaps{}, sandbox.Spec{ID: "sb-1", SessionID: "s", Image: "img"}, plan)
	if !errors.Is(err, sandbox.ErrInvalidSpec) || planned {
		t.Errorf("a spec without a command: %v, planned %v; want ErrInvalidSpec before any step", err, planned)
	}
}
