package agentimage

import (
	"fmt"
	"io"
	"io/fs"
	"path"
	"path/filepath"
	"sort"
	"syscall"
)

// usage is what a layer directory holds: the bytes of its regular files
// (each hard-linked file once) and the paths that weigh the most.
type usage struct {
	Total   int64
	Files   int
	Largest []pathSize
}

// pathSize is a file, or a directory with everything under it.
type pathSize struct {
	Path string // slash-separated, relative to the layer; a directory ends in "/"
	Size int64
}

// largestPaths is how many paths the build lists for each layer.
const largestPaths = 10

// passThrough is the share of a directory's bytes from which its largest
// child stands for it in Largest: a directory is listed when its bytes are
// spread over its children ("usr/share/nodejs/"), not when one of them
// holds most of it ("usr/" and "usr/lib/" above "usr/lib/x86_64-linux-gnu/").
const passThrough = 0.5

// measure walks dir and returns its usage with the n heaviest paths: files
// and directories alike, so that a package spread over many small files
// (Debian's node-* under usr/share/nodejs) shows as much as one big file.
func measure(dir string, n int) (usage, error) {
	type id struct{ dev, ino uint64 }
	seen := map[id]bool{}
	sizes := map[string]int64{}
	isDir := map[string]bool{}
	var u usage
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
			k := id{uint64(st.Dev), st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		u.Total += fi.Size()
		u.Files++
		rel = filepath.ToSlash(rel)
		sizes[rel] += fi.Size()
		for parent := path.Dir(rel); parent != "."; parent = path.Dir(parent) {
			sizes[parent] += fi.Size()
			isDir[parent] = true
		}
		return nil
	})
	if err != nil || n == 0 {
		return u, err
	}
	largestChild := map[string]int64{}
	for p, s := range sizes {
		if parent := path.Dir(p); parent != "." && s > largestChild[parent] {
			largestChild[parent] = s
		}
	}
	for p, s := range sizes {
		if s == 0 || isDir[p] && float64(largestChild[p]) >= passThrough*float64(s) {
			continue
		}
		if isDir[p] {
			p += "/"
		}
		u.Largest = append(u.Largest, pathSize{Path: p, Size: s})
	}
	sort.Slice(u.Largest, func(i, j int) bool {
		a, b := u.Largest[i], u.Largest[j]
		return a.Size > b.Size || a.Size == b.Size && a.Path < b.Path
	})
	if len(u.Largest) > n {
		u.Largest = u.Largest[:n]
	}
	return u, nil
}

// dirSize adds up the sizes of the regular files under dir, counting each
// hard-linked file once.
func dirSize(dir string) (int64, error) {
	u, err := measure(dir, 0)
	return u.Total, err
}

// print writes the usage of the layer called name, one path a line.
func (u usage) print(w io.Writer, name string) {
	fmt.Fprintf(w, "    layer %s: %s in %d files\n", name, mb(u.Total), u.Files)
	for _, p := range u.Largest {
		fmt.Fprintf(w, "      %8.1f MB  %s\n", float64(p.Size)/1e6, p.Path)
	}
}
