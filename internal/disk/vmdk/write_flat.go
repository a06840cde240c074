package vmdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// flatWriter writes a monolithicFlat VMDK: the Target receives the
// descriptor, the data goes to a raw, sparse <base>-flat.vmdk beside it.
// The flat file is committed (renamed into place) by Commit and removed by
// Close without Commit.
type flatWriter struct {
	t    disk.FileTarget
	flat *disk.OutputFile
	size int64
	desc string

	mu    sync.Mutex
	state int
}

var _ disk.Writer = (*flatWriter)(nil)

// flatName is the flat extent's path for a descriptor path:
// disk.vmdk → disk-flat.vmdk.
func flatName(desc string) string {
	base := desc
	if ext := filepath.Ext(desc); strings.EqualFold(ext, ".vmdk") {
		base = strings.TrimSuffix(desc, ext)
	}
	return base + "-flat.vmdk"
}

func newFlatWriter(t disk.Target, size int64, c createConfig) (*flatWriter, error) {
	ft, ok := t.(disk.FileTarget)
	if !ok || ft.Name() == "" {
		return nil, fmt.Errorf("vmdk: monolithicFlat needs an output file, its extent is written beside it: %w", errs.ErrInvalidArgument)
	}
	path := flatName(ft.Name())
	flat, err := disk.CreateOutputFile(path)
	if err != nil {
		return nil, fmt.Errorf("vmdk: create flat extent: %w", err)
	}
	if err := flat.Truncate(size); err != nil {
		flat.Abort()
		return nil, fmt.Errorf("vmdk: size flat extent %s: %w", path, err)
	}
	w := &flatWriter{t: ft, flat: flat, size: size}
	w.desc = (&descriptorText{
		cid:        newCID(),
		createType: MonolithicFlat,
		extents:    []extentLine{{access: "RW", sectors: size / sectorSize, typ: "FLAT", file: filepath.Base(path)}},
		adapter:    c.adapter,
		hwVersion:  c.hwVersion,
		tools:      c.tools,
		sectors:    size / sectorSize,
	}).String()
	return w, nil
}

func (w *flatWriter) Size() int64      { return w.size }
func (w *flatWriter) Sequential() bool { return false }

func (w *flatWriter) check(off, n int64) error {
	w.mu.Lock()
	state := w.state
	w.mu.Unlock()
	if state != stateOpen {
		return fmt.Errorf("vmdk %s: writer already committed or closed: %w", w.t.Name(), errs.ErrFailedPrecondition)
	}
	if off < 0 || n < 0 || off > w.size-n {
		return fmt.Errorf("vmdk %s: range [%d, %d) is outside the %d-byte disk: %w", w.t.Name(), off, off+n, w.size, errs.ErrInvalidArgument)
	}
	return nil
}

func (w *flatWriter) WriteAt(p []byte, off int64) (int, error) {
	if err := w.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := w.flat.WriteAt(p, off)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return n, fmt.Errorf("vmdk %s: write flat extent at %d: %w", w.flat.Name(), off, err)
	}
	return n, nil
}

// Zero punches a hole; where the file system cannot, it writes zeros.
func (w *flatWriter) Zero(off, n int64) error {
	if err := w.check(off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	err := unix.Fallocate(int(w.flat.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("vmdk %s: punch hole at %d: %w", w.flat.Name(), off, err)
	}
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := w.WriteAt(zeros[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// Commit writes the descriptor and renames the flat extent into place.
func (w *flatWriter) Commit(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state != stateOpen {
		return fmt.Errorf("vmdk %s: writer already committed or closed: %w", w.t.Name(), errs.ErrFailedPrecondition)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	w.state = stateFailed
	if _, err := w.t.WriteAt([]byte(w.desc), 0); err != nil {
		return fmt.Errorf("vmdk %s: write descriptor: %w", w.t.Name(), err)
	}
	if err := w.t.Truncate(int64(len(w.desc))); err != nil {
		return fmt.Errorf("vmdk %s: write descriptor: %w", w.t.Name(), err)
	}
	if err := w.flat.Commit(); err != nil {
		return err
	}
	w.state = stateCommitted
	return nil
}

// Close without Commit removes the flat extent.
func (w *flatWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.state = stateClosed
	return w.flat.Abort() // no-op after Commit
}
