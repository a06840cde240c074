package vdi

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// The writer keeps its block map in chunks allocated on first write, so
// memory follows the data written, not the virtual size.
const (
	chunkShift   = 14
	chunkEntries = 1 << chunkShift
	batchBlocks  = 64 // blocks one WriteAt looks up under one lock
)

// zeros is never written to: it is compared against and written from.
var zeros = make([]byte, 1<<20)

func create(_ context.Context, t disk.Target, size int64, opts *disk.CreateOptions) (disk.Writer, error) {
	if err := Format().CheckOptions(opts); err != nil {
		return nil, err
	}
	static, err := parseBool(opts.Opt("static", "off"))
	if err != nil {
		return nil, fmt.Errorf("vdi: option static: %w", err)
	}
	ft, ok := t.(disk.FileTarget)
	if !ok {
		return nil, fmt.Errorf("vdi: cannot write to a stream (the block map is written last): %w", errs.ErrInvalidArgument)
	}
	return newWriter(ft, size, static, defaultBlockSize)
}

func parseBool(s string) (bool, error) {
	switch s {
	case "on", "true", "yes":
		return true, nil
	case "off", "false", "no":
		return false, nil
	}
	return false, fmt.Errorf("%q is not on or off: %w", s, errs.ErrInvalidArgument)
}

// writer writes a dynamic or fixed VDI to a file.
//
// Layout: header in the first sector, the block map right after it at 0x200,
// data blocks from the next multiple of the block size on. A dynamic image
// appends blocks in the order they are first written; a fixed one maps block
// i to data block i and sizes the file at once. The map and the header are
// written at Commit.
type writer struct {
	t       disk.FileTarget
	name    string
	fd      int // -1 when holes cannot be punched
	size    int64
	bs      int64
	blocks  int64
	static  bool
	offData int64
	h       header

	mu        sync.Mutex
	tab       [][]uint32 // block map chunks; nil chunk: all free
	nalloc    uint32
	committed bool
	closed    bool
}

var (
	_ disk.Writer   = (*writer)(nil)
	_ disk.Granular = (*writer)(nil)
)

// newWriter starts an image of size bytes (rounded up to a sector) with
// blocks of bs bytes, a power of two from 512 to 1 MiB.
func newWriter(t disk.FileTarget, size int64, static bool, bs int64) (*writer, error) {
	name := t.Name()
	if size < 0 {
		return nil, fmt.Errorf("vdi %s: negative size %d: %w", name, size, errs.ErrInvalidArgument)
	}
	if limit := int64(maxBlocks) * bs; size > limit {
		return nil, fmt.Errorf("vdi %s: size %d is larger than the %d bytes ferry writes (%d blocks of %d bytes): %w", name, size, limit, maxBlocks, bs, errs.ErrInvalidArgument)
	}
	size = (size + sectorSize - 1) &^ (sectorSize - 1)
	blocks := (size + bs - 1) / bs
	offData := (mapOffset + 4*blocks + bs - 1) / bs * bs
	w := &writer{
		t: t, name: name, fd: -1, size: size, bs: bs, blocks: blocks, static: static, offData: offData,
		tab: make([][]uint32, (blocks+chunkEntries-1)/chunkEntries),
		h: header{
			text:       banner,
			version:    version11,
			headerSize: headerV1Plus,
			imageType:  typeNormal,
			offBlocks:  mapOffset,
			offData:    uint32(offData),
			sectorSize: sectorSize,
			diskSize:   uint64(size),
			blockSize:  uint32(bs),
			blocks:     uint32(blocks),
			uuidImage:  newUUID(),
			uuidModify: newUUID(),
		},
	}
	fileSize := offData
	if static {
		w.h.imageType = typeFixed
		fileSize += blocks * bs
	}
	if err := t.Truncate(0); err != nil {
		return nil, fmt.Errorf("vdi %s: truncate: %w", name, err)
	}
	if err := t.Truncate(fileSize); err != nil {
		return nil, fmt.Errorf("vdi %s: set file size %d: %w", name, fileSize, err)
	}
	if fd, ok := t.(interface{ Fd() uintptr }); ok {
		w.fd = int(fd.Fd())
	}
	return w, nil
}

