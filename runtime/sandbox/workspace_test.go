package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestValidateFiles(t *testing.T) {
	bad := []string{"", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", "x\x00y"}
	for _, p := range bad {
		if err := ValidateFiles([]File{{Path: p}}); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("path %q: got %v, want ErrInvalidSpec", p, err)
		}
	}
	if err := ValidateFiles([]File{{Path: "a"}, {Path: "a"}}); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("duplicate path accepted")
	}
	if err := ValidateFiles([]File{{Path: "src/main.go"}, {Path: ".env"}, {Path: "a..b"}}); err != nil {
		t.Errorf("valid paths rejected: %v", err)
	}
}

func TestWriteWorkspace(t *testing.T) {
	dir := t.TempDir()
	files := []File{
		{Path: "hello.py", Content: []byte("print('hi')\n")},
		{Path: "bin/run.sh", Content: []byte("#!/bin/sh\n"), Mode: 0o755},
		{Path: "bin/deep/data.bin", Content: []byte{0, 1, 2, 255}},
	}
	uid, gid := os.Getuid(), os.Getgid()
	if err := WriteWorkspace(dir, files, uid, gid); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		p := filepath.Join(dir, f.Path)
		got, err := os.ReadFile(p)
		if err != nil || string(got) != string(f.Content) {
			t.Errorf("%s: content %q, %v", f.Path, got, err)
		}
		fi, _ := os.Stat(p)
		want := f.Mode
		if want == 0 {
			want = 0o644
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", f.Path, fi.Mode().Perm(), want)
		}
	}
	// A symlink planted in the workspace is never written through.
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "evil")); err != nil {
		t.Fatal(err)
	}
	if err := WriteWorkspace(dir, []File{{Path: "evil", Content: []byte("x")}}, uid, gid); err == nil {
		t.Error("wrote through a symlink")
	}
}
