package sandbox

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// ValidateFiles rejects workspace paths that could escape the workspace.
func ValidateFiles(files []File) error {
	seen := map[string]bool{}
	for _, f := range files {
		p := f.Path
		switch {
		case p == "" || strings.ContainsRune(p, 0):
			return fmt.Errorf("%w: file path %q is empty or has a NUL byte", ErrInvalidSpec, p)
		case path.IsAbs(p):
			return fmt.Errorf("%w: file path %q is absolute; paths are relative to the workspace", ErrInvalidSpec, p)
		case slices.Contains(strings.Split(p, "/"), ".."):
			return fmt.Errorf("%w: file path %q contains ..", ErrInvalidSpec, p)
		case path.Clean(p) != p:
			return fmt.Errorf("%w: file path %q is not clean (write it as %q)", ErrInvalidSpec, p, path.Clean(p))
		case seen[p]:
			return fmt.Errorf("%w: file path %q given twice", ErrInvalidSpec, p)
		case f.Mode&^os.ModePerm != 0:
			return fmt.Errorf("%w: file %q: mode %v is not plain permission bits", ErrInvalidSpec, p, f.Mode)
		}
		seen[p] = true
	}
	return nil
}

// WriteWorkspace writes files under dir (a fresh host directory that becomes
// the workspace), making them and their parent directories owned by uid:gid
// so the sandbox user can edit them.
func WriteWorkspace(dir string, files []File, uid, gid int) error {
	if err := ValidateFiles(files); err != nil {
		return err
	}
	for _, f := range files {
		dst := filepath.Join(dir, filepath.FromSlash(f.Path))
		if err := mkdirOwned(dir, filepath.Dir(dst), uid, gid); err != nil {
			return err
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		// O_EXCL + NOFOLLOW: never write through something already there.
		fh, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, mode)
		if err != nil {
			return fmt.Errorf("write workspace file %s: %w", f.Path, err)
		}
		_, werr := fh.Write(f.Content)
		cerr := fh.Close()
		if err := firstErr(werr, cerr, os.Chmod(dst, mode), os.Lchown(dst, uid, gid)); err != nil {
			return fmt.Errorf("write workspace file %s: %w", f.Path, err)
		}
	}
	return nil
}

// mkdirOwned creates the directories from root down to dir, owned by uid:gid.
func mkdirOwned(root, dir string, uid, gid int) error {
	rel, err := filepath.Rel(root, dir)
	if err != nil || rel == "." {
		return err
	}
	cur := root
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		cur = filepath.Join(cur, part)
		err := os.Mkdir(cur, 0o755)
		if os.IsExist(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("create workspace directory: %w", err)
		}
		if err := os.Lchown(cur, uid, gid); err != nil {
			return fmt.Errorf("create workspace directory: %w", err)
		}
	}
	return nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
