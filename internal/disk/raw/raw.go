// Package raw is the raw disk format: the file is the disk, byte for byte.
//
// Reading reports holes of sparse files as unallocated (SEEK_DATA and
// SEEK_HOLE). Writing to a file produces a sparse file: the size is set with
// truncate and only data is written, so ranges never written are holes.
// Writing to a stream (a pipe, standard output) writes every byte in order,
// zeros included.
package raw

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// Format returns the raw format. It claims every file, so it goes last in
// probe order.
func Format() *disk.Format {
	return &disk.Format{
		Name:    "raw",
		Aliases: []string{"img"},
		Probe:   func(disk.File) bool { return true },
		Open:    open,
		Create:  create,
		OpenStream: func(_ context.Context, r io.Reader, o *disk.OpenOptions) (disk.Stream, error) {
			var size int64
			if o != nil {
				size = o.Size
			}
			return disk.RawStream(r, size, "stream")
		},
	}
}

type image struct {
	f  disk.File
	fd int // -1 when the file has no descriptor to ask about holes
	mu sync.Mutex
}

func open(_ context.Context, f disk.File, _ *disk.OpenOptions) (disk.Image, error) {
	img := &image{f: f, fd: -1}
	if of, ok := disk.OSFile(f); ok {
		img.fd = int(of.Fd())
	}
	return img, nil
}

func (i *image) ReadAt(p []byte, off int64) (int, error) {
	size := i.f.Size()
	if off >= size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > size-off {
		want = int(size - off)
	}
	n, err := i.f.ReadAt(p[:want], off)
	if err == io.EOF && n == want {
		err = nil
	}
	if err != nil {
		return n, fmt.Errorf("read %s at %d: %w", i.f.Name(), off, err)
	}
	if want < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (i *image) Close() error { return i.f.Close() }
func (i *image) Size() int64  { return i.f.Size() }

func (i *image) Info() disk.Info {
	return disk.Info{Filename: i.f.Name(), Format: "raw", VirtualSize: i.f.Size()}
}

// Extents asks the file system for data and holes. Files without a
// descriptor, and file systems that cannot tell, report all data.
func (i *image) Extents(ctx context.Context, off, n int64) iter.Seq2[disk.Extent, error] {
	return func(yield func(disk.Extent, error) bool) {
		end := min(off+n, i.f.Size())
		for off < end {
			if err := ctx.Err(); err != nil {
				yield(disk.Extent{}, err)
				return
			}
			e, err := i.next(off, end)
			if err != nil {
				yield(disk.Extent{}, err)
				return
			}
			if !yield(e, nil) {
				return
			}
			off = e.End()
		}
	}
}

// next returns the extent starting at off, clipped to end.
func (i *image) next(off, end int64) (disk.Extent, error) {
	if i.fd < 0 {
		return disk.Extent{Off: off, Len: end - off, Kind: disk.Data}, nil
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	data, err := unix.Seek(i.fd, off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO): // no data after off
		return disk.Extent{Off: off, Len: end - off, Kind: disk.Unallocated}, nil
	case err != nil: // file system cannot tell
		return disk.Extent{Off: off, Len: end - off, Kind: disk.Data}, nil
	case data > off:
		return disk.Extent{Off: off, Len: min(data, end) - off, Kind: disk.Unallocated}, nil
	}
	hole, err := unix.Seek(i.fd, off, unix.SEEK_HOLE)
	if err != nil || hole <= off {
		hole = end
	}
	return disk.Extent{Off: off, Len: min(hole, end) - off, Kind: disk.Data}, nil
}

func create(_ context.Context, t disk.Target, size int64, _ *disk.CreateOptions) (disk.Writer, error) {
	if ft, ok := t.(disk.FileTarget); ok {
		if err := ft.Truncate(size); err != nil {
			return nil, fmt.Errorf("raw %s: set size %d: %w", ft.Name(), size, err)
		}
		w := &fileWriter{t: ft, size: size, fd: -1}
		if fd, ok := t.(interface{ Fd() uintptr }); ok {
			w.fd = int(fd.Fd())
		}
		return w, nil
	}
	return &streamWriter{t: t, size: size}, nil
}

// fileWriter writes a sparse file.
type fileWriter struct {
	t    disk.FileTarget
	size int64
	fd   int
}

func (w *fileWriter) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > w.size {
		return 0, fmt.Errorf("raw %s: write of %d bytes at %d beyond size %d: %w", w.t.Name(), len(p), off, w.size, errs.ErrInvalidArgument)
	}
	n, err := w.t.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("raw %s: write at %d: %w", w.t.Name(), off, err)
	}
	return n, nil
}

// Zero punches a hole where the file system can, and writes zeros where it
// cannot.
func (w *fileWriter) Zero(off, n int64) error {
	if off < 0 || off+n > w.size {
		return fmt.Errorf("raw %s: zero %d bytes at %d beyond size %d: %w", w.t.Name(), n, off, w.size, errs.ErrInvalidArgument)
	}
	if n == 0 {
		return nil
	}
	if w.fd >= 0 && unix.Fallocate(w.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n) == nil {
		return nil
	}
	return writeZeros(w.t, off, n)
}

var zeros = make([]byte, 1<<20)

func writeZeros(w io.WriterAt, off, n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := w.WriteAt(zeros[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

func (w *fileWriter) Commit(context.Context) error { return nil }
func (w *fileWriter) Close() error                 { return nil }
func (w *fileWriter) Size() int64                  { return w.size }
func (w *fileWriter) Sequential() bool             { return false }

// streamWriter writes every byte in order to a non-seekable target.
type streamWriter struct {
	t    disk.Target
	size int64
	pos  int64
	err  error
}

func (w *streamWriter) advance(off int64) error {
	if w.err != nil {
		return w.err
	}
	if off < w.pos {
		w.err = fmt.Errorf("raw stream: write at %d behind position %d: %w", off, w.pos, errs.ErrInvalidArgument)
		return w.err
	}
	for w.pos < off {
		k := min(off-w.pos, int64(len(zeros)))
		if _, err := w.t.Write(zeros[:k]); err != nil {
			w.err = fmt.Errorf("raw stream: %w", err)
			return w.err
		}
		w.pos += k
	}
	return nil
}

func (w *streamWriter) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > w.size {
		return 0, fmt.Errorf("raw stream: write of %d bytes at %d beyond size %d: %w", len(p), off, w.size, errs.ErrInvalidArgument)
	}
	if err := w.advance(off); err != nil {
		return 0, err
	}
	n, err := w.t.Write(p)
	w.pos += int64(n)
	if err != nil {
		w.err = fmt.Errorf("raw stream: %w", err)
		return n, w.err
	}
	return n, nil
}

func (w *streamWriter) Zero(off, n int64) error {
	if off+n > w.size {
		return fmt.Errorf("raw stream: zero beyond size %d: %w", w.size, errs.ErrInvalidArgument)
	}
	return w.advance(off + n)
}

func (w *streamWriter) Commit(context.Context) error { return w.advance(w.size) }
func (w *streamWriter) Close() error                 { return nil }
func (w *streamWriter) Size() int64                  { return w.size }
func (w *streamWriter) Sequential() bool             { return true }
