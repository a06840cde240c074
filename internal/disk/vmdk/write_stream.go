package vmdk

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zlib"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// streamLevel is the deflate level of streamOptimized grains: klauspost's
// level 1 (BestSpeed), several times faster than zlib's default for
// somewhat larger output.
const streamLevel = zlib.BestSpeed

// appendBuf is how much output an appender gathers before writing it.
const appendBuf = 1 << 20

// appender writes a file front to back: with Write to a plain Target, with
// WriteAt to a FileTarget. Small writes are gathered into big ones.
type appender struct {
	t   disk.Target
	ft  disk.FileTarget
	pos int64 // logical: bytes appended so far, buffered included
	at  int64 // bytes handed to the target
	buf []byte
}

func newAppender(t disk.Target) *appender {
	a := &appender{t: t, buf: make([]byte, 0, appendBuf)}
	a.ft, _ = t.(disk.FileTarget)
	return a
}

func (a *appender) write(p []byte) error {
	a.pos += int64(len(p))
	if len(a.buf)+len(p) <= cap(a.buf) {
		a.buf = append(a.buf, p...)
		return nil
	}
	if err := a.flush(); err != nil {
		return err
	}
	if len(p) >= cap(a.buf) {
		return a.put(p)
	}
	a.buf = append(a.buf, p...)
	return nil
}

func (a *appender) flush() error {
	if len(a.buf) == 0 {
		return nil
	}
	err := a.put(a.buf)
	a.buf = a.buf[:0]
	return err
}

func (a *appender) put(p []byte) error {
	var n int
	var err error
	if a.ft != nil {
		n, err = a.ft.WriteAt(p, a.at)
	} else {
		n, err = a.t.Write(p)
	}
	a.at += int64(n)
	if err == nil && n != len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("vmdk: write output at %d: %w", a.at, err)
	}
	return nil
}

// packed is a compressed grain ready to append: marker, zlib stream and
// padding to a sector. data is nil for an all-zero grain.
type packed struct {
	g    int64
	data []byte
	buf  *bytes.Buffer
}

// writer states
const (
	stateOpen = iota
	stateCommitted
	stateClosed
	stateFailed
)

// streamWriter writes a streamOptimized VMDK in VMware's layout, front to
// back. Grains are deflated in parallel and appended in order by a
// disk.Ordered.
type streamWriter struct {
	out     *appender
	size    int64
	grain   int64
	hdr     header
	ord     *disk.Ordered[*packed]
	waited  bool // ord.Wait was called
	cancel  context.CancelFunc
	bufPool sync.Pool // *[]byte grain buffers
	outPool sync.Pool // *bytes.Buffer
	zPool   sync.Pool // *zlib.Writer

	// Caller's side.
	mu    sync.Mutex
	state int
	err   error
	pos   int64   // the next offset a write may start at
	cur   int64   // grain in buf, -1 for none
	buf   *[]byte // the grain being filled
	fill  int64   // buf[:fill] is set; writes within a grain ascend

	// Sink's side (the Ordered's goroutine, then Commit after Wait).
	gtIdx  int64
	gt     []uint32
	gtUsed bool
	gd     []uint32
}

var _ disk.Writer = (*streamWriter)(nil)

func newStreamWriter(ctx context.Context, t disk.Target, size int64, c createConfig) (*streamWriter, error) {
	capSectors := uint64(size / sectorSize)
	w := &streamWriter{
		out:   newAppender(t),
		size:  size,
		grain: writeGrainSectors * sectorSize,
		cur:   -1,
		hdr: header{
			version:     3,
			flags:       flagValidNL | flagCompressed | flagMarkers,
			capacity:    capSectors,
			grainSize:   writeGrainSectors,
			descOffset:  writeDescOffset,
			descSize:    writeDescSectors,
			numGTEs:     writeGTEs,
			gdOffset:    gdAtEnd,
			overhead:    streamOverhead,
			compression: compressDeflate,
		},
	}
	w.gt = make([]uint32, writeGTEs)
	w.gd = make([]uint32, w.hdr.numGTs())
	cid := newCID()
	desc := (&descriptorText{
		cid:        cid,
		createType: StreamOptimized,
		extents:    []extentLine{{access: "RDONLY", sectors: int64(capSectors), typ: "SPARSE", file: targetBase(t)}},
		adapter:    c.adapter,
		hwVersion:  c.hwVersion,
		tools:      c.tools,
		sectors:    int64(capSectors),
		longCID:    longContentID(cid),
	}).String()
	if len(desc) > writeDescSectors*sectorSize {
		return nil, fmt.Errorf("vmdk: descriptor of %d bytes does not fit %d sectors: %w", len(desc), writeDescSectors, errs.ErrInvalidArgument)
	}
	front := make([]byte, streamOverhead*sectorSize)
	copy(front, w.hdr.marshal())
	copy(front[writeDescOffset*sectorSize:], desc)
	if err := w.out.write(front); err != nil {
		return nil, err
	}
	w.bufPool.New = func() any { b := make([]byte, w.grain); return &b }
	w.outPool.New = func() any { b := new(bytes.Buffer); b.Grow(int(w.grain) + 2*sectorSize); return b }
	ctx, w.cancel = context.WithCancel(ctx)
	w.ord = disk.NewOrdered(ctx, c.workers, w.sink)
	return w, nil
}

