//go:build unix

package plugins

import (
	"io/fs"
	"syscall"
)

// links returns the number of hard links of a file.
func links(st fs.FileInfo) uint64 {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return uint64(sys.Nlink)
	}
	return 1
}
