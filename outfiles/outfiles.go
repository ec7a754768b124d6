// Package outfiles hands back the files an agent created or changed in its
// sandbox workspace, copying them into a run's directory, safely and bounded.
//
// The workspace is written by untrusted code, so it is only ever read
// through an [os.Root]: no symlink or race can make Collect read, or write,
// outside the two directories it is given.
package outfiles

import (
	"archive/tar"
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"unicode/utf8"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/internal/ctxio"
)

// Options bound and filter a collection.
type Options struct {
	MaxFiles int   // at most this many files (0: no limit)
	MaxBytes int64 // at most this many bytes in all (0: no limit)
	// Uploads maps a workspace-relative path (slash-separated) to the hex sha256 of the content put there
	// before the run; a file still holding exactly that content is not handed back (it was left untouched).
	Uploads map[string]string
	// IncludeCaches also hands back cache directories (see Caches).
	IncludeCaches bool
	// InlineMax: a file of at most this many bytes that is valid UTF-8 text without NUL bytes carries its content inline (0: never).
	InlineMax int
}

// File is one file handed back; its shape is the API's, the JSON of a
// "file" event's fields.
type File = api.OutputFile

// Skipped is a file not handed back, and why (Reason is one of the Reason*
// constants); its shape is the API's, in a "files_skipped" event.
type Skipped = api.SkippedFile

// Reasons a file is skipped.
const (
	ReasonMaxFiles = "max_output_files" // over the file-count bound
	ReasonMaxBytes = "max_output_bytes" // over the byte bound
	ReasonSymlink  = "symlink"          // symlinks are never followed nor copied
	ReasonSpecial  = "not_regular"      // devices, fifos, sockets
)

// Result is what Collect handed back and what it skipped, each sorted by path.
type Result struct {
	Files   []File
	Skipped []Skipped
}

// Caches are directory names (matched as any path component) skipped unless IncludeCaches:
var Caches = []string{".npm", ".cache", "node_modules", "__pycache__", ".local", ".node-gyp", ".yarn", ".pnpm-store"}

// Private are workspace paths (exact relative path or a directory prefix) never handed back, even if asked:
// the agent CLI's own state and credentials sandstorm put in.
var Private = []string{".claude", ".claude.json", ".claude.json.backup", ".config/gcloud"}

// errChanged marks a file that is no longer the regular file the walk saw.
var errChanged = errors.New("changed while collecting")

// candidate is a regular file found by the walk; info is its Lstat.
type candidate struct {
	path string
	info fs.FileInfo
}

// Collect copies the files under src that the agent created or changed into
// dst, within o's bounds, and reports what it copied and what it skipped.
func Collect(ctx context.Context, src *os.Root, dst string, o Options) (Result, error) {
	var res Result
	cands, err := walk(ctx, src, o, &res)
	if err != nil {
		return Result{}, err
	}
	kept := bound(cands, o, &res)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return Result{}, fmt.Errorf("outfiles: create output dir: %w", err)
	}
	out, err := os.OpenRoot(dst)
	if err != nil {
		return Result{}, fmt.Errorf("outfiles: open output dir: %w", err)
	}
	defer out.Close()
	for _, c := range kept {
		f, err := copyFile(ctx, src, out, c, o.InlineMax)
		if errors.Is(err, errChanged) {
			res.Skipped = append(res.Skipped, Skipped{Path: c.path, Reason: ReasonSpecial})
			continue
		}
		if err != nil {
			return Result{}, err
		}
		res.Files = append(res.Files, f)
	}
	slices.SortFunc(res.Skipped, func(a, b Skipped) int { return cmp.Compare(a.Path, b.Path) })
	return res, nil
}

