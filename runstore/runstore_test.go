package runstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandstorm-dev/sandstorm/api"
)

func open(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newRun(t testing.TB, s *Store, owner string) Run {
	t.Helper()
	r := Run{RunRecord: api.RunRecord{ID: NewID(time.Now()), Status: api.StatusQueued, Request: json.RawMessage(`{"prompt":"p"}`), Prompt: "p", CreatedAt: time.Now()}, Owner: owner}
	if err := s.Create(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestTwoProcesses: two handles on one store (as two sandstorm processes
// have) write runs at once without a busy error or a lost event.
func TestTwoProcesses(t *testing.T) {
	dir := t.TempDir()
	a, b := open(t, dir), open(t, dir)
	ctx := context.Background()
	var wg sync.WaitGroup
	ids := make([]string, 8)
	for i := range ids {
		s := a
		if i%2 == 1 {
			s = b
		}
		r := newRun(t, s, "")
		ids[i] = r.ID
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := int64(1); seq <= 200; seq++ {
				if err := s.Append(ctx, r.ID, seq, []byte(fmt.Sprintf(`{"n":%d}`, seq))); err != nil {
					t.Error(err)
					return
				}
			}
			now := time.Now()
			r.Status, r.FinishedAt = api.StatusSucceeded, &now
			if err := s.Finish(ctx, r, 1000); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, id := range ids {
		r, err := b.Get(ctx, id)
		if err != nil || r.Events != 200 || r.Status != api.StatusSucceeded {
			t.Errorf("%s: %+v %v", id, r, err)
		}
		evs, err := a.Events(ctx, id, 150, 100)
		if err != nil || len(evs) != 50 || evs[0].Seq != 151 {
			t.Errorf("%s: events after 150: %d %v", id, len(evs), err)
		}
	}
}

// TestInterruptAndPrune: runs of a gone owner are interrupted with their
// events kept; old and oversize finished runs are pruned, running ones never.
func TestInterruptAndPrune(t *testing.T) {
	s := open(t, t.TempDir())
	ctx := context.Background()
	dead, alive := newRun(t, s, "gone"), newRun(t, s, "alive")
	for _, r := range []Run{dead, alive} {
		s.Started(ctx, r.ID, time.Now())
		s.Append(ctx, r.ID, 1, []byte(`{"type":"run"}`))
		s.Append(ctx, r.ID, 2, []byte(`{"type":"assistant"}`))
	}
	ids, err := s.Interrupt(ctx, func(o string) bool { return o == "gone" }, func(Run) []byte { return []byte(`{"type":"error","code":"interrupted"}`) })
	if err != nil || len(ids) != 1 || ids[0] != dead.ID {
		t.Fatalf("interrupted %v %v", ids, err)
	}
	r, _ := s.Get(ctx, dead.ID)
	evs, _ := s.Events(ctx, dead.ID, 0, 10)
	if r.Status != api.StatusInterrupted || r.ErrorCode != "interrupted" || len(evs) != 3 || string(evs[2].Data) != `{"type":"error","code":"interrupted"}` {
		t.Errorf("interrupted run %+v, events %v", r, evs)
	}
	if r, _ := s.Get(ctx, alive.ID); r.Status != api.StatusRunning {
		t.Errorf("a live owner's run is %s", r.Status)
	}
	if err := s.Delete(ctx, alive.ID); !errors.Is(err, ErrNotFinished) {
		t.Errorf("delete a running run: %v", err)
	}
	// Three finished runs of 600 bytes each under a 1000-byte cap: the
	// oldest go (the interrupted one first) until what is left fits.
	var finished []string
	for range 3 {
		r := newRun(t, s, "")
		now := time.Now()
		r.Status, r.FinishedAt = api.StatusFailed, &now
		s.Finish(ctx, r, 600)
		os.MkdirAll(s.FilesDir(r.ID), 0o700)
		finished = append(finished, r.ID)
	}
	n, err := s.Prune(ctx, time.Hour, 1000)
	if err != nil || n != 3 {
		t.Errorf("pruned %d %v, want 3", n, err)
	}
	for i, id := range append([]string{dead.ID}, finished...) {
		_, err := s.Get(ctx, id)
		if gone := errors.Is(err, ErrNotFound); gone != (i < 3) {
			t.Errorf("run %d: %v", i, err)
		}
	}
	if _, err := os.Stat(filepath.Dir(s.FilesDir(dead.ID))); !os.IsNotExist(err) {
		t.Errorf("a pruned run's directory stayed: %v", err)
	}
	// Retention: everything finished is older than 0s... except the one running.
	if n, _ := s.Prune(ctx, -time.Second, 1<<30); n != 1 {
		t.Errorf("retention pruned %d, want 1", n)
	}
	if _, err := s.Get(ctx, alive.ID); err != nil {
		t.Errorf("a running run was pruned: %v", err)
	}
}

// TestUnopenable: a store that cannot be opened says where and why.
func TestUnopenable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	_, err := Open(context.Background(), filepath.Join(file, "state"))
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("open under a file: %v", err)
	}
}

// BenchmarkAppend is the store's cost per event, which every stream pays.
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{200, 4 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			s := open(b, b.TempDir())
			r := newRun(b, s, "")
			ev := []byte(`{"type":"assistant","text":"` + strings.Repeat("x", size) + `"}`)
			b.SetBytes(int64(len(ev)))
			b.ResetTimer()
			for i := range b.N {
				if err := s.Append(context.Background(), r.ID, int64(i+1), ev); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A store an earlier version made, without the columns added since, is
// brought up to date when opened, its runs kept.
func TestMigrate(t *testing.T) {
	dir := t.TempDir()
	old, err := Open(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	r := newRun(t, old, "o")
	if _, err := old.db.Exec(`ALTER TABLE runs DROP COLUMN warm`); err != nil {
		t.Fatal(err)
	}
	old.Close()
	s := open(t, dir)
	got, err := s.Get(context.Background(), r.ID)
	if err != nil || got.Warm != nil {
		t.Fatalf("the old run: %+v %v", got, err)
	}
	warm := true
	if err := s.Sandbox(context.Background(), r.ID, "containerd", "ds-1", &warm); err != nil {
		t.Fatal(err)
	}
	if got, _ = s.Get(context.Background(), r.ID); got.Warm == nil || !*got.Warm || got.SandboxID != "ds-1" {
		t.Errorf("after Sandbox: %+v", got)
	}
}

// TestFilesPrivate: the store holds prompts and outputs, so none of its
// files may be readable by another user at any moment, the write-ahead log
// and its index included (SQLite gives them the database file's mode).
func TestFilesPrivate(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	r := newRun(t, s, "o")
	if err := s.Append(context.Background(), r.ID, 1, []byte(`{"type":"x"}`)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"runs.db", "runs.db-wal", "runs.db-shm"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s is mode %v: readable by others", name, perm)
		}
	}
}
