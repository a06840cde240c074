package qcow2

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// batchBytes is how much metadata is gathered into one write at Commit.
const batchBytes = 4 << 20

// zeros is a read-only source of zero bytes.
var zeros = make([]byte, 1<<20)

// builder holds the tables of an image being written and lays them out at
// Commit. Its methods are not safe for concurrent use; the writers guard
// it.
type builder struct {
	t      disk.FileTarget
	name   string
	size   int64
	bits   uint
	cs     int64
	l1Size int64
	v3     bool
	zstd   bool

	backingFile   string
	backingFormat string

	// tables holds the L2 tables touched so far, by L1 index, as on-disk
	// entry values.
	tables map[int64][]uint64
	// refs is the refcount of every host cluster below next.
	refs []uint16
	// next is the end of the allocated host area, cluster aligned.
	next int64
}

func (b *builder) entry(c int64) uint64 {
	t := b.tables[c>>(b.bits-3)]
	if t == nil {
		return 0
	}
	return t[c&(b.cs/8-1)]
}

func (b *builder) setEntry(c int64, e uint64) {
	idx := c >> (b.bits - 3)
	t := b.tables[idx]
	if t == nil {
		t = make([]uint64, b.cs/8)
		b.tables[idx] = t
	}
	t[c&(b.cs/8-1)] = e
}

// alloc allocates a fresh host cluster with refcount 1. It has never been
// written, so it reads as zeros.
func (b *builder) alloc() int64 {
	h := b.next
	b.next += b.cs
	b.refs = append(b.refs, 1)
	return h
}

// isData reports whether an entry maps a standard (uncompressed) cluster.
func isData(e uint64) bool {
	return e&(flagCompressed|flagZero) == 0 && e&offsetMask != 0
}

func (b *builder) headerParams(l1Off, refOff, refClusters int64) headerParams {
	return headerParams{
		v3: b.v3, clusterBits: b.bits, size: b.size, l1Size: b.l1Size,
		l1Off: l1Off, refOff: refOff, refClusters: refClusters, zstd: b.zstd,
		backingFile: b.backingFile, backingFormat: b.backingFormat,
	}
}

// batch gathers consecutive metadata clusters into big writes.
type batch struct {
	t   io.WriterAt
	off int64
	buf []byte
	err error
}

// take returns the next n bytes of the output, to be filled completely.
func (w *batch) take(n int) []byte {
	if len(w.buf)+n > cap(w.buf) {
		w.flush()
	}
	s := len(w.buf)
	w.buf = w.buf[:s+n]
	return w.buf[s:]
}

func (w *batch) flush() {
	if len(w.buf) > 0 && w.err == nil {
		_, w.err = w.t.WriteAt(w.buf, w.off)
	}
	w.off += int64(len(w.buf))
	w.buf = w.buf[:0]
}

// commit writes the L2 tables, the L1 table and the refcount structures
// after the data, then the header.
func (b *builder) commit(ctx context.Context) error {
	cs := b.cs
	fail := func(what string, err error) error {
		return fmt.Errorf("qcow2 %s: write %s: %w", b.name, what, err)
	}
	idxs := make([]int64, 0, len(b.tables))
	for idx, t := range b.tables {
		if slices.ContainsFunc(t, func(e uint64) bool { return e != 0 }) {
			idxs = append(idxs, idx)
		}
	}
	slices.Sort(idxs)
	be := binary.BigEndian
	l1 := make([]byte, b.l1Size*8)
	bw := &batch{t: b.t, off: b.next, buf: make([]byte, 0, max(batchBytes, cs))}
	pos := b.next
	for i, idx := range idxs {
		if i%64 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		be.PutUint64(l1[idx*8:], uint64(pos)|flagCopied)
		buf := bw.take(int(cs))
		for k, e := range b.tables[idx] {
			be.PutUint64(buf[k*8:], e)
		}
		pos += cs
	}
	if bw.flush(); bw.err != nil {
		return fail("L2 tables", bw.err)
	}
	var l1Off int64
	if b.l1Size > 0 {
		l1Off = pos
		if _, err := b.t.WriteAt(l1, l1Off); err != nil {
			return fail("L1 table", err)
		}
		pos += (int64(len(l1)) + cs - 1) &^ (cs - 1)
	}
	// Refcount blocks cover every cluster, themselves and the refcount
	// table included: find the fixed point.
	n0 := pos / cs
	perBlock := cs / 2 // 16-bit refcounts
	var nb, nt int64
	for {
		total := n0 + nb + nt
		nb2 := (total + perBlock - 1) / perBlock
		nt2 := (nb2*8 + cs - 1) / cs
		if nb2 == nb && nt2 == nt {
			break
		}
		nb, nt = nb2, nt2
	}
	if nt*cs > maxReftableBytes {
		return fmt.Errorf("qcow2 %s: the image needs a refcount table of %d bytes, over qemu's limit of %d; use a larger cluster_size: %w", b.name, nt*cs, maxReftableBytes, errs.ErrInvalidArgument)
	}
	total := n0 + nt + nb
	if total*cs > 1<<56 {
		return fmt.Errorf("qcow2 %s: image file would exceed 2^56 bytes: %w", b.name, errs.ErrInvalidArgument)
	}
	reftOff := pos
	blockOff := reftOff + nt*cs
	reft := make([]byte, nt*cs)
	for j := range nb {
		be.PutUint64(reft[j*8:], uint64(blockOff+j*cs))
	}
	if _, err := b.t.WriteAt(reft, reftOff); err != nil {
		return fail("refcount table", err)
	}
	bw.off = blockOff
	for j := range nb {
		if j%64 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		buf := bw.take(int(cs))
		base := j * perBlock
		for k := range perBlock {
			c := base + k
			var v uint16
			switch {
			case c < int64(len(b.refs)):
				v = b.refs[c]
			case c < total:
				v = 1
			}
			be.PutUint16(buf[k*2:], v)
		}
	}
	if bw.flush(); bw.err != nil {
		return fail("refcount blocks", bw.err)
	}
	hdr, err := encodeHeader(b.headerParams(l1Off, reftOff, nt))
	if err != nil {
		return fmt.Errorf("qcow2 %s: %w", b.name, err)
	}
	if _, err := b.t.WriteAt(hdr, 0); err != nil {
		return fail("header", err)
	}
	if err := b.t.Truncate(total * cs); err != nil {
		return fail("file size", err)
	}
	return nil
}

