package vhd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"

	"github.com/ferry-project/ferry/internal/disk"
	"github.com/ferry-project/ferry/internal/errs"
)

// streamName names a stream in messages.
const streamName = "stream"

// streamChunk bounds the runs Next returns.
const streamChunk = 1 << 20

// stream reads a dynamic VHD front to back: footer copy, dynamic header,
// BAT, then the blocks in file order, which must be LBA order, then the
// footer.
type stream struct {
	r    io.Reader
	log  *slog.Logger
	pos  int64 // bytes consumed from r
	info disk.Info

	copyRaw []byte
	size    int64
	bs      int64
	bmSize  int64
	bat     []uint32
	order   []int64 // allocated blocks, in file (and LBA) order
	next    int     // index in order of the next block

	// The block being read.
	inBlock bool
	blk     int64
	bits    []byte
	sec     int // next sector to look at
	secs    int // sectors of the block inside the disk
	data    int64

	buf     []byte
	scratch []byte
	done    bool
	closed  bool
}

var _ disk.Stream = (*stream)(nil)

func notStreamable(format string, a ...any) error {
	return fmt.Errorf("vhd %s: not streamable: %s: %w", streamName, fmt.Sprintf(format, a...), errs.ErrUnimplemented)
}

// openStream implements Format.OpenStream: dynamic VHDs whose blocks are
// stored in LBA order (as ferry writes them), and fixed VHDs when the
// stream's length is known (OpenOptions.Size: their only footer, which
// holds the size, comes after the data). Differencing VHDs need random
// access to their parent and are refused.
func openStream(ctx context.Context, r io.Reader, opts *disk.OpenOptions) (disk.Stream, error) {
	if opts == nil {
		opts = &disk.OpenOptions{}
	}
	s := &stream{r: r, log: logger(opts.Logger)}
	c := make([]byte, footerSize)
	if opts.Size > 0 && opts.Size < footerSize {
		return nil, corrupt(streamName, "stream of %d bytes is too small to hold a footer", opts.Size)
	}
	if err := s.readFull(c, "footer copy"); err != nil {
		return nil, err
	}
	ft, ok, sumOK := parseFooter(c)
	switch {
	case !ok || (sumOK && ft.diskType == typeFixed):
		if opts.Size <= 0 {
			return nil, notStreamable("no footer copy at offset 0, so this is a fixed VHD (or not a VHD): its size is in the footer after the data, so reading it as a stream needs the stream's length")
		}
		return newFixedStream(s, c, opts.Size)
	case !sumOK:
		return nil, corrupt(streamName, "footer copy checksum mismatch (stored %#x, computed %#x)", ft.checksum, checksumOf(c, 64))
	case ft.diskType == typeDiff:
		return nil, notStreamable("a differencing VHD needs random access to its parent; open the file instead")
	case ft.diskType != typeDynamic:
		return nil, notStreamable("footer copy of a %s disk at offset 0", subformatName(ft.diskType))
	}
	if ft.curSize > maxReadSize {
		return nil, corrupt(streamName, "claims a virtual size of %d bytes, more than %d", ft.curSize, int64(maxReadSize))
	}
	s.copyRaw, s.size = c, int64(ft.curSize)
	if ft.dataOffset < footerSize || ft.dataOffset > maxReadSize {
		return nil, corrupt(streamName, "dynamic header offset %#x out of range", ft.dataOffset)
	}
	if err := s.skipTo(int64(ft.dataOffset), "dynamic header"); err != nil {
		return nil, err
	}
	hb := make([]byte, headerSize)
	if err := s.readFull(hb, "dynamic header"); err != nil {
		return nil, err
	}
	h, ok, sumOK := parseHeader(hb)
	if !ok {
		return nil, corrupt(streamName, "no dynamic header (cookie %q) at %#x", headerCookie, ft.dataOffset)
	}
	if !sumOK {
		return nil, corrupt(streamName, "dynamic header checksum mismatch at %#x (stored %#x, computed %#x)", ft.dataOffset, h.checksum, checksumOf(hb, 36))
	}
	bs, nblocks, err := checkHeader(streamName, &h, s.size)
	if err != nil {
		return nil, err
	}
	s.bs, s.bmSize = bs, bitmapBytes(bs)
	if h.tableOffset < uint64(s.pos) {
		return nil, notStreamable("the BAT at %#x comes before the end of the dynamic header at %#x", h.tableOffset, s.pos)
	}
	if err := s.skipTo(int64(h.tableOffset), "BAT"); err != nil {
		return nil, err
	}
	// The BAT is read in pieces, so that memory grows only with what the
	// stream really holds.
	raw := make([]byte, min(nblocks*4, 64<<10))
	for i := int64(0); i < nblocks; {
		n := min(nblocks-i, int64(len(raw))/4)
		if err := s.readFull(raw[:4*n], "BAT"); err != nil {
			return nil, err
		}
		for k := range n {
			e := binary.BigEndian.Uint32(raw[4*k:])
			s.bat = append(s.bat, e)
			if e != unallocated {
				s.order = append(s.order, i+k)
			}
		}
		i += n
	}
	if err := s.skip((int64(h.maxEntries)-nblocks)*4, "BAT"); err != nil {
		return nil, err
	}
	batEnd := roundUp(s.pos, sectorSize)
	span := s.bmSize + bs
	slices.SortFunc(s.order, func(a, b int64) int { return int(int64(s.bat[a]) - int64(s.bat[b])) })
	for k, b := range s.order {
		off := int64(s.bat[b]) * sectorSize
		if off < batEnd {
			return nil, notStreamable("block %d at %#x comes before the end of the BAT at %#x", b, off, batEnd)
		}
		if k > 0 {
			p := s.order[k-1]
			if off < int64(s.bat[p])*sectorSize+span {
				return nil, corrupt(streamName, "block %d at %#x overlaps block %d at %#x", b, off, p, int64(s.bat[p])*sectorSize)
			}
			if b < p {
				return nil, notStreamable("block %d at %#x is stored after block %d: blocks are not in LBA order", b, off, p)
			}
		}
	}
	s.info = describe(streamName, &ft, s.size, bs, &h)
	return s, nil
}

