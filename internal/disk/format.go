package disk

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/ferry-project/ferry/internal/errs"
)

// File is an opened image file, or anything else that reads like one.
type File interface {
	io.ReaderAt
	io.Closer
	// Name is the path, used in messages and to resolve relative backing
	// file names.
	Name() string
	// Size is the file's length in bytes.
	Size() int64
}

// Target receives a writer's bytes. Every Target appends with Write; a
// seekable one (a file) is also a [FileTarget]. Writers never close their
// Target.
type Target interface {
	io.Writer
}

// FileTarget is a seekable Target. Writers that take one use WriteAt only,
// never Write, and may read back what they wrote.
type FileTarget interface {
	Target
	io.WriterAt
	io.ReaderAt
	Truncate(size int64) error
	Name() string
}

// Format describes one disk format. Formats are plain values listed in
// internal/disk/formats; there is no global registration.
type Format struct {
	// Name is ferry's name for the format: raw, qcow2, vhd, vhdx, vmdk, vdi.
	Name string
	// Aliases are other accepted names, e.g. qemu's "vpc" for vhd.
	Aliases []string
	// Probe reports whether f holds this format, judging by magic numbers
	// and structure, never by file name. It must not return true for a
	// file another format claims (raw claims everything and goes last).
	Probe func(f File) bool
	// Open opens an image. On success the image owns f and closes it on
	// Close; on error the caller still owns f. Errors name f and the fault
	// and wrap an errs code: Corrupt for damaged structures, Unimplemented
	// for a feature ferry does not support (named in the message).
	Open func(ctx context.Context, f File, opts *OpenOptions) (Image, error)
	// Create starts writing a new image of the given virtual size to t,
	// which is empty (a new file, or a stream at its start).
	// Nil means ferry cannot write the format. Formats that need a
	// seekable target return an InvalidArgument error for a plain Target.
	Create func(ctx context.Context, t Target, size int64, opts *CreateOptions) (Writer, error)
	// OpenStream reads an image from a non-seekable source (stdin, an HTTP
	// body) front to back. Nil means the format cannot be read that way
	// (its tables come after the data, or it needs random access).
	OpenStream func(ctx context.Context, r io.Reader, opts *OpenOptions) (Stream, error)
	// Options documents the keys Create accepts in CreateOptions.Options.
	Options []Option
}

// Stream is an image read once, front to back, from a non-seekable source.
type Stream interface {
	// Size is the virtual size, known once the stream is open.
	Size() int64
	// Next returns the next run of data: p holds the bytes at
	// [off, off+len(p)). Runs come in ascending, non-overlapping order;
	// bytes in no run read as zeros. p is valid until the next call. At
	// the end Next returns io.EOF; a source that ends early is an error
	// wrapping errs.ErrCorrupt that names the offset.
	Next(ctx context.Context) (off int64, p []byte, err error)
	Info() Info
	io.Closer
}

// Option documents one format option (`-o key=value`).
type Option struct {
	Key     string
	Help    string
	Default string
}

// OpenOptions are passed to Format.Open.
type OpenOptions struct {
	// OpenBacking opens a backing image. path is what the image records,
	// format is the recorded format name or "" to probe. Resolving the
	// path relative to the image, refusing loops and over-deep chains is
	// the opener's job (see Registry). Nil means backing files are
	// refused with an error naming the backing file and wrapping
	// errs.ErrFailedPrecondition.
	OpenBacking func(ctx context.Context, path, format string) (Image, error)
	// Size is the source's length in bytes when the caller knows it (a
	// regular file on stdin, an HTTP Content-Length), -1 or 0 when it
	// does not. Only OpenStream of formats that record the size at the end
	// or not at all (raw, fixed VHD) uses it.
	Size   int64
	Logger *slog.Logger
}

// CreateOptions are passed to Format.Create.
type CreateOptions struct {
	// Options are format options, as given by `-o key=value,...`. A
	// format refuses keys it does not know with InvalidArgument.
	Options map[string]string
	// BackingFile is the backing file name to record, as the user gave
	// it; BackingFormat its format name. Backing is the opened backing
	// image, for formats that record its size or identity.
	BackingFile   string
	BackingFormat string
	Backing       Image
	// Source, if set, is the image about to be converted into the writer.
	// Writers that must lay out tables before the data (a streamed VHD)
	// use its Extents to know which blocks will be written; nothing is
	// written outside its Data and Zero extents.
	Source Image
	// Workers bounds the writer's own background parallelism
	// (compression). 0 means GOMAXPROCS.
	Workers int
	// Sync makes Registry.Create's Commit flush the output file to stable
	// storage before renaming it into place. Formats ignore it.
	Sync   bool
	Logger *slog.Logger
}

// Opt returns option key's value, or def when it is not set.
func (o *CreateOptions) Opt(key, def string) string {
	if o == nil {
		return def
	}
	if v, ok := o.Options[key]; ok {
		return v
	}
	return def
}

// CheckOptions returns an InvalidArgument error naming the first option key
// that f does not document.
func (f *Format) CheckOptions(o *CreateOptions) error {
	if o == nil {
		return nil
	}
	keys := make([]string, 0, len(o.Options))
	for k := range o.Options {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !slices.ContainsFunc(f.Options, func(op Option) bool { return op.Key == k }) {
			var known []string
			for _, op := range f.Options {
				known = append(known, op.Key)
			}
			return fmt.Errorf("%s: unknown option %q (known: %s): %w", f.Name, k, strings.Join(known, ", "), errs.ErrInvalidArgument)
		}
	}
	return nil
}

// osFile is a File over an *os.File.
type osFile struct {
	*os.File
	size int64
}

func (f *osFile) Size() int64 { return f.size }

// OpenFile opens path read-only as a File.
func OpenFile(path string) (File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, wrapOSError(path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, wrapOSError(path, err)
	}
	if st.IsDir() {
		f.Close()
		return nil, fmt.Errorf("open %s: is a directory: %w", path, errs.ErrInvalidArgument)
	}
	size := st.Size()
	if !st.Mode().IsRegular() {
		// Block devices report size 0 in Stat; ask the device.
		if n, err := f.Seek(0, io.SeekEnd); err == nil {
			size = n
		}
	}
	return &osFile{File: f, size: size}, nil
}

// OSFile returns the *os.File under f, if there is one (for SEEK_DATA and
// similar file-system queries).
func OSFile(f File) (*os.File, bool) {
	of, ok := f.(*osFile)
	if !ok {
		return nil, false
	}
	return of.File, true
}

func wrapOSError(path string, err error) error {
	switch {
	case os.IsNotExist(err):
		return fmt.Errorf("open %s: no such file: %w", path, errs.ErrNotFound)
	case os.IsPermission(err):
		return fmt.Errorf("open %s: %w", path, errs.ErrPermissionDenied)
	}
	return fmt.Errorf("open %s: %w", path, err)
}

// BytesFile returns a File over b, for tests and fuzzing.
func BytesFile(name string, b []byte) File { return &bytesFile{name: name, b: b} }

type bytesFile struct {
	name string
	b    []byte
}

func (f *bytesFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read %s: negative offset", f.name)
	}
	if off >= int64(len(f.b)) {
		return 0, io.EOF
	}
	n := copy(p, f.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (f *bytesFile) Close() error { return nil }
func (f *bytesFile) Name() string { return f.name }
func (f *bytesFile) Size() int64  { return int64(len(f.b)) }