// walk finds the regular files to consider, noting symlinks and special
// files in res. Directories themselves are never handed back.
func walk(ctx context.Context, src *os.Root, o Options, res *Result) ([]candidate, error) {
	var cands []candidate
	err := fs.WalkDir(src.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("outfiles: walk %s: %w", p, err)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("outfiles: %w", err)
		}
		if p == "." {
			return nil
		}
		// Exact matches suffice as a skipped directory is never entered.
		// A cache may itself be a symlink, so names are matched whatever the type.
		if slices.Contains(Private, p) || !o.IncludeCaches && slices.Contains(Caches, d.Name()) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		switch t := d.Type(); {
		case t.IsDir():
			return nil
		case t&fs.ModeSymlink != 0:
			res.Skipped = append(res.Skipped, Skipped{Path: p, Reason: ReasonSymlink})
			return nil
		case !t.IsRegular():
			res.Skipped = append(res.Skipped, Skipped{Path: p, Reason: ReasonSpecial})
			return nil
		}
		// Info is an lstat relative to the already opened parent, so it stays inside src.
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("outfiles: lstat %s: %w", p, err)
		}
		cands = append(cands, candidate{path: p, info: info})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return dropUploads(ctx, src, cands, o.Uploads)
}

// dropUploads leaves out the candidates still holding their uploaded content.
func dropUploads(ctx context.Context, src *os.Root, cands []candidate, uploads map[string]string) ([]candidate, error) {
	var changed []candidate
	for _, c := range cands {
		want, ok := uploads[c.path]
		if !ok {
			changed = append(changed, c)
			continue
		}
		sum, err := hashFile(ctx, src, c)
		switch {
		case errors.Is(err, errChanged):
			// Not the upload any more; the copy will skip it.
			changed = append(changed, c)
		case err != nil:
			return nil, err
		case sum != want:
			changed = append(changed, c)
		}
	}
	return changed, nil
}

// bound keeps the smallest candidates that fit o's bounds, so the largest are
// the ones skipped, and returns them sorted by path.
func bound(cands []candidate, o Options, res *Result) []candidate {
	slices.SortFunc(cands, func(a, b candidate) int {
		return cmp.Or(cmp.Compare(a.info.Size(), b.info.Size()), cmp.Compare(a.path, b.path))
	})
	var (
		kept  []candidate
		total int64
	)
	for _, c := range cands {
		size := c.info.Size()
		switch {
		case o.MaxFiles > 0 && len(kept) >= o.MaxFiles:
			res.Skipped = append(res.Skipped, Skipped{Path: c.path, Size: size, Reason: ReasonMaxFiles})
		case o.MaxBytes > 0 && total+size > o.MaxBytes:
			res.Skipped = append(res.Skipped, Skipped{Path: c.path, Size: size, Reason: ReasonMaxBytes})
		default:
			kept = append(kept, c)
			total += size
		}
	}
	slices.SortFunc(kept, func(a, b candidate) int { return cmp.Compare(a.path, b.path) })
	return kept
}

// openSource opens c for reading, or fails with errChanged if it is no
// longer the regular file the walk saw (it was swapped since).
func openSource(src *os.Root, c candidate) (*os.File, error) {
	// O_NONBLOCK so a file swapped for a fifo cannot block the open.
	f, err := src.OpenFile(c.path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		// A swap for a symlink out of src fails the open: tell it from a real failure.
		if st, lerr := src.Lstat(c.path); lerr == nil && (!st.Mode().IsRegular() || !os.SameFile(st, c.info)) {
			err = errChanged
		}
		return nil, fmt.Errorf("outfiles: open %s: %w", c.path, err)
	}
	// Root follows symlinks that stay inside it, so check the identity too.
	st, err := f.Stat()
	if err == nil && (!st.Mode().IsRegular() || !os.SameFile(st, c.info)) {
		err = errChanged
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("outfiles: %s: %w", c.path, err)
	}
	return f, nil
}