// cow reads the backing image for clusters written in part.
type cow struct {
	file string     // backing file name recorded in the header, "" for none
	img  disk.Image // the opened backing image, nil if not given
	name string
}

func (c *cow) has() bool { return c.file != "" }

// read fills dst with the backing image's bytes at off (zeros past its
// end).
func (c *cow) read(dst []byte, off int64) error {
	if c.img == nil {
		return fmt.Errorf("qcow2 %s: writing part of a cluster over backing file %q needs the opened backing image (CreateOptions.Backing): %w", c.name, c.file, errs.ErrFailedPrecondition)
	}
	bsize := c.img.Size()
	k := max(min(int64(len(dst)), bsize-off), 0)
	if k > 0 {
		n, err := c.img.ReadAt(dst[:k], off)
		if int64(n) < k {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("qcow2 %s: read backing file %q at %d: %w", c.name, c.file, off, err)
		}
	}
	clear(dst[k:])
	return nil
}

// writer is the random-access, uncompressed writer. Data clusters are
// allocated in the order they are first written; each WriteAt maps its
// clusters under the lock and then writes every host-contiguous run with
// one WriteAt, outside the lock.
type writer struct {
	b    *builder
	back *cow

	mu    sync.Mutex
	state int
}

const (
	stateOpen = iota
	stateCommitted
	stateClosed
)

type seg struct{ voff, n, host int64 }

func (w *writer) checkRange(op string, off, n int64) error {
	if off < 0 || n < 0 || off > w.b.size-n {
		return fmt.Errorf("qcow2 %s: %s of %d bytes at %d is outside the %d-byte disk: %w", w.b.name, op, n, off, w.b.size, errs.ErrInvalidArgument)
	}
	if w.state != stateOpen {
		return fmt.Errorf("qcow2 %s: %s after commit or close: %w", w.b.name, op, errs.ErrFailedPrecondition)
	}
	return nil
}

func (w *writer) WriteAt(p []byte, off int64) (int, error) {
	var stack [8]seg
	segs, err := w.mapWrite(stack[:0], off, int64(len(p)))
	if err != nil {
		return 0, err
	}
	for _, s := range segs {
		if _, err := w.b.t.WriteAt(p[s.voff-off:s.voff-off+s.n], s.host); err != nil {
			return 0, fmt.Errorf("qcow2 %s: write at %#x: %w", w.b.name, s.host, err)
		}
	}
	return len(p), nil
}

// mapWrite allocates the clusters of [off, off+n) that have none and
// returns the host runs to write.
func (w *writer) mapWrite(segs []seg, off, n int64) ([]seg, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.checkRange("write", off, n); err != nil {
		return nil, err
	}
	b := w.b
	end := off + n
	for c := off >> b.bits; c<<b.bits < end; c++ {
		cstart := c << b.bits
		cend := min(cstart+b.cs, b.size)
		ws, we := max(off, cstart), min(end, cend)
		e := b.entry(c)
		var host int64
		if isData(e) {
			host = int64(e & offsetMask)
		} else {
			var err error
			if host, err = w.allocFor(e, cstart, cend, ws == cstart && we == cend); err != nil {
				return nil, err
			}
		}
		h := host + ws - cstart
		if k := len(segs); k > 0 && segs[k-1].host+segs[k-1].n == h {
			segs[k-1].n += we - ws
		} else {
			segs = append(segs, seg{voff: ws, n: we - ws, host: h})
		}
	}
	return segs, nil
}