func (w *writer) Size() int64      { return w.size }
func (w *writer) Sequential() bool { return false }

// AllocationUnit is the block size: Convert writes whole blocks.
func (w *writer) AllocationUnit() int64 { return w.bs }

func (w *writer) checkRange(op string, off, n int64) error {
	if off < 0 || n < 0 || off > w.size || n > w.size-off {
		return fmt.Errorf("vdi %s: %s of %d bytes at %d beyond size %d: %w", w.name, op, n, off, w.size, errs.ErrInvalidArgument)
	}
	return nil
}

// usable reports whether writes are still accepted; w.mu must be held.
func (w *writer) usable() error {
	switch {
	case w.closed:
		return fmt.Errorf("vdi %s: writer is closed: %w", w.name, errs.ErrFailedPrecondition)
	case w.committed:
		return fmt.Errorf("vdi %s: writer is committed: %w", w.name, errs.ErrFailedPrecondition)
	}
	return nil
}

// get returns block b's map entry; w.mu must be held (or the map frozen).
func (w *writer) get(b int64) uint32 {
	c := w.tab[b>>chunkShift]
	if c == nil {
		return blockFree
	}
	return c[b&(chunkEntries-1)]
}

// set records block b's map entry; w.mu must be held.
func (w *writer) set(b int64, e uint32) {
	ci := b >> chunkShift
	c := w.tab[ci]
	if c == nil {
		c = make([]uint32, min(chunkEntries, w.blocks-ci<<chunkShift))
		for i := range c {
			c[i] = blockFree
		}
		w.tab[ci] = c
	}
	c[b&(chunkEntries-1)] = e
}

