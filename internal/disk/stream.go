package disk

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/ferry-project/ferry/internal/errs"
)

// probeWindow is how much of a stream is buffered for probing its format.
const probeWindow = 1 << 20

// OpenStream reads an image front to back from r. The format is forced by
// format or probed from the first MiB; only formats with OpenStream can be
// read this way. size is the source's length if known (see OpenOptions).
func (r *Registry) OpenStream(ctx context.Context, src io.Reader, format string, size int64) (Stream, error) {
	br := bufio.NewReaderSize(src, probeWindow)
	var ft *Format
	if format != "" {
		f, err := r.Lookup(format)
		if err != nil {
			return nil, err
		}
		ft = f
	} else {
		head, err := br.Peek(probeWindow)
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("read stream: %w", err)
		}
		hf := BytesFile("stream", head)
		for _, f := range r.formats {
			if f.Name != "raw" && f.Probe != nil && f.Probe(hf) {
				ft = f
				break
			}
		}
		if ft == nil {
			ft, _ = r.Lookup("raw")
		}
		if ft == nil {
			return nil, fmt.Errorf("stream: no known format: %w", errs.ErrInvalidArgument)
		}
	}
	if ft.OpenStream == nil {
		return nil, fmt.Errorf("stream: %s images cannot be read from a non-seekable source (their tables are not at the front); save to a file first: %w", ft.Name, errs.ErrUnimplemented)
	}
	return ft.OpenStream(ctx, br, &OpenOptions{Size: size})
}

// ConvertStream copies a stream into dst in one pass. Runs that read as
// zeros are skipped at ZeroGranularity, like Convert. Writes reach dst in
// ascending order, so sequential writers work too. Base is not supported.
func ConvertStream(ctx context.Context, dst Writer, src Stream, opts *ConvertOptions) (ConvertStats, error) {
	o := opts.withDefaults()
	st := ConvertStats{Size: src.Size()}
	if o.Base != nil {
		return st, fmt.Errorf("convert stream: a backing image needs a seekable source: %w", errs.ErrUnimplemented)
	}
	if dst.Size() < src.Size() {
		return st, fmt.Errorf("convert: destination size %d is smaller than source size %d: %w", dst.Size(), src.Size(), errs.ErrInvalidArgument)
	}
	o.Progress.SetTotal(src.Size())
	var zdet atomic.Int64
	var pos int64
	for {
		if err := ctx.Err(); err != nil {
			return st, fmt.Errorf("convert: %w", err)
		}
		off, p, err := src.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return st, fmt.Errorf("convert: %w", err)
		}
		if off < pos || off+int64(len(p)) > src.Size() {
			return st, fmt.Errorf("convert: stream run [%d, %d) out of order or beyond size %d: %w", off, off+int64(len(p)), src.Size(), errs.ErrCorrupt)
		}
		st.Skipped += off - pos
		st.Read += int64(len(p))
		for _, w := range appendOps(nil, p, nil, off, o.ZeroGranularity, &zdet) {
			if _, err := dst.WriteAt(w.data, w.off); err != nil {
				return st, fmt.Errorf("convert: %w", err)
			}
			st.Written += w.n
		}
		o.Progress.Add(off + int64(len(p)) - pos)
		pos = off + int64(len(p))
	}
	st.Skipped += src.Size() - pos
	o.Progress.Add(src.Size() - pos)
	st.ZeroDetected = zdet.Load()
	return st, nil
}

// RawStream is the Stream of a raw image: the bytes themselves, read in
// pieces of up to 1 MiB. Size must be known.
func RawStream(r io.Reader, size int64, name string) (Stream, error) {
	if size <= 0 {
		return nil, fmt.Errorf("raw stream %s: the size is not known (pass it, e.g. --src-size): %w", name, errs.ErrInvalidArgument)
	}
	return &rawStream{r: r, size: size, name: name, buf: make([]byte, 1<<20)}, nil
}

type rawStream struct {
	r    io.Reader
	size int64
	pos  int64
	name string
	buf  []byte
}

func (s *rawStream) Size() int64 { return s.size }
func (s *rawStream) Info() Info  { return Info{Filename: s.name, Format: "raw", VirtualSize: s.size} }
func (s *rawStream) Close() error {
	return nil
}
func (s *rawStream) Next(context.Context) (int64, []byte, error) {
	if s.pos >= s.size {
		return 0, nil, io.EOF
	}
	n := min(int64(len(s.buf)), s.size-s.pos)
	k, err := io.ReadFull(s.r, s.buf[:n])
	if err != nil {
		return 0, nil, fmt.Errorf("raw stream %s: ended at %d of %d bytes: %w", s.name, s.pos+int64(k), s.size, errs.ErrCorrupt)
	}
	off := s.pos
	s.pos += n
	return off, s.buf[:n], nil
}
