package vmdk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// maxGrainSector bounds the sectors a 32-bit grain table entry reaches.
const maxGrainSector = int64(1) << 32

// sparseWriter writes a monolithicSparse VMDK laid out as qemu-img does:
// header, embedded descriptor, redundant grain directory and tables, grain
// directory and tables, padding to a grain, then grains in the order they
// are first written. Tables live in memory until Commit writes them; the
// grains go straight to the file.
type sparseWriter struct {
	t     disk.FileTarget
	size  int64
	grain int64
	hdr   header
	desc  string
	nGTs  int64
	// sector layout
	gdSectors, rgd, gd, overhead int64

	mu    sync.Mutex
	state int
	next  int64 // sector of the next grain to allocate
	gts   map[int64]*gtState
}

// gtState is one grain table being built: entries and, per grain, how many
// bytes were written (to find grains with holes at Commit).
type gtState struct {
	e      [writeGTEs]uint32
	filled [writeGTEs]uint32
}

var _ disk.Writer = (*sparseWriter)(nil)

func newSparseWriter(t disk.Target, size int64, c createConfig) (*sparseWriter, error) {
	ft, ok := t.(disk.FileTarget)
	if !ok {
		return nil, fmt.Errorf("vmdk: monolithicSparse needs a seekable output file (subformat=streamOptimized writes a stream): %w", errs.ErrInvalidArgument)
	}
	w := &sparseWriter{
		t:     ft,
		size:  size,
		grain: writeGrainSectors * sectorSize,
		gts:   map[int64]*gtState{},
	}
	w.hdr = header{
		version:    1,
		flags:      flagValidNL | flagRGD,
		capacity:   uint64(size / sectorSize),
		grainSize:  writeGrainSectors,
		descOffset: writeDescOffset,
		descSize:   writeDescSectors,
		numGTEs:    writeGTEs,
	}
	w.nGTs = w.hdr.numGTs()
	gtSectors := int64(writeGTEs * 4 / sectorSize)
	w.gdSectors = max(1, sectorsFor(w.nGTs*4))
	w.rgd = writeDescOffset + writeDescSectors
	w.gd = w.rgd + w.gdSectors + w.nGTs*gtSectors
	end := w.gd + w.gdSectors + w.nGTs*gtSectors
	w.overhead = (end + writeGrainSectors - 1) / writeGrainSectors * writeGrainSectors
	if w.overhead+w.hdr.numGrains()*writeGrainSectors > maxGrainSector {
		limit := (maxGrainSector - w.overhead) * sectorSize
		return nil, fmt.Errorf("vmdk: monolithicSparse of %d bytes does not fit the 32-bit sector offsets of its grain tables (at most about %d bytes; streamOptimized or monolithicFlat hold more): %w", size, limit, errs.ErrInvalidArgument)
	}
	w.hdr.rgdOffset, w.hdr.gdOffset, w.hdr.overhead = uint64(w.rgd), uint64(w.gd), uint64(w.overhead)
	w.next = w.overhead
	w.desc = (&descriptorText{
		cid:        newCID(),
		createType: MonolithicSparse,
		extents:    []extentLine{{access: "RW", sectors: size / sectorSize, typ: "SPARSE", file: targetBase(t)}},
		adapter:    c.adapter,
		hwVersion:  c.hwVersion,
		tools:      c.tools,
		sectors:    size / sectorSize,
	}).String()
	if len(w.desc) > writeDescSectors*sectorSize {
		return nil, fmt.Errorf("vmdk: descriptor of %d bytes does not fit %d sectors: %w", len(w.desc), writeDescSectors, errs.ErrInvalidArgument)
	}
	return w, nil
}

func (w *sparseWriter) Size() int64      { return w.size }
func (w *sparseWriter) Sequential() bool { return false }

// AllocationUnit is the grain size: Convert writes whole grains.
func (w *sparseWriter) AllocationUnit() int64 { return w.grain }

func (w *sparseWriter) check(off, n int64) error {
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

// piece is the part of a write that falls in one grain.
type piece struct {
	g, in  int64
	pos, n int
	zero   bool
	host   int64 // file offset, -1: nothing to write
}

// WriteAt writes p. Grains are allocated at the end of the file under the
// lock, consecutively for one call, so that a run of new grains is one
// write. All-zero pieces of unallocated grains are not written.
func (w *sparseWriter) WriteAt(p []byte, off int64) (int, error) {
	if err := w.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	var pieces []piece
	for pos := 0; pos < len(p); {
		o := off + int64(pos)
		g, in := o/w.grain, o%w.grain
		n := int(min(w.grain-in, int64(len(p)-pos)))
		pieces = append(pieces, piece{g: g, in: in, pos: pos, n: n, zero: isZero(p[pos : pos+n])})
		pos += n
	}
	if err := w.resolve(pieces, true); err != nil {
		return 0, err
	}
	if err := w.writeRuns(p, pieces); err != nil {
		return 0, err
	}
	return len(p), nil
}

// resolve finds (and, for writes, allocates) the grain of every piece.
func (w *sparseWriter) resolve(pieces []piece, alloc bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range pieces {
		pc := &pieces[i]
		ti, j := pc.g/writeGTEs, pc.g%writeGTEs
		st := w.gts[ti]
		var v uint32
		if st != nil {
			v = st.e[j]
		}
		if v == 0 && (!alloc || pc.zero) {
			pc.host = -1
			continue
		}
		if v == 0 {
			if w.next+writeGrainSectors > maxGrainSector {
				return fmt.Errorf("vmdk %s: file would pass 2 TiB, the most grain tables reach: %w", w.t.Name(), errs.ErrInvalidArgument)
			}
			if st == nil {
				st = new(gtState)
				w.gts[ti] = st
			}
			v = uint32(w.next)
			st.e[j] = v
			w.next += writeGrainSectors
		}
		st.filled[j] = uint32(min(int64(st.filled[j])+int64(pc.n), w.grain))
		pc.host = int64(v)*sectorSize + pc.in
	}
	return nil
}

// writeRuns writes the pieces of p that have a host offset, joining those
// that are contiguous in the file into one write.
func (w *sparseWriter) writeRuns(p []byte, pieces []piece) error {
	for i := 0; i < len(pieces); {
		if pieces[i].host < 0 {
			i++
			continue
		}
		j, n := i+1, pieces[i].n
		for j < len(pieces) && pieces[j].host == pieces[i].host+int64(n) {
			n += pieces[j].n
			j++
		}
		if err := w.put(p[pieces[i].pos:pieces[i].pos+n], pieces[i].host); err != nil {
			return err
		}
		i = j
	}
	return nil
}

func (w *sparseWriter) put(b []byte, off int64) error {
	n, err := w.t.WriteAt(b, off)
	if err == nil && n != len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("vmdk %s: write at %d: %w", w.t.Name(), off, err)
	}
	return nil
}