// allocFor allocates a host cluster for virtual cluster [cstart, cend)
// whose entry is e. A fresh cluster reads as zeros, which is right for a
// zero cluster or when nothing lies below; a cluster only partly written
// over a backing file first gets the backing file's bytes. That copy
// happens under the lock, so no other writer can see the cluster before
// it holds them.
func (w *writer) allocFor(e uint64, cstart, cend int64, whole bool) (int64, error) {
	b := w.b
	host := b.alloc()
	if e == 0 && w.back.has() && !whole {
		buf := make([]byte, cend-cstart)
		err := w.back.read(buf, cstart)
		if err == nil && !isZero(buf) {
			_, err = b.t.WriteAt(buf, host)
		}
		if err != nil {
			b.refs[host>>b.bits] = 0
			return 0, err
		}
	}
	b.setEntry(cstart>>b.bits, uint64(host)|flagCopied)
	return host, nil
}

func (w *writer) Zero(off, n int64) error {
	segs, err := w.mapZero(off, n)
	if err != nil {
		return err
	}
	for _, s := range segs {
		if err := writeZeros(w.b.t, s.host, s.n); err != nil {
			return fmt.Errorf("qcow2 %s: write zeros at %#x: %w", w.b.name, s.host, err)
		}
	}
	return nil
}

// mapZero records [off, off+n) as zeros and returns the host ranges that
// must be overwritten with zero bytes.
func (w *writer) mapZero(off, n int64) ([]seg, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.checkRange("zero", off, n); err != nil {
		return nil, err
	}
	b := w.b
	var segs []seg
	end := off + n
	l2Shift := b.bits - 3
	for c := off >> b.bits; c<<b.bits < end; {
		idx := c >> l2Shift
		if b.tables[idx] == nil && !w.back.has() {
			// nothing written here and nothing below: reads as zeros
			c = (idx + 1) << l2Shift
			continue
		}
		cstart := c << b.bits
		cend := min(cstart+b.cs, b.size)
		ws, we := max(off, cstart), min(end, cend)
		whole := ws == cstart && we == cend
		e := b.entry(c)
		host := int64(e & offsetMask)
		switch {
		case whole && b.v3:
			if e == 0 && !w.back.has() {
				break
			}
			if isData(e) {
				b.refs[host>>b.bits] = 0 // left unused
			}
			b.setEntry(c, flagZero)
		case whole && !w.back.has():
			// version 2 has no zero clusters; unallocated reads as zeros
			if isData(e) {
				b.refs[host>>b.bits] = 0
				b.setEntry(c, 0)
			}
		case whole:
			// version 2 over a backing file: store zeros
			if isData(e) {
				segs = append(segs, seg{voff: cstart, n: cend - cstart, host: host})
			} else {
				b.setEntry(c, uint64(b.alloc())|flagCopied)
			}
		case isData(e):
			segs = append(segs, seg{voff: ws, n: we - ws, host: host + ws - cstart})
		case e == 0 && w.back.has():
			h, err := w.allocFor(e, cstart, cend, false)
			if err != nil {
				return nil, err
			}
			segs = append(segs, seg{voff: ws, n: we - ws, host: h + ws - cstart})
		}
		c++
	}
	return segs, nil
}

func writeZeros(t io.WriterAt, off, n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := t.WriteAt(zeros[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

func isZero(b []byte) bool {
	for len(b) > 0 {
		k := min(len(b), len(zeros))
		if string(b[:k]) != string(zeros[:k]) {
			return false
		}
		b = b[k:]
	}
	return true
}

func (w *writer) Commit(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state != stateOpen {
		return fmt.Errorf("qcow2 %s: commit after commit or close: %w", w.b.name, errs.ErrFailedPrecondition)
	}
	w.state = stateCommitted
	return w.b.commit(ctx)
}

func (w *writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.state = stateClosed
	w.b.tables = nil
	return nil
}

func (w *writer) Size() int64      { return w.b.size }
func (w *writer) Sequential() bool { return false }

// AllocationUnit is the cluster size (disk.Granular).
func (w *writer) AllocationUnit() int64 { return w.b.cs }

var (
	_ disk.Writer   = (*writer)(nil)
	_ disk.Granular = (*writer)(nil)
	_ disk.Writer   = (*seqWriter)(nil)
	_ disk.Granular = (*seqWriter)(nil)
	_ disk.Image    = (*image)(nil)
)
