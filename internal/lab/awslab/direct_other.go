//go:build !linux

package awslab

import "os"

// openDirect opens name for ordinary I/O: direct I/O is used on Linux
// only.
func openDirect(name string, flag int, perm os.FileMode) (*os.File, bool, error) {
	f, err := os.OpenFile(name, flag, perm)
	return f, false, err
}

// preallocate does nothing: the file grows as it is written.
func preallocate(*os.File, int64, int64) error { return nil }