// Allocated lists the ranges of the blocks the BAT allocates, known as
// soon as the stream is open: a superset of the runs Next returns (a
// sector left unset in a block's bitmap reads as zeros).
func (s *stream) Allocated() []disk.Extent {
	var out []disk.Extent
	blocks := slices.Clone(s.order)
	slices.Sort(blocks)
	for _, b := range blocks {
		off := b * s.bs
		end := min(off+s.bs, s.size)
		if off >= end {
			continue
		}
		if n := len(out); n > 0 && out[n-1].End() == off {
			out[n-1].Len += end - off
			continue
		}
		out = append(out, disk.Extent{Off: off, Len: end - off, Kind: disk.Data})
	}
	return out
}

func (s *stream) Size() int64     { return s.size }
func (s *stream) Info() disk.Info { return s.info }

func (s *stream) Close() error {
	s.closed = true
	s.buf, s.bat, s.order = nil, nil, nil
	return nil
}

// readFull reads len(b) bytes; a stream ending early is corrupt.
func (s *stream) readFull(b []byte, what string) error {
	n, err := io.ReadFull(s.r, b)
	s.pos += int64(n)
	if err == nil {
		return nil
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return corrupt(streamName, "stream ends at byte %d, inside the %s", s.pos, what)
	}
	return fmt.Errorf("vhd %s: read %s at %d: %w", streamName, what, s.pos, err)
}

