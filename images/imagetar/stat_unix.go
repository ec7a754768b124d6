//go:build unix

package imagetar

import (
	"io/fs"
	"syscall"
)

func statOf(fi fs.FileInfo) ownership {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ownership{nlink: 1}
	}
	return ownership{
		uid:   int(st.Uid),
		gid:   int(st.Gid),
		nlink: uint64(st.Nlink), // Nlink and Dev widths differ by platform
		id:    fileID{dev: uint64(st.Dev), ino: uint64(st.Ino)},
	}
}
