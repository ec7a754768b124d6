package backend

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/oci"
	"github.com/sandstorm-dev/sandstorm/runtime"
)

func TestClaim(t *testing.T) {
	s := State(filepath.Join(t.TempDir(), "state"))
	if err := s.Make(); err != nil {
		t.Fatal(err)
	}
	uid, gid := os.Getuid(), os.Getgid()
	labels := map[string]string{oci.LabelManaged: "true", oci.LabelSession: "sess-1"}
	ws, err := s.Claim("sb-1", labels, []runtime.File{{Path: "a/b.txt", Content: []byte("x")}}, uid, gid)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(ws, "a", "b.txt")); err != nil || string(b) != "x" {
		t.Errorf("workspace file: %q %v", b, err)
	}
	// A second claim of the id is refused and leaves the first intact.
	if _, err := s.Claim("sb-1", nil, nil, uid, gid); !errors.Is(err, runtime.ErrInvalidSpec) || !errors.Is(err, ErrInUse) {
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
