package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/ferry-project/ferry/internal/errs"
)

// OutputFile is a file being written under a temporary name beside its final
// path. Commit renames it into place; Abort removes it. Nothing half-written
// is ever visible under the final name.
type OutputFile struct {
	*os.File
	final string
	// Sync makes Commit flush the file to stable storage before renaming.
	Sync bool

	mu   sync.Mutex
	done bool
}

// CreateOutputFile creates the temporary file for path. An existing file at
// path is left alone until Commit replaces it.
func CreateOutputFile(path string) (*OutputFile, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return nil, fmt.Errorf("create %s: is a directory: %w", path, errs.ErrInvalidArgument)
	}
	f, err := os.CreateTemp(dir, "."+base+".ferry-tmp-*")
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, classifyOS(err))
	}
	// CreateTemp makes 0600 files; an image is an ordinary file.
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	return &OutputFile{File: f, final: path}, nil
}

// Name returns the final path, so that messages name what the user asked
// for.
func (o *OutputFile) Name() string { return o.final }

// TempName returns the temporary path being written.
func (o *OutputFile) TempName() string { return o.File.Name() }

// Commit closes the file and renames it to its final path.
func (o *OutputFile) Commit() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done {
		return fmt.Errorf("commit %s: already closed: %w", o.final, errs.ErrFailedPrecondition)
	}
	o.done = true
	tmp := o.File.Name()
	var err error
	if o.Sync {
		err = o.File.Sync()
	}
	err = errors.Join(err, o.File.Close())
	if err == nil {
		err = os.Rename(tmp, o.final)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("commit %s: %w", o.final, classifyOS(err))
	}
	return nil
}

// Abort closes and removes the temporary file. It is a no-op after Commit
// or a previous Abort.
func (o *OutputFile) Abort() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done {
		return nil
	}
	o.done = true
	tmp := o.File.Name()
	o.File.Close()
	if err := os.Remove(tmp); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove %s: %w", tmp, err)
	}
	return nil
}

func classifyOS(err error) error {
	switch {
	case os.IsNotExist(err):
		return fmt.Errorf("%w: %w", err, errs.ErrNotFound)
	case os.IsPermission(err):
		return fmt.Errorf("%w: %w", err, errs.ErrPermissionDenied)
	}
	return err
}

// fileWriter ties a format's Writer to the OutputFile it writes.
type fileWriter struct {
	Writer
	out       *OutputFile
	committed bool
}

// Commit finalises the image, then renames the file into place.
func (w *fileWriter) Commit(ctx context.Context) error {
	if err := w.Writer.Commit(ctx); err != nil {
		w.Writer.Close()
		w.out.Abort()
		return err
	}
	if err := w.Writer.Close(); err != nil {
		w.out.Abort()
		return err
	}
	if err := w.out.Commit(); err != nil {
		return err
	}
	w.committed = true
	return nil
}

// AllocationUnit forwards the format writer's unit, if it has one.
func (w *fileWriter) AllocationUnit() int64 {
	if g, ok := w.Writer.(Granular); ok {
		return g.AllocationUnit()
	}
	return 0
}

// Close aborts unless Commit succeeded.
func (w *fileWriter) Close() error {
	if w.committed {
		return nil
	}
	err := w.Writer.Close()
	return errors.Join(err, w.out.Abort())
}