// longContentID is a ddb.longContentID: 32 hex digits ending in the CID.
func longContentID(cid uint32) string {
	return fmt.Sprintf("%08x%08x%08x%08x", newCID(), newCID(), newCID(), cid)
}

func (w *streamWriter) Size() int64      { return w.size }
func (w *streamWriter) Sequential() bool { return true }

func (w *streamWriter) usable() error {
	switch w.state {
	case stateOpen:
		return nil
	case stateFailed:
		return w.err
	}
	return fmt.Errorf("vmdk: streamOptimized writer already committed or closed: %w", errs.ErrFailedPrecondition)
}

func (w *streamWriter) fail(err error) error {
	if w.state == stateOpen {
		w.state, w.err = stateFailed, err
	}
	return err
}

func (w *streamWriter) checkRange(off, n int64) error {
	if off < w.pos {
		return fmt.Errorf("vmdk: streamOptimized writer is sequential: range at %d is behind position %d: %w", off, w.pos, errs.ErrInvalidArgument)
	}
	if n < 0 || off > w.size-n {
		return fmt.Errorf("vmdk: range [%d, %d) is outside the %d-byte disk: %w", off, off+n, w.size, errs.ErrInvalidArgument)
	}
	return nil
}

// WriteAt gathers p into grains; a grain goes to compression when a write
// moves past it.
func (w *streamWriter) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return 0, err
	}
	if err := w.checkRange(off, int64(len(p))); err != nil {
		return 0, err
	}
	for done := 0; done < len(p); {
		o := off + int64(done)
		g, in := o/w.grain, o%w.grain
		if g != w.cur {
			if err := w.flushGrain(); err != nil {
				return done, w.fail(err)
			}
			w.cur, w.fill = g, 0
			w.buf = w.bufPool.Get().(*[]byte)
		}
		if in > w.fill {
			clear((*w.buf)[w.fill:in])
		}
		k := copy((*w.buf)[in:], p[done:])
		done += k
		w.fill = in + int64(k)
	}
	w.pos = off + int64(len(p))
	return len(p), nil
}

// Zero moves the position past [off, off+n): ranges never written read as
// zeros.
func (w *streamWriter) Zero(off, n int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return err
	}
	if err := w.checkRange(off, n); err != nil {
		return err
	}
	w.pos = off + n
	return nil
}

// flushGrain hands the grain being filled to the compressors.
func (w *streamWriter) flushGrain() error {
	if w.cur < 0 {
		return nil
	}
	g, buf := w.cur, w.buf
	n := min(w.grain, w.size-g*w.grain)
	if w.fill < n {
		clear((*buf)[w.fill:n])
	}
	w.cur, w.buf = -1, nil
	return w.ord.Submit(func(context.Context) (*packed, error) { return w.pack(g, buf, n) })
}

