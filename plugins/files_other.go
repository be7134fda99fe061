//go:build !unix

package plugins

import "io/fs"

// links returns 1: the link count is not read on this platform.
func links(fs.FileInfo) uint64 { return 1 }
