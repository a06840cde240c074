//go:build unix

package xenlab

import (
	"os"
	"syscall"
)

// canShare: VDIs may share a file (see copyVDI).
const canShare = true

// linkCount is how many names the file has.
func linkCount(fi os.FileInfo) (uint64, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return uint64(st.Nlink), true
}
