package outfiles

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

// writeTree creates files (slash-separated path to content) under dir, mode 0644.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		name := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// readTree returns every regular file under dir, and fails on anything else
// but directories.
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !d.Type().IsRegular() {
			t.Errorf("%s: unexpected %v in output", p, d.Type())
			return nil
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		got[filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// collect runs Collect on the workspace src into a new temp dir, returned too.
func collect(t *testing.T, ctx context.Context, src string, o Options) (Result, string, error) {
	t.Helper()
	root, err := os.OpenRoot(src)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	dst := filepath.Join(t.TempDir(), "out")
	res, err := Collect(ctx, root, dst, o)
	return res, dst, err
}

func TestCollect(t *testing.T) {
	const binary = "\x00\x01\xff\xfe\x80ELF\x00\xc3("
	tests := []struct {
		name        string
		files       map[string]string
		opts        Options
		wantFiles   []string
		wantInline  map[string]string
		wantSkipped []Skipped
	}{{
		name:      "created files byte for byte",
		files:     map[string]string{"a.txt": "hello\n", "bin": binary, "nested/deep/c.txt": "c", "empty": ""},
		wantFiles: []string{"a.txt", "bin", "empty", "nested/deep/c.txt"},
	}, {
		name:      "untouched upload left out, changed handed back",
		files:     map[string]string{"in/same.csv": "1,2\n", "in/changed.csv": "3,4,5\n", "new.txt": "n"},
		opts:      Options{Uploads: map[string]string{"in/same.csv": sum("1,2\n"), "in/changed.csv": sum("3,4\n")}},
		wantFiles: []string{"in/changed.csv", "new.txt"},
	}, {
		name:      "caches skipped",
		files:     map[string]string{"node_modules/x/index.js": "x", "a/.cache/y": "y", "__pycache__/m.pyc": "m", "keep.txt": "k"},
		wantFiles: []string{"keep.txt"},
	}, {
		name:      "caches included",
		files:     map[string]string{"node_modules/x/index.js": "x", "a/.cache/y": "y", "__pycache__/m.pyc": "m", "keep.txt": "k"},
		opts:      Options{IncludeCaches: true},
		wantFiles: []string{"__pycache__/m.pyc", "a/.cache/y", "keep.txt", "node_modules/x/index.js"},
	}, {
		name: "private never, even with caches",
		files: map[string]string{
			".claude/.credentials.json": "secret", ".claude.json": "{}", ".claude.json.backup": "{}",
			".config/gcloud/adc.json": "secret", ".config/app.toml": "a", "sub/.claude": "not private",
		},
		opts:      Options{IncludeCaches: true},
		wantFiles: []string{".config/app.toml", "sub/.claude"},
	}, {
		name:        "max files skips the largest",
		files:       map[string]string{"a": "1", "b": "22", "c": "333"},
		opts:        Options{MaxFiles: 2},
		wantFiles:   []string{"a", "b"},
		wantSkipped: []Skipped{{Path: "c", Size: 3, Reason: ReasonMaxFiles}},
	}, {
		name:        "max bytes skips the largest",
		files:       map[string]string{"a": "1", "b": "22", "c": "333", "d": "4444"},
		opts:        Options{MaxBytes: 5},
		wantFiles:   []string{"a", "b"},
		wantSkipped: []Skipped{{Path: "c", Size: 3, Reason: ReasonMaxBytes}, {Path: "d", Size: 4, Reason: ReasonMaxBytes}},
	}, {
		name:       "inline only small text",
		files:      map[string]string{"small.txt": "hi\n", "big.txt": "0123456789", "nul": "a\x00", "latin1": "caf\xe9", "utf8": "café"},
		opts:       Options{InlineMax: 5},
		wantFiles:  []string{"big.txt", "latin1", "nul", "small.txt", "utf8"},
		wantInline: map[string]string{"small.txt": "hi\n", "utf8": "café"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := t.TempDir()
			writeTree(t, src, tt.files)
			res, dst, err := collect(t, t.Context(), src, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			var paths []string
			for _, f := range res.Files {
				paths = append(paths, f.Path)
				want := tt.files[f.Path]
				if f.Size != int64(len(want)) || f.SHA256 != sum(want) || f.Mode != "0644" {
					t.Errorf("%s: got size %d sha %s mode %s, want %d %s 0644", f.Path, f.Size, f.SHA256, f.Mode, len(want), sum(want))
				}
				inline, ok := tt.wantInline[f.Path]
				switch {
				case ok && (f.Content == nil || *f.Content != inline):
					t.Errorf("%s: content %v, want %q", f.Path, f.Content, inline)
				case !ok && f.Content != nil:
					t.Errorf("%s: content %q, want none", f.Path, *f.Content)
				}
			}
			if !slices.Equal(paths, tt.wantFiles) {
				t.Errorf("files %q, want %q", paths, tt.wantFiles)
			}
			if !slices.Equal(res.Skipped, tt.wantSkipped) {
				t.Errorf("skipped %+v, want %+v", res.Skipped, tt.wantSkipped)
			}
			var total int64
			out := readTree(t, dst)
			for _, p := range tt.wantFiles {
				if out[p] != tt.files[p] {
					t.Errorf("%s: copied %q, want %q", p, out[p], tt.files[p])
				}
				total += int64(len(out[p]))
			}
			if len(out) != len(tt.wantFiles) {
				t.Errorf("output has %d files, want %d: %q", len(out), len(tt.wantFiles), out)
			}
			if tt.opts.MaxBytes > 0 && total > tt.opts.MaxBytes {
				t.Errorf("wrote %d bytes, over MaxBytes %d", total, tt.opts.MaxBytes)
			}
		})
	}
}

func TestCollectSkipsSymlinksAndSpecial(t *testing.T) {
	outside := t.TempDir()
	writeTree(t, outside, map[string]string{"secret": "s3cret", "dir/inner": "inner"})
	src := t.TempDir()
	writeTree(t, src, map[string]string{"real.txt": "r"})
	for name, target := range map[string]string{
		"file-link": filepath.Join(outside, "secret"),
		"dir-link":  filepath.Join(outside, "dir"),
		"rel-link":  "real.txt",
	} {
		if err := os.Symlink(target, filepath.Join(src, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(src, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	res, dst, err := collect(t, t.Context(), src, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := []Skipped{
		{Path: "dir-link", Reason: ReasonSymlink},
		{Path: "fifo", Reason: ReasonSpecial},
		{Path: "file-link", Reason: ReasonSymlink},
		{Path: "rel-link", Reason: ReasonSymlink},
	}
	if !slices.Equal(res.Skipped, want) {
		t.Errorf("skipped %+v, want %+v", res.Skipped, want)
	}
	if len(res.Files) != 1 || res.Files[0].Path != "real.txt" {
		t.Errorf("files %+v, want only real.txt", res.Files)
	}
	if out := readTree(t, dst); len(out) != 1 || out["real.txt"] != "r" {
		t.Errorf("output %q, want only real.txt", out)
	}
}

func TestCollectModes(t *testing.T) {
	tests := []struct {
		name     string
		mode     fs.FileMode
		wantMode string
		wantPerm fs.FileMode // of the copy
	}{
		{"executable", 0o755, "0755", 0o755},
		{"setuid dropped", 0o755 | fs.ModeSetuid, "0755", 0o755},
		{"read-only stays readable", 0o444, "0444", 0o644},
		{"unreadable by group", 0o700, "0700", 0o700},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := t.TempDir()
			writeTree(t, src, map[string]string{"f": "#!/bin/sh\n"})
			if err := os.Chmod(filepath.Join(src, "f"), tt.mode); err != nil {
				t.Fatal(err)
			}
			res, dst, err := collect(t, t.Context(), src, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Files) != 1 || res.Files[0].Mode != tt.wantMode {
				t.Fatalf("files %+v, want one with mode %s", res.Files, tt.wantMode)
			}
			st, err := os.Stat(filepath.Join(dst, "f"))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode() != tt.wantPerm {
				t.Errorf("copy mode %v, want %v", st.Mode(), tt.wantPerm)
			}
		})
	}
}

// A file swapped after the walk saw it is refused, not followed.
func TestOpenSourceSwapped(t *testing.T) {
	outside := t.TempDir()
	writeTree(t, outside, map[string]string{"secret": "s3cret"})
	tests := []struct {
		name string
		swap func(name string) error
	}{
		{"symlink out of src", func(name string) error { return os.Symlink(filepath.Join(outside, "secret"), name) }},
		{"symlink inside src", func(name string) error { return os.Symlink("other", name) }},
		{"fifo", func(name string) error { return syscall.Mkfifo(name, 0o644) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := t.TempDir()
			writeTree(t, src, map[string]string{"f": "f", "other": "o"})
			root, err := os.OpenRoot(src)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			info, err := root.Lstat("f")
			if err != nil {
				t.Fatal(err)
			}
			name := filepath.Join(src, "f")
			if err := os.Remove(name); err != nil {
				t.Fatal(err)
			}
			if err := tt.swap(name); err != nil {
				t.Fatal(err)
			}
			f, err := openSource(root, candidate{path: "f", info: info})
			if err == nil {
				f.Close()
			}
			if !errors.Is(err, errChanged) {
				t.Errorf("got %v, want errChanged", err)
			}
		})
	}
}

func TestCollectCancelled(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{"a": "a"})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, _, err := collect(t, ctx, src, Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
}

// A symlink already in dst must not lead the copy outside it.
func TestCollectDstSymlinkNotEscaped(t *testing.T) {
	outside := t.TempDir()
	src := t.TempDir()
	writeTree(t, src, map[string]string{"sub/f": "f"})
	dst := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dst, "sub")); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(src)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if _, err := Collect(t.Context(), root, dst, Options{}); err == nil {
		t.Error("Collect wrote through a symlink out of dst without error")
	}
	if out := readTree(t, outside); len(out) != 0 {
		t.Errorf("written outside dst: %q", out)
	}
}

func TestWriteTarGz(t *testing.T) {
	src := t.TempDir()
	files := map[string]string{"a.txt": "hello\n", "bin/run": "#!/bin/sh\n", "data": "\x00\xff\x80"}
	writeTree(t, src, files)
	if err := os.Chmod(filepath.Join(src, "bin/run"), 0o755); err != nil {
		t.Fatal(err)
	}
	res, dst, err := collect(t, t.Context(), src, Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.OpenRoot(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	var buf bytes.Buffer
	if err := WriteTarGz(&buf, dir, res.Files); err != nil {
		t.Fatal(err)
	}

	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	wantMode := map[string]int64{"a.txt": 0o644, "bin/run": 0o755, "data": 0o644}
	got := map[string]string{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		got[hdr.Name] = string(b)
		if hdr.Typeflag != tar.TypeReg || hdr.Mode != wantMode[hdr.Name] || hdr.Uid != 0 || hdr.Gid != 0 || hdr.Uname != "" || hdr.Gname != "" {
			t.Errorf("%s: header type %c mode %o uid %d gid %d uname %q gname %q", hdr.Name, hdr.Typeflag, hdr.Mode, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname)
		}
	}
	if len(got) != len(files) {
		t.Errorf("entries %q, want %q", got, files)
	}
	for p, want := range files {
		if got[p] != want {
			t.Errorf("%s: %q, want %q", p, got[p], want)
		}
	}
}

func TestWriteTarGzRejects(t *testing.T) {
	dst := t.TempDir()
	writeTree(t, dst, map[string]string{"f": "f"})
	if err := syscall.Mkfifo(filepath.Join(dst, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir, err := os.OpenRoot(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	tests := []struct {
		name string
		file File
	}{
		{"parent path", File{Path: "../f", Mode: "0644"}},
		{"unclean path", File{Path: "./f", Mode: "0644"}},
		{"absolute path", File{Path: "/f", Mode: "0644"}},
		{"bad mode", File{Path: "f", Mode: "rw"}},
		{"missing", File{Path: "nope", Mode: "0644"}},
		{"not regular", File{Path: "fifo", Mode: "0644"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := WriteTarGz(io.Discard, dir, []File{tt.file}); err == nil {
				t.Error("no error")
			}
		})
	}
}
