package vhd

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// dataAlign aligns the data of every block (after its bitmap) in the file.
const dataAlign = 4096

// dynWriter writes a dynamic or differencing VHD in one sequential pass:
// footer copy, dynamic header, BAT, parent locators, the blocks in LBA
// order (bitmap then data), footer.
//
// On a FileTarget the BAT is filled in at Commit, so blocks are allocated
// as they are written; data goes straight to the file, so the parts of a
// block never written stay holes. On a plain Target (a stream) the BAT
// goes out first, so the blocks to allocate come from
// CreateOptions.Source's extent map, and each block is assembled in a
// buffer and written whole.
type dynWriter struct {
	name string
	t    disk.Target
	ft   disk.FileTarget // nil when streaming

	size, bs, bmSize, nblocks int64

	footer    []byte
	hdr       dynHeader
	batOff    int64
	bat       []uint32
	locs      []locBlob
	dataStart int64

	plan []uint64 // streaming: blocks to allocate, a bitset

	diff   bool
	parent disk.Image

	mu      sync.Mutex
	st      writeState
	next    int64  // end of the last range given
	cur     int64  // block being filled, or -1
	curOff  int64  // on a file: its file offset
	bits    []byte // its bitmap
	buf     []byte // streaming: its bitmap and data
	done    int64  // blocks below this are written or skipped
	fileOff int64  // file offset of the next block
	emitted int64  // streaming: bytes written to t
	zeros   []byte
}

var _ disk.Writer = (*dynWriter)(nil)

type locBlob struct {
	code uint32
	off  int64
	data []byte
}

func newDynamic(ctx context.Context, t disk.Target, name string, size, bs int64, opts *disk.CreateOptions) (*dynWriter, error) {
	w := &dynWriter{name: name, t: t, size: size, bs: bs, bmSize: bitmapBytes(bs), cur: -1}
	w.ft, _ = t.(disk.FileTarget)
	w.nblocks = (size + bs - 1) / bs
	entries := max(w.nblocks, 1) // qemu wants at least one entry
	typ := uint32(typeDynamic)
	w.hdr = dynHeader{
		dataOffset:  ^uint64(0),
		tableOffset: footerSize + headerSize,
		version:     headerVersion,
		maxEntries:  uint32(entries),
		blockSize:   uint32(bs),
	}
	if opts.Backing != nil {
		typ = typeDiff
		if err := w.setParent(opts); err != nil {
			return nil, err
		}
	}
	ft := newFooter(size, typ, footerSize)
	w.footer = ft.marshal()

	// Layout: footer copy, header, BAT, locators, then blocks whose data
	// is aligned.
	w.batOff = footerSize + headerSize
	off := w.batOff + roundUp(entries*4, sectorSize)
	for i := range w.locs {
		l := &w.locs[i]
		l.off = off
		space := roundUp(int64(len(l.data)), sectorSize)
		w.hdr.locators[i] = locator{code: l.code, space: uint32(space), length: uint32(len(l.data)), offset: uint64(off)}
		off += space
	}
	w.dataStart = roundUp(off+w.bmSize, dataAlign) - w.bmSize
	w.fileOff = w.dataStart
	w.bat = make([]uint32, entries)
	for i := range w.bat {
		w.bat[i] = unallocated
	}
	if w.ft != nil {
		return w, nil
	}
	if opts.Source == nil {
		return nil, fmt.Errorf("vhd %s: streaming a dynamic VHD needs the source's extent map (CreateOptions.Source) to write the BAT before the blocks; write to a file instead, or give the source: %w", name, errs.ErrInvalidArgument)
	}
	if err := w.planFrom(ctx, opts.Source); err != nil {
		return nil, err
	}
	if err := w.writeMetadata(); err != nil {
		return nil, err
	}
	return w, nil
}