// skip discards n bytes.
func (s *stream) skip(n int64, what string) error {
	if int64(len(s.scratch)) < min(n, 64<<10) {
		s.scratch = make([]byte, min(n, 64<<10))
	}
	for n > 0 {
		m := min(n, int64(len(s.scratch)))
		if err := s.readFull(s.scratch[:m], what); err != nil {
			return err
		}
		n -= m
	}
	return nil
}

func (s *stream) skipTo(off int64, what string) error {
	if off < s.pos {
		return notStreamable("the %s at %#x comes before position %#x", what, off, s.pos)
	}
	return s.skip(off-s.pos, "data before the "+what)
}

func (s *stream) Next(ctx context.Context) (int64, []byte, error) {
	if s.closed {
		return 0, nil, fmt.Errorf("vhd %s: stream is closed: %w", streamName, errs.ErrFailedPrecondition)
	}
	for {
		if err := ctx.Err(); err != nil {
			return 0, nil, err
		}
		if s.done {
			return 0, nil, io.EOF
		}
		if !s.inBlock {
			if s.next >= len(s.order) {
				if err := s.finish(); err != nil {
					return 0, nil, err
				}
				s.done = true
				return 0, nil, io.EOF
			}
			if err := s.startBlock(s.order[s.next]); err != nil {
				return 0, nil, err
			}
			s.next++
			continue
		}
		for s.sec < s.secs && !bitSet(s.bits, s.sec) {
			s.sec = runEnd(s.bits, s.sec, s.secs)
		}
		if s.sec >= s.secs {
			s.inBlock = false
			continue
		}
		if s.buf == nil {
			s.buf = make([]byte, min(streamChunk, s.bs))
		}
		j := min(runEnd(s.bits, s.sec, s.secs), s.sec+len(s.buf)/sectorSize)
		if err := s.skipTo(s.data+int64(s.sec)*sectorSize, fmt.Sprintf("block %d", s.blk)); err != nil {
			return 0, nil, err
		}
		voff := s.blk*s.bs + int64(s.sec)*sectorSize
		n := int64(j-s.sec) * sectorSize
		p := s.buf[:n]
		if err := s.readFull(p, fmt.Sprintf("block %d (disk offset %d)", s.blk, voff)); err != nil {
			return 0, nil, err
		}
		s.sec = j
		return voff, p[:min(n, s.size-voff)], nil
	}
}

func (s *stream) startBlock(blk int64) error {
	off := int64(s.bat[blk]) * sectorSize
	if err := s.skipTo(off, fmt.Sprintf("block %d", blk)); err != nil {
		return err
	}
	n := min(s.bs, s.size-blk*s.bs)
	s.secs = int((n + sectorSize - 1) / sectorSize)
	if int64(cap(s.bits)) < s.bmSize {
		s.bits = make([]byte, s.bmSize)
	}
	s.bits = s.bits[:s.bmSize]
	if err := s.readFull(s.bits, fmt.Sprintf("bitmap of block %d", blk)); err != nil {
		return err
	}
	s.blk, s.sec, s.data, s.inBlock = blk, 0, off+s.bmSize, true
	return nil
}