// hashFile returns the hex sha256 of c's content.
func hashFile(ctx context.Context, src *os.Root, c candidate) (string, error) {
	f, err := openSource(src, c)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, ctxio.Reader(ctx, f)); err != nil {
		return "", fmt.Errorf("outfiles: read %s: %w", c.path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// copyFile copies c from src into out, at most the size the walk counted so
// that a growing file cannot break MaxBytes.
func copyFile(ctx context.Context, src, out *os.Root, c candidate, inlineMax int) (File, error) {
	in, err := openSource(src, c)
	if err != nil {
		return File{}, err
	}
	defer in.Close()
	if dir := path.Dir(c.path); dir != "." {
		if err := out.MkdirAll(dir, 0o755); err != nil {
			return File{}, fmt.Errorf("outfiles: create %s: %w", dir, err)
		}
	}
	perm := c.info.Mode().Perm()
	mode := perm | 0o600 // the owner can always read what was handed back
	w, err := out.OpenFile(c.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return File{}, fmt.Errorf("outfiles: create %s: %w", c.path, err)
	}
	defer w.Close()
	// Chmod because the umask may have cleared bits at creation.
	if err := w.Chmod(mode); err != nil {
		return File{}, fmt.Errorf("outfiles: chmod %s: %w", c.path, err)
	}
	h := sha256.New()
	dsts := []io.Writer{w, h}
	var inline *bytes.Buffer
	if inlineMax > 0 && c.info.Size() <= int64(inlineMax) {
		inline = new(bytes.Buffer)
		dsts = append(dsts, inline)
	}
	n, err := io.Copy(io.MultiWriter(dsts...), ctxio.Reader(ctx, io.LimitReader(in, c.info.Size())))
	if err != nil {
		return File{}, fmt.Errorf("outfiles: copy %s: %w", c.path, err)
	}
	if err := w.Close(); err != nil {
		return File{}, fmt.Errorf("outfiles: write %s: %w", c.path, err)
	}
	f := File{Path: c.path, Size: n, SHA256: hex.EncodeToString(h.Sum(nil)), Mode: fmt.Sprintf("%04o", perm)}
	if inline != nil && utf8.Valid(inline.Bytes()) && bytes.IndexByte(inline.Bytes(), 0) < 0 {
		s := inline.String()
		f.Content = &s
	}
	return f, nil
}

// WriteTarGz writes a .tar.gz of files, read through dir (the directory
// Collect wrote): regular entries named by File.Path with File.Mode, owned
// by uid/gid 0 with no owner names.
func WriteTarGz(w io.Writer, dir *os.Root, files []File) error {
	zw := gzip.NewWriter(w)
	tw := tar.NewWriter(zw)
	for _, f := range files {
		if err := addTar(tw, dir, f); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("outfiles: tar: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("outfiles: gzip: %w", err)
	}
	return nil
}

// addTar appends f to tw.
func addTar(tw *tar.Writer, dir *os.Root, f File) error {
	// Names must be clean and relative, whatever an extractor makes of them.
	if !fs.ValidPath(f.Path) || f.Path == "." {
		return fmt.Errorf("outfiles: tar %q: %w", f.Path, fs.ErrInvalid)
	}
	mode, err := strconv.ParseUint(f.Mode, 8, 32)
	if err != nil {
		return fmt.Errorf("outfiles: tar %s: mode: %w", f.Path, err)
	}
	in, err := dir.OpenFile(f.Path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("outfiles: tar: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("outfiles: tar: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("outfiles: tar %s: %w", f.Path, errChanged)
	}
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     f.Path,
		Size:     st.Size(),
		Mode:     int64(mode & 0o777),
		ModTime:  st.ModTime(),
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("outfiles: tar %s: %w", f.Path, err)
	}
	// CopyN so the entry matches its header even if the file changed meanwhile.
	if _, err := io.CopyN(tw, in, st.Size()); err != nil {
		return fmt.Errorf("outfiles: tar %s: %w", f.Path, err)
	}
	return nil
}

// URLPath escapes each segment of a handed-back file's path for a URL.
func URLPath(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}