// setParent records the parent of a differencing disk: its UUID and
// timestamp, its name, and the W2ru, W2ku and MacX locators.
func (w *dynWriter) setParent(opts *disk.CreateOptions) error {
	p := opts.Backing
	pi := p.Info()
	if pi.Format != "vhd" {
		return fmt.Errorf("vhd %s: backing image %s is %s; a differencing VHD needs a VHD parent: %w", w.name, pi.Filename, pi.Format, errs.ErrInvalidArgument)
	}
	if f := opts.BackingFormat; f != "" && f != "vhd" && f != "vpc" {
		return fmt.Errorf("vhd %s: backing format %q; a differencing VHD needs a VHD parent: %w", w.name, f, errs.ErrInvalidArgument)
	}
	if p.Size() != w.size {
		return fmt.Errorf("vhd %s: size %d differs from the parent's %d; a differencing VHD has its parent's size: %w", w.name, w.size, p.Size(), errs.ErrInvalidArgument)
	}
	us, _ := pi.Specific["uuid"].(string)
	u, err := parseUUID(us)
	if err != nil {
		return fmt.Errorf("vhd %s: parent %s: %v: %w", w.name, pi.Filename, err, errs.ErrInvalidArgument)
	}
	var ts uint32
	switch v := pi.Specific["timestamp"].(type) {
	case time.Time:
		ts = toVHDTime(v)
	case string:
		tt, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return fmt.Errorf("vhd %s: parent %s: invalid timestamp %q: %w", w.name, pi.Filename, v, errs.ErrInvalidArgument)
		}
		ts = toVHDTime(tt)
	default:
		return fmt.Errorf("vhd %s: parent %s has no timestamp: %w", w.name, pi.Filename, errs.ErrInvalidArgument)
	}
	path := opts.BackingFile
	if path == "" {
		path = pi.Filename
	}
	if path == "" {
		return fmt.Errorf("vhd %s: differencing VHD needs the parent's file name (CreateOptions.BackingFile): %w", w.name, errs.ErrInvalidArgument)
	}
	w.diff, w.parent = true, p
	w.hdr.parentUUID, w.hdr.parentTimestamp = u, ts
	childPath := ""
	if w.ft != nil {
		childPath = w.ft.Name()
	}
	name, locs := parentLocators(path, childPath)
	copy(w.hdr.parentName[:], encodeUTF16(name, binary.BigEndian))
	w.locs = locs
	return nil
}