// finish reads the rest of the stream and checks that it ends with the
// footer.
func (s *stream) finish() error {
	tail := make([]byte, 0, 2*footerSize)
	if len(s.scratch) < 4096 {
		s.scratch = make([]byte, 4096)
	}
	for {
		n, err := s.r.Read(s.scratch)
		s.pos += int64(n)
		b := s.scratch[:n]
		if len(b) >= footerSize {
			tail = append(tail[:0], b[len(b)-footerSize:]...)
		} else if n > 0 {
			tail = append(tail, b...)
			if len(tail) > footerSize {
				tail = append(tail[:0], tail[len(tail)-footerSize:]...)
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("vhd %s: read at %d: %w", streamName, s.pos, err)
		}
	}
	if len(tail) < footerSize {
		return corrupt(streamName, "stream ends at byte %d without the footer", s.pos)
	}
	ft, ok, sumOK := parseFooter(tail)
	if !ok || !sumOK {
		return corrupt(streamName, "stream ends at byte %d without a valid footer", s.pos)
	}
	if !bytes.Equal(tail, s.copyRaw) {
		s.log.Warn("vhd footer at the end of the stream differs from the copy at offset 0", "disk", streamName, "uuid", formatUUID(ft.uuid))
	}
	return nil
}

// fixedStream reads a fixed VHD of known length: the data, then the
// footer, which must record exactly that much data.
type fixedStream struct {
	s      *stream
	head   []byte // the first sector, already read
	size   int64  // data bytes: the stream length less the footer
	footer int64  // footer length: 512, or 511 (old Virtual PC)
	pos    int64
	buf    []byte
	done   bool
	closed bool
}

func newFixedStream(s *stream, head []byte, length int64) (*fixedStream, error) {
	fl := int64(footerSize)
	if length%sectorSize == footerSize-1 {
		fl = footerSize - 1 // data is whole sectors: an old 511-byte footer
	}
	return &fixedStream{s: s, head: head, size: length - fl, footer: fl}, nil
}

func (f *fixedStream) Size() int64 { return f.size }

func (f *fixedStream) Info() disk.Info {
	return disk.Info{Filename: streamName, Format: "vhd", VirtualSize: f.size, Specific: map[string]any{"subformat": "fixed"}}
}

func (f *fixedStream) Close() error {
	f.closed, f.buf = true, nil
	return nil
}

func (f *fixedStream) Next(ctx context.Context) (int64, []byte, error) {
	if f.closed {
		return 0, nil, fmt.Errorf("vhd %s: stream is closed: %w", streamName, errs.ErrFailedPrecondition)
	}
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	if f.done {
		return 0, nil, io.EOF
	}
	if f.pos >= f.size {
		if err := f.finish(); err != nil {
			return 0, nil, err
		}
		f.done = true
		return 0, nil, io.EOF
	}
	off := f.pos
	if off == 0 && f.head != nil {
		// the first sector was read to look for a footer copy
		n := min(int64(len(f.head)), f.size)
		f.pos = n
		p := f.head[:n]
		if n < int64(len(f.head)) {
			// a disk smaller than a sector: the rest starts the footer
			f.head = f.head[n:]
		} else {
			f.head = nil
		}
		return off, p, nil
	}
	if f.buf == nil {
		f.buf = make([]byte, streamChunk)
	}
	n := min(int64(len(f.buf)), f.size-f.pos)
	if err := f.s.readFull(f.buf[:n], fmt.Sprintf("data at %d", f.pos)); err != nil {
		return 0, nil, err
	}
	f.pos += n
	return off, f.buf[:n], nil
}

// finish reads the footer and checks that it describes this stream.
func (f *fixedStream) finish() error {
	b := make([]byte, footerSize)
	k := copy(b, f.head)
	if err := f.s.readFull(b[k:f.footer], "footer"); err != nil {
		return err
	}
	ft, ok, sumOK := parseFooter(b)
	switch {
	case !ok:
		return corrupt(streamName, "no footer at byte %d: not a VHD, or the stream length is wrong", f.size)
	case !sumOK:
		return corrupt(streamName, "footer checksum mismatch at byte %d (stored %#x, computed %#x)", f.size, ft.checksum, checksumOf(b, 64))
	case ft.diskType != typeFixed:
		return corrupt(streamName, "footer at byte %d is of a %s disk, not fixed", f.size, subformatName(ft.diskType))
	case ft.curSize != uint64(f.size):
		return corrupt(streamName, "footer records a size of %d bytes, but the stream holds %d bytes before it", ft.curSize, f.size)
	}
	var extra [1]byte
	if n, _ := io.ReadFull(f.s.r, extra[:]); n > 0 {
		return corrupt(streamName, "stream goes on after the footer at byte %d: its length is not the one given", f.size+f.footer)
	}
	return nil
}
