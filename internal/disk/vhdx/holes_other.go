//go:build !linux

package vhdx

import "os"

// fileRuns reports the whole range as data where SEEK_DATA is not used.
func fileRuns(f *os.File, off, n int64, fn func(off, n int64, data bool) bool) {
	fn(off, n, true)
}

const haveFileRuns = false
