package imagetar

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/sandstorm-dev/sandstorm/internal/ctxio"
)

// Compression selects how a layer blob is stored in the image tar.
type Compression int

const (
	// Uncompressed stores the layer as a plain tar. It is the default: the
	// three runtimes accept it, it costs no CPU, and the image tar is only a
	// transport that is unpacked right after import anyway.
	Uncompressed Compression = iota
	// Gzip stores the layer gzip-compressed (also accepted by all three).
	// Output stays deterministic for a given Go version.
	Gzip
)

// Attr is what the layer records about one entry's ownership and mode.
type Attr struct {
	UID, GID int
	// Mode holds the permission bits plus fs.ModeSetuid, fs.ModeSetgid and
	// fs.ModeSticky; any other bits are ignored.
	Mode fs.FileMode
}

// Layer is one filesystem layer taken from a directory on disk.
//
// The layer tar is deterministic: entries in lexical walk order, every
// mtime set to ModTime, no user or group names, no xattrs. Ownership and
// modes are taken from disk unless Override changes them. Symlinks and hard
// links are kept; device files, sockets and FIFOs are skipped because an
// unprivileged build cannot recreate them faithfully and runtimes provide
// /dev themselves.
type Layer struct {
	// Dir is the directory whose contents become the layer's root. The
	// directory itself is not an entry.
	Dir string
	// ModTime is stamped on every entry; the zero value means the Unix epoch.
	ModTime time.Time
	// Compression of the stored blob; the zero value is Uncompressed.
	Compression Compression
	// Override, if set, is called for every entry with its slash-separated
	// path relative to Dir (e.g. "home/user", no leading or trailing slash)
	// and the attributes found on disk, which it may change. It lets a build
	// that does not run as root still produce root-owned files.
	Override func(path string, attr *Attr)
}

const (
	mediaTypeLayer     = "application/vnd.oci.image.layer.v1.tar"
	mediaTypeLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// blob is a layer staged in a temporary file, with the digests the
// manifest and the config need.
type blob struct {
	path      string
	mediaType string
	digest    string // of the stored (possibly compressed) bytes
	diffID    string // of the uncompressed tar
	size      int64
}

func (l Layer) mtime() time.Time {
	if l.ModTime.IsZero() {
		return time.Unix(0, 0).UTC()
	}
	// Sub-second precision would force PAX headers; seconds are enough.
	return l.ModTime.UTC().Truncate(time.Second)
}

// stage writes the layer to a new file in tmpDir, hashing it on the way so
// that large layers are never held in memory.
func (l Layer) stage(ctx context.Context, tmpDir string) (b blob, err error) {
	f, err := os.CreateTemp(tmpDir, "layer-*")
	if err != nil {
		return blob{}, fmt.Errorf("create layer temp file: %w", err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close layer temp file: %w", cerr)
		}
	}()

	blobHash := sha256.New()
	stored := &countingWriter{w: io.MultiWriter(f, blobHash)}
	bw := bufio.NewWriterSize(stored, 1<<20)

	var (
		diffHash hash.Hash
		tarOut   io.Writer
		gz       *gzip.Writer
	)
	switch l.Compression {
	case Uncompressed:
		b.mediaType = mediaTypeLayer
		tarOut = bw
	case Gzip:
		b.mediaType = mediaTypeLayerGzip
		// The zero gzip header (no name, no mtime) keeps the blob reproducible.
		gz = gzip.NewWriter(bw)
		diffHash = sha256.New()
		tarOut = io.MultiWriter(gz, diffHash)
	default:
		return blob{}, fmt.Errorf("layer %s: unknown compression %d", l.Dir, l.Compression)
	}

	if err := l.writeTar(ctx, tarOut); err != nil {
		return blob{}, err
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			return blob{}, fmt.Errorf("layer %s: finish gzip: %w", l.Dir, err)
		}
	}
	if err := bw.Flush(); err != nil {
		return blob{}, fmt.Errorf("layer %s: write temp file: %w", l.Dir, err)
	}

	b.path = f.Name()
	b.size = stored.n
	b.digest = "sha256:" + hex.EncodeToString(blobHash.Sum(nil))
	b.diffID = b.digest
	if diffHash != nil {
		b.diffID = "sha256:" + hex.EncodeToString(diffHash.Sum(nil))
	}
	return b, nil
}

// WriteTar writes the layer's uncompressed tar stream to w: the bare layer,
// as the image tar stores it (tests of other packages read it back).
func (l Layer) WriteTar(ctx context.Context, w io.Writer) error {
	return l.writeTar(ctx, w)
}

func (l Layer) writeTar(ctx context.Context, w io.Writer) error {
	root := filepath.Clean(l.Dir)
	st, err := os.Stat(root)
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("layer %s: not a directory", root)
	}

	tw := tar.NewWriter(w)
	mtime := l.mtime()
	// First path seen for each multiply-linked inode; later ones become
	// hard links to it. The walk order is fixed, so the choice is too.
	seen := make(map[fileID]string)

	walkErr := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)

		fi, err := d.Info()
		if err != nil {
			return err
		}
		own := statOf(fi)
		attr := Attr{
			UID:  own.uid,
			GID:  own.gid,
			Mode: fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky),
		}
		if l.Override != nil {
			l.Override(name, &attr)
		}

		hdr := &tar.Header{
			Name:    name,
			Mode:    unixMode(attr.Mode),
			Uid:     attr.UID,
			Gid:     attr.GID,
			ModTime: mtime,
		}
		var copyFrom string
		switch mode := fi.Mode(); {
		case mode.IsDir():
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case mode&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = target
		case mode.IsRegular():
			if own.nlink > 1 {
				if first, ok := seen[own.id]; ok {
					hdr.Typeflag = tar.TypeLink
					hdr.Linkname = first
					break
				}
				seen[own.id] = name
			}
			hdr.Typeflag = tar.TypeReg
			hdr.Size = fi.Size()
			copyFrom = p
		default:
			return nil // device, socket or FIFO: see the Layer doc
		}

		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if copyFrom != "" {
			if err := copyFile(ctx, tw, copyFrom, hdr.Size); err != nil {
				return err
			}
		}
		return nil
	})
	if walkErr != nil {
		return fmt.Errorf("layer %s: %w", root, walkErr)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("layer %s: %w", root, err)
	}
	return nil
}

// copyFile copies exactly size bytes, so a file that changes while it is
// read fails the build instead of producing a corrupt tar.
func copyFile(ctx context.Context, w io.Writer, path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.CopyN(w, ctxio.Reader(ctx, f), size)
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s shrank while being read (%d of %d bytes)", path, n, size)
	}
	return err
}

// unixMode converts Go's file mode bits to the numeric mode tar stores.
func unixMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

type fileID struct{ dev, ino uint64 }

type ownership struct {
	uid, gid int
	nlink    uint64
	id       fileID
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
