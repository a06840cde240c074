package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/ferry-project/ferry/internal/errs"
	"github.com/ferry-project/ferry/internal/progress"
)

// ConvertOptions tune Convert. The zero value (or nil) means defaults.
type ConvertOptions struct {
	// Workers is how many chunks are read, checked for zeros and written
	// at once. Default 4.
	Workers int
	// ChunkSize is the unit of work, a multiple of 64 KiB. Default 2 MiB.
	ChunkSize int64
	// ZeroGranularity is the size of the aligned pieces of data extents
	// that are checked for zeros and skipped when they are (qemu-img's
	// -S). Default 4 KiB; negative disables zero detection.
	ZeroGranularity int64
	// Base is the backing image the destination was created over. When
	// set, only what differs from Base is written, and zeros over
	// non-zero Base content are written with Writer.Zero.
	Base Image
	// Progress receives the virtual bytes processed; nil discards.
	Progress progress.Reporter
	Logger   *slog.Logger
}

func (o *ConvertOptions) withDefaults() ConvertOptions {
	var c ConvertOptions
	if o != nil {
		c = *o
	}
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.ChunkSize <= 0 {
		c.ChunkSize = 2 << 20
	}
	c.ChunkSize = (c.ChunkSize + 65535) &^ 65535
	if c.ZeroGranularity == 0 {
		c.ZeroGranularity = 4096
	}
	c.Progress = progress.Or(c.Progress)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// ConvertStats says what a conversion did.
type ConvertStats struct {
	// Size is the virtual size converted.
	Size int64 `json:"size"`
	// Written is the bytes handed to the destination's WriteAt.
	Written int64 `json:"written"`
	// Zeroed is the bytes handed to the destination's Zero.
	Zeroed int64 `json:"zeroed"`
	// Read is the bytes read from the source (data extents only).
	Read int64 `json:"read"`
	// Skipped is the bytes never read: unallocated and zero extents.
	Skipped int64 `json:"skipped"`
	// ZeroDetected is the bytes of data extents found to be zeros and
	// not written.
	ZeroDetected int64 `json:"zero_detected"`
}

// chunk is a unit of work: a range of the disk and the source extents in
// it.
type chunk struct {
	off, len int64
	exts     []Extent
}

// op is one write the sink performs.
type op struct {
	off  int64
	data []byte // nil: Zero(off, n)
	n    int64
}

type converted struct {
	ops  []op
	buf  *[]byte
	size int64
}

// Convert copies src into dst: the data extents of src are read in parallel
// chunks, pieces that read as zeros are skipped (sparse output), and what
// remains is written. Sequential writers receive their writes in ascending
// order from one goroutine while reading runs ahead; random-access writers
// are written from the workers directly. Memory is bounded by
// Workers × ChunkSize × 2 whatever the disk size. Convert does not Commit
// dst. It stops at the first error or when ctx is done.
func Convert(ctx context.Context, dst Writer, src Image, opts *ConvertOptions) (ConvertStats, error) {
	o := opts.withDefaults()
	size := src.Size()
	st := ConvertStats{Size: size}
	if dst.Size() < size {
		return st, fmt.Errorf("convert: destination size %d is smaller than source size %d: %w", dst.Size(), size, errs.ErrInvalidArgument)
	}
	o.Progress.SetTotal(size)
	if g, ok := dst.(Granular); ok && o.ZeroGranularity > 0 {
		if u := g.AllocationUnit(); u > o.ZeroGranularity && u <= o.ChunkSize && o.ChunkSize%u == 0 {
			o.ZeroGranularity = u
		}
	}
	var read, written, zeroed, skipped, zdet atomic.Int64

	pool := sync.Pool{New: func() any { b := make([]byte, o.ChunkSize); return &b }}
	var baseBuf sync.Pool
	baseBuf.New = pool.New

	// process reads a chunk and returns the writes it needs.
	process := func(ctx context.Context, c chunk) (converted, error) {
		res := converted{}
		for _, e := range c.exts {
			res.size += e.Len
		}
		var buf []byte
		for _, e := range c.exts {
			if e.Kind != Data { // only with a base: hide its non-zero content
				skipped.Add(e.Len)
				nz, err := baseNonZero(ctx, o.Base, e.Off, e.Len, &baseBuf, o.ChunkSize)
				if err != nil {
					return res, err
				}
				for _, r := range nz {
					res.ops = append(res.ops, op{off: r.Off, n: r.Len})
				}
				continue
			}
			if buf == nil {
				res.buf = pool.Get().(*[]byte)
				buf = *res.buf
			}
			p := buf[e.Off-c.off : e.End()-c.off]
			if err := readFull(src, p, e.Off); err != nil {
				return res, err
			}
			read.Add(e.Len)
			var bp []byte
			if o.Base != nil {
				bb := baseBuf.Get().(*[]byte)
				defer baseBuf.Put(bb)
				bp = (*bb)[e.Off-c.off : e.End()-c.off]
				if err := readFull(o.Base, bp, e.Off); err != nil {
					return res, fmt.Errorf("backing image: %w", err)
				}
			}
			res.ops = appendOps(res.ops, p, bp, e.Off, o.ZeroGranularity, &zdet)
		}
		return res, nil
	}
	apply := func(r converted) error {
		defer func() {
			if r.buf != nil {
				pool.Put(r.buf)
			}
		}()
		for _, w := range r.ops {
			if w.data == nil {
				if err := dst.Zero(w.off, w.n); err != nil {
					return err
				}
				zeroed.Add(w.n)
				continue
			}
			n, err := dst.WriteAt(w.data, w.off)
			if err == nil && n != len(w.data) {
				err = io.ErrShortWrite
			}
			if err != nil {
				return err
			}
			written.Add(int64(n))
		}
		o.Progress.Add(r.size)
		return nil
	}

	chunks := func(yield func(chunk) bool) error {
		var cur chunk
		flush := func() bool {
			if cur.len == 0 {
				return true
			}
			c := cur
			cur = chunk{}
			return yield(c)
		}
		for e, err := range src.Extents(ctx, 0, size) {
			if err != nil {
				return err
			}
			for e.Len > 0 {
				cstart := e.Off / o.ChunkSize * o.ChunkSize
				if o.Base == nil && e.Kind != Data {
					skipped.Add(e.Len)
					o.Progress.Add(e.Len)
					break
				}
				if cur.len > 0 && cur.off/o.ChunkSize*o.ChunkSize != cstart {
					if !flush() {
						return nil
					}
				}
				if cur.len == 0 {
					cur.off = e.Off
				}
				piece := e
				piece.Len = min(e.Len, cstart+o.ChunkSize-e.Off)
				cur.exts = append(cur.exts, piece)
				cur.len = piece.End() - cur.off
				e.Off, e.Len = piece.End(), e.Len-piece.Len
			}
		}
		flush()
		return nil
	}

	var err error
	if dst.Sequential() {
		ord := NewOrdered(ctx, o.Workers, apply)
		var subErr error
		genErr := chunks(func(c chunk) bool {
			subErr = ord.Submit(func(ctx context.Context) (converted, error) { return process(ctx, c) })
			return subErr == nil
		})
		err = errors.Join(genErr, ord.Wait())
		if err == nil {
			err = subErr
		}
	} else {
		g, gctx := errgroup.WithContext(ctx)
		ch := make(chan chunk)
		for range o.Workers {
			g.Go(func() error {
				for c := range ch {
					r, err := process(gctx, c)
					if err == nil {
						err = apply(r)
					} else if r.buf != nil {
						pool.Put(r.buf)
					}
					if err != nil {
						return err
					}
				}
				return nil
			})
		}
		g.Go(func() error {
			defer close(ch)
			return chunks(func(c chunk) bool {
				select {
				case ch <- c:
					return true
				case <-gctx.Done():
					return false
				}
			})
		})
		err = g.Wait()
	}
	if err == nil {
		err = ctx.Err()
	}
	st.Read, st.Written, st.Zeroed, st.Skipped, st.ZeroDetected = read.Load(), written.Load(), zeroed.Load(), skipped.Load(), zdet.Load()
	if err != nil {
		return st, fmt.Errorf("convert: %w", err)
	}
	return st, nil
}

// appendOps splits p (the data at off) into granules, drops those that read
// as zeros (or, with a base, those equal to the base) and appends a write
// for each remaining run.
func appendOps(ops []op, p, base []byte, off, gran int64, zdet *atomic.Int64) []op {
	if gran < 0 {
		if base == nil || !bytes.Equal(p, base) {
			ops = append(ops, op{off: off, data: p, n: int64(len(p))})
		}
		return ops
	}
	type kind uint8
	const (
		skip kind = iota
		write
		zero
	)
	var runStart int64 = -1
	var runKind kind
	emit := func(end int64) {
		if runStart < 0 {
			return
		}
		switch runKind {
		case write:
			ops = append(ops, op{off: off + runStart, data: p[runStart:end], n: end - runStart})
		case zero:
			ops = append(ops, op{off: off + runStart, n: end - runStart})
		}
	}
	// granules are aligned to absolute offsets
	for i := int64(0); i < int64(len(p)); {
		next := min(((off+i)/gran+1)*gran-off, int64(len(p)))
		g := p[i:next]
		var k kind
		isZero := allZero(g)
		switch {
		case base == nil && isZero:
			k = skip
			zdet.Add(next - i)
		case base == nil:
			k = write
		case bytes.Equal(g, base[i:next]):
			k = skip
		case isZero:
			k = zero
		default:
			k = write
		}
		if runStart < 0 || k != runKind {
			emit(i)
			runStart, runKind = i, k
		}
		i = next
	}
	emit(int64(len(p)))
	return ops
}

var zeroPage = make([]byte, 64<<10)

func allZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroPage))
		if !bytes.Equal(p[:n], zeroPage[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// baseNonZero returns the ranges of [off, off+n) where base does not read as
// zeros, at 4 KiB granularity.
func baseNonZero(ctx context.Context, base Image, off, n int64, pool *sync.Pool, chunk int64) ([]Extent, error) {
	var out []Extent
	end := min(off+n, base.Size())
	for e, err := range base.Extents(ctx, off, max(end-off, 0)) {
		if err != nil {
			return nil, fmt.Errorf("backing image: %w", err)
		}
		if e.Kind != Data {
			continue
		}
		bb := pool.Get().(*[]byte)
		for s := e.Off; s < e.End(); s += chunk {
			p := (*bb)[:min(chunk, e.End()-s)]
			if err := readFull(base, p, s); err != nil {
				pool.Put(bb)
				return nil, fmt.Errorf("backing image: %w", err)
			}
			for i := int64(0); i < int64(len(p)); i += 4096 {
				j := min(i+4096, int64(len(p)))
				if allZero(p[i:j]) {
					continue
				}
				if len(out) > 0 && out[len(out)-1].End() == s+i {
					out[len(out)-1].Len += j - i
				} else {
					out = append(out, Extent{Off: s + i, Len: j - i})
				}
			}
		}
		pool.Put(bb)
	}
	return out, nil
}

// readFull reads len(p) bytes at off; the image's io.EOF at its end counts
// as success when p is filled.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read %d bytes at %d: %w", len(p), off, err)
}
