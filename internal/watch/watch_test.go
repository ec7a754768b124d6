package watch

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Writes in place, replacements and creations count; other files in the
// directory do not.
func TestFiles(t *testing.T) {
	dir := t.TempDir()
	watched, other := filepath.Join(dir, "limits.yaml"), filepath.Join(dir, "other")
	os.WriteFile(watched, []byte("a"), 0o644)
	changes := make(chan struct{}, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := Files(ctx, []string{watched, filepath.Join(dir, "sandstorm.json")}, func() { changes <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	expect := func(what string, n int) {
		t.Helper()
		for i := range n {
			select {
			case <-changes:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: change %d never told", what, i+1)
			}
		}
		// A burst may be told twice on a loaded machine; any more is drained.
		for {
			select {
			case <-changes:
				if n == 0 {
					t.Fatalf("%s: told", what)
				}
				continue
			case <-time.After(3 * Settle):
			}
			return
		}
	}
	os.WriteFile(watched, []byte("b"), 0o644)
	expect("written in place", 1)
	tmp := filepath.Join(dir, ".limits.yaml.swp")
	os.WriteFile(tmp, []byte("c"), 0o644)
	os.Rename(tmp, watched)
	os.Chmod(watched, 0o600)
	expect("replaced", 1)
	os.WriteFile(filepath.Join(dir, "sandstorm.json"), []byte("{}"), 0o644)
	expect("created", 1)
	os.WriteFile(other, []byte("x"), 0o644)
	expect("another file", 0)
}
