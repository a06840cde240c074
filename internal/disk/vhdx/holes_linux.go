package vhdx

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// fileRuns calls fn for the data and hole runs of the file range
// [off, off+n), as SEEK_DATA and SEEK_HOLE report them. When the file
// system cannot say, the rest of the range is reported as data. lseek
// moves the descriptor's offset, which nothing else uses (reads are
// pread), so concurrent calls are safe.
func fileRuns(f *os.File, off, n int64, fn func(off, n int64, data bool) bool) {
	end := off + n
	for off < end {
		d, err := f.Seek(off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			d = end // only a hole up to the end of the file
		case err != nil || d < off:
			fn(off, end-off, true)
			return
		}
		d = min(d, end)
		if d > off && !fn(off, d-off, false) {
			return
		}
		if d >= end {
			return
		}
		h, err := f.Seek(d, unix.SEEK_HOLE)
		if err != nil || h <= d {
			h = end
		}
		h = min(h, end)
		if !fn(d, h-d, true) {
			return
		}
		off = h
	}
}

const haveFileRuns = true