// pack compresses grain g (the first n bytes of buf) behind its marker.
func (w *streamWriter) pack(g int64, buf *[]byte, n int64) (*packed, error) {
	defer w.bufPool.Put(buf)
	src := (*buf)[:n]
	if isZero(src) {
		return &packed{g: g}, nil
	}
	out := w.outPool.Get().(*bytes.Buffer)
	out.Reset()
	var m [grainMarkerSize]byte
	out.Write(m[:])
	zw, _ := w.zPool.Get().(*zlib.Writer)
	if zw == nil {
		var err error
		if zw, err = zlib.NewWriterLevel(out, streamLevel); err != nil {
			return nil, err
		}
	} else {
		zw.Reset(out)
	}
	if _, err := zw.Write(src); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	w.zPool.Put(zw)
	b := out.Bytes()
	binary.LittleEndian.PutUint64(b, uint64(g)*writeGrainSectors)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(b)-grainMarkerSize))
	if r := len(b) % sectorSize; r != 0 {
		out.Write(make([]byte, sectorSize-r))
	}
	return &packed{g: g, data: out.Bytes(), buf: out}, nil
}

// sink appends grains in order, and a grain table after each finished
// span of 512 grains that holds any.
func (w *streamWriter) sink(p *packed) error {
	if p.buf != nil {
		defer w.outPool.Put(p.buf)
	}
	if p.data == nil {
		return nil
	}
	if span := p.g / writeGTEs; span != w.gtIdx {
		if err := w.finishGT(); err != nil {
			return err
		}
		w.gtIdx = span
	}
	sector, err := w.sector()
	if err != nil {
		return err
	}
	w.gt[p.g%writeGTEs] = sector
	w.gtUsed = true
	return w.out.write(p.data)
}

// sector is the output's position in sectors, which grain tables and the
// directory record in 32 bits.
func (w *streamWriter) sector() (uint32, error) {
	s := w.out.pos / sectorSize
	if s > 0xffffffff {
		return 0, fmt.Errorf("vmdk: streamOptimized output passes 2 TiB, the most its 32-bit sector offsets reach: %w", errs.ErrInvalidArgument)
	}
	return uint32(s), nil
}

// finishGT appends the current grain table behind its marker, if it maps
// any grain. VMware writes no table for a span without grains and leaves
// its directory entry 0.
func (w *streamWriter) finishGT() error {
	if !w.gtUsed {
		return nil
	}
	if err := w.out.write(metaMarker(markerGT, writeGTEs*4/sectorSize)); err != nil {
		return err
	}
	sector, err := w.sector()
	if err != nil {
		return err
	}
	w.gd[w.gtIdx] = sector
	b := make([]byte, writeGTEs*4)
	for i, v := range w.gt {
		binary.LittleEndian.PutUint32(b[i*4:], v)
	}
	clear(w.gt)
	w.gtUsed = false
	return w.out.write(b)
}

// Commit compresses the last grain, then appends the last grain table, the
// grain directory, the footer and the end-of-stream marker.
func (w *streamWriter) Commit(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return err
	}
	ferr := w.flushGrain()
	w.waited = true
	if err := w.ord.Wait(); ferr != nil || err != nil {
		return w.fail(cmp.Or(ferr, err))
	}
	if err := ctx.Err(); err != nil {
		return w.fail(err)
	}
	if err := w.finishTail(); err != nil {
		return w.fail(err)
	}
	w.state = stateCommitted
	w.cancel()
	return nil
}

func (w *streamWriter) finishTail() error {
	if err := w.finishGT(); err != nil {
		return err
	}
	gdSectors := max(1, sectorsFor(int64(len(w.gd))*4))
	if err := w.out.write(metaMarker(markerGD, uint64(gdSectors))); err != nil {
		return err
	}
	gdSector, err := w.sector()
	if err != nil {
		return err
	}
	gd := make([]byte, gdSectors*sectorSize)
	for i, v := range w.gd {
		binary.LittleEndian.PutUint32(gd[i*4:], v)
	}
	if err := w.out.write(gd); err != nil {
		return err
	}
	if err := w.out.write(metaMarker(markerFooter, 1)); err != nil {
		return err
	}
	footer := w.hdr
	footer.gdOffset = uint64(gdSector)
	if err := w.out.write(footer.marshal()); err != nil {
		return err
	}
	if err := w.out.write(metaMarker(markerEOS, 0)); err != nil {
		return err
	}
	return w.out.flush()
}

// Close after Commit releases; without Commit it stops the compressors and
// leaves the stream unfinished.
func (w *streamWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch w.state {
	case stateCommitted, stateClosed:
		w.state = stateClosed
		return nil
	}
	w.state = stateClosed
	w.cancel()
	if !w.waited {
		w.waited = true
		w.ord.Wait()
	}
	return nil
}

// zeros is compared against; it is never written.
var zeros = make([]byte, 64<<10)

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
