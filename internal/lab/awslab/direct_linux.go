package awslab

import (
	"errors"
	"os"
	"syscall"
)

// openDirect opens name for direct I/O (O_DIRECT), or, where the file
// system refuses it (tmpfs, some FUSE and network file systems), for
// ordinary I/O; direct says which.
func openDirect(name string, flag int, perm os.FileMode) (f *os.File, direct bool, err error) {
	f, err = os.OpenFile(name, flag|syscall.O_DIRECT, perm)
	if err == nil {
		return f, true, nil
	}
	if !errors.Is(err, syscall.EINVAL) {
		return nil, false, err
	}
	f, err = os.OpenFile(name, flag, perm)
	return f, false, err
}

// preallocate allocates [off, off+n) of f and extends its size to cover
// it. A file system without fallocate leaves the file to grow as it is
// written.
func preallocate(f *os.File, off, n int64) error {
	err := syscall.Fallocate(int(f.Fd()), 0, off, n)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "fallocate", Path: f.Name(), Err: err}
	}
	return nil
}