// Zero writes zeros over the allocated grains of [off, off+n); unallocated
// grains already read as zeros and cost nothing.
func (w *sparseWriter) Zero(off, n int64) error {
	if err := w.check(off, n); err != nil {
		return err
	}
	var pieces []piece
	w.mu.Lock()
	span := w.grain * writeGTEs
	for o, end := off, off+n; o < end; {
		ti := o / span
		if w.gts[ti] == nil {
			o = min((ti+1)*span, end)
			continue
		}
		g, in := o/w.grain, o%w.grain
		k := int(min(w.grain-in, end-o))
		if w.gts[ti].e[g%writeGTEs] != 0 {
			pieces = append(pieces, piece{g: g, in: in, n: k})
		}
		o += int64(k)
	}
	w.mu.Unlock()
	if err := w.resolve(pieces, false); err != nil {
		return err
	}
	for _, pc := range pieces {
		if pc.host < 0 {
			continue
		}
		if err := w.put(zeros[:pc.n], pc.host); err != nil {
			return err
		}
	}
	return nil
}

// Commit fills the holes of partly written grains, writes the tables, the
// header and the descriptor, and sets the file's length.
func (w *sparseWriter) Commit(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state != stateOpen {
		return fmt.Errorf("vmdk %s: writer already committed or closed: %w", w.t.Name(), errs.ErrFailedPrecondition)
	}
	err := w.commit(ctx)
	if err != nil {
		w.state = stateFailed
		return err
	}
	w.state = stateCommitted
	return nil
}

func (w *sparseWriter) commit(ctx context.Context) error {
	// Grains written in part have holes in the file; write them whole so
	// the image is not a sparse file.
	buf := make([]byte, w.grain)
	for _, st := range w.gts {
		for j, v := range st.e {
			if v == 0 || int64(st.filled[j]) >= w.grain {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			off := int64(v) * sectorSize
			n, err := w.t.ReadAt(buf, off)
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("vmdk %s: read back grain at %d: %w", w.t.Name(), off, err)
			}
			clear(buf[n:])
			if err := w.put(buf, off); err != nil {
				return err
			}
		}
	}
	front := make([]byte, (writeDescOffset+writeDescSectors)*sectorSize)
	copy(front, w.hdr.marshal())
	copy(front[writeDescOffset*sectorSize:], w.desc)
	if err := w.put(front, 0); err != nil {
		return err
	}
	// [RGD][RGTs][GD][GTs][padding]: one region, written in chunks.
	chunk := make([]byte, 0, 1<<20)
	at := w.rgd * sectorSize
	emit := func(b []byte) error {
		for len(b) > 0 {
			k := copy(chunk[len(chunk):cap(chunk)], b)
			chunk = chunk[:len(chunk)+k]
			b = b[k:]
			if len(chunk) == cap(chunk) {
				if err := w.put(chunk, at); err != nil {
					return err
				}
				at += int64(len(chunk))
				chunk = chunk[:0]
			}
		}
		return nil
	}
	gtSectors := int64(writeGTEs * 4 / sectorSize)
	gt := make([]byte, writeGTEs*4)
	for _, dir := range []int64{w.rgd, w.gd} {
		gd := make([]byte, w.gdSectors*sectorSize)
		for i := range w.nGTs {
			binary.LittleEndian.PutUint32(gd[i*4:], uint32(dir+w.gdSectors+i*gtSectors))
		}
		if err := emit(gd); err != nil {
			return err
		}
		for i := range w.nGTs {
			clear(gt)
			if st := w.gts[i]; st != nil {
				for j, v := range st.e {
					binary.LittleEndian.PutUint32(gt[j*4:], v)
				}
			}
			if err := emit(gt); err != nil {
				return err
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	pad := w.overhead*sectorSize - (at + int64(len(chunk)))
	for pad > 0 {
		k := min(pad, int64(len(zeros)))
		if err := emit(zeros[:k]); err != nil {
			return err
		}
		pad -= k
	}
	if len(chunk) > 0 {
		if err := w.put(chunk, at); err != nil {
			return err
		}
	}
	if err := w.t.Truncate(w.next * sectorSize); err != nil {
		return fmt.Errorf("vmdk %s: set file size: %w", w.t.Name(), err)
	}
	return nil
}

// Close after Commit releases; without Commit it leaves the file to the
// caller to remove.
func (w *sparseWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.state = stateClosed
	w.gts = nil
	return nil
}