// WriteAt writes p at virtual offset off. Blocks are allocated on their
// first non-zero write; zeros written where nothing was are skipped.
func (w *writer) WriteAt(p []byte, off int64) (int, error) {
	if err := w.checkRange("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		w.mu.Lock()
		defer w.mu.Unlock()
		return 0, w.usable()
	}
	done := 0
	for done < len(p) {
		n, err := w.writeBatch(p[done:], off+int64(done))
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// piece is the part of a write inside one block.
type piece struct {
	b      int64 // virtual block
	lo, hi int   // range in p
	foff   int64 // file offset; -1: not written
}

// writeBatch writes up to batchBlocks blocks' worth of p and returns how much
// of p it covered.
func (w *writer) writeBatch(p []byte, off int64) (int, error) {
	var pcs [batchBlocks]piece
	var zero [batchBlocks]bool
	np, pos := 0, 0
	for pos < len(p) && np < batchBlocks {
		o := off + int64(pos)
		b := o / w.bs
		k := int(min(int64(len(p)-pos), (b+1)*w.bs-o))
		pcs[np] = piece{b: b, lo: pos, hi: pos + k}
		zero[np] = allZero(p[pos : pos+k])
		pos += k
		np++
	}

	w.mu.Lock()
	if err := w.usable(); err != nil {
		w.mu.Unlock()
		return 0, err
	}
	for i := range pcs[:np] {
		pc := &pcs[i]
		e := w.get(pc.b)
		if !allocated(e) {
			if zero[i] { // reads as zeros already
				pc.foff = -1
				continue
			}
			if w.static {
				e = uint32(pc.b)
			} else {
				e = w.nalloc
				w.nalloc++
			}
			w.set(pc.b, e)
		}
		pc.foff = w.offData + int64(e)*w.bs + (off+int64(pc.lo))%w.bs
	}
	w.mu.Unlock()

	// One write per run of pieces that are contiguous in the file too.
	for i := 0; i < np; {
		if pcs[i].foff < 0 {
			i++
			continue
		}
		j := i + 1
		for j < np && pcs[j].foff == pcs[j-1].foff+int64(pcs[j-1].hi-pcs[j-1].lo) {
			j++
		}
		if _, err := w.t.WriteAt(p[pcs[i].lo:pcs[j-1].hi], pcs[i].foff); err != nil {
			return pcs[i].lo, fmt.Errorf("vdi %s: write block %d at %#x: %w", w.name, pcs[i].b, pcs[i].foff, err)
		}
		i = j
	}
	return pos, nil
}

func allZero(p []byte) bool {
	for len(p) > 0 {
		k := min(len(p), len(zeros))
		if !bytes.Equal(p[:k], zeros[:k]) {
			return false
		}
		p = p[k:]
	}
	return true
}

// Zero makes [off, off+n) read as zeros. Blocks never written already do and
// cost nothing; in written blocks the range is punched out of the file where
// the file system can, and overwritten with zeros where it cannot.
func (w *writer) Zero(off, n int64) error {
	if err := w.checkRange("zero", off, n); err != nil {
		return err
	}
	type run struct{ foff, n int64 }
	var runs []run
	for end := off + n; off < end; {
		ci := off / w.bs >> chunkShift
		cend := min(end, (ci+1)<<chunkShift*w.bs)
		runs = runs[:0]
		w.mu.Lock()
		if err := w.usable(); err != nil {
			w.mu.Unlock()
			return err
		}
		if w.tab[ci] != nil {
			for o := off; o < cend; {
				b := o / w.bs
				k := min(cend-o, (b+1)*w.bs-o)
				if e := w.get(b); allocated(e) {
					fo := w.offData + int64(e)*w.bs + o%w.bs
					if l := len(runs) - 1; l >= 0 && runs[l].foff+runs[l].n == fo {
						runs[l].n += k
					} else {
						runs = append(runs, run{fo, k})
					}
				}
				o += k
			}
		}
		w.mu.Unlock()
		for _, r := range runs {
			if err := w.clear(r.foff, r.n); err != nil {
				return fmt.Errorf("vdi %s: zero %d bytes at %#x: %w", w.name, r.n, r.foff, err)
			}
		}
		off = cend
	}
	return nil
}

// clear zeros n bytes of the file at off.
func (w *writer) clear(off, n int64) error {
	if w.fd >= 0 && unix.Fallocate(w.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n) == nil {
		return nil
	}
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := w.t.WriteAt(zeros[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// Commit sizes the file to hold every allocated block, then writes the block
// map and, last, the header.
func (w *writer) Commit(ctx context.Context) error {
	w.mu.Lock()
	if err := w.usable(); err != nil {
		w.mu.Unlock()
		return err
	}
	w.committed = true // the map is frozen from here on
	nalloc := int64(w.nalloc)
	w.mu.Unlock()

	if w.static {
		nalloc = w.blocks
	} else if err := w.t.Truncate(w.offData + nalloc*w.bs); err != nil {
		return fmt.Errorf("vdi %s: set file size: %w", w.name, err)
	}
	buf := make([]byte, min(4*w.blocks, 1<<20))
	for i := int64(0); i < w.blocks; {
		if err := ctx.Err(); err != nil {
			return err
		}
		k := min(w.blocks-i, int64(len(buf)/4))
		for j := range k {
			e := uint32(i + j)
			if !w.static {
				e = w.get(i + j)
			}
			binary.LittleEndian.PutUint32(buf[4*j:], e)
		}
		if _, err := w.t.WriteAt(buf[:4*k], mapOffset+4*i); err != nil {
			return fmt.Errorf("vdi %s: write block map: %w", w.name, err)
		}
		i += k
	}
	h := w.h
	h.allocated = uint32(nalloc)
	if _, err := w.t.WriteAt(h.marshal(), 0); err != nil {
		return fmt.Errorf("vdi %s: write header: %w", w.name, err)
	}
	return nil
}

// Close releases the writer. Without Commit the output is incomplete; the
// registry removes the file.
func (w *writer) Close() error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	return nil
}