// parentLocators returns the parent unicode name and the locators for a
// parent given as path (relative paths are relative to the child's
// directory), written the way XenServer's blktap does: W2ru ".\name",
// W2ku the absolute path, both UTF-16LE with backslashes; MacX
// "file://./name" in UTF-8. childPath may be "" (streaming), then only
// what path alone determines is recorded.
func parentLocators(path, childPath string) (string, []locBlob) {
	var abs, rel string
	childDir := ""
	if childPath != "" {
		if a, err := filepath.Abs(childPath); err == nil {
			childDir = filepath.Dir(a)
		}
	}
	if filepath.IsAbs(path) {
		abs = filepath.Clean(path)
		if childDir != "" {
			if r, err := filepath.Rel(childDir, abs); err == nil {
				rel = r
			}
		}
	} else {
		rel = filepath.Clean(path)
		if childDir != "" {
			abs = filepath.Join(childDir, rel)
		}
	}
	var locs []locBlob
	if rel != "" {
		r := filepath.ToSlash(rel)
		if !strings.HasPrefix(r, "../") {
			r = "./" + r
		}
		locs = append(locs, locBlob{code: platW2ru, data: encodeUTF16(strings.ReplaceAll(strings.Replace(r, "./", `.\`, 1), "/", `\`), binary.LittleEndian)})
	}
	if abs != "" {
		locs = append(locs, locBlob{code: platW2ku, data: encodeUTF16(strings.ReplaceAll(filepath.ToSlash(abs), "/", `\`), binary.LittleEndian)})
	}
	if rel != "" {
		r := filepath.ToSlash(rel)
		if !strings.HasPrefix(r, "../") {
			r = "./" + r
		}
		locs = append(locs, locBlob{code: platMacX, data: []byte("file://" + r)})
	}
	name := rel
	if name == "" {
		name = filepath.Base(abs)
	}
	if len(encodeUTF16(name, binary.BigEndian)) > 510 {
		name = filepath.Base(name)
	}
	if len(encodeUTF16(name, binary.BigEndian)) > 510 {
		name = ""
	}
	return name, locs
}

// planFrom marks the blocks to allocate and assigns their BAT entries in
// LBA order: the blocks a Data extent of src touches; in a differencing
// disk also those a Zero extent touches (zeros hide the parent), and those
// where src has no data but the parent has, since a conversion over the
// parent zeroes what the parent holds there.
func (w *dynWriter) planFrom(ctx context.Context, src disk.Image) error {
	w.plan = make([]uint64, (w.nblocks+63)/64)
	mark := func(off, end int64) {
		end = min(end, w.size)
		if off < 0 || off >= end {
			return
		}
		for b := off / w.bs; b <= (end-1)/w.bs; b++ {
			w.plan[b/64] |= 1 << (b % 64)
		}
	}
	for e, err := range src.Extents(ctx, 0, w.size) {
		if err != nil {
			return fmt.Errorf("vhd %s: extent map of the source: %w", w.name, err)
		}
		switch {
		case e.Kind == disk.Data, w.diff && e.Kind == disk.Zero:
			mark(e.Off, e.End())
		case w.diff:
			end := min(e.End(), w.parent.Size())
			if e.Off >= end {
				continue
			}
			for pe, err := range w.parent.Extents(ctx, e.Off, end-e.Off) {
				if err != nil {
					return fmt.Errorf("vhd %s: extent map of the parent: %w", w.name, err)
				}
				if pe.Kind == disk.Data {
					mark(pe.Off, pe.End())
				}
			}
		}
	}
	off := w.dataStart
	for b := range w.nblocks {
		if w.planned(b) {
			if err := w.setEntry(b, off); err != nil {
				return err
			}
			off += w.bmSize + w.bs
		}
	}
	return nil
}

func (w *dynWriter) planned(b int64) bool { return w.plan[b/64]&(1<<(b%64)) != 0 }

func (w *dynWriter) setEntry(b, off int64) error {
	s := off / sectorSize
	if s >= unallocated {
		return fmt.Errorf("vhd %s: block %d at %#x beyond the VHD's 2 TiB file limit: %w", w.name, b, off, errs.ErrInvalidArgument)
	}
	w.bat[b] = uint32(s)
	return nil
}

// writeMetadata writes everything before the first block.
func (w *dynWriter) writeMetadata() error {
	meta := make([]byte, w.dataStart)
	copy(meta, w.footer)
	copy(meta[footerSize:], w.hdr.marshal())
	batBytes := meta[w.batOff : w.batOff+roundUp(int64(len(w.bat))*4, sectorSize)]
	for i := range batBytes {
		batBytes[i] = 0xFF
	}
	for i, e := range w.bat {
		binary.BigEndian.PutUint32(batBytes[4*i:], e)
	}
	for _, l := range w.locs {
		copy(meta[l.off:], l.data)
	}
	return w.out(meta, 0)
}

// out writes b at file offset off: WriteAt on a file, in order on a
// stream (zeros fill a gap).
func (w *dynWriter) out(b []byte, off int64) error {
	if w.ft != nil {
		if _, err := w.ft.WriteAt(b, off); err != nil {
			return w.st.fail(fmt.Errorf("vhd %s: write at %#x: %w", w.name, off, err))
		}
		return nil
	}
	if off < w.emitted {
		return w.st.fail(fmt.Errorf("vhd %s: internal error: stream write at %#x behind %#x", w.name, off, w.emitted))
	}
	for w.emitted < off {
		m := min(off-w.emitted, zeroChunk)
		if _, err := w.t.Write(w.zeroBuf()[:m]); err != nil {
			return w.st.fail(fmt.Errorf("vhd %s: write at %#x: %w", w.name, w.emitted, err))
		}
		w.emitted += m
	}
	if _, err := w.t.Write(b); err != nil {
		return w.st.fail(fmt.Errorf("vhd %s: write at %#x: %w", w.name, off, err))
	}
	w.emitted += int64(len(b))
	return nil
}

func (w *dynWriter) zeroBuf() []byte {
	if w.zeros == nil {
		w.zeros = make([]byte, zeroChunk)
	}
	return w.zeros
}

func (w *dynWriter) Size() int64      { return w.size }
func (w *dynWriter) Sequential() bool { return true }

// AllocationUnit is the block size for a dynamic disk, whose blocks are
// written whole; a differencing disk keeps sector granularity so that only
// what changed hides the parent.
func (w *dynWriter) AllocationUnit() int64 {
	if w.diff {
		return 0
	}
	return w.bs
}

func (w *dynWriter) WriteAt(p []byte, off int64) (int, error) {
	if err := w.advance(off, int64(len(p)), p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (w *dynWriter) Zero(off, n int64) error { return w.advance(off, n, nil) }

// advance handles WriteAt (p != nil) and Zero (p == nil).
func (w *dynWriter) advance(off, n int64, p []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.st.usable(w.name); err != nil {
		return err
	}
	if err := checkRange(w.name, off, n, w.size); err != nil {
		return err
	}
	if off < w.next {
		return w.st.fail(fmt.Errorf("vhd %s: range at %d is behind the previous one ending at %d: the dynamic VHD writer is sequential: %w", w.name, off, w.next, errs.ErrInvalidArgument))
	}
	if p == nil && !w.diff {
		// Unwritten sectors of a dynamic disk read as zeros, and the
		// block buffer is zero where nothing was written.
		w.next = off + n
		return nil
	}
	for n > 0 {
		blk := off / w.bs
		inb := off - blk*w.bs
		m := min(w.bs-inb, n)
		var piece []byte
		if p != nil {
			piece = p[:m]
		}
		skip, err := w.enter(blk, piece)
		if err != nil {
			return err
		}
		switch {
		case skip:
		case w.ft != nil:
			if err := w.putDirect(blk, inb, m, piece); err != nil {
				return err
			}
		default:
			if w.diff {
				if err := w.markDiff(blk, inb, m); err != nil {
					return err
				}
			}
			data := w.buf[w.bmSize+inb : w.bmSize+inb+m]
			if p != nil {
				copy(data, piece)
			} else {
				clear(data)
			}
		}
		off += m
		n -= m
		if p != nil {
			p = p[m:]
		}
	}
	w.next = off
	return nil
}

// enter makes blk the block being filled, writing out the previous one
// and, when streaming, the planned blocks in between. skip reports an
// all-zero write into a block the plan leaves unallocated.
func (w *dynWriter) enter(blk int64, data []byte) (skip bool, err error) {
	if blk == w.cur {
		return false, nil
	}
	if err := w.flushCur(); err != nil {
		return false, err
	}
	if err := w.fillPlanned(blk); err != nil {
		return false, err
	}
	if w.plan != nil && !w.planned(blk) {
		if data != nil && allZero(data) {
			return true, nil
		}
		return false, w.st.fail(fmt.Errorf("vhd %s: data for block %d ([%d, %d)), which the source's extent map reported as unallocated: a streamed dynamic VHD lays out its BAT from that map before the data: %w",
			w.name, blk, blk*w.bs, min((blk+1)*w.bs, w.size), errs.ErrInvalidArgument))
	}
	if w.ft != nil {
		if w.bits == nil {
			w.bits = make([]byte, w.bmSize)
		} else {
			clear(w.bits)
		}
		w.curOff = w.fileOff
		if err := w.setEntry(blk, w.curOff); err != nil {
			return false, w.st.fail(err)
		}
		w.fileOff += w.bmSize + w.bs
	} else {
		if w.buf == nil {
			w.buf = make([]byte, w.bmSize+w.bs)
		} else {
			clear(w.buf)
		}
		w.bits = w.buf[:w.bmSize]
	}
	w.cur = blk
	return false, nil
}

// putDirect writes a piece of the current block straight to the file
// (p nil: zeros). Sectors never written are holes in the file, which read
// as zeros. In a differencing disk it sets the bitmap bits, and a
// partially covered sector not written before is first filled from the
// parent.
func (w *dynWriter) putDirect(blk, inb, m int64, p []byte) error {
	data := w.curOff + w.bmSize
	if p != nil {
		if _, err := w.ft.WriteAt(p, data+inb); err != nil {
			return w.st.fail(fmt.Errorf("vhd %s: write at %#x: %w", w.name, data+inb, err))
		}
	}
	if !w.diff {
		return nil
	}
	s0, s1 := inb/sectorSize, (inb+m-1)/sectorSize
	for _, s := range []int64{s0, s1} {
		lo, hi := s*sectorSize, (s+1)*sectorSize
		if a, b := max(inb, lo), min(inb+m, hi); a > lo || b < hi {
			var sec []byte
			if bitSet(w.bits, int(s)) {
				if p != nil {
					continue // written above
				}
				sec = make([]byte, b-a) // zeros over earlier bytes
				lo = a
			} else {
				sec = make([]byte, sectorSize)
				if err := w.readParent(sec, blk*w.bs+lo); err != nil {
					return err
				}
				if p != nil {
					copy(sec[a-lo:b-lo], p[a-inb:b-inb])
				} else {
					clear(sec[a-lo : b-lo])
				}
			}
			if _, err := w.ft.WriteAt(sec, data+lo); err != nil {
				return w.st.fail(fmt.Errorf("vhd %s: write at %#x: %w", w.name, data+lo, err))
			}
		}
		if s0 == s1 {
			break
		}
	}
	setBits(w.bits, s0, s1+1)
	return nil
}

// markDiff sets the bitmap bits of [inb, inb+m) in the current block of a
// differencing disk, first filling partially covered sectors that were
// not written yet from the parent.
func (w *dynWriter) markDiff(blk, inb, m int64) error {
	bm := w.bits
	s0, s1 := inb/sectorSize, (inb+m-1)/sectorSize
	for _, s := range []int64{s0, s1} {
		partial := inb > s*sectorSize || inb+m < (s+1)*sectorSize
		if partial && !bitSet(bm, int(s)) {
			sec := w.buf[w.bmSize+s*sectorSize : w.bmSize+(s+1)*sectorSize]
			if err := w.readParent(sec, blk*w.bs+s*sectorSize); err != nil {
				return err
			}
			setBit(bm, int(s))
		}
		if s0 == s1 {
			break
		}
	}
	setBits(bm, s0, s1+1)
	return nil
}

func (w *dynWriter) readParent(b []byte, off int64) error {
	clear(b)
	ps := w.parent.Size()
	if off >= ps {
		return nil
	}
	m := min(int64(len(b)), ps-off)
	if n, err := w.parent.ReadAt(b[:m], off); int64(n) < m {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return w.st.fail(fmt.Errorf("vhd %s: read parent at %d: %w", w.name, off, err))
	}
	return nil
}

// setBits sets bits [from, to).
func setBits(bm []byte, from, to int64) {
	for from < to && from%8 != 0 {
		setBit(bm, int(from))
		from++
	}
	for ; from+8 <= to; from += 8 {
		bm[from/8] = 0xFF
	}
	for ; from < to; from++ {
		setBit(bm, int(from))
	}
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// flushCur writes out the block being filled: its bitmap on a file (the
// data is there already), the whole block on a stream.
func (w *dynWriter) flushCur() error {
	if w.cur < 0 {
		return nil
	}
	blk := w.cur
	w.cur = -1
	w.done = blk + 1
	if !w.diff {
		// Every sector of a written block is valid, as qemu and
		// XenServer write it.
		for i := range w.bits {
			w.bits[i] = 0xFF
		}
	}
	if w.ft != nil {
		return w.out(w.bits, w.curOff)
	}
	return w.out(w.buf, int64(w.bat[blk])*sectorSize)
}

// fillPlanned writes the planned blocks in [done, upto) that received no
// data: zeros, with a full bitmap (an empty one in a differencing disk).
func (w *dynWriter) fillPlanned(upto int64) error {
	if w.plan == nil {
		w.done = max(w.done, upto)
		return nil
	}
	for b := w.nextPlanned(w.done); b < upto; b = w.nextPlanned(b + 1) {
		bm := make([]byte, w.bmSize)
		if !w.diff {
			for i := range bm {
				bm[i] = 0xFF
			}
		}
		off := int64(w.bat[b]) * sectorSize
		if err := w.out(bm, off); err != nil {
			return err
		}
		for z := int64(0); z < w.bs; z += zeroChunk {
			if err := w.out(w.zeroBuf()[:min(zeroChunk, w.bs-z)], off+w.bmSize+z); err != nil {
				return err
			}
		}
	}
	w.done = max(w.done, upto)
	return nil
}

// nextPlanned returns the first planned block at or after b, or nblocks.
func (w *dynWriter) nextPlanned(b int64) int64 {
	for b < w.nblocks {
		word := w.plan[b/64] >> (b % 64)
		if word != 0 {
			b += int64(bits.TrailingZeros64(word))
			return min(b, w.nblocks)
		}
		b = (b/64 + 1) * 64
	}
	return w.nblocks
}

func (w *dynWriter) Commit(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.st.usable(w.name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := w.flushCur(); err != nil {
		return err
	}
	if err := w.fillPlanned(w.nblocks); err != nil {
		return err
	}
	end := w.fileOff
	if w.plan != nil {
		end = max(w.emitted, w.dataStart)
	} else if err := w.writeMetadata(); err != nil {
		return err
	}
	if err := w.out(w.footer, end); err != nil {
		return err
	}
	if w.ft != nil {
		if err := w.ft.Truncate(end + footerSize); err != nil {
			return w.st.fail(fmt.Errorf("vhd %s: truncate: %w", w.name, err))
		}
	}
	w.st.committed = true
	w.buf, w.bits = nil, nil
	return nil
}

func (w *dynWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.st.closed = true
	w.buf, w.bits = nil, nil
	return nil
}
