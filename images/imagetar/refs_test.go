package imagetar

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestReferences(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.MkdirAll(root, 0o755)
	os.WriteFile(filepath.Join(root, "f"), []byte("x"), 0o644)
	out := filepath.Join(dir, "img.tar")
	refs := []string{"localhost/a:latest", "localhost/a:123"}
	if err := WriteFileRefs(context.Background(), out, refs, Config{}, Layer{Dir: root}); err != nil {
		t.Fatal(err)
	}
	got, err := References(out)
	if err != nil || !slices.Equal(got, refs) {
		t.Errorf("References = %v, %v; want %v", got, err, refs)
	}
	if _, err := References(filepath.Join(root, "f")); err == nil {
		t.Error("a non-tar has references")
	}
}
